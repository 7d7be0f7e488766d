"""Pattern: Inception blocks, recognized by graph structure (never by class name).

A pass over the converted graphs, after conv_norm rewrote each 1x1 conv [+ norm] [+ ReLU]
into a Conv1x1BNAct, each other conv + norm into a ConvBN, and SAME pools into
FusedMaxPool2d:
  - 2 or 3 sibling 1x1 conv [+ BN] + ReLU (stride 1) reading the same tensor -> one GEMM
    (conv1x1_relu_split: x read once), its outputs taking the siblings' places;
  - a 3x3 stride-1 max pool with padding 1 whose only reader is a 1x1 conv [+ BN] + ReLU
    (stride 1) -> pool_conv1x1_relu (the pool inside the GEMM's operand load);
  - a torch.cat on the channel axis one of whose branches ends in one of those GEMMs, a 1x1
    conv + ReLU or a ReLU (after a conv + BN, or anything read by the ReLU alone) -> one
    buffer allocated before the branches run (ConcatBuffer): those branches write their
    slices of it (conv1x1_relu_split_into; a ReLU is its branch's one copy), the other
    branches are copied in once (ConcatInto), a
    nested concatenation writes into its slice of the enclosing buffer. As in
    fastconv.models.googlenet, without autograd only (no_grad, inference_mode): otherwise
    the branches run as written and torch.cat joins them.
The original modules stay registered at their paths (state dicts unchanged); the new
modules hold references to them and fall back to them in train mode (BN batch
statistics) or where the kernels are missing. fastconv.convert runs this pass last.
"""
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from fastconv.convert.layers import pair
from fastconv.convert.modules import (
    ConcatBuffer,
    ConcatInto,
    Conv1x1BNAct,
    ConvBN,
    PaddedMaxPool,
    PoolConv1x1ReLU,
    ReLUInto,
    SamePool,
    SiblingConv1x1ReLU,
)
from fastconv.convert.tracing import add_submodule, cat_parts, is_relu, join, module_of, module_path
from fastconv.ops.inception import MAX_OUTPUTS

# Layers whose output has their input's channels (for the channel count of a branch).
_SAME_CHANNELS = (nn.modules.batchnorm._NormBase, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                  nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Sigmoid, nn.Identity, SamePool,
                  PaddedMaxPool, ReLUInto)
_SAME_CHANNELS_FUNCTIONS = {F.relu, torch.relu, F.max_pool2d, F.avg_pool2d, torch._C._nn.avg_pool2d}


def fuse_inception(model, report):
    """Apply the three patterns inside every fx.GraphModule of a converted model (in place)."""
    for path, gm in list(model.named_modules()):
        if isinstance(gm, fx.GraphModule):
            modules = dict(gm.named_modules())
            convs = {n: modules[n.target] for n in gm.graph.nodes if n.op == "call_module"
                     and type(modules.get(n.target)) is Conv1x1BNAct and _is_plain(modules[n.target])}
            _fuse_pools(gm, modules, convs, path, report)
            _fuse_siblings(gm, convs, path, report)
            _fuse_cats(gm, path, report)
            gm.graph.lint()
            gm.recompile()
    return model


def _is_plain(conv):
    """A stride-1 1x1 conv whose output is its ReLU's (no act, no add after it)."""
    return conv.ends_in_relu() and conv.stride == (1, 1) and conv.drop is None


def _is_3x3_s1_pool(m):
    return isinstance(m, nn.MaxPool2d) and not m.return_indices and (
        pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding), pair(m.dilation)) == (
        (3, 3), (1, 1), (1, 1), (1, 1))


def _update_op(report, path, op, pattern):
    """The entry of path now runs as `op` (its pattern kept; `pattern` if it had none)."""
    entry = report.entry(path)
    report.replace(path, entry.pattern if entry is not None else pattern, op)


