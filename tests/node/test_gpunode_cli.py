"""The CLI: flags over environment (seed names), validation, in-process ``main``."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpunode.cli import build_parser, config_from_args, main
from gpunode.config import NodeConfig, bundled_model_path, default_state_dir


def parse(argv: list[str], env: dict[str, str] | None = None) -> NodeConfig:
    return config_from_args(build_parser(env or {}).parse_args(argv))


def test_seed_environment_names_and_flag_precedence() -> None:
    env = {"GATEWAY_URL": "http://127.0.0.1:9", "SHARED_SECRET": "s3", "PORT": "8123",
           "GPUNODE_STATE_DIR": "/tmp/x"}
    cfg = parse([], env)
    assert (cfg.gateway_url, cfg.secret, cfg.port, cfg.state_dir) == ("http://127.0.0.1:9", "s3", 8123, Path("/tmp/x"))
    cfg = parse(["--port", "9000", "--secret", "other"], env)
    assert cfg.port == 9000 and cfg.secret == "other"


def test_defaults_run_the_bundled_model_with_a_per_port_state_dir() -> None:
    cfg = parse(["--gateway", "http://127.0.0.1:9", "--secret", "s", "--port", "8001"])
    assert cfg.model_file == bundled_model_path() and cfg.model_file.is_file()
    assert cfg.state_path == default_state_dir(8001) != default_state_dir(8002)
    assert cfg.tile_overlap >= 8


@pytest.mark.parametrize("argv", [["--tile-overlap", "4"], ["--tile-size", "40", "--tile-overlap", "16"],
                                  ["--gateway", "http://127.0.0.1:9"]])
def test_bad_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv, env={})
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"], env={})
    assert exc.value.code == 0 and "gpunode" in capsys.readouterr().out


def test_missing_model_fails_with_exit_1(tmp_path: Path) -> None:
    assert main(["--host", "127.0.0.1", "--port", "0", "--token", "t", "--model", str(tmp_path / "nope.onnx")],
                env={}) == 1
