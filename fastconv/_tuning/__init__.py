"""What "auto" runs: measured tuning tables, and the rule outside them.

A table (`fastconv/_tuning/<arch>.json`, e.g. sm90.json for H100 and H200, written by
`python -m fastconv.tune` on that GPU) holds, per op, shape class and dtype, the backend that
measured fastest ("torch", "triton" or "cuda") and, for Triton, the kernel configuration it
ran. `FASTCONV_TUNING_TABLE=path` uses another table file.

A shape class is a tuple computed from the call's shapes, cheap enough for every call (a
dict lookup on it): dtype, the pixel count rounded up to a power of two (so a new batch size
maps to a measured class instead of re-tuning), channel counts, stride, epilogue flags and
input layout.

The rule, where no table entry applies (documented in README.md, "Backends"; `_backend.rule`):
  - tensors not on a CUDA device: "torch" (the eager compositions);
  - a pixel GEMM (the 1x1 convs) on an NCHW input: "torch" (cuDNN); the Triton GEMM wants
    channels_last;
  - other CUDA tensors: "cuda" for the ops in `_backend.CUDA_PREFERRED_OPS` when the extension
    is built, else "triton".
"""
import json
import os
from pathlib import Path

import torch

TABLE_DIR = Path(__file__).parent
FORMAT = 1
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}

_tables = {}  # CUDA device index -> {op: {shape class: entry}}


def _layout(shape, strides):
    """"nhwc" (dense channels_last), "nchw" (dense contiguous) or "strided", from the strides
    (tuple compares: cheaper than two is_contiguous calls)."""
    N, C, H, W = shape
    if strides == (H * W * C, 1, W * C, C):
        return "nhwc"
    return "nchw" if strides == (C * H * W, H * W, W, 1) else "strided"


def _pow2(n):
    """n rounded up to a power of two (0 stays 0): the size class of a pixel or batch count."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def conv_key(x, weight, stride, relu, residual):
    """Shape class of a conv1x1_relu call. fp32 also records the TF32 flag it follows."""
    shape = x.shape
    N, C, H, W = shape
    m = N * ((H - 1) // stride + 1) * ((W - 1) // stride + 1)
    dtype = DTYPE_NAMES[x.dtype]
    if dtype == "fp32" and torch._C._get_cudnn_allow_tf32():  # the flag, without the property's cost
        dtype = "tf32"
    return (dtype, _pow2(m), C, weight.shape[0], stride, bool(relu), residual is not None,
            _layout(shape, x.stride()))


def split_key(x, weight, pool):
    """Shape class of a conv1x1_relu_split call (the Inception 1x1s, or with `pool` the pool
    projection); as conv_key, it ends with the input layout."""
    shape = x.shape
    N, C, H, W = shape
    dtype = DTYPE_NAMES[x.dtype]
    if dtype == "fp32" and torch._C._get_cudnn_allow_tf32():
        dtype = "tf32"
    return (dtype, _pow2(N * H * W), C, weight.shape[0], bool(pool), _layout(shape, x.stride()))


def tensor_key(x):
    """Shape class of residual_add on x: dtype, batch class, C, H, W, layout."""
    shape = x.shape
    N, C, H, W = shape
    return (DTYPE_NAMES[x.dtype], _pow2(N), C, H, W, _layout(shape, x.stride()))


def pool_key(x, kernel_size, stride):
    """Shape class of a SAME pool on x with (kh, kw), (sh, sw)."""
    return tensor_key(x) + (tuple(kernel_size), tuple(stride))


def arch(device):
    """The table name of a CUDA device: sm<major><minor> (sm90 for H100 and H200)."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm{major}{minor}"


def load(path):
    """{op: {shape class: entry}} from a table file (entry: backend, config, ms, label)."""
    data = json.loads(Path(path).read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: tuning table format {data.get('format')!r}, expected {FORMAT}")
    table = {}
    for e in data["entries"]:
        table.setdefault(e["op"], {})[_as_key(e["key"])] = e
    return table


def _as_key(value):
    """JSON lists back into the tuples the shape-class functions make."""
    return tuple(_as_key(v) for v in value) if isinstance(value, list) else value


def table_for(device):
    """The table of a CUDA device (cached; {} when none was measured for its arch)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    table = _tables.get(index)
    if table is None:
        path = os.environ.get("FASTCONV_TUNING_TABLE") or TABLE_DIR / f"{arch(index)}.json"
        table = _tables[index] = load(path) if Path(path).is_file() else {}
    return table


def lookup(device, op, key):
    """The table entry of `op` at shape class `key` on `device`, or None."""
    return table_for(device).get(op, {}).get(key)


def clear_cache():
    """Forget loaded tables (after writing a new one)."""
    _tables.clear()
