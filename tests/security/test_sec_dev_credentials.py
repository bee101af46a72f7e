"""A ``--dev`` gateway says which webhook secret and admin token it runs with; nothing else does.

Issue 15 item 6: the README's dev gateway ran with the seed's secret and no admin token and
said neither, so a newcomer's node could not join. The seed secret (public) is logged in full;
a secret or token of the operator's own never appears in a log, in dev mode or not.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml
from support import LOOPBACK_NODES

from photogate.config import WELL_KNOWN_SECRET, load_config

ANSI = re.compile(r"\x1b\[[0-9;]*m")
OWN_SECRET = "own-webhook-secret-5f1c2a9e7b"
OWN_TOKEN = "own-admin-token-8d03be41c6"
# A caller's environment must not leak into "what does a fresh shell see".
SCRUBBED = ("WEBHOOK_SECRET", "PHOTOGATE_ADMIN_TOKEN", "PHOTOGATE_DATA_DIR", "PHOTOGATE_REDIS_URL")


def gateway_log(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Start ``photogate ARGS --port 0``, wait until it listens, stop it; its whole output."""
    base = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "photogate", *args, "--port", "0", "--data-dir", str(tmp_path / "data")],
            stdout=out, stderr=subprocess.STDOUT, env={**base, **(env or {})},
        )
    try:
        deadline = time.monotonic() + 30
        while "gateway_listening" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the gateway never listened:\n" + log.read_text()
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(15)
    assert proc.returncode == 0, log.read_text()
    return ANSI.sub("", log.read_text())


def test_dev_gateway_logs_the_seed_secret_and_that_the_admin_api_is_off(tmp_path: Path) -> None:
    text = gateway_log(tmp_path, "--dev")
    line = next(ln for ln in text.splitlines() if "dev_credentials" in ln)
    # the console renderer quotes with " or ' as the value needs: compare what is inside
    assert re.search(f"webhook_secret=[\"']{WELL_KNOWN_SECRET} \\(the seed's well-known secret", line), line
    assert re.search("admin_api=[\"']none: the admin API, the dashboard and photogate-admin are off; "
                     "set PHOTOGATE_ADMIN_TOKEN to turn them on[\"']", line), line


def test_dev_gateway_names_own_credentials_without_their_values(tmp_path: Path) -> None:
    text = gateway_log(tmp_path, "--dev", env={"WEBHOOK_SECRET": OWN_SECRET, "PHOTOGATE_ADMIN_TOKEN": OWN_TOKEN})
    line = next(ln for ln in text.splitlines() if "dev_credentials" in ln)
    assert re.search(r"webhook_secret=[\"']your own \(from WEBHOOK_SECRET or webhook.secret; not shown\)", line), line
    assert re.search(r"admin_api=[\"']your own \(from PHOTOGATE_ADMIN_TOKEN or admin.token; not shown\)", line), line
    assert OWN_SECRET not in text and OWN_TOKEN not in text and WELL_KNOWN_SECRET not in text


def test_gateway_outside_dev_logs_no_credentials(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"webhook": {"allowed_node_networks": list(LOOPBACK_NODES)}}))
    text = gateway_log(tmp_path, "--config", str(config),
                       env={"WEBHOOK_SECRET": OWN_SECRET, "PHOTOGATE_ADMIN_TOKEN": OWN_TOKEN})
    assert '"event": "gateway_listening"' in text  # JSON lines: the gateway did start
    assert "dev_credentials" not in text
    assert OWN_SECRET not in text and OWN_TOKEN not in text


def test_dev_mode_keeps_the_files_node_networks_when_it_fills_in_the_seed_secret(tmp_path: Path) -> None:
    # --dev used to replace the whole webhook section to set the seed secret, silently
    # widening a file's allowed_node_networks to "anywhere".
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"webhook": {"allowed_node_networks": ["10.0.0.0/8"]}}))
    loaded = load_config(config, env={}, dev=True)
    assert loaded.webhook.secret == WELL_KNOWN_SECRET
    assert loaded.webhook.allowed_node_networks == ("10.0.0.0/8",)
