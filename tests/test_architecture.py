"""The package's shape: dependencies point one way, and the public surface is deliberate."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_distcov

PKG = Path(pytest_distcov.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


FILES = {_module_name(p): p for p in sorted(PKG.rglob("*.py")) if p.stem != "__main__"}
MODULES = sorted(FILES)


def _imports(module: str) -> set[str]:
    """What ``module`` imports: third-party names as written, our own as dotted names under
    the package (``engine.tap``), relative imports resolved."""
    path = FILES[module]
    package = module.split(".") if path.stem == "__init__" else module.split(".")[:-1]
    if module == "__init__":
        package = []
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(_ours(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
                if node.module is None:
                    found.update(f"{name}.{a.name}".strip(".") for a in node.names)
                else:
                    found.add(name)
            else:
                found.add(_ours(node.module or ""))
    return found


def _ours(name: str) -> str:
    """``pytest_distcov.x.y`` -> ``x.y`` (our own module); anything else unchanged."""
    if name == "pytest_distcov":
        return "__init__"
    return name.removeprefix("pytest_distcov.") if name.startswith("pytest_distcov.") else name


def _internal(names: set[str]) -> set[str]:
    return {n for n in names if n == "__init__" or n.split(".")[0] in _GROUPS}


#: The package's groups: the bottom layers (standard library and each other), then the
#: sub-packages. Each may import the groups listed for it, and itself.
BOTTOM = {"__init__", "errors", "protocol", "secretnames", "tempdirs"}
_GROUPS = {*BOTTOM, "covapi", "settings", "data", "engine", "sinks", "remote", "roles", "plugin",
           "cli"}  # fmt: skip
MAY_IMPORT: dict[str, set[str]] = {
    "__init__": {"errors"},
    "errors": set(),
    "protocol": {"errors"},
    "tempdirs": set(),
    "secretnames": set(),
    "covapi": BOTTOM,
    "data": BOTTOM | {"covapi"},
    # The settings check a store's spec (sinks.store, lazily) when they are resolved.
    "settings": BOTTOM | {"sinks"},
    # The engine leaves out the remote launcher's file (a constant of remote.launch).
    "engine": BOTTOM | {"covapi", "data", "remote"},
    "sinks": BOTTOM | {"covapi", "data", "settings"},
    "remote": BOTTOM | {"settings"},
    "roles": BOTTOM | {"covapi", "data", "engine", "sinks", "remote", "settings"},
    "plugin": BOTTOM | {"engine", "remote", "roles", "settings"},
    "cli": BOTTOM | {"data", "engine", "sinks"},
}


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_one_way(module: str) -> None:
    group = module.split(".", maxsplit=1)[0]
    allowed = MAY_IMPORT[group] | {group}
    wrong = {n for n in _internal(_imports(module)) if n.split(".")[0] not in allowed}
    assert not wrong, f"{module} imports {sorted(wrong)}; {group} may import {sorted(allowed)}"


#: Modules that may import pytest (the roles and the plugin on top, the option declarations,
#: the remote hooks; and the import hooks of the probe and monitor engines, which must see the
#: modules pytest's assertion rewriter executes).
PYTEST_ALLOWED = {"plugin", "settings.options", "remote.fleet", "engine.imports"}


@pytest.mark.parametrize("module", MODULES)
def test_pytest_only_in_the_top_layers(module: str) -> None:
    uses_pytest = any(
        i == "pytest" or i.startswith(("pytest.", "_pytest")) for i in _imports(module)
    )
    allowed = module in PYTEST_ALLOWED or module.startswith("roles.")
    assert not uses_pytest or allowed, f"{module} imports pytest"


#: Standard library only. The remote agent and launcher run on hosts that have nothing but
#: Python; shipping runs before anything is there; the rest are the bottom layers.
STDLIB_ONLY = {
    "errors",
    "protocol",
    "remote.agent",
    "remote.launch",
    "remote.shipping",
    "secretnames",
    "settings.reportspec",
    "tempdirs",
}
#: Shipped as source to a remote host and run there on their own: not even our own modules.
SHIPPED = {"remote.agent", "remote.launch"}


@pytest.mark.parametrize("module", sorted(STDLIB_ONLY))
def test_bottom_layers_use_the_stdlib_only(module: str) -> None:
    imports = _imports(module)
    third_party = {
        i for i in imports if i.split(".")[0] not in sys.stdlib_module_names | {"__future__"}
    }
    ours = _internal(imports)
    assert third_party <= ours, f"{module} imports {sorted(third_party - ours)}"
    assert ours <= STDLIB_ONLY | {"__init__"}, f"{module} imports {sorted(ours - STDLIB_ONLY)}"
    if module in SHIPPED:
        assert not ours, f"{module} is shipped alone but imports {sorted(ours)}"


@pytest.mark.parametrize("module", sorted(SHIPPED))
def test_shipped_modules_run_on_a_bare_python(module: str, tmp_path: Path) -> None:
    """What runs on a remote host compiles and imports with no site-packages and nothing of
    this package on the path: ``python -I -S`` executes its source as execnet would."""
    source = FILES[module].read_text()
    (tmp_path / "shipped.py").write_text(source)
    probe = (
        "import sys, runpy\n"
        "assert not any('site-packages' in p for p in sys.path), sys.path\n"
        "runpy.run_path('shipped.py', run_name='distcov_probe')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] not in sys.stdlib_module_names"
        " and m not in ('__main__', 'distcov_probe', '__mp_main__'))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


#: The one sanctioned exception: the import hooks (engine.imports) route the test modules that
#: pytest's assertion rewriter executes (as SlipCover's own pytest support does). It keeps
#: every use of other projects' internals in one place and checks for them before it is chosen.
PRIVATE_IMPORTS_ALLOWED = {("engine.imports", "_pytest.assertion")}  # its rewrite module


@pytest.mark.parametrize("module", MODULES)
def test_no_private_imports_of_collaborators(module: str) -> None:
    for name in _imports(module):
        if (module, name) in PRIVATE_IMPORTS_ALLOWED:
            continue
        parts = name.lstrip(".").split(".")
        if parts[0] in {"coverage", "pytest", "xdist", "execnet", "_pytest"}:
            assert not any(p.startswith("_") for p in parts), f"{module} imports {name}"
            assert name.split(".")[0] != "_pytest"


# -- the doors: the only modules that touch other projects' internals ---------------------------

#: coverage.py's one door (the sub-package) and xdist's and execnet's (one module).
COVERAGE_DOOR = "covapi"
XDIST_DOOR = "remote.xdist_door"
#: coverage.py's documented modules: its API (``coverage``, ``coverage.exceptions``), the
#: plugin API (``coverage.plugin``) and the data schema's numbits (``coverage.numbits``). Every
#: other module of coverage.py is internal.
COVERAGE_PUBLIC = {"coverage", "coverage.exceptions", "coverage.plugin", "coverage.numbits"}
#: Standard library functions that are documented despite their underscore.
DOCUMENTED_UNDERSCORE = {"sys._current_frames", "sys._getframe", "os._exit"}
#: The sanctioned exception beside the doors (see PRIVATE_IMPORTS_ALLOWED): the import hooks
#: point the name SlipCover's ``wrap_pytest`` may have put into pytest's rewriter at its hook.
PRIVATE_ATTRIBUTES_ALLOWED = {
    ("engine.imports", "_Slipcover_exec_wrapper"),
    # documented in the sys module (3.13+), despite its underscore
    ("engine.measure", "_is_gil_enabled"),
}
_ATTRIBUTE_CALLS = {"getattr", "setattr", "hasattr", "delattr"}


def _in_door(module: str) -> bool:
    return module == XDIST_DOOR or module.split(".", maxsplit=1)[0] == COVERAGE_DOOR


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own(node: ast.expr) -> bool:
    """``self``, ``cls`` or ``super()``: the object's own attributes."""
    if isinstance(node, ast.Name):
        return node.id in {"self", "cls"}
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"
    )


