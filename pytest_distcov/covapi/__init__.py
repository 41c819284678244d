"""The one door to coverage.py: the only code in pytest-distcov that touches its internals.

Every other module uses coverage.py's documented API only (the ``coverage``,
``coverage.exceptions``, ``coverage.plugin`` and ``coverage.numbits`` modules, and no private
attribute of any object not its own: tests/test_architecture.py holds this). Where that API is
missing, the use of an internal lives here, behind a named function or class, is checked once
at start (:mod:`.check`, whose value the engine keeps), and has a named fallback, which the
controller's header names when a run takes it. May import coverage.py and the bottom layers
(:mod:`pytest_distcov.errors`); never pytest, never the rest of the package.

What it touches, as of coverage.py 7.13.2 to 7.18 (the range pyproject.toml allows, tested by
tox's ``min`` and ``newest`` environments), and the fallback of each:

* :mod:`.collector`, the ``tap``: ``Coverage._collector`` and its ``data``, ``file_tracers``,
  ``branch``, ``core.packed_arcs``, ``cached_mapped_file`` and ``flush_data`` (wrapped on the
  instance; 7.13 to 7.16 clear the sets when they flush, 7.17 on remove what they took: both
  are seen), the C tracer's packing of arcs (checked against ``Collector.flush_data``
  itself), and ``coverage.tracer`` (only to say why the C tracer does not load). Fallback:
  the per-test flush uses ``Coverage.switch_context``, coverage.py's own flush.
* :mod:`.data`, the ``journal``: ``Coverage._data`` (its public writers shadowed on the
  instance) and ``CoverageData._current_context``. Fallback: every flush writes the data file
  through coverage.py, a worker streams from that file, and there is no tap.
* :mod:`.parser`, ``parse sharing``: ``Coverage._get_file_reporter`` (wrapped on the instance;
  7.13 caches it with ``lru_cache``, which the instance's wrapper stands in front of),
  ``Coverage._exclude_regex``, ``PythonFileReporter._parser``, ``coverage.parser.PythonParser``
  and its attributes (stored whole; ``_all_arcs``, ``_ast_root`` and ``_first_line_cache``
  named), ``coverage.python.source_for_morf``, ``coverage.files.canonical_filename`` and
  ``coverage.types.TMorf``. Fallback: each report parses every file, as coverage.py does.
* :mod:`.probes`, ``probes`` (Python 3.10 and 3.11 only): ``Coverage._init``,
  ``_inited_for_start``, ``_init_for_start``, ``_inorout.should_trace``, ``_file_mapper``,
  ``_data`` and ``_post_save_work``. Fallback: coverage.py's tracer measures (the header's
  note on the core says why).
* :mod:`.schema`, the ``context batch``: writing coverage.py's SQLite tables (``context``,
  ``file``, ``line_bits`` with ``coverage.numbits``, ``arc``; schema version 7) directly, on
  a second connection to the shared in-memory database that ``data_filename()`` of a
  ``CoverageData(no_disk=True)`` names. Fallback: ``add_lines`` (``add_arcs``) per context.
* :mod:`.subprocesses`, ``patch = subprocess`` under the engines that do not call
  ``Coverage.start`` (which does it for coverage.py's cores): ``Coverage.config.serialize``
  into ``COVERAGE_PROCESS_CONFIG``, which coverage.py's start-up in a new process reads.
  Checked where an engine is chosen (``tracer_setting``). Fallback: coverage.py's tracer
  measures such a run, and patches by itself.
* :mod:`.warnings`: coverage.py's public ``CoverageWarning`` only.
* :mod:`.paths`, for ``pytest-distcov combine`` alone (checked where it is used, not at a
  run's start): ``coverage.files.PathAliases``, which applies the ``[paths]`` setting as
  ``coverage combine`` does. Fallback: no remapping, and the command says so.

Reading the SQLite schema of data files, which coverage.py documents (its "dbschema" page,
"subject to change"), is not treated as internal: :mod:`pytest_distcov.data` reads those
tables itself and checks the schema version of every file it reads
(``data.readers.KNOWN_SCHEMAS``), refusing another one as coverage.py does. Writing into them
is, and only :mod:`.schema` does it.
"""
