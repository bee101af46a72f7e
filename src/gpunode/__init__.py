"""gpunode: the GPU worker of photogate — one ONNX super-resolution model behind HTTP."""

__version__ = "0.1.0"

__all__ = ["__version__"]