def _fuse_pools(gm, modules, convs, path, report):
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not _is_3x3_s1_pool(modules.get(node.target)):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0] not in convs or len(users[0].args) != 1 or users[0].kwargs:
            continue
        conv_node = users[0]
        target = f"fastconv_pool_conv_{conv_node.name}"
        add_submodule(gm, target, PoolConv1x1ReLU(modules[node.target], convs.pop(conv_node)))
        with gm.graph.inserting_before(node):
            fused = gm.graph.call_module(target, node.args)
        conv_node.replace_all_uses_with(fused)
        gm.graph.erase_node(conv_node)
        gm.graph.erase_node(node)
        pool_path, conv_path = join(path, node.target), join(path, conv_node.target)
        _update_op(report, pool_path, f"pool_conv1x1_relu (in the operand load of {conv_path})", "max pool 3x3/1")
        _update_op(report, conv_path, f"pool_conv1x1_relu (pool {pool_path} in its operand load)", "1x1 conv")


def _fuse_siblings(gm, convs, path, report):
    by_input = {}
    for node in convs:
        if len(node.args) == 1 and not node.kwargs and isinstance(node.args[0], fx.Node):
            by_input.setdefault(node.args[0], []).append(node)
    for x, nodes in by_input.items():
        for i in range(0, len(nodes) - 1, MAX_OUTPUTS):
            group = nodes[i:i + MAX_OUTPUTS]
            if len(group) < 2:
                continue
            target = f"fastconv_siblings_{group[0].name}"
            add_submodule(gm, target, SiblingConv1x1ReLU([convs[n] for n in group]))
            with gm.graph.inserting_before(group[0]):
                fused = gm.graph.call_module(target, (x,))
            with gm.graph.inserting_after(fused):
                for k, n in enumerate(group):
                    n.replace_all_uses_with(gm.graph.call_function(operator.getitem, (fused, k)))
            for n in group:
                gm.graph.erase_node(n)
            paths = [join(path, n.target) for n in group]
            for p in paths:
                others = ", ".join(q for q in paths if q != p)
                _update_op(report, p, f"conv1x1_relu_split (one GEMM with {others})", "1x1 conv + ReLU")


# --- concatenation without torch.cat -------------------------------------------------

def _fuse_cats(gm, path, report):
    modules = dict(gm.named_modules())
    buffers, bound = {}, set()  # a rewritten cat's ConcatBuffer node; GEMMs already writing a buffer
    for cat in list(gm.graph.nodes):
        parts = cat_parts(cat)
        if parts is None or len(parts) < 2:
            continue
        channels = [_channels(p, modules) for p in parts]
        if None in channels:
            continue
        writers = {}  # the node to give `into`: [(part index, offset in the buffer), ...]
        for i, part in enumerate(parts):
            node = _writer(part, parts, modules, buffers, bound)
            if node is not None:
                writers.setdefault(node, []).append((i, sum(channels[:i])))
        if not writers:
            continue
        site = report.site(module_path(cat, path))
        joined, buf = _write_into_one_buffer(gm, cat, sum(channels), writers, bound, modules)
        buffers[joined] = buf  # an enclosing cat can give it a slice of its own buffer
        modules.update((n.target, gm.get_submodule(n.target)) for n in (joined, buf))
        written = sum(len(s) for s in writers.values())
        report.replace(site, f"torch.cat of {len(parts)} branches",
                       f"one buffer: {written} write their slices, {len(parts) - written} copied")


