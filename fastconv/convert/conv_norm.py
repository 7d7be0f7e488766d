"""Pattern: a conv, the norm after it, the ReLU after that (in a traced graph).

  - a dense 1x1 conv [+ norm] [+ ReLU] -> Conv1x1BNAct: fastconv's fused op, the norm
    folded into it in eval mode, a ReLU (the norm's own or the next layer) in its epilogue;
  - any other conv (kernel, stride, padding, dilation, groups) + norm [+ ReLU] -> ConvBN:
    one convolution with the norm folded into its weights in eval mode.
Folded only where the graph proves the conv's raw output is read by the norm alone, each
module called once. The norms folded: nn.BatchNorm2d and timm's BatchNormAct2d (its ReLU
goes where the ReLU goes, any other activation runs after the folded conv). Train mode
runs the norm as its layer (batch statistics). In an nn.Sequential that keeps its own
forward (not traced), the same runs are found by position.
"""
from torch import fx, nn

from fastconv.convert.layers import (
    NO_NORM,
    conv1x1_reason,
    describe_conv,
    fold_reason,
    is_norm,
    norm_pattern,
    norm_plan,
)
from fastconv.convert.modules import Conv1x1BNAct, ConvBN, FusedSequential, is_fused
from fastconv.convert.tracing import cat_parts, is_relu, join, module_of, only_user


def conv_pattern(conv, norm, relu):
    """"1x1 conv + BN + ReLU", "3x3 depthwise conv + BN-act(SiLU)", ... for the report."""
    return describe_conv(conv) + (norm_pattern(norm) if norm is not None else "") + (" + ReLU" if relu else "")


def is_dense_1x1(conv):
    return conv.kernel_size == (1, 1) and conv1x1_reason(conv) is None


def rewrite_conv(gm, node, conv, modules, calls, path, report):
    name = join(path, node.target)
    if calls[node.target] > 1:
        report.skip(name, "conv module called more than once")
        return
    dense = is_dense_1x1(conv)
    chain, norm, plan, why_no_norm = [node], None, NO_NORM, None
    nxt = only_user(node)
    if nxt is not None and is_norm(module_of(nxt, modules)):
        plan = norm_plan(modules[nxt.target]) if calls[nxt.target] == 1 else "norm module called more than once"
        if isinstance(plan, str):  # the conv alone is fused; the norm runs as it is
            report.skip(join(path, nxt.target), plan)
            nxt, plan, why_no_norm = None, NO_NORM, _NORM_NOT_FOLDABLE
        else:
            norm = modules[nxt.target]
            chain.append(nxt)
            nxt = only_user(nxt) if plan.act is None else None
    elif len(node.users) > 1 and any(is_norm(module_of(user, modules)) for user in node.users):
        why_no_norm = _READ_ELSEWHERE
    reason = None if dense else _not_folded(conv, norm, why_no_norm)
    if reason:
        report.skip(name, reason)
        return
    relu = nxt is not None and is_relu(nxt, modules)
    if relu:
        chain.append(nxt)
    gm.set_submodule(node.target, (Conv1x1BNAct if dense else ConvBN)(conv, norm, relu).train(conv.training))
    chain[-1].replace_all_uses_with(node)
    for n in reversed(chain[1:]):
        gm.graph.erase_node(n)
    op = "conv1x1_relu" if dense else "conv2d"
    report.replace(name, conv_pattern(conv, norm, relu), op + (" (BN folded in eval)" if norm is not None else ""))


def unfolded_norm_reason(gm, node, modules):
    """Why a norm layer still runs as a layer after the rewrite (nothing folded it)."""
    plan = norm_plan(modules[node.target])
    if isinstance(plan, str):
        return plan
    source = node.args[0] if node.args else None
    if not isinstance(source, fx.Node):
        return "norm: no conv to fold it into"
    if cat_parts(source) is not None:
        return "norm of a torch.cat: no one conv to fold it into"  # MixNet's split convs, DenseNet
    if source.op == "call_module" and type(gm.get_submodule(source.target)) in (Conv1x1BNAct, ConvBN):
        # a pre-activation network's norm after the block's add, which went into conv3's epilogue
        what = "a residual add" if len(source.args) > 1 else "a fused conv"
        return f"norm after {what}: no conv to fold it into"
    if isinstance(module_of(source, modules), nn.Conv2d):
        return "norm after a conv left as it is (see the conv)"
    if source.op == "call_module":
        what = type(modules[source.target]).__name__
    else:
        what = "the input" if source.op == "placeholder" else getattr(source.target, "__name__", str(source.target))
    return f"norm after {what}: no conv to fold it into"


_NORM_NOT_FOLDABLE = "the norm after it does not fold (see the norm)"
_READ_ELSEWHERE = "its output is read by more than the norm after it"


def _not_folded(conv, norm, why_no_norm=None):
    """Why a conv that is not a dense 1x1 one stays as it is (None: the norm folds into it).
    why_no_norm: why a norm after it is not taken."""
    if fold_reason(conv) or norm is not None:
        return fold_reason(conv)
    if why_no_norm:
        return f"{describe_conv(conv)}: {why_no_norm}"
    if conv.kernel_size == (1, 1):
        return conv1x1_reason(conv)  # grouped, dilated, padded
    return f"{describe_conv(conv)} without a norm after it"


def fuse_sequential(seq, path, report):
    """The same pattern by position in an nn.Sequential (traced or not): its runs of conv
    [+ norm] [+ ReLU] -> FusedSequential, the modules left at their indices."""
    mods, runs, folded = list(seq), {}, set()
    for i, m in enumerate(mods):
        if isinstance(m, nn.Conv2d) and not is_fused(m):
            run = _run_at(mods, i, path, report)
            if run is not None:
                runs[i] = run
                folded.update(range(i, run[0]) if run[1] else ())
        elif is_norm(m) and i not in folded:
            report.skip(join(path, str(i)), _unfolded_by_position(mods, i))
    if runs:
        seq.__class__ = FusedSequential
        seq.__dict__["runs"] = runs


def _unfolded_by_position(mods, i):
    """Why the norm mods[i] of an nn.Sequential still runs as a layer."""
    plan = norm_plan(mods[i])
    if isinstance(plan, str):
        return plan
    if i and isinstance(mods[i - 1], nn.Conv2d):
        return "norm after a conv left as it is (see the conv)"
    return f"norm after {type(mods[i - 1]).__name__ if i else 'the input'}: no conv to fold it into"


def _run_at(mods, i, path, report):
    """The run starting at the conv mods[i]: (end index, has a norm, relu, act, dense 1x1),
    or None where nothing is fused."""
    conv = mods[i]
    name = join(path, str(i))
    dense = is_dense_1x1(conv)
    j, norm, plan, why_no_norm = i + 1, None, NO_NORM, None
    if j < len(mods) and is_norm(mods[j]):
        plan = norm_plan(mods[j])
        if isinstance(plan, str):
            report.skip(join(path, str(j)), plan)
            plan, why_no_norm = NO_NORM, _NORM_NOT_FOLDABLE
        else:
            norm, j = mods[j], j + 1
    reason = None if dense else _not_folded(conv, norm, why_no_norm)
    if reason:
        report.skip(name, reason)
        return None
    relu = plan.act is None and j < len(mods) and type(mods[j]) is nn.ReLU
    op = "conv1x1_relu" if dense else "conv2d"
    report.replace(name, conv_pattern(conv, norm, relu),
                   op + (" (BN folded in eval)" if norm is not None else "") + ", by position")
    return (j + relu, norm is not None, plan.relu or relu, plan.act, dense)
