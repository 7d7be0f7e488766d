"""fastconv.explain(op, *args, **kwargs): what would run for a call, and why."""
import importlib
import inspect

import torch

from fastconv import _backend, _checks, _tuning, ops


def _bind(fn, args, kwargs):
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


def explain(op, *args, **kwargs):
    """What fastconv runs for `op(*args, **kwargs)` on the current backend setting, as a dict:
    op, backend, why (the tuning-table entry with its measured times, the rule, or the backend
    set by `use_backend`), shape_class (the table key), and for the Triton 1x1 conv the tile
    configuration (triton_config) and where it comes from (config_why). Runs nothing.

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
    info = {"op": name, "backend": backend, "why": why, "shape_class": key}
    if backend == "triton" and name == "conv1x1_relu":
        tconv = importlib.import_module("fastconv._triton.conv1x1")
        out = torch.empty(ops.conv1x1._out_shape(x, weight, stride), device="meta")
        config, config_why = tconv.choose_config(x, weight, out, stride, relu, residual, tune=False)
        if config_why == "rule (not tuned yet)":
            config_why = "rule until the first call on this GPU tunes the shape class"
        info.update(triton_config=config.as_dict(), config_why=config_why)
    return info
