"""Issue 14, acceptance 2: every scripted mutation of a central claim is caught.

``bench/mutations.py`` applies each mutation to a scratch copy of the tree and runs the tests
named for it there (two at a time); a mutation that none of its tests notices fails this test,
with the script's table. One test runs the whole set, once per suite run (about 2.5 minutes on
two cores); the other checks in milliseconds that every mutation still matches the code.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import mutations  # noqa: E402


def test_every_mutation_matches_the_code_exactly_once() -> None:
    assert mutations.check_snippets(mutations.MUTATIONS) == []
    names = [mut.name for mut in mutations.MUTATIONS]
    assert len(names) == len(set(names))


@pytest.mark.timeout(900)
def test_every_scripted_mutation_is_caught() -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "mutations.py"), "--jobs", "2"], cwd=REPO,
                          capture_output=True, text=True, timeout=840, check=False)
    assert done.returncode == 0, f"{done.stdout[-8000:]}\n{done.stderr[-4000:]}"
    caught = f"{len(mutations.MUTATIONS)}/{len(mutations.MUTATIONS)} mutations caught"
    assert caught in done.stdout, done.stdout[-8000:]
