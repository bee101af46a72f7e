"""Configuration loading and the ``photogate`` command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from photogate.access_config import AccessConfig
from photogate.cli import main
from photogate.config import WELL_KNOWN_SECRET, ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


def test_shipped_config_yaml_is_valid_and_has_the_documented_defaults() -> None:
    cfg = load_config(REPO / "config.yaml", env={"WEBHOOK_SECRET": "from-env-123", "PHOTOGATE_ADMIN_TOKEN": "tok"})
    assert cfg.webhook.secret == "from-env-123" and cfg.admin.token == "tok"
    assert cfg.health_check.interval == 30 and cfg.health_check.failure_threshold == 3
    assert cfg.balancer.strategy == "round_robin" and cfg.server.port == 8080
    public = cfg.public_dict()
    assert public["webhook"]["secret"] == "***" and public["admin"]["token"] == "***"
    assert cfg.access == AccessConfig()  # the shipped file spells out the defaults


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("access:\n  classes: {}\n", "access.classes: name at least one class"),
    ("access:\n  classes: {paid: 0, free: 1}\n", "access.classes.paid: a whole weight from 1 to 1000"),
    ("access:\n  default_class: gold\n", "access.default_class: 'gold' is not one of access.classes"),
])
def test_bad_access_classes_are_refused(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("webhook:\n  secret: abcdefgh123\n" + yaml_text)
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("health_check:\n  intervall: 5\n", "health_check.intervall: unknown key"),
        ("health_check:\n  interval: fast\n", "health_check.interval: expected a number"),
        ("health_check:\n  failure_threshold: 0\n", "health_check.failure_threshold: must be >= 1"),
        ("server:\n  port: 99999\n", "server.port: must be 0..65535"),
        ("limits:\n  max_pixels: -1\n", "limits.max_pixels: must be > 0"),
        ("multi_backend:\n  enabled: maybe\n", "multi_backend.enabled: expected true or false"),
        ("cors:\n  origins: ['*', 'http://a']\n", "cors.origins"),
        ("server:\n  trusted_proxies: [nonsense]\n", "server.trusted_proxies[0]"),
        ("[1, 2]\n", "top level must be a mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    plain = yaml_text.startswith(("[", "a:"))
    path.write_text(yaml_text if plain else "webhook:\n  secret: abcdefgh123\n" + yaml_text)
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert message in str(exc.value)


def test_secret_rules() -> None:
    with pytest.raises(ConfigError, match="webhook.secret: empty"):
        load_config(None, env={})
    with pytest.raises(ConfigError, match="well-known default secret is refused outside --dev"):
        load_config(None, env={"WEBHOOK_SECRET": WELL_KNOWN_SECRET})
    assert load_config(None, env={}, dev=True).webhook.secret == WELL_KNOWN_SECRET


def test_photogate_help_and_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "photogate", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for flag in ("--config", "--host", "--port", "--data-dir", "--dev"):
        assert flag in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("webhook:\n  secret: abcdefgh123\nbalancer:\n  strategy: quickest\n")
    assert main(["--config", str(bad), "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "unknown strategy 'quickest'; known: fastest, least_busy, round_robin, weighted" in err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err
