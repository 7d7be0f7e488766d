"""fastconv.convert: swap fastconv's fused ops into an existing model.

The model is traced with torch.fx and these patterns are rewritten where they are
provably equivalent, matched by type and configuration, never by name:
  - conv_norm: a dense 1x1 conv [+ BatchNorm2d or timm's BatchNormAct2d] [+ ReLU] -> one
    conv1x1_relu (the norm folded in eval mode); any other conv + norm [+ ReLU] -> one
    convolution with the norm folded in eval mode;
  - residual: that 1x1 conv + norm, then an add (+ ReLU) -> the add in the conv's epilogue;
    other relu(a + b) -> residual_add;
  - pools: max / average pools that compute TF SAME pooling -> max_pool2d_same /
    avg_pool2d_same (checked on the input's size at run time where it depends on it);
  - inception (last, by graph structure): sibling 1x1 convs on one input -> one GEMM, a 3x3/1
    max pool feeding a 1x1 conv -> the pool inside that GEMM, a channel torch.cat -> one
    buffer its branches write into.
Each file's docstring states its pattern and near misses; near misses stay as they are
and the report (`model.fastconv_report`, fastconv.convert.report) names each with its
reason. Train mode stays exact: norms run as layers (batch statistics). Module paths,
parameters and buffers keep their names, so state dicts load both ways.

A module whose forward depends on train/eval mode (it traces to different graphs, e.g.
GoogLeNet's aux heads) or cannot be traced (data-dependent control flow) keeps its own
forward: the converter descends into its children instead, and in an nn.Sequential fuses
the same runs by position.

The files, top down (each imports only those below it): this one (the walk over the
model) -> conv_norm, residual, pools, inception (the patterns) -> tracing (torch.fx and
reading nodes) -> modules (what a converted model runs) -> layers (what a layer provably
computes), report.
"""
import collections
import copy

from torch import nn

from fastconv.convert.conv_norm import fuse_sequential, rewrite_conv, unfolded_norm_reason
from fastconv.convert.inception import fuse_inception
from fastconv.convert.layers import is_norm, is_pool
from fastconv.convert.modules import Conv1x1BNAct, ConvBN, is_fused
from fastconv.convert.pools import (
    convert_pool,
    finite_pad_reason,
    padded_max_pool,
    rewrite_functional_pool,
    rewrite_padded_pool,
)
from fastconv.convert.report import ConversionReport
from fastconv.convert.residual import rewrite_add
from fastconv.convert.tracing import input_shapes, is_add, join, trace_mode_independent

__all__ = ["convert", "ConversionReport", "Conv1x1BNAct", "ConvBN"]


def convert(model, example_input=None, inplace=False, verbose=False):
    """A model computing the same function with fastconv's fused ops wherever a pattern
    is provably equivalent (see the module docstring). `example_input` tells the input
    sizes the pools will see; the model keeps its device, dtype and modes. The returned
    model carries the report as `.fastconv_report` (printed with verbose=True)."""
    if not inplace:
        model = copy.deepcopy(model)
    report = ConversionReport()
    shapes = input_shapes(model, example_input) if example_input is not None else None
    converted = _convert(model, "", shapes, report)
    fuse_inception(converted, report)
    converted.fastconv_report = report
    if verbose:
        print(report)
    return converted


def _convert(module, path, shapes, report):
    if is_pool(module):
        return convert_pool(module, path, shapes, report)
    if is_fused(module) or is_norm(module) or next(module.children(), None) is None:  # done, or a leaf
        return module
    if not isinstance(module, nn.Sequential):  # a Sequential is fused by position (below)
        gm = trace_mode_independent(module)
        if gm is not None:
            _rewrite(gm, path, shapes, report)
            return gm
    # Its own forward stays: convert inside the children, keeping their types.
    previous = None
    for name, child in module.named_children():
        if isinstance(module, nn.Sequential) and padded_max_pool(previous, child):
            report.skip(join(path, name), finite_pad_reason(previous.value))
        else:
            new = _convert(child, join(path, name), shapes, report)
            if new is not child:
                setattr(module, name, new)
        previous = child
    if isinstance(module, nn.Sequential):
        fuse_sequential(module, path, report)
    return module


def _rewrite(gm, path, shapes, report):
    """The patterns in one traced module, in order: pools (before the convs that read them),
    conv + norm + ReLU, then the adds after them."""
    modules = dict(gm.named_modules())
    calls = collections.Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    for node in list(gm.graph.nodes):  # nn.Identity (timm's drop_path at rate 0, ...): gone
        if node.op == "call_module" and type(modules.get(node.target)) is nn.Identity \
                and len(node.args) == 1 and not node.kwargs:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    left = {rewrite_padded_pool(gm, node, modules, path, report) for node in list(gm.graph.nodes)}
    for node in [n for n in gm.graph.nodes if n not in left]:
        rewrite_functional_pool(gm, node, path, report)
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or node in left:
            continue
        module = gm.get_submodule(node.target)  # (modules added by the pool rewrites too)
        if is_fused(module):
            continue
        if isinstance(module, nn.Conv2d):
            rewrite_conv(gm, node, module, modules, calls, path, report)
        elif is_pool(module):
            new = convert_pool(module, join(path, node.target), shapes, report)
            if new is not module:
                gm.set_submodule(node.target, new)
        elif not is_norm(module) and next(module.children(), None) is not None:
            new = _convert(module, join(path, node.target), shapes, report)  # a leaf of the trace with children
            if new is not module:
                gm.set_submodule(node.target, new)
    for node in [n for n in gm.graph.nodes if is_add(n)]:
        rewrite_add(gm, node, modules, path, report)
    for node in gm.graph.nodes:  # the norms still called: not folded
        if node.op == "call_module" and is_norm(modules.get(node.target)):
            report.skip(join(path, node.target), unfolded_norm_reason(gm, node, modules))
    gm.graph.lint()
    gm.recompile()
