"""The CI skip rule, as a pytest plugin (its hooks are imported by ``tests/conftest.py``).

A test that skips where it cannot run is fine on a laptop; on CI (``CI=true``: root, the
system programs ``bin/test`` installs, ``../shared`` beside the clone) a skip usually means a
claim went unchecked. So every run ends with a summary of what skipped (and what ran a
weaker fallback, see :func:`fell_back`), and under ``CI=true`` the run fails unless each of
them is listed in ``tests/ci_allowed_skips.txt`` — the one list of what CI may skip.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

ALLOWED_FILE = Path(__file__).resolve().parent / "ci_allowed_skips.txt"
#: The user property a test records when it ran a fallback instead of the real thing.
FALLBACK = "ci_fallback"


@dataclass(frozen=True)
class Allowed:
    pattern: str  # an fnmatch pattern over the node id, e.g. tests/x.py::test_y*
    why: str


@dataclass(frozen=True)
class Skipped:
    nodeid: str
    reason: str
    kind: str  # "skipped" or "fell back"


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def load_allowed(path: Path = ALLOWED_FILE) -> list[Allowed]:
    """``PATTERN  # why`` per line; blank lines and whole-line comments ignored; a why is required."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pattern, sep, why = line.partition("#")
        if not sep or not why.strip() or len(pattern.split()) != 1:
            raise pytest.UsageError(f"{path}:{number}: expected 'NODEID-PATTERN  # why CI may skip it', got {line!r}")
        entries.append(Allowed(pattern.strip(), why.strip()))
    return entries


def fell_back(item: pytest.Item, reason: str) -> None:
    """Record that ``item`` ran a weaker fallback (e.g. a patched disk instead of a full tmpfs):
    reported and enforced on CI like a skip."""
    item.user_properties.append((FALLBACK, reason))


class SkipLedger:
    """The plugin: notes every skip and fallback, prints them, fails a CI run that has one not allowed."""

    def __init__(self, allowed: list[Allowed], ci: bool) -> None:
        self.allowed = allowed
        self.ci = ci
        self.entries: dict[str, Skipped] = {}

    def _note(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.entries.setdefault(report.nodeid, Skipped(report.nodeid, reason.removeprefix("Skipped: "), "skipped"))
        for name, value in getattr(report, "user_properties", ()):
            if name == FALLBACK:
                self.entries.setdefault(report.nodeid, Skipped(report.nodeid, str(value), "fell back"))

    def forbidden(self) -> list[Skipped]:
        return [s for s in self.entries.values()
                if not any(fnmatch.fnmatchcase(s.nodeid, a.pattern) for a in self.allowed)]

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._note(report)  # a module-level skip (importorskip, allow_module_level)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._note(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.ci and self.forbidden() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.entries:
            return
        forbidden = {s.nodeid for s in self.forbidden()}
        terminalreporter.section("skips and fallbacks (CI rule: tests/ci_skips.py)")
        for s in sorted(self.entries.values(), key=lambda s: s.nodeid):
            mark = "NOT ALLOWED ON CI" if s.nodeid in forbidden else "allowed on CI"
            terminalreporter.line(f"{s.kind}: {s.nodeid}: {s.reason} [{mark}]")
        if self.ci and forbidden:
            terminalreporter.line(
                f"CI=true: {len(forbidden)} test(s) that CI is expected to run did not (skipped or fell back). "
                f"Make them run on CI, or list them with the reason in tests/{ALLOWED_FILE.name}.",
                red=True, bold=True)


def register(config: pytest.Config, allowed_file: Path = ALLOWED_FILE) -> None:
    """Called from ``pytest_configure`` in ``tests/conftest.py``."""
    config.pluginmanager.register(SkipLedger(load_allowed(allowed_file), on_ci()), "photogate-ci-skips")