def _coverage_internal(module: str) -> bool:
    return module.split(".", maxsplit=1)[0] == "coverage" and module not in COVERAGE_PUBLIC


def _door_violations(source: str) -> list[tuple[str, str]]:
    """(what, the private name) for every touch of another object's private attribute and every
    import of an internal coverage.py module in ``source``."""
    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and _private(node.attr) and not _own(node.value):
            text = ast.unparse(node)
            if text not in DOCUMENTED_UNDERSCORE:
                found.append((f"line {node.lineno}: {text}", node.attr))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _ATTRIBUTE_CALLS
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
            and not _own(node.args[0])
        ):
            found.append((f"line {node.lineno}: {ast.unparse(node)}", node.args[1].value))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _coverage_internal(alias.name):
                    found.append((f"line {node.lineno}: import {alias.name}", alias.name))
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
            if node.module == "coverage":  # ``from coverage import parser``: a module too
                names += [
                    f"coverage.{a.name}"
                    for a in node.names
                    if importlib.util.find_spec(f"coverage.{a.name}") is not None
                ]
            for name in names:
                if _coverage_internal(name):
                    found.append((f"line {node.lineno}: from {node.module} import ...", name))
    return found


@pytest.mark.parametrize("module", [m for m in MODULES if not _in_door(m)])
def test_only_the_doors_touch_other_objects_private_attributes(module: str) -> None:
    """Outside covapi and the xdist door, no module reads or writes a private attribute of an
    object not its own, nor imports coverage.py's internal modules."""
    found = [
        what
        for what, name in _door_violations(FILES[module].read_text())
        if (module, name) not in PRIVATE_ATTRIBUTES_ALLOWED
    ]
    assert not found, f"{module} reaches past the doors: {found}"


