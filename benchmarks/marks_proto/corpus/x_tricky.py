import asyncio


def gen(n):
    for i in range(n):
        if i % 2:
            yield i
        else:
            continue
    else:
        yield -1


def tryer(x):
    try:
        if x > 1:
            raise ValueError(x)
        elif x == 1:
            return "one"
    except ValueError as e:
        if e.args[0] > 5:
            return "big"
    finally:
        if x == 0:
            pass
    while x > 0:
        x -= 2
        if x == 3:
            break
    else:
        return "done"
    return "broke"


def withs(path, flag):
    with open(path) as fh:
        for line in fh:
            if flag: return line
    return None


def matcher(v):
    match v:
        case 0 | 1:
            return "small"
        case [a, *rest] if a:
            return "list"
        case {"k": kk}:
            return kk
        case str() as s if len(s) > 3:
            return s


async def agen(n):
    for i in range(n):
        if i:
            yield i


async def amain():
    out = []
    async for i in agen(4):
        if i > 2: break
        out.append(i)
    return out


class C:
    """Doc."""
    def m(self, x): return x if x else None
    def n(self): "doc only"


def one(x): return x


def nested(xs):
    total = 0
    for x in xs:
        for y in xs:
            if x == y:
                continue
            if x > y and y:
                total += 1
            elif x < 0:
                total -= 1
    while total:
        total //= 2
        if total == 1: break
    return total if total else 0


def lam(xs):
    return sorted(xs, key=lambda v: -v if v else 0)
