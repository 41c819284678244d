def main():
    import os, asyncio, tempfile
    import x_tricky as t
    list(t.gen(5)); list(t.gen(0))
    for v in (0, 1, 2, 9, -3, 7):
        try:
            t.tryer(v)
        except ValueError:
            pass
    with tempfile.NamedTemporaryFile("w", delete=False) as f:
        f.write("a\nb\n")
    t.withs(f.name, True); t.withs(f.name, False); os.unlink(f.name)
    for v in (0, [1, 2], [0], {"k": 3}, "hello", "hi", 3.5):
        t.matcher(v)
    asyncio.run(t.amain())
    c = t.C(); c.m(1); c.m(0); c.n()
    t.one(1)
    t.nested([1, 2, -1, 0]); t.nested([])
    t.lam([3, 0, 1])
