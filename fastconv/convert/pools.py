"""Pattern: pools that compute TF SAME pooling.

  - an nn.MaxPool2d / nn.AvgPool2d (or F.max_pool2d / F.avg_pool2d with constant arguments)
    that is exactly SAME pooling on the input sizes it sees (from `example_input`; without
    one, only pools that are SAME for every input size) -> FusedMaxPool2d / FusedAvgPool2d,
    which also check at run time;
  - TF-ported SAME pools: timm's MaxPool2dSame (a dynamic -inf pad, then the pool: SAME on
    every size), timm's AvgPool2dSame where its zero padding is empty on the sizes seen (it
    counts the padded zeros), and F.pad(x, pads, value=-inf) + max pool -> max_pool2d_same /
    avg_pool2d_same, each checking the input's size at run time.
Near misses: max pools on zero (or any finite) padding - a padded zero can win the max -,
average pools that count the padding, pools that pad symmetrically where SAME does not.
"""
import math

import torch
import torch.nn.functional as F
from torch import fx, nn

from fastconv import fusion
from fastconv.convert.layers import is_type, pair
from fastconv.convert.modules import NoSamePadding, PaddedMaxPool, SamePool, always
from fastconv.convert.tracing import add_submodule, call_args, join, module_of, module_path, only_user
from fastconv.nn import FusedAvgPool2d, FusedMaxPool2d

