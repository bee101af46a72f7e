"""Issue 13, item 14(e): the node's webhook secret from a file or the environment; on the
command line (where every user of the machine reads it in ``ps``) it is warned about."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpunode.cli import build_parser, config_from_args, main


def test_gpunode_secret_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "secret"
    path.write_text("from-the-file-0123\n")
    args = build_parser({"SHARED_SECRET": "from-env"}).parse_args(
        ["--gateway", "http://127.0.0.1:9", "--secret-file", str(path)])
    assert config_from_args(args).secret == "from-the-file-0123"
    args = build_parser({"GPUNODE_SECRET_FILE": str(path)}).parse_args(["--gateway", "http://127.0.0.1:9"])
    assert config_from_args(args).secret == "from-the-file-0123"
    assert config_from_args(build_parser({"SHARED_SECRET": "from-env"}).parse_args(
        ["--gateway", "http://127.0.0.1:9"])).secret == "from-env"
    for argv in (["--secret-file", str(tmp_path / "missing")], ["--secret", "a", "--secret-file", str(path)]):
        with pytest.raises(SystemExit) as exc:
            main(["--gateway", "http://127.0.0.1:9", *argv], env={})
        assert exc.value.code == 2
    assert "--secret-file" in capsys.readouterr().err


def test_gpunode_warns_when_the_secret_is_on_the_command_line(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    nope = str(tmp_path / "nope.onnx")  # the node stops at its model, after reading its flags
    assert main(["--host", "127.0.0.1", "--port", "0", "--secret", "visible-in-ps-0123", "--model", nope], env={}) == 1
    err = capsys.readouterr().err
    assert "secret_on_command_line" in err and "visible-in-ps-0123" not in err
    path = tmp_path / "secret"
    path.write_text("hidden-0123")
    assert main(["--host", "127.0.0.1", "--port", "0", "--secret-file", str(path), "--model", nope], env={}) == 1
    err = capsys.readouterr().err
    assert "secret_on_command_line" not in err and "hidden-0123" not in err