#: An SQL statement that writes one of coverage.py's tables (see covapi.schema).
_WRITES_COVERAGE_TABLES = re.compile(
    r"\b(INSERT|REPLACE|UPDATE)\b.*?\b(INTO\s+)?(coverage_schema|meta|file|context|line_bits"
    r"|arc|tracer)\b",
    re.IGNORECASE | re.DOTALL,
)


def _schema_writes(source: str) -> list[str]:
    """The string constants in ``source`` that are SQL writing coverage.py's tables."""
    return [
        f"line {node.lineno}: {node.value[:60]!r}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and _WRITES_COVERAGE_TABLES.match(node.value.lstrip())
    ]


@pytest.mark.parametrize("module", [m for m in MODULES if not _in_door(m)])
def test_only_the_coverage_door_writes_coverages_tables(module: str) -> None:
    """coverage.py's data files are read by their documented schema outside the door, but
    written only through covapi.schema (checked at start, with a fallback)."""
    found = _schema_writes(FILES[module].read_text())
    assert not found, f"{module} writes coverage.py's tables past the door: {found}"


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ('"INSERT INTO context (id, context) VALUES (?, ?)"', True),
        ('"insert or ignore into arc (file_id) values (?)"', True),
        ('"UPDATE line_bits SET numbits = ?"', True),
        ('"SELECT path FROM file"', False),
        ('"the file was inserted"', False),
    ],
)
def test_the_schema_write_check_flags_what_it_should(source: str, flagged: bool) -> None:
    assert bool(_schema_writes(source)) is flagged