PAD_MODULES = (nn.ConstantPad2d, nn.ZeroPad2d)
_MAX_POOL_ARGS = (("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                  dict(stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False))
_AVG_POOL_ARGS = (("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                   "divisor_override"),
                  dict(stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None))


def convert_pool(pool, name, shapes, report, unsized="SAME only for some input sizes: pass example_input"):
    """The fused module for a pool module (or the pool itself, reported with the reason)."""
    if type(pool) not in (nn.MaxPool2d, nn.AvgPool2d):
        return _convert_timm_pool(pool, name, shapes, report)
    is_max = type(pool) is nn.MaxPool2d
    args = dict(kernel_size=pool.kernel_size, stride=pool.stride, padding=pool.padding,
                ceil_mode=pool.ceil_mode)
    if is_max:
        if pool.return_indices or pool.dilation not in (1, (1, 1)):
            report.skip(name, "max pool with indices or dilation")
            return pool
        check = dict(dilation=pool.dilation)
    else:
        if pool.divisor_override is not None:
            report.skip(name, "avg pool with divisor_override")
            return pool
        if pool.count_include_pad and pair(pool.padding) != (0, 0):
            report.skip(name, "avg pool counts the padding (count_include_pad=True)")
            return pool
        check = dict(is_max=False, count_include_pad=pool.count_include_pad)
    size = (shapes or {}).get(name)
    if shapes is not None and size is not None:
        if not fusion.pool_is_same(size, **args, **check):
            report.skip(name, f"pool pads symmetrically: not SAME on {size[0]}x{size[1]}")
            return pool
    elif not all(fusion.pool_is_same((s, s), **args, **check) for s in range(1, 65)):
        report.skip(name, unsized)
        return pool
    fused = FusedMaxPool2d(**args, dilation=pool.dilation) if is_max else \
        FusedAvgPool2d(**args, count_include_pad=pool.count_include_pad)
    kind = "max" if is_max else "avg"
    report.replace(name, f"{kind} pool {_geometry(pool)} (SAME)", f"{kind}_pool2d_same")
    return fused.train(pool.training)


def _convert_timm_pool(pool, name, shapes, report):
    """timm's dynamic-pad pools (create_pool2d(..., padding='same')): F.pad to SAME, then a
    pool without padding. Max pads with -inf: SAME on every size. Average pads with zeros
    and counts them: SAME only where the padding is empty."""
    k, s = pair(pool.kernel_size), pair(pool.stride)
    is_max = is_type(pool, "MaxPool2dSame")
    if pool.ceil_mode or (is_max and pair(pool.dilation) != (1, 1)):
        report.skip(name, f"{type(pool).__name__} with ceil_mode or dilation")
        return pool
    if is_max:
        is_same = always
    else:
        is_same = NoSamePadding(k, s)
        size = (shapes or {}).get(name)
        if size is None or not is_same(*size):
            where = f"on {size[0]}x{size[1]}" if size else "(no example_input)"
            report.skip(name, f"avg pool counts its zero padding {where}")
            return pool
    report.replace(name, f"{type(pool).__name__} {k[0]}x{k[1]}/{s[0]}", f"{'max' if is_max else 'avg'}_pool2d_same")
    return SamePool(pool, is_max, k, s, is_same).train(pool.training)


def _geometry(pool):
    k = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0]
    s = pool.stride if isinstance(pool.stride, int) else (pool.stride or [k])[0]
    return f"{k}x{k}/{s}"


def _max_pool_args(node, modules):
    """(kernel, stride, padding, dilation, ceil_mode, return_indices) of a max pool node, or None."""
    m = module_of(node, modules)
    if type(m) is nn.MaxPool2d:
        return m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices
    if node.op == "call_function" and node.target is F.max_pool2d:
        a = call_args(node, *_MAX_POOL_ARGS)
        return a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"], a["return_indices"]
    return None


def _pad_args(node, modules):
    """(pads, value) of a constant 2-D pad node (F.pad, nn.ConstantPad2d, nn.ZeroPad2d), or None."""
    m = module_of(node, modules)
    if type(m) in PAD_MODULES:
        return tuple(m.padding), m.value
    if node.op == "call_function" and node.target is F.pad:
        a = call_args(node, ("input", "pad", "mode", "value"), dict(mode="constant", value=None))
        if a["mode"] == "constant" and isinstance(a["pad"], (tuple, list)) and len(a["pad"]) == 4 \
                and all(type(p) is int for p in a["pad"]):
            return tuple(a["pad"]), a["value"] or 0.0
    return None


def rewrite_padded_pool(gm, pad, modules, path, report):
    """F.pad(x, pads, value=-inf) + max pool (no padding of its own) -> a guarded SAME max
    pool; with a finite padding value, a near miss (returns the pool node: to be left as it
    is, not converted on its own)."""
    padding = _pad_args(pad, modules)
    pool = only_user(pad)
    pool_args = _max_pool_args(pool, modules) if padding is not None and pool is not None else None
    if pool_args is None:
        return None
    (pads, value), (k, s, p, d, ceil_mode, indices) = padding, pool_args
    name = join(path, pool.target) if pool.op == "call_module" else None  # F.max_pool2d: named by its site
    if value != -math.inf:
        report.skip(name or report.site(module_path(pool, path)), finite_pad_reason(value))
        return pool
    k, s = pair(k), pair(s if s is not None else k)
    if pair(p) != (0, 0) or pair(d) != (1, 1) or ceil_mode or indices or not isinstance(k[0], int):
        return None
    target = f"fastconv_max_pool_same_{pool.name}"
    add_submodule(gm, target, PaddedMaxPool(pads, k, s))
    with gm.graph.inserting_before(pool):
        new = gm.graph.call_module(target, (pad.args[0],))
    pool.replace_all_uses_with(new)
    gm.graph.erase_node(pool)
    gm.graph.erase_node(pad)
    report.replace(name or report.site(module_path(pool, path)), f"-inf pad + max pool {k[0]}x{k[1]}/{s[0]}",
                   "max_pool2d_same (if SAME pads)")
    return None


def finite_pad_reason(value):
    what = "zero" if value == 0 else f"{value:g}"
    return f"max pool on {what} padding: a padded {what} can win the max, SAME's -inf cannot"


def padded_max_pool(pad, pool):
    """A pad module of finite value, then a max pool (by position in an nn.Sequential)."""
    return type(pad) in PAD_MODULES and math.isfinite(pad.value) and type(pool) is nn.MaxPool2d


def rewrite_functional_pool(gm, node, path, report):
    """F.max_pool2d / F.avg_pool2d with constant arguments: converted as the equivalent module
    (named in the report by the path of the module whose forward calls it)."""
    if node.op != "call_function":
        return
    if node.target is F.max_pool2d:
        a, make = call_args(node, *_MAX_POOL_ARGS), nn.MaxPool2d
    elif node.target in (F.avg_pool2d, torch._C._nn.avg_pool2d):
        a, make = call_args(node, *_AVG_POOL_ARGS), nn.AvgPool2d
    else:
        return
    x = a.pop("input")
    if any(isinstance(v, fx.Node) for v in a.values()) or a["stride"] in ((), []):
        return
    pool = make(**a)
    new = convert_pool(pool, report.site(module_path(node, path)), None, report,
                       unsized="functional pool, SAME only for some input sizes (not recorded for functions)")
    if new is not pool:
        target = f"fastconv_{node.name}"
        add_submodule(gm, target, new)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(target, (x,))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
