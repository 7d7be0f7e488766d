"""fastconv: fused CNN operators (1x1 conv + bias + ReLU, residual add + ReLU,
TensorFlow-SAME pooling) for PyTorch, in Triton and CUDA C++."""
from fastconv import nn, reference  # noqa: E402  (modules over the ops; float64 references)
from fastconv._backend import available_backends, get_backend, set_backend, use_backend
from fastconv._tuning.explain import explain  # noqa: E402  (what runs for a call, and why)
from fastconv.compare import compare  # noqa: E402  (layer-by-layer equivalence of two models)
from fastconv.convert import convert  # noqa: E402
from fastconv.ops import (
    avg_pool2d_same,
    conv1x1_relu,
    conv1x1_relu_split,
    conv1x1_relu_split_into,
    max_pool2d_same,
    pool_conv1x1_relu,
    residual_add,
)

__version__ = "0.1.0"
__all__ = ["conv1x1_relu", "residual_add", "max_pool2d_same", "avg_pool2d_same",
           "conv1x1_relu_split", "conv1x1_relu_split_into", "pool_conv1x1_relu",
           "set_backend", "get_backend", "use_backend", "available_backends", "nn", "reference",
           "convert", "explain", "compare"]  # not "models": `import *` would import torchvision


def __getattr__(name):
    """`fastconv.models` on first use: the models build on torchvision, which `import fastconv`
    does not import (it takes seconds, and is an optional dependency)."""
    if name == "models":
        import importlib

        return importlib.import_module("fastconv.models")  # also binds fastconv.models
    raise AttributeError(f"module 'fastconv' has no attribute {name!r}")
