"""fastconv.convert's Inception patterns, recognised by graph structure (not class names).

A pass over the torch.fx graphs that fastconv.convert produced (after it rewrote 1x1 conv
[+ BN] + ReLU into Conv1x1BNAct and SAME pools into FusedMaxPool2d):
  - 2 or 3 sibling 1x1 conv [+ BN] + ReLU (stride 1) reading the same tensor -> one GEMM
    (conv1x1_relu_split; x read once), its outputs taking the siblings' places;
  - a 3x3 stride-1 max pool with padding 1 whose only reader is a 1x1 conv [+ BN] + ReLU
    (stride 1) -> pool_conv1x1_relu (the pool inside the GEMM's operand load).
The original modules stay registered at their paths (state dicts unchanged); the new
modules hold references to them and fall back to them in train mode (BN batch
statistics) or where the kernels are missing. The concatenation stays a torch.cat. fastconv.convert runs this pass last.
"""
import operator

from torch import fx, nn

from fastconv import fusion, ops
from fastconv.ops.inception import MAX_OUTPUTS, has_kernels, stack_weights_cached


def _foldable(conv):
    return conv.bn is None or fusion.bn_foldable(conv.bn)


def _folded(conv):
    """(weight, bias) of a Conv1x1BNAct with its BN folded in (eval; cached by fusion.folded)."""
    return (conv.weight, conv.bias) if conv.bn is None else fusion.folded(conv, conv.bn)


class SiblingConv1x1ReLU(nn.Module):
    """Sibling 1x1 conv [+ BN] + ReLU modules on one input as one GEMM; returns their outputs."""

    def __init__(self, convs):
        super().__init__()
        self.__dict__["convs"] = list(convs)  # references: they stay registered where they were

    def forward(self, x):
        convs = self.convs
        if x.dim() == 4 and all(_foldable(c) for c in convs) and has_kernels(x.device):
            weight, bias = stack_weights_cached(self, [_folded(c) for c in convs])
            return tuple(ops.conv1x1_relu_split(x, weight, bias, [c.out_channels for c in convs]))
        return tuple(c(x) for c in convs)


class PoolConv1x1ReLU(nn.Module):
    """3x3/1 max pool (padding 1) -> 1x1 conv [+ BN] + ReLU, the pool in the GEMM's load."""

    def __init__(self, pool, conv):
        super().__init__()
        self.__dict__["pool"], self.__dict__["conv"] = pool, conv

    def forward(self, x):
        if x.dim() == 4 and _foldable(self.conv) and has_kernels(x.device):
            return ops.pool_conv1x1_relu(x, *_folded(self.conv))
        return self.conv(self.pool(x))


def fuse_inception(model, report):
    """Apply both patterns inside every fx.GraphModule of a converted model (in place)."""
    from fastconv.convert import Conv1x1BNAct

    for path, gm in list(model.named_modules()):
        if isinstance(gm, fx.GraphModule):
            modules = dict(gm.named_modules())
            convs = {n: modules[n.target] for n in gm.graph.nodes if n.op == "call_module"
                     and type(modules.get(n.target)) is Conv1x1BNAct and _is_plain(modules[n.target])}
            _fuse_pools(gm, modules, convs, path, report)
            _fuse_siblings(gm, convs, path, report)
            gm.graph.lint()
            gm.recompile()
    return model


def _is_plain(conv):
    """A stride-1 1x1 conv with its ReLU fused, called with one tensor."""
    return conv.relu and conv.stride == (1, 1)


def _is_3x3_s1_pool(m):
    pair = (lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v))  # noqa: E731
    return isinstance(m, nn.MaxPool2d) and not m.return_indices and (
        pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding), pair(m.dilation)) == (
        (3, 3), (1, 1), (1, 1), (1, 1))


def _join(prefix, name):
    return f"{prefix}.{name}" if prefix else name


def _fuse_pools(gm, modules, convs, path, report):
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not _is_3x3_s1_pool(modules.get(node.target)):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0] not in convs or len(users[0].args) != 1:
            continue
        conv_node = users[0]
        target = f"fastconv_pool_conv_{conv_node.name}"
        gm.add_submodule(target, PoolConv1x1ReLU(modules[node.target], convs.pop(conv_node)))
        with gm.graph.inserting_before(node):
            fused = gm.graph.call_module(target, node.args)
        conv_node.replace_all_uses_with(fused)
        gm.graph.erase_node(conv_node)
        gm.graph.erase_node(node)
        report.replaced.append((_join(path, node.target), "3x3/1 max pool -> 1x1 conv + ReLU",
                                "pool_conv1x1_relu (pool in the GEMM's operand load)"))


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
            gm.add_submodule(target, SiblingConv1x1ReLU([convs[n] for n in group]))
            with gm.graph.inserting_before(group[0]):
                fused = gm.graph.call_module(target, (x,))
            with gm.graph.inserting_after(fused):
                for k, n in enumerate(group):
                    n.replace_all_uses_with(gm.graph.call_function(operator.getitem, (fused, k)))
            for n in group:
                gm.graph.erase_node(n)
            names = ", ".join(_join(path, n.target) for n in group)
            report.replaced.append((names, f"{len(group)} sibling 1x1 convs + ReLU on one input",
                                    "conv1x1_relu_split (one GEMM)"))
