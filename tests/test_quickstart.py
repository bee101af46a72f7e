"""The README's run command, minus the virtualenv set-up: gateway + gpunode + one photo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def test_demo_enhances_the_example_photo_end_to_end() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bin" / "demo.py"), "--once", "--port", "0", "--node-port", "0"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "enhanced   640x427 -> 1280x854 by GPU-" in result.stdout
    target = REPO / "out" / "rocket_enhanced.jpg"
    with Image.open(target) as im:
        assert im.size == (1280, 854) and im.format == "JPEG"
    log = (REPO / "data" / "demo" / "gpunode.log").read_text()
    assert '"event": "unregistered"' in log  # the node left the fleet on SIGTERM
