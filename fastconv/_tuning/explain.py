"""fastconv.explain(op, *args, **kwargs): what would run for a call, and why."""
import dataclasses
import importlib
import inspect
from typing import Optional

import torch

from fastconv import _backend, _checks, _tuning, ops


@dataclasses.dataclass(frozen=True)
class Explanation:
    """What fastconv runs for one call. `str()` says it in a sentence.

    op: the op's name. backend: "torch", "triton" or "cuda". why: the tuning-table entry
    with its measured median times, the rule, or the backend set by use_backend. dtype: the
    arithmetic that runs: "fp32" (IEEE), "tf32" (an fp32 1x1 conv on a CUDA device while
    torch.backends.cudnn.allow_tf32 is True), "fp16", "bf16" or "fp64". shape_class: the
    tuning table's key for the call (an fp32 conv's key records the TF32 flag whatever the
    device). triton_config / config_why: for the Triton 1x1 conv, its tile configuration and
    where it comes from; None otherwise."""
    op: str
    backend: str
    why: str
    dtype: str
    shape_class: tuple
    triton_config: Optional[dict] = None
    config_why: Optional[str] = None

    def __str__(self):
        text = f"{self.op} in {self.dtype} runs on the {self.backend} backend ({self.why})"
        if self.triton_config is not None:
            tiles = ", ".join(f"{k} {v}" for k, v in self.triton_config.items())
            text += f" with Triton tiles {tiles} ({self.config_why})"
        return text + "."


def _bind(fn, args, kwargs):
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


def explain(op, *args, **kwargs):
    """What fastconv runs for `op(*args, **kwargs)` on the current backend setting, as an
    Explanation (backend, why, dtype, shape class, Triton tiles; print it for a sentence).
    Runs nothing.

    op: "conv1x1_relu", "residual_add", "max_pool2d_same", "avg_pool2d_same" or the function.
    >>> fastconv.explain("conv1x1_relu", x, w, b, stride=2, relu=False)
    """
    name = op if isinstance(op, str) else getattr(op, "__name__", op)
    if name == "conv1x1_relu":
        a = _bind(ops.conv1x1_relu, args, kwargs)
        x, weight, stride, relu, residual = a["x"], a["weight"], a["stride"], a["relu"], a["residual"]
        key = _tuning.conv_key(x, weight, stride, relu, residual)
    elif name == "residual_add":
        x = _bind(ops.residual_add, args, kwargs)["x"]
        key = _tuning.tensor_key(x)
    elif name in ("max_pool2d_same", "avg_pool2d_same"):
        a = _bind(getattr(ops, name), args, kwargs)
        x, k = a["x"], _checks.pair(a["kernel_size"], "kernel_size")
        key = _tuning.pool_key(x, k, k if a["stride"] is None else _checks.pair(a["stride"], "stride"))
    else:
        raise ValueError(f"op must be one of conv1x1_relu, residual_add, max_pool2d_same, "
                         f"avg_pool2d_same, got {op!r}")
    chosen = _backend.get_backend()
    if chosen == "auto":
        backend, entry = _backend.auto_choice(x.device, name, key)
        why = (f"tuning table {_tuning.arch(x.device)}: measured median ms {entry['ms']}"
               if entry is not None else _backend.rule(x.device, name, key)[1])
    else:
        backend = _backend.resolve(x.device, name, key=key)
        why = f"backend {chosen!r} set by set_backend / use_backend"
    dtype = _tuning.DTYPE_NAMES[x.dtype]
    if name == "conv1x1_relu" and dtype == "fp32" and x.device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        dtype = "tf32"  # every backend's fp32 conv follows the flag on a GPU; a CPU's runs IEEE
    config = config_why = None
    if backend == "triton" and name == "conv1x1_relu":
        tconv = importlib.import_module("fastconv._triton.conv1x1")
        out = torch.empty(ops.conv1x1._out_shape(x, weight, stride), device="meta")
        config, config_why = tconv.choose_config(x, weight, out, stride, relu, residual, tune=False)
        config = config.as_dict()
        if config_why == "rule (not tuned yet)":
            config_why = "rule until the first call on this GPU tunes the shape class"
    return Explanation(name, backend, why, dtype, key, config, config_why)
