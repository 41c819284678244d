"""The option table: what pytest registers comes from it, and its one precedence rule says where
every value came from (command line, ini file, environment, coverage config, default)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from coverage import Coverage

from pytest_distcov.errors import SettingsError
from pytest_distcov.settings.options import (
    CONFIG,
    ENGINE,
    FAIL_UNDER,
    OPTIONS,
    REPORTS,
    SOURCE,
    Layers,
    Option,
    lookup,
)
from pytest_distcov.settings.reportspec import ReportSpec
from pytest_distcov.sinks.report import configured_fail_under

from .helpers import run_pytest


def _squeezed(text: str) -> str:
    """``text`` without whitespace: --help wraps long help texts (and breaks at hyphens)."""
    return "".join(text.split())


def test_help_lists_every_option_and_ini_key_with_its_type(pytester: pytest.Pytester) -> None:
    result = run_pytest(pytester, "--help")
    assert result.ret == 0, result.stderr.str()
    out = result.stdout.str()
    group = out.index("distributed coverage (pytest-distcov):")
    flags = [o for o in OPTIONS if o.flag]
    at = [out.index(f"  {o.flag}", group) for o in flags]
    assert at == sorted(at), "flags not in the table's order"
    for option, start in zip(flags, at, strict=True):
        end = out.index("\n  -", start + 3) if option is not flags[-1] else out.index("\n\n", start)
        assert _squeezed(option.help) in _squeezed(out[start:end]), option.name
        if option.metavar:
            assert out[start:].startswith(f"  {option.flag}={option.metavar}"), option.name
    keys = [o for o in OPTIONS if o.ini_type]
    ini_at = [out.index(f"  {o.name} ({o.ini_type}):") for o in keys]
    assert ini_at == sorted(ini_at), "ini keys not in the table's order"
    for option, start in zip(keys, ini_at, strict=True):
        assert _squeezed(option.ini_help) in _squeezed(out[start : start + 400]), option.name


def test_ini_types_are_pytests_own(pytester: pytest.Pytester) -> None:
    """The declared type is what pytest converts to: a float key gives a float, and so on."""
    types = {"bool": bool, "float": float, "linelist": list, "string": str}
    samples = {"distcov_config": "cov.cfg", "distcov_context": "test"}
    samples |= {"distcov_engine": "coverage", "distcov_report": "term", "distcov_store": "out"}
    samples |= {"distcov_remote": ""}  # hosts would need --distcov
    samples |= {"distcov_remote_cache_size": "2G"}
    (pytester.path / "cov.cfg").write_text("[run]\n")
    keys = [o for o in OPTIONS if o.ini_type]
    assert {o.ini_type for o in keys} <= set(types)
    default = {"bool": "false", "float": "1.5", "linelist": "a", "string": "x"}
    _pytest_ini(
        pytester,
        "[pytest]\n"
        + "".join(f"{o.name} = {samples.get(o.name, default[str(o.ini_type)])}\n" for o in keys),
    )
    config = pytester.parseconfig()
    for option in keys:
        assert isinstance(config.getini(option.name), types[str(option.ini_type)]), option.name


def _pytest_ini(pytester: pytest.Pytester, text: str) -> None:
    (pytester.path / "pytest.ini").write_text(text)


def _layers(pytester: pytest.Pytester, *args: str, coverage: bool = True) -> Layers:
    config = pytester.parseconfig(*args)
    rc = pytester.path / ".coveragerc"
    cov = Coverage(config_file=str(rc)) if coverage else None
    return Layers(config, environ={}, coverage=cov.get_option if cov else None)


def test_lookup_names_the_layer_each_value_came_from(pytester: pytest.Pytester) -> None:
    (pytester.path / "pkg").mkdir()
    (pytester.path / ".coveragerc").write_text(
        "[run]\nsource = covsrc\n[report]\nfail_under = 70\n"
    )
    _pytest_ini(pytester, "[pytest]\ndistcov_fail_under = 80\ndistcov_source = pkg\n")

    # the command line wins over the ini file, which wins over coverage's configuration
    found = lookup(FAIL_UNDER, _layers(pytester, "--distcov-fail-under=90"))
    assert (found.raw, found.layer, found.origin) == ("90", "command line", "--distcov-fail-under")
    assert FAIL_UNDER.settle(found) == 90.0
    layers = _layers(pytester)
    found = lookup(FAIL_UNDER, layers)
    assert (found.raw, found.layer, found.origin) == (
        80.0,
        "ini file",
        "distcov_fail_under in pytest.ini",
    )
    # a directory in the ini file is relative to the ini file's directory
    assert SOURCE.value(layers) == (str(pytester.path / "pkg"),)

    _pytest_ini(pytester, "[pytest]\n")
    layers = _layers(pytester)
    found = lookup(FAIL_UNDER, layers)
    assert (found.raw, found.layer, found.origin) == (
        70.0,
        "coverage config",
        "[report] fail_under in the coverage configuration",
    )
    found = lookup(SOURCE, layers)
    assert (found.layer, SOURCE.settle(found)) == ("coverage config", ("covsrc",))
    # options coverage.py knows nothing of fall through to their default
    found = lookup(REPORTS, layers)
    assert (found.layer, REPORTS.settle(found)) == ("default", (ReportSpec("term"),))

    # without coverage.py at hand (the plugin's case), the default: coverage.py decides later
    found = lookup(FAIL_UNDER, _layers(pytester, coverage=False))
    assert (found.raw, found.layer, found.origin) == (None, "default", "the default")


def test_environment_layer_and_blank_values(pytester: pytest.Pytester) -> None:
    _pytest_ini(pytester, "[pytest]\ndistcov_config =\n")
    config = pytester.parseconfig()
    found = lookup(ENGINE, Layers(config, environ={"DISTCOV_ENGINE": "probes"}))
    assert (found.raw, found.origin) == ("probes", "the DISTCOV_ENGINE environment variable")
    # a blank distcov_config is "not set": coverage's own search
    assert lookup(CONFIG, Layers(config)).layer == "default"
    assert CONFIG.value(Layers(config)) is True
    # a blank ini value of an option without that rule is a value, below which nothing is read
    _pytest_ini(pytester, "[pytest]\ndistcov_engine =\n")
    found = lookup(ENGINE, Layers(pytester.parseconfig(), environ={"DISTCOV_ENGINE": "probes"}))
    assert (found.layer, ENGINE.settle(found)) == ("ini file", "auto")


def test_a_bad_coverage_config_value_is_named_there(pytester: pytest.Pytester) -> None:
    rc = pytester.path / ".coveragerc"
    rc.write_text("[report]\nfail_under = 101\n")
    with pytest.raises(SettingsError) as info:
        configured_fail_under(Coverage(config_file=str(rc)))
    assert str(info.value) == (
        "invalid value 101.0 for [report] fail_under in the coverage configuration:"
        " expected a number from 0 to 100"
    )
    rc.write_text("[report]\nfail_under = 0\n")
    assert configured_fail_under(Coverage(config_file=str(rc))) is None


def test_the_table_loads_without_pytest_or_coverage() -> None:
    """`pytest-distcov report` reads fail-under's coverage layer through the table: importing it
    must not start pytest (nor coverage.py, which a pytest start without --distcov never needs)."""
    code = (
        "import sys, pytest_distcov.settings.options\n"
        "heavy = {'pytest', '_pytest', 'coverage', 'sqlite3'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_a_flag_must_be_its_ini_keys_twin() -> None:
    """argparse's dest and the ini key are one name, so a flag spelt otherwise is refused."""
    with pytest.raises(ValueError, match="is not its dest's"):
        Option("distcov_thing", lambda raw, _found: raw, None, flag="--distcov-things")
    assert len({o.name for o in OPTIONS}) == len(OPTIONS)
