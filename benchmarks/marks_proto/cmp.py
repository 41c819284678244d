import json, sys
a = json.load(open("/tmp/i22-ctrace.json"))["files"]
b = json.load(open("/tmp/i22-marks.json"))["files"]
keys = ["executed_lines", "missing_lines", "executed_branches", "missing_branches"]
bad = 0
for f in sorted(set(a) | set(b)):
    for k in keys:
        x, y = a.get(f, {}).get(k), b.get(f, {}).get(k)
        if x != y:
            bad += 1
            xs = {tuple(i) if isinstance(i, list) else i for i in x or []}
            ys = {tuple(i) if isinstance(i, list) else i for i in y or []}
            print(f, k, "ctrace-only", sorted(xs - ys)[:10], "marks-only", sorted(ys - xs)[:10])
print("files", len(a), len(b), "differences", bad)