def _write_into_one_buffer(gm, cat, channels, writers, bound, modules):
    """Rewrite the cat: a ConcatBuffer node before its first writer, `into` given to each
    writer, a ConcatInto node in the cat's place. Returns (ConcatInto node, buffer node)."""
    writers = {(_relu_into(gm, n) if is_relu(n, modules) else n): slots for n, slots in writers.items()}
    parts = cat_parts(cat)  # (a ReLU made a ReLUInto is a new node)
    order = {n: k for k, n in enumerate(gm.graph.nodes)}
    first = min(writers, key=order.__getitem__)
    buffer_target, into_target = f"fastconv_concat_buffer_{cat.name}", f"fastconv_concat_{cat.name}"
    add_submodule(gm, buffer_target, ConcatBuffer(channels, gm.get_submodule(first.target)))
    with gm.graph.inserting_before(first):
        buf = gm.graph.call_module(buffer_target, (first.args[0],))
    for node, slots in writers.items():
        gemm = gm.get_submodule(node.target)
        if type(gemm) is SiblingConv1x1ReLU:
            index = {parts[i].args[1]: lo for i, lo in slots}  # output k of the GEMM -> offset
            into = (buf, tuple(index.get(k) for k in range(len(gemm.convs))))
            bound.add(node)
        else:
            ((_, lo),) = slots
            into = (buf, lo)
        node.kwargs = {**node.kwargs, "into": into}
    add_submodule(gm, into_target, ConcatInto())
    with gm.graph.inserting_before(cat):
        joined = gm.graph.call_module(into_target, (buf, list(parts)))
    cat.replace_all_uses_with(joined)
    gm.graph.erase_node(cat)
    return joined, buf


def _relu_into(gm, relu):
    """A ReLU node (module, function or method) swapped for a ReLUInto node."""
    target = f"fastconv_relu_into_{relu.name}"
    add_submodule(gm, target, ReLUInto())
    with gm.graph.inserting_before(relu):
        new = gm.graph.call_module(target, (relu.args[0],))
    relu.replace_all_uses_with(new)
    gm.graph.erase_node(relu)
    return new


def _writer(part, parts, modules, buffers, bound):
    """The node that can write `part` straight into its slice of the cat's buffer (a fused
    module given `into`), or None (the part is copied in). Only parts the cat alone reads."""
    if len(part.users) != 1 or parts.count(part) != 1:
        return None
    if part in buffers:  # a nested concatenation: its buffer becomes a slice of this one
        return buffers[part]
    if part.op == "call_function" and part.target is operator.getitem:
        gemm = part.args[0]
        if type(module_of(gemm, modules)) is SiblingConv1x1ReLU and gemm not in bound:
            return gemm
        return None
    if len(part.args) != 1:
        return None
    if is_relu(part, modules):  # becomes a ReLUInto: the ReLU writes the slice
        x = part.args[0]
        return part if isinstance(x, fx.Node) and len(x.users) == 1 and set(part.kwargs) <= {"inplace"} else None
    module = module_of(part, modules)
    if part.kwargs or not (type(module) is PoolConv1x1ReLU or (type(module) is Conv1x1BNAct and _is_plain(module))
                           or (type(module) is ConvBN and module.ends_in_relu())):
        return None
    return part


def _channels(node, modules):
    """The channel count of a node's output where the graph tells it, else None: from the
    layer that makes it, or from a conv that reads it."""
    module = module_of(node, modules)
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, PoolConv1x1ReLU):
        return module.conv.out_channels
    if isinstance(module, ConcatInto):
        return _sum(_channels(p, modules) for p in node.args[1])
    if node.op == "call_function" and node.target is operator.getitem:
        gemm = module_of(node.args[0], modules)
        if isinstance(gemm, SiblingConv1x1ReLU):
            return gemm.convs[node.args[1]].out_channels
    parts = cat_parts(node)
    if parts is not None:
        return _sum(_channels(p, modules) for p in parts)
    keeps_channels = isinstance(module, _SAME_CHANNELS) or (
        node.op == "call_function" and node.target in _SAME_CHANNELS_FUNCTIONS)
    if node.args and isinstance(node.args[0], fx.Node) and keeps_channels:
        known = _channels(node.args[0], modules)
        if known is not None:
            return known
    for user in node.users:  # a conv reading it knows its input channels
        reader = module_of(user, modules)
        reader = reader.convs[0] if isinstance(reader, SiblingConv1x1ReLU) else \
            reader.conv if isinstance(reader, PoolConv1x1ReLU) else reader
        if isinstance(reader, nn.Conv2d) and user.args and user.args[0] is node:
            return reader.in_channels
    return None


def _sum(counts):
    counts = list(counts)
    return None if None in counts else sum(counts)