def test_the_doors_are_there() -> None:
    """Renaming a door must not leave a name that exempts nothing."""
    assert XDIST_DOOR in FILES
    assert {"covapi.check", "covapi.collector", "covapi.data", "covapi.parser"} <= set(FILES)
    assert _schema_writes(FILES["covapi.schema"].read_text())
    assert any(_door_violations(FILES[m].read_text()) for m in FILES if _in_door(m))


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("cov._collector.data", True),
        ("self.role._finished", True),
        ("cov._get_file_reporter = wrap", True),
        ("getattr(cov, '_data', None)", True),
        ("setattr(reporter, '_parser', None)", True),
        ("hasattr(cov, '_inorout')", True),
        ("delattr(cov, '_collector')", True),
        ("type(self)._cache", True),
        ("import coverage.tracer", True),
        ("import coverage.collector as c", True),
        ("from coverage.parser import PythonParser", True),
        ("from coverage import parser", True),
        ("from coverage.python import source_for_morf", True),
        ("self._lock", False),
        ("cls._instances", False),
        ("super()._get_newly_seen()", False),
        ("getattr(self, '_parser', None)", False),
        ("getattr(cov, 'config', None)", False),
        ("func.__code__.co_names", False),
        ("sys._current_frames()", False),
        ("import coverage", False),
        ("from coverage import Coverage, CoverageData", False),
        ("from coverage.exceptions import CoverageException", False),
        ("from coverage.numbits import numbits_to_nums", False),
    ],
)
def test_the_door_check_flags_what_it_should(source: str, flagged: bool) -> None:
    """The check above can fail: each of these is flagged, or not, as it says."""
    assert bool(_door_violations(source)) is flagged, _door_violations(source)


def test_every_sub_package_says_what_it_owns() -> None:
    for init in PKG.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc or "may import" in doc, f"{init.parent.name}: {doc!r}"


def test_public_names() -> None:
    assert sorted(pytest_distcov.__all__) == [
        "DataFileError",
        "DistCovError",
        "NothingToReport",
        "ProtocolError",
        "RemoteError",
        "ReportError",
        "SettingsError",
        "StoreError",
        "__version__",
    ]
    assert pytest_distcov.__version__


@pytest.mark.skipif(sys.platform == "win32", reason=".ci/run is a bash script")
def test_ci_runs_every_environment_of_tox_envlist(tmp_path: Path) -> None:
    """.ci/run picks an environment for each Python from 3.10 to 3.15 and runs those: together
    (here, and in the sid root) they are tox's envlist (the README's test command), no more
    and no fewer, each once. Asked of the script itself (``DISTCOV_CI_PRINT_ENVS=1``), with
    stand-ins for 3.10-3.13 on PATH; without 3.11 it fails, naming the environment."""
    import configparser
    import shutil

    root = Path(__file__).resolve().parents[1]  # the checkout (the package may be installed)
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(root / "tox.ini")
    envlist = [e.strip() for e in tox["tox"]["envlist"].split(",")]
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for minor in range(10, 14):
        stub = stubs / f"python3.{minor}"
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    for tool in ("mktemp", "ln", "rm", "dirname"):  # what it runs before it stops: no Python
        found = shutil.which(tool)
        assert found is not None
        (stubs / tool).symlink_to(found)
    bash = shutil.which("bash")
    assert bash is not None

    def planned() -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": str(stubs),
            "PYENV_ROOT": str(tmp_path / "no-pyenv"),  # this machine's Pythons do not count
            "DISTCOV_CI_PRINT_ENVS": "1",
            "HOME": "/",
        }
        return subprocess.run(
            [bash, str(root / ".ci" / "run")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    done = planned()
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    ran = lines["here"].split() + lines["sid"].split()
    assert sorted(ran) == sorted(envlist)
    assert len(ran) == len(set(ran))
    assert lines["here"].split()[:1] == ["lint"]
    assert lines["sid"].split() == ["py314", "py315"]  # no 3.14 or 3.15 here
    (stubs / "python3.11").unlink()
    missing = planned()
    assert missing.returncode == 1
    assert "no python3.11 on this machine (pyenv's or on PATH): py311 cannot run" in (
        missing.stderr
    )
