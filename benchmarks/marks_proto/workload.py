def main():
    import os
    for _ in range(int(os.environ.get("REPS", "1"))):
        once()

def once():
    import x_difflib, x_textwrap, x_shlex, x_fractions, x_statistics, x_ipaddress, x__parseaddr, x_configparser, x_string, x_tokenize
    import io
    a = ["line %d %s\n" % (i, "x" * (i % 7)) for i in range(300)]
    b = list(a); b[10:20] = ["changed\n"] * 5; b.insert(100, "new\n")
    list(x_difflib.unified_diff(a, b)); list(x_difflib.ndiff(a[:60], b[:60]))
    x_difflib.HtmlDiff().make_file(a[:40], b[:40])
    x_difflib.get_close_matches("appel", ["ape", "apple", "peach", "puppy"])
    for w in (10, 20, 40):
        x_textwrap.fill(" ".join(a[:50]), width=w); x_textwrap.dedent("  a\n  b\n")
        x_textwrap.shorten("Hello  world! " * 10, width=w)
    for s in ["a b 'c d' \"e f\"", "x=1 # c", "a\\ b"]:
        x_shlex.split(s); x_shlex.split(s, comments=True); x_shlex.quote(s)
    F = x_fractions.Fraction
    for i in range(1, 50):
        F(i, 7) + F(3, i); F(1.5) * F(i); F("3/7") ** 2; F(i, 3).limit_denominator(2)
        round(F(i, 7), 2); float(F(i, 9)); F(i, 9) < F(1, 2)
    d = [1.5, 2.5, 2.5, 2.75, 3.25, 4.75, 10.0]
    x_statistics.mean(d); x_statistics.median(d); x_statistics.stdev(d); x_statistics.mode([1, 1, 2])
    x_statistics.quantiles(d, n=4); x_statistics.fmean(d); x_statistics.geometric_mean(d)
    for s in ["192.168.0.1", "10.0.0.0/8", "::1", "2001:db8::/32", "1.2.3.4/24"]:
        try:
            x_ipaddress.ip_address(s)
        except ValueError:
            x_ipaddress.ip_network(s, strict=False)
    list(x_ipaddress.ip_network("10.0.0.0/29").hosts()); list(x_ipaddress.summarize_address_range(x_ipaddress.ip_address("10.0.0.0"), x_ipaddress.ip_address("10.0.1.5")))
    for s in ["A <a@b.c>", "\"x y\" <x@y>, z@w", "bad <"]:
        x__parseaddr.AddressList(s).addresslist
    x__parseaddr.parsedate_tz("Mon, 20 Nov 1995 19:12:08 -0500")
    cp = x_configparser.ConfigParser()
    cp.read_string("[a]\nx = 1\ny = ${x}\n[b]\nz: 2\n  cont\n")
    cp.getint("a", "x"); dict(cp["b"]); io_ = io.StringIO(); cp.write(io_)
    x_string.Template("$a ${b}").safe_substitute(a=1); x_string.capwords("hello world")
    x_string.Formatter().format("{0} {x:>5}", 1, x="y")
    src = "def f(x):\n    return x + 1  # c\nclass A: pass\n"
    list(x_tokenize.generate_tokens(io.StringIO(src).readline))
