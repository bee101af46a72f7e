"""Convert an ncnn model (``.param`` text + ``.bin`` weights) to an ONNX graph.

Only numpy and ``onnx`` are needed. The layers covered are those of the
super-resolution networks gpunode ships or tests with: waifu2x UpConv7
(Convolution, Deconvolution with fused LeakyReLU) and Real-ESRGAN x4plus
(Convolution, Split, Concat, Eltwise, BinaryOp, Interp, ReLU/LeakyReLU).

The produced graph follows gpunode's model contract: input ``input`` float32
NCHW RGB in [0, 1] with dynamic H and W, output ``output`` at s times the size.
UpConv7 uses unpadded convolutions, so ``--pad 7`` adds an edge-replicate pad
inside the graph and the output is exactly 2x the input.

Usage::

    python -m gpunode.convert scale2.0x_model.param scale2.0x_model.bin out.onnx --pad 7 --clip
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NCNN_MAGIC = 7767517
OPSET = 17

_TAG_FP16 = 0x01306B47
_TAG_INT8 = 0x000D4B38
_TAG_FP32_SCALED = 0x0002C056


class ConvertError(ValueError):
    """The ncnn model uses something this converter does not handle."""


#: An ncnn layer parameter: a number, or an array of numbers.
Param = int | float | list[int | float]


@dataclass
class Layer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, Param] = field(default_factory=dict)

    def get(self, key: int, default: Param) -> Param:
        return self.params.get(key, default)

    def int_param(self, key: int, default: int) -> int:
        return int(self._number(key, default))

    def float_param(self, key: int, default: float) -> float:
        return float(self._number(key, default))

    def _number(self, key: int, default: int | float) -> int | float:
        value = self.params.get(key, default)
        if isinstance(value, list):
            raise ConvertError(f"{self.name}: parameter {key} is an array where a number belongs")
        return value


def _parse_value(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_param(text: str) -> list[Layer]:
    """Parse an ncnn ``.param`` file (text form)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or int(lines[0].split()[0]) != NCNN_MAGIC:
        raise ConvertError("not an ncnn text .param file (bad magic number)")
    layer_count = int(lines[1].split()[0])
    layers: list[Layer] = []
    for line in lines[2 : 2 + layer_count]:
        tok = line.split()
        ltype, name, n_in, n_out = tok[0], tok[1], int(tok[2]), int(tok[3])
        inputs = tok[4 : 4 + n_in]
        outputs = tok[4 + n_in : 4 + n_in + n_out]
        params: dict[int, Param] = {}
        for kv in tok[4 + n_in + n_out :]:
            key_s, _, val = kv.partition("=")
            key = int(key_s)
            if key <= -23300:
                # Array parameter: "-233xx=count,v1,v2,...".
                parts = val.split(",")
                params[-key - 23300] = [_parse_value(p) for p in parts[1:]]
            else:
                params[key] = _parse_value(val)
        layers.append(Layer(ltype, name, inputs, outputs, params))
    if len(layers) != layer_count:
        raise ConvertError(f"param declares {layer_count} layers, found {len(layers)}")
    return layers


