"""The CI skip rule (``tests/ci_skips.py``): under CI=true a skip or a fallback that is not in
the one list fails the run; elsewhere it is only reported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ci_skips
import pytest

HERE = Path(__file__).resolve().parent

INNER = '''
import pytest
from ci_skips import fell_back

def test_runs() -> None:
    assert True

def test_skips() -> None:
    pytest.skip("needs a thing CI has")

def test_falls_back(request) -> None:
    fell_back(request.node, "patched instead of real")
'''


def _run(tmp_path: Path, *, ci: str | None, allowed: str = "", module_skip: bool = False,
         select: str = "") -> tuple[int, str]:
    (tmp_path / "conftest.py").write_text(
        "import ci_skips\nfrom pathlib import Path\n\n"
        "def pytest_configure(config):\n"
        "    ci_skips.register(config, Path(__file__).parent / 'allowed.txt')\n")
    (tmp_path / "allowed.txt").write_text(allowed)
    (tmp_path / "test_inner.py").write_text(INNER)
    if module_skip:
        (tmp_path / "test_gone.py").write_text('import pytest\n\npytest.importorskip("no_such_module_anywhere")\n')
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-c", "/dev/null",
            "-o", "asyncio_default_fixture_loop_scope=function", "--rootdir", str(tmp_path), str(tmp_path)]
    if select:
        argv += ["-k", select]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


def test_on_ci_an_unlisted_skip_or_fallback_fails_the_run_and_says_which(tmp_path: Path) -> None:
    code, out = _run(tmp_path, ci="true")
    assert code == 1, out
    assert "skipped: test_inner.py::test_skips: needs a thing CI has [NOT ALLOWED ON CI]" in out
    assert "fell back: test_inner.py::test_falls_back: patched instead of real [NOT ALLOWED ON CI]" in out
    assert "CI=true: 2 test(s) that CI is expected to run did not" in out and "ci_allowed_skips.txt" in out
    assert "2 passed, 1 skipped" in out  # the tests themselves passed: the rule alone fails the run


def test_off_ci_skips_are_reported_and_the_run_passes(tmp_path: Path) -> None:
    code, out = _run(tmp_path, ci=None)
    assert code == 0, out
    assert "skipped: test_inner.py::test_skips: needs a thing CI has [NOT ALLOWED ON CI]" in out
    assert "CI=true:" not in out


def test_on_ci_listed_skips_pass(tmp_path: Path) -> None:
    allowed = ("# comment\n\ntest_inner.py::test_skips  # CI has no such thing\n"
               "test_inner.py::test_falls_*  # nor this\n")
    code, out = _run(tmp_path, ci="true", allowed=allowed)
    assert code == 0, out
    assert "skipped: test_inner.py::test_skips: needs a thing CI has [allowed on CI]" in out
    assert "fell back: test_inner.py::test_falls_back: patched instead of real [allowed on CI]" in out


def test_on_ci_a_whole_module_skipped_fails_the_run(tmp_path: Path) -> None:
    code, out = _run(tmp_path, ci="true", module_skip=True, select="test_runs")
    assert code == 1, out
    assert "1 passed, 1 skipped" in out
    assert "skipped: test_gone.py: could not import 'no_such_module_anywhere'" in out and "NOT ALLOWED ON CI" in out


def test_on_ci_a_run_without_skips_passes(tmp_path: Path) -> None:
    code, out = _run(tmp_path, ci="true", select="test_runs")
    assert code == 0, out
    assert "skips and fallbacks" not in out


def test_the_list_needs_a_reason_per_line_and_the_real_one_allows_nothing(tmp_path: Path) -> None:
    assert ci_skips.load_allowed() == []  # CI runs every test of the suite (see the file's header)
    bad = tmp_path / "allowed.txt"
    bad.write_text("tests/test_x.py::test_y\n")
    with pytest.raises(pytest.UsageError, match=r"allowed.txt:1: expected 'NODEID-PATTERN  # why CI may skip it'"):
        ci_skips.load_allowed(bad)
