"""Prototype check: marks + sys.monitoring LINE events vs coverage.py's C tracer, JSON reports.

usage: python harness.py MODE SRC_DIR WORKLOAD_MODULE
  MODE=marks: import SRC_DIR's modules marked, run WORKLOAD_MODULE.main(), write marks.json
  MODE=ctrace: coverage run (branch, ctrace) of the same, write ctrace.json
"""

import importlib.abc
import importlib.util
import json
import os
import sys
import time

sys.path.insert(0, "/work/wt-i22")

mode, src, workload = sys.argv[1:4]
src = os.path.realpath(src)
sys.path.insert(0, src)

if mode == "ctrace":
    os.environ["COVERAGE_CORE"] = "ctrace"
    import coverage

    cov = coverage.Coverage(branch=True, source=[src], data_file=f"/tmp/i22-{mode}.cov")
    cov.start()
    t0 = time.perf_counter()
    importlib.import_module(workload).main()
    took = time.perf_counter() - t0
    cov.stop()
    cov.save()
    cov.json_report(outfile=f"/tmp/i22-{mode}.json", pretty_print=True)
    print(f"{mode}: {took:.3f} s")
    sys.exit(0)

if mode == "plain":
    t0 = time.perf_counter()
    importlib.import_module(workload).main()
    print(f"plain: {time.perf_counter() - t0:.3f} s")
    sys.exit(0)

from pytest_distcov.engine.marks import Unmarkable, plan  # noqa: E402

mon = sys.monitoring
TOOL = 3
mon.use_tool_id(TOOL, "marks")
E = mon.events
DISABLE = mon.DISABLE
tables = {}  # filename -> (base, arcs list, lines set, arcs set)
unmarked = {}
planning = 0.0


def on_line(code, line):
    t = tables.get(code.co_filename)
    if t is not None:
        base, marks, lines, arcs = t
        if line >= base:
            arcs.update(marks[line - base])
        else:
            lines.add(line)
    return DISABLE


def on_start(code, offset):
    return DISABLE


mon.register_callback(TOOL, E.LINE, on_line)
mon.register_callback(TOOL, E.PY_START, on_start)


def instrument(code):
    mon.set_local_events(TOOL, code, E.LINE | E.PY_START)
    for c in code.co_consts:
        if isinstance(c, type(code)):
            instrument(c)


class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec and spec.origin and spec.origin.startswith(src + "/") and spec.origin.endswith(".py"):
            spec.loader = self
            return spec
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        fn = module.__spec__.origin
        source = open(fn).read()
        global planning
        t = time.perf_counter()
        try:
            p = plan(source, fn)
            code = compile(p.tree, fn, "exec")
            tables[fn] = (p.base, p.arcs, set(), set())
        except Unmarkable as exc:
            unmarked[fn] = str(exc)
            code = compile(source, fn, "exec")
            tables[fn] = (10**9, [], set(), set())
        planning += time.perf_counter() - t
        instrument(code)
        exec(code, module.__dict__)


sys.meta_path.insert(0, Finder())
t0 = time.perf_counter()
importlib.import_module(workload).main()
took = time.perf_counter() - t0
print(f"marks: {took:.3f} s (planning {planning:.3f} s); unmarked: {unmarked}")

import coverage  # noqa: E402

data = coverage.CoverageData(basename="/tmp/i22-marks.cov")
data.erase()
arcs = {}
for fn, (base, marks, lines, taken) in tables.items():
    arcs[fn] = {(-1, l) for l in lines} | taken
data.add_arcs(arcs)
data.write()
cov = coverage.Coverage(branch=True, source=[src], data_file="/tmp/i22-marks.cov")
cov.load()
cov.json_report(outfile="/tmp/i22-marks.json", pretty_print=True)
