def main():
    import os
    for _ in range(int(os.environ.get("REPS", "1"))):
        once()

def once():
    import x_argparse, x_pprint, x_jdec, x_jenc, x_calendar, x_colorsys, x_heapq, x_bisect, x_graphlib, x_pydecimal, x_ast
    import io, contextlib
    p = x_argparse.ArgumentParser(prog="p")
    p.add_argument("--a", type=int, default=3); p.add_argument("-v", action="count")
    p.add_argument("files", nargs="*"); g = p.add_mutually_exclusive_group(); g.add_argument("--x", action="store_true"); g.add_argument("--y")
    sub = p.add_subparsers(dest="cmd"); s1 = sub.add_parser("run"); s1.add_argument("--fast", action="store_true")
    p.parse_args(["run", "--fast"]); p.format_help()
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            p.parse_args(["--x", "--y", "1"])
        except SystemExit:
            pass
    data = {"a": [1, 2, {"b": (3, 4)}], "c": "x" * 80, "d": {i: list(range(i)) for i in range(8)}, "e": {1, 2}}
    x_pprint.pformat(data, width=30); x_pprint.pformat(data, sort_dicts=False, compact=True)
    s = x_jenc.JSONEncoder(indent=2, sort_keys=True).encode({"a": [1, 2.5, None, True, "é\n"], "b": {"c": []}})
    x_jenc.JSONEncoder().encode([1, {"x": "y"}]); x_jdec.JSONDecoder().decode(s)
    try:
        x_jdec.JSONDecoder().decode("[1, 2")
    except ValueError:
        pass
    x_calendar.TextCalendar().formatyear(2026); x_calendar.HTMLCalendar().formatmonth(2026, 2); x_calendar.isleap(2000); x_calendar.monthrange(2026, 12)
    for r in range(0, 256, 17):
        x_colorsys.hls_to_rgb(*x_colorsys.rgb_to_hls(r / 255, 0.5, 0.2)); x_colorsys.hsv_to_rgb(*x_colorsys.rgb_to_hsv(0.1, r / 255, 0.9))
    h = []
    for i in [5, 1, 8, 3, 9, 2]:
        x_heapq.heappush(h, i)
    x_heapq.nlargest(3, range(100)); x_heapq.nsmallest(2, [4, 1, 7], key=lambda v: -v); list(x_heapq.merge([1, 4], [2, 3]))
    a = list(range(0, 100, 3)); x_bisect.insort(a, 50); x_bisect.bisect_left(a, 51)
    ts = x_graphlib.TopologicalSorter({"a": {"b", "c"}, "b": {"c"}, "d": set()}); list(ts.static_order())
    D = x_pydecimal.Decimal
    x_pydecimal.getcontext().prec = 30
    for i in range(1, 30):
        (D(i) / D(7)).sqrt(); D(i).ln(); D("1.5e3").quantize(D("0.01")); str(D(i) ** 3 - D("0.5")); D(i).exp()
    tree = x_ast.parse("def f(a, *b, c=1, **d):\n    return [x async for x in y] if a else {k: v for k, v in d.items()}\nmatch z:\n    case [1, *r]: pass\n    case {'k': v} if v: pass\n")
    x_ast.dump(tree, indent=1); x_ast.unparse(tree); list(x_ast.walk(tree)); x_ast.literal_eval("[1, (2, 'x'), {3: None}]")
