"""Issue 14, acceptance 2: every scripted mutation of a central claim is caught.

``bench/mutations.py`` applies each mutation to a scratch copy of the tree and runs the tests
named for it there (two at a time); a mutation that none of its tests notices fails this test,
with the script's table. One test runs the whole set, once per suite run (about 2.5 minutes on
two cores); the other checks in milliseconds that every mutation still matches the code.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "mutations.py"


def _load_script():  # type: ignore[no-untyped-def]
    """bench/mutations.py as a module, without putting bench/ on everyone's import path."""
    spec = importlib.util.spec_from_file_location("photogate_bench_mutations", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


mutations = _load_script()


def test_every_mutation_matches_the_code_exactly_once() -> None:
    assert mutations.check_snippets(mutations.MUTATIONS) == []
    names = [mut.name for mut in mutations.MUTATIONS]
    assert len(names) == len(set(names))


@pytest.mark.timeout(900)
def test_every_scripted_mutation_is_caught() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--jobs", "2"], cwd=REPO,
                          capture_output=True, text=True, timeout=840, check=False)
    assert done.returncode == 0, f"{done.stdout[-8000:]}\n{done.stderr[-4000:]}"
    caught = f"{len(mutations.MUTATIONS)}/{len(mutations.MUTATIONS)} mutations caught"
    assert caught in done.stdout, done.stdout[-8000:]