class _WeightReader:
    """Reads ncnn's ``.bin`` in layer order (ModelBinFromDataReader semantics)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ConvertError("weights file ended early: .bin does not match .param")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def raw(self, count: int) -> np.ndarray:
        """``load(w, 1)``: plain float32, no tag."""
        return np.frombuffer(self._take(4 * count), dtype="<f4").copy()

    def tagged(self, count: int) -> np.ndarray:
        """``load(w, 0)``: a 4-byte tag says how the data is stored."""
        tag_bytes = self._take(4)
        (tag,) = struct.unpack("<I", tag_bytes)
        if tag == _TAG_FP16:
            nbytes = (count * 2 + 3) // 4 * 4
            arr = np.frombuffer(self._take(nbytes), dtype="<f2")[:count]
            return arr.astype(np.float32)
        if tag == _TAG_INT8:
            raise ConvertError("int8-quantised ncnn weights are not supported")
        if tag == _TAG_FP32_SCALED or tag == 0:
            return self.raw(count)
        if sum(tag_bytes) != 0:
            # 256-entry float table followed by uint8 indices.
            table = np.frombuffer(self._take(256 * 4), dtype="<f4")
            idx = np.frombuffer(self._take((count + 3) // 4 * 4), dtype=np.uint8)[:count]
            return table[idx].astype(np.float32)
        return self.raw(count)


class _GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def uid(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, base: str, arr: np.ndarray) -> str:
        name = self.uid(base)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def node(self, op: str, inputs: Sequence[str], outputs: Sequence[str], **attrs: object) -> None:
        node = helper.make_node(op, list(inputs), list(outputs))
        # make_node's own **kwargs would collide with its name/doc_string/domain parameters
        # in the type checker's eyes: the same attributes, added the way make_node adds them.
        node.attribute.extend(helper.make_attribute(k, v) for k, v in sorted(attrs.items()) if v is not None)
        self.nodes.append(node)


def _activation(g: _GraphBuilder, layer: Layer, src: str, dst: str) -> None:
    act = layer.int_param(9, 0)
    args = layer.get(10, [])
    assert isinstance(args, list)
    if act == 0:
        g.node("Identity", [src], [dst])
    elif act == 1:
        g.node("Relu", [src], [dst])
    elif act == 2:
        g.node("LeakyRelu", [src], [dst], alpha=float(args[0]) if args else 0.0)
    elif act == 3:
        lo = g.const("lo", np.array(float(args[0]), np.float32))
        hi = g.const("hi", np.array(float(args[1]), np.float32))
        g.node("Clip", [src, lo, hi], [dst])
    elif act == 4:
        g.node("Sigmoid", [src], [dst])
    else:
        raise ConvertError(f"{layer.name}: activation type {act} not supported")


def _conv_pads(layer: Layer) -> list[int]:
    left = layer.int_param(4, 0)
    if left < 0:
        raise ConvertError(f"{layer.name}: 'same' auto-padding not supported")
    top = layer.int_param(14, left)
    right = layer.int_param(15, left)
    bottom = layer.int_param(16, top)
    return [top, left, bottom, right]


def _convolution(g: _GraphBuilder, layer: Layer, rd: _WeightReader, src: str, dst: str, deconv: bool) -> None:
    num_output = layer.int_param(0, 0)
    kw = layer.int_param(1, 0)
    kh = layer.int_param(11, kw)
    dw = layer.int_param(2, 1)
    dh = layer.int_param(12, dw)
    sw = layer.int_param(3, 1)
    sh = layer.int_param(13, sw)
    bias_term = layer.int_param(5, 0)
    wsize = layer.int_param(6, 0)
    group = layer.int_param(7, 1) if layer.type.startswith(("ConvolutionDepthWise", "DeconvolutionDepthWise")) else 1
    if layer.int_param(8, 0):
        raise ConvertError(f"{layer.name}: int8 convolution not supported")
    if layer.float_param(18, 0.0) != 0.0:
        raise ConvertError(f"{layer.name}: non-zero pad value not supported")
    w = rd.tagged(wsize)
    num_input = wsize // (kw * kh * num_output) * group
    pads = _conv_pads(layer)
    inputs = [src]
    if deconv:
        # ncnn stores deconvolution weights as [outch][inch][kh][kw] per group;
        # ONNX wants [inch][outch/group][kh][kw].
        og = num_output // group
        ig = num_input // group
        wt = w.reshape(group, og, ig, kh, kw).transpose(0, 2, 1, 3, 4).reshape(num_input, og, kh, kw)
        inputs.append(g.const(f"{layer.name}_W", np.ascontiguousarray(wt)))
    else:
        wt = w.reshape(num_output, num_input // group, kh, kw)
        inputs.append(g.const(f"{layer.name}_W", wt))
    if bias_term:
        inputs.append(g.const(f"{layer.name}_B", rd.raw(num_output)))
    pre = g.uid(f"{layer.name}_pre")
    attrs: dict[str, object] = {"kernel_shape": [kh, kw], "strides": [sh, sw], "dilations": [dh, dw], "pads": pads,
                                 "group": group}
    if deconv:
        if layer.int_param(18, 0) or layer.int_param(19, 0) or layer.int_param(20, 0) or layer.int_param(21, 0):
            raise ConvertError(f"{layer.name}: deconvolution output padding/size not supported")
        g.node("ConvTranspose", inputs, [pre], **attrs)
    else:
        g.node("Conv", inputs, [pre], **attrs)
    _activation(g, layer, pre, dst)


def _eltwise(g: _GraphBuilder, layer: Layer, srcs: list[str], dst: str) -> None:
    op = layer.int_param(0, 1)
    coeffs = layer.get(1, [])
    assert isinstance(coeffs, list)
    if op == 1 and coeffs and any(float(c) != 1.0 for c in coeffs):
        terms = []
        for s, c in zip(srcs, coeffs):
            t = g.uid(f"{layer.name}_t")
            g.node("Mul", [s, g.const("coeff", np.array(float(c), np.float32))], [t])
            terms.append(t)
        srcs = terms
    onnx_op = {0: "Mul", 1: "Sum", 2: "Max"}.get(op)
    if onnx_op is None:
        raise ConvertError(f"{layer.name}: Eltwise op {op} not supported")
    if onnx_op == "Sum":
        g.node("Sum", srcs, [dst])
    else:
        acc = srcs[0]
        for i, s in enumerate(srcs[1:]):
            out = dst if i == len(srcs) - 2 else g.uid(f"{layer.name}_acc")
            g.node(onnx_op, [acc, s], [out])
            acc = out


def _binaryop(g: _GraphBuilder, layer: Layer, srcs: list[str], dst: str) -> None:
    op = layer.int_param(0, 0)
    onnx_op = {0: "Add", 1: "Sub", 2: "Mul", 3: "Div", 4: "Max", 5: "Min", 6: "Pow"}.get(op)
    if onnx_op is None:
        raise ConvertError(f"{layer.name}: BinaryOp {op} not supported")
    if layer.int_param(1, 0):  # with_scalar
        srcs = [srcs[0], g.const("scalar", np.array(layer.float_param(2, 0.0), np.float32))]
    g.node(onnx_op, srcs, [dst])


def _interp(g: _GraphBuilder, layer: Layer, src: str, dst: str) -> None:
    mode = layer.int_param(0, 0)
    hs = layer.float_param(1, 1.0)
    ws = layer.float_param(2, 1.0)
    if layer.int_param(3, 0) or layer.int_param(4, 0):
        raise ConvertError(f"{layer.name}: Interp to a fixed output size not supported")
    scales = g.const("scales", np.array([1.0, 1.0, hs, ws], np.float32))
    if mode == 1:
        g.node("Resize", [src, "", scales], [dst], mode="nearest", nearest_mode="floor",
               coordinate_transformation_mode="asymmetric")
    elif mode == 2:
        align = layer.int_param(6, 0)
        g.node("Resize", [src, "", scales], [dst], mode="linear",
               coordinate_transformation_mode="align_corners" if align else "half_pixel")
    else:
        raise ConvertError(f"{layer.name}: Interp resize type {mode} not supported")


def _add_layer(g: _GraphBuilder, layer: Layer, rd: _WeightReader, srcs: list[str], outs: list[str], pad: int) -> None:
    """The ONNX nodes of one ncnn layer, reading ``srcs`` and writing ``outs``."""
    t = layer.type
    if t == "Input":
        if pad:
            pads = g.const("pads", np.array([0, 0, pad, pad, 0, 0, pad, pad], np.int64))
            g.node("Pad", ["input", pads], [outs[0]], mode="edge")
        else:
            g.node("Identity", ["input"], [outs[0]])
    elif t in ("Convolution", "ConvolutionDepthWise"):
        _convolution(g, layer, rd, srcs[0], outs[0], deconv=False)
    elif t in ("Deconvolution", "DeconvolutionDepthWise"):
        _convolution(g, layer, rd, srcs[0], outs[0], deconv=True)
    elif t == "Split":
        for o in outs:
            g.node("Identity", [srcs[0]], [o])
    elif t == "Concat":
        axis = layer.int_param(0, 0)
        g.node("Concat", srcs, [outs[0]], axis=axis + 1)  # ncnn axes skip the batch
    elif t == "Eltwise":
        _eltwise(g, layer, srcs, outs[0])
    elif t == "BinaryOp":
        _binaryop(g, layer, srcs, outs[0])
    elif t == "Interp":
        _interp(g, layer, srcs[0], outs[0])
    elif t == "ReLU":
        slope = layer.float_param(0, 0.0)
        if slope:
            g.node("LeakyRelu", srcs, outs, alpha=slope)
        else:
            g.node("Relu", srcs, outs)
    elif t == "Sigmoid":
        g.node("Sigmoid", srcs, outs)
    elif t == "Noop":
        g.node("Identity", srcs, outs)
    else:
        raise ConvertError(f"{layer.name}: ncnn layer type {t!r} not supported")


def _build_model(g: _GraphBuilder, last_out: str, *, clip: bool, fixed_size: tuple[int, int] | None,
                 producer: str, doc: str) -> onnx.ModelProto:
    """The checked ONNX model around the graph built so far: clip or not, then the output."""
    if clip:
        lo = g.const("lo", np.array([0.0], np.float32))
        hi = g.const("hi", np.array([1.0], np.float32))
        g.node("Clip", [last_out, lo, hi], ["output"])
    else:
        g.node("Identity", [last_out], ["output"])
    in_dims: list[int | str] = [1, 3, *fixed_size] if fixed_size else ["N", 3, "H", "W"]
    out_dims: list[int | str | None] = [1, 3, None, None] if fixed_size else ["N", 3, "OH", "OW"]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, in_dims)
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, out_dims)
    graph = helper.make_graph(g.nodes, "sr", [inp], [out], initializer=g.inits)
    model = helper.make_model(graph, producer_name=producer, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    if doc:
        model.doc_string = doc
    onnx.checker.check_model(model)
    return model


def convert(param_text: str, weights: bytes, *, pad: int = 0, clip: bool = True,
            fixed_size: tuple[int, int] | None = None,
            producer: str = "gpunode.convert", doc: str = "") -> onnx.ModelProto:
    """Build the ONNX model for an ncnn network.

    ``pad`` adds an edge-replicate pad of that many pixels on every side of the
    input inside the graph (UpConv7 needs 7); ``clip`` clamps the output to [0, 1];
    ``fixed_size`` (H, W) declares a fixed input shape, as exporters without dynamic
    axes produce (Real-ESRGAN's ``pytorch2onnx.py`` exports 1x3x64x64).
    """
    rd = _WeightReader(weights)
    g = _GraphBuilder()
    names: dict[str, str] = {}  # ncnn blob -> onnx tensor
    input_blob = None
    last_out = None
    for layer in parse_param(param_text):
        outs = [f"b_{b}" for b in layer.outputs]
        if layer.type == "Input":
            input_blob = layer.outputs[0]
        _add_layer(g, layer, rd, [names[b] for b in layer.inputs], outs, pad)
        for b, o in zip(layer.outputs, outs):
            names[b] = o
            last_out = o
    if input_blob is None or last_out is None:
        raise ConvertError("the network has no Input layer")
    if rd.pos != len(rd.data):
        raise ConvertError(f".bin has {len(rd.data) - rd.pos} bytes left over: it does not match .param")
    return _build_model(g, last_out, clip=clip, fixed_size=fixed_size, producer=producer, doc=doc)


def convert_files(param: Path, weights: Path, out: Path, *, pad: int = 0, clip: bool = True,
                  fixed_size: tuple[int, int] | None = None) -> Path:
    """Convert ``param`` + ``weights`` and write the ONNX model to ``out``."""
    model = convert(Path(param).read_text(), Path(weights).read_bytes(), pad=pad, clip=clip, fixed_size=fixed_size,
                    doc=f"converted from ncnn {Path(param).name} by gpunode.convert")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpunode.convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("param", type=Path, help="ncnn .param (text)")
    ap.add_argument("bin", type=Path, help="ncnn .bin weights")
    ap.add_argument("out", type=Path, help="ONNX file to write")
    ap.add_argument("--pad", type=int, default=0, help="edge-replicate input padding inside the graph (UpConv7: 7)")
    ap.add_argument("--no-clip", action="store_true", help="do not clamp the output to [0, 1]")
    ap.add_argument("--fixed-size", metavar="HxW", help="declare a fixed input size instead of dynamic H and W")
    args = ap.parse_args(argv)
    fixed = None
    if args.fixed_size:
        h, _, w = args.fixed_size.lower().partition("x")
        fixed = (int(h), int(w))
    try:
        convert_files(args.param, args.bin, args.out, pad=args.pad, clip=not args.no_clip, fixed_size=fixed)
    except (ConvertError, OSError) as exc:
        sys.stderr.write(f"convert: {exc}\n")
        return 1
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
