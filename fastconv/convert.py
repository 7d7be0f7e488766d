"""fastconv.convert: swap fastconv's fused ops into an existing model.

The model is traced with torch.fx and these patterns are rewritten where they are
provably equivalent:
  - a dense 1x1 nn.Conv2d (exact type; groups 1, dilation 1, no padding, any stride;
    or timm's Conv2dSame of that shape, whose SAME padding is always zero), optionally
    followed by a norm layer, optionally by a ReLU (module, F.relu, torch.relu, in place
    or not) -> one Conv1x1BNAct. The norm layers it folds: nn.BatchNorm2d, and timm's
    BatchNormAct2d (BN, then its `drop` - an identity - then its activation: a ReLU goes
    into the epilogue, any other activation runs after the fused conv). Eval mode folds
    the norm into the conv; train mode runs it as its layer (batch statistics);
  - that conv + norm, then an add (+ ReLU): the add goes into the conv's epilogue,
    conv1x1_relu(..., residual=...) (eval mode; in train mode residual_add after the norm);
  - relu(a + b) and `a += b; relu(a)` otherwise -> residual_add (shapes checked at run
    time: a broadcasting add runs as eager);
  - an nn.MaxPool2d / nn.AvgPool2d that is exactly SAME pooling on the input sizes
    it sees (from `example_input`; without one, only pools that are SAME for every
    input size) -> FusedMaxPool2d / FusedAvgPool2d, which also check at run time;
  - TF-ported SAME pools: timm's MaxPool2dSame (a dynamic -inf pad, then the pool: SAME
    on every size), timm's AvgPool2dSame where its zero padding is empty on the sizes
    seen (it counts the padded zeros), and F.pad(x, pads, value=-inf) + max pool
    -> max_pool2d_same / avg_pool2d_same, each checking the input's size at run time;
  - last, Inception patterns by graph structure (fastconv.convert_inception): sibling 1x1
    conv + ReLU layers on one input -> one GEMM, a 3x3/1 max pool feeding a 1x1 conv + ReLU
    -> the pool inside that conv's GEMM.
Layers are matched by type and configuration, never by name. Near misses stay as they
are and are reported with the reason: conv subclasses with their own forward (weight
standardization, ...), grouped / dilated / padded 1x1 convs, norm layers with extra
work, max pools on zero padding (a zero can win the max), average pools that count
the padding. Module paths, parameters and buffers keep their names, so state dicts
load both ways.

A module whose forward depends on train/eval mode (it traces to different graphs,
e.g. GoogLeNet's aux heads) or cannot be traced (data-dependent control flow) keeps
its own forward: the converter descends into its children instead, and in an
nn.Sequential fuses runs of 1x1 conv / norm / ReLU by position. Modules timm marks as
not traceable (its dynamic-padding layers, norm-act layers) are kept whole while tracing.
"""
import collections
import copy
import math
import operator
import sys

import torch
import torch.nn.functional as F
from torch import fx, nn

from fastconv import fusion, ops
from fastconv.convert_inception import fuse_inception
from fastconv.nn import FusedAvgPool2d, FusedMaxPool2d, ResidualAdd
from fastconv.ops.pool_same import same_geometry

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, torch.nn.functional.relu}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_PAD_MODULES = (nn.ConstantPad2d, nn.ZeroPad2d)
# Kept whole while tracing, so that the converter sees them as modules (and can match
# or report them) instead of the functions their forward calls.
_LEAF_TYPES = (nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.MaxPool2d, nn.AvgPool2d)


_TIMM_CLASSES = {  # the timm layers the converter knows the forward of, by defining module
    "Conv2dSame": "timm.layers.conv2d_same", "BatchNormAct2d": "timm.layers.norm_act",
    "MaxPool2dSame": "timm.layers.pool2d_same", "AvgPool2dSame": "timm.layers.pool2d_same"}


def _is_type(module, timm_class):
    """type(module) is that timm class (timm is looked up only if the model's code imported it)."""
    defined_in = sys.modules.get(_TIMM_CLASSES[timm_class])
    return defined_in is not None and type(module) is getattr(defined_in, timm_class, None)


# --- what a layer provably computes -------------------------------------------------

def _conv_reason(conv):
    """Why this module is not a dense 1x1 conv the fused op computes exactly (None if it is)."""
    if _is_type(conv, "Conv2dSame"):
        # timm's TF SAME conv: a dynamic zero pad, then the conv. For a 1x1 kernel with
        # dilation 1 the pad is max((ceil(in/s) - 1) * s + 1 - in, 0) = 0 on every size.
        if conv.kernel_size == (1, 1) and conv.dilation == (1, 1) and conv.padding == (0, 0):
            return None if conv.groups == 1 else "grouped conv"
    elif isinstance(conv, nn.Conv2d) and type(conv) is not nn.Conv2d:
        return f"{type(conv).__name__}: a conv subclass with its own forward"
    return fusion.is_fusable_conv1x1(conv)


class _NormPlan(collections.namedtuple("_NormPlan", "relu act")):
    """How a foldable norm layer ends: relu (its activation is a ReLU: into the epilogue),
    act (any other activation module: runs after the fused conv; None if none)."""


def _norm_plan(norm):
    """The _NormPlan of a norm layer the converter folds, or the reason it does not."""
    if type(norm) is nn.BatchNorm2d:
        return _NormPlan(False, None)
    if _is_type(norm, "BatchNormAct2d"):
        # timm's forward: F.batch_norm exactly as BatchNorm2d's, then self.drop, then self.act.
        if type(norm.drop) is not nn.Identity:
            return f"norm-act layer with a {type(norm.drop).__name__} after the norm"
        if type(norm.act) is nn.Identity:
            return _NormPlan(False, None)
        if type(norm.act) is nn.ReLU:
            return _NormPlan(True, None)
        return _NormPlan(False, norm.act)
    return f"{type(norm).__name__}: not a BatchNorm2d (or timm BatchNormAct2d) to fold"


def _is_norm(module):
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))


def _fused_conv_norm_act(x, conv, norm, relu, act, residual=None):
    """relu(act(norm(conv(x))) [+ residual]) with the 1x1 conv on the fused op.
    relu: a ReLU in the epilogue (the norm's own or the one after it); act: the norm's
    other activation. Eval mode folds the norm and the residual into one kernel; train
    mode runs the norm as its layer (batch statistics), then residual_add or the ReLU."""
    if x.dim() != 4:  # unbatched: the layers as they were
        y = nn.Conv2d.forward(conv, x)
        y = norm(y) if norm is not None else y
        return _add_relu(y, residual, relu)
    if residual is not None and not _residual_fits(x, conv, residual):
        return _add_relu(_fused_conv_norm_act(x, conv, norm, False, act), residual, relu)
    if norm is None or fusion.bn_foldable(norm):
        y = fusion.conv1x1_bn_act(x, conv, norm, relu, residual)
        return act(y) if act is not None else y
    if type(norm) is nn.BatchNorm2d:
        return fusion.conv1x1_bn_act(x, conv, norm, relu, residual)
    # A norm-act layer in train mode: the conv alone, the layer (norm, drop, act) as it is.
    y = norm(fusion.conv1x1_bn_act(x, conv, None, False))
    if residual is not None:
        return ops.residual_add(y, residual, relu)
    return torch.relu(y) if relu else y


def _add_relu(y, residual, relu):
    y = y + residual if residual is not None else y
    return torch.relu(y) if relu else y


def _residual_fits(x, conv, residual):
    """The residual is what the epilogue can add: a tensor of the output's shape, dtype and device."""
    s = conv.stride[0]
    shape = (x.shape[0], conv.out_channels, (x.shape[2] - 1) // s + 1, (x.shape[3] - 1) // s + 1)
    return (isinstance(residual, torch.Tensor) and tuple(residual.shape) == shape and residual.dtype == x.dtype
            and residual.device == x.device)


class Conv1x1BNAct(nn.Conv2d):
    """relu(act(bn(conv1x1(x))) [+ residual]) on the fused kernel, holding the conv's own
    parameters (same names) and a reference to the norm module, which stays registered
    where it was (its parameters and statistics keep their names). Eval mode folds the
    norm into the conv; train mode runs it as a layer so its batch statistics are right."""

    def __init__(self, conv, bn=None, relu=False):
        super().__init__(conv.in_channels, conv.out_channels, 1, stride=conv.stride,
                         bias=conv.bias is not None, device="meta")
        self.weight, self.bias = conv.weight, conv.bias
        self.__dict__["bn"] = bn  # not a child: it is registered at its own path
        plan = _norm_plan(bn) if bn is not None else _NormPlan(False, None)
        self.relu, self.norm_relu = relu, plan.relu
        self.__dict__["act"] = plan.act  # a child of the norm layer

    def takes_residual(self):
        """An add after it can go into the epilogue: nothing comes between the norm and it."""
        return not (self.relu or self.norm_relu or self.act is not None)

    def forward(self, x, residual=None):
        return _fused_conv_norm_act(x, self, self.bn, self.relu or self.norm_relu, self.act, residual)

    def extra_repr(self):
        act = f", act={type(self.act).__name__}" if self.act is not None else ""
        return super().extra_repr() + f", bn={self.bn is not None}, relu={self.relu or self.norm_relu}{act}"


class _GuardedResidualAdd(ResidualAdd):
    """residual_add where it applies (same shape, dtype, device, 4-D); eager otherwise."""

    def forward(self, x, residual):
        if (x.dim() == 4 and x.shape == residual.shape and x.dtype == residual.dtype
                and x.device == residual.device and x.is_floating_point()):
            return ops.residual_add(x, residual, True)
        return torch.relu(x + residual)


class _SamePool(nn.Module):
    """A pool whose result is TF SAME pooling (given `is_same(height, width)`) on the fused
    kernel, and the original module everywhere else (unbatched, non-float or other sizes)."""

    def __init__(self, original, is_max, kernel_size, stride, is_same):
        super().__init__()
        self.__dict__["original"] = original  # stateless: held, not registered
        self.is_max, self.kernel_size, self.stride = is_max, kernel_size, stride
        self.__dict__["is_same"] = is_same

    def forward(self, x):
        if x.dim() == 4 and x.is_floating_point() and self.is_same(*x.shape[-2:]):
            op = ops.max_pool2d_same if self.is_max else ops.avg_pool2d_same
            return op(x, self.kernel_size, self.stride)
        return self.original(x)

    def extra_repr(self):
        return (f"{'max' if self.is_max else 'avg'}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, else {type(self.original).__name__}")


class _PaddedMaxPool(nn.Module):
    """max_pool2d(F.pad(x, pads, value=-inf), k, s): SAME max pooling on the sizes whose
    SAME padding is `pads`, eager padding and pooling on the others."""

    def __init__(self, pads, kernel_size, stride):
        super().__init__()
        self.pads, self.kernel_size, self.stride = tuple(pads), kernel_size, stride

    def forward(self, x):
        if x.dim() == 4 and x.is_floating_point() and _same_pads(*x.shape[-2:], self.kernel_size,
                                                                 self.stride) == self.pads:
            return ops.max_pool2d_same(x, self.kernel_size, self.stride)
        return F.max_pool2d(F.pad(x, self.pads, value=float("-inf")), self.kernel_size, self.stride)

    def extra_repr(self):
        return f"pads={self.pads}, kernel_size={self.kernel_size}, stride={self.stride}"


def _same_pads(h, w, kernel_size, stride):
    """SAME padding in F.pad's order (left, right, top, bottom)."""
    (_, _, (top, left)), _, (rows, cols) = same_geometry(h, w, kernel_size, stride)
    return (left, cols - left, top, rows - top)


def _is_fused(module):
    return isinstance(module, (Conv1x1BNAct, ResidualAdd, FusedMaxPool2d, FusedAvgPool2d,
                               _FusedSequential, _SamePool, _PaddedMaxPool))


class ConversionReport:
    """What convert() replaced and what it left alone, with the reason."""

    def __init__(self):
        self.replaced = []  # (layer name, pattern, new op)
        self.skipped = []   # (layer name, reason)

    def counts(self):
        return collections.Counter(pattern for _, pattern, _ in self.replaced)

    def __str__(self):
        lines = [f"fastconv.convert: {len(self.replaced)} replacements, {len(self.skipped)} left alone"]
        lines += [f"  replaced  {name}: {pattern} -> {op}" for name, pattern, op in self.replaced]
        lines += [f"  left      {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


class _Tracer(fx.Tracer):
    def __init__(self):
        timm_fx = sys.modules.get("timm.layers._fx")
        wrap = tuple(f for f in timm_fx.get_notrace_functions() if callable(f)) if timm_fx else ()
        super().__init__(autowrap_functions=wrap)
        self.timm_leaves = tuple(timm_fx.get_notrace_modules()) if timm_fx else ()

    def is_leaf_module(self, m, qualname):
        return (_is_fused(m) or isinstance(m, _LEAF_TYPES) or type(m) in self.timm_leaves
                or super().is_leaf_module(m, qualname))


def convert(model, example_input=None, inplace=False, verbose=False):
    """A model computing the same function with fastconv's fused ops wherever a pattern
    is provably equivalent (see the module docstring). `example_input` tells the input
    sizes the pools will see; the model keeps its device, dtype and modes. The returned
    model carries the report as `.fastconv_report` (printed with verbose=True)."""
    if not inplace:
        model = copy.deepcopy(model)
    report = ConversionReport()
    shapes = _input_shapes(model, example_input) if example_input is not None else None
    converted = _convert(model, "", shapes, report)
    fuse_inception(converted, report)  # sibling 1x1 convs, max pool -> 1x1 conv (by structure)
    converted.fastconv_report = report
    if verbose:
        print(report)
    return converted


def _input_shapes(model, example_input):
    """Spatial size of the first input of every module, from one eval-mode forward."""
    shapes, hooks = {}, []
    modes = {m: m.training for m in model.modules()}
    for name, m in model.named_modules():
        def hook(_, args, name=name):
            if args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 2:
                shapes.setdefault(name, tuple(args[0].shape[-2:]))
        hooks.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return shapes


def _join(prefix, name):
    return f"{prefix}.{name}" if prefix else name


def _is_pool(module):
    return type(module) in (nn.MaxPool2d, nn.AvgPool2d) or _is_type(module, "MaxPool2dSame") \
        or _is_type(module, "AvgPool2dSame")


def _convert(module, path, shapes, report):
    if _is_pool(module):
        return _convert_pool(module, path, shapes, report)
    if _is_fused(module) or _is_norm(module) or next(module.children(), None) is None:  # done, or a leaf
        return module
    if not isinstance(module, nn.Sequential):  # a Sequential is fused by position (below)
        gm = _trace_mode_independent(module)
        if gm is not None:
            _rewrite(gm, path, shapes, report)
            return _keep_attributes(gm, module)
    # Its own forward stays: convert inside the children, keeping their types.
    previous = None
    for name, child in module.named_children():
        if isinstance(module, nn.Sequential) and _padded_max_pool(previous, child):
            report.skipped.append((_join(path, name), _finite_pad_reason(previous.value)))
        else:
            new = _convert(child, _join(path, name), shapes, report)
            if new is not child:
                setattr(module, name, new)
        previous = child
    if isinstance(module, nn.Sequential):
        _fuse_sequential(module, path, report)
    return module


def _padded_max_pool(pad, pool):
    """A pad module of finite value, then a max pool (by position in an nn.Sequential)."""
    return type(pad) in _PAD_MODULES and math.isfinite(pad.value) and type(pool) is nn.MaxPool2d


def _finite_pad_reason(value):
    what = "zero" if value == 0 else f"{value:g}"
    return f"max pool on {what} padding: a padded {what} can win the max, SAME's -inf cannot"


def _keep_attributes(gm, module):
    """The traced module keeps the original's plain public attributes (stride, expansion,
    ...), which code outside its forward may read."""
    for key, value in vars(module).items():
        if not key.startswith("_") and not hasattr(gm, key):
            setattr(gm, key, value)
    return gm


def _trace_mode_independent(module):
    """module traced by torch.fx if it traces to the same graph in train and eval mode, else None."""
    modes = {m: m.training for m in module.modules()}
    # Tracing runs the forward's Python: buffers it updates in place (BN's batch counter) are real.
    buffers = [(b, b.clone()) for b in module.buffers()]
    try:
        graphs = []
        for training in (True, False):
            module.train(training)
            graphs.append(fx.GraphModule(module, _Tracer().trace(module), type(module).__name__))
    except Exception:  # untraceable: data-dependent control flow, non-tensor ops on inputs, ...
        return None
    finally:
        for m, training in modes.items():
            m.training = training
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    if graphs[0].code != graphs[1].code:
        return None
    gm = graphs[1]
    gm.training = modes[module]
    return gm


def _is_relu(node, modules):
    if node.op == "call_module":
        return type(modules.get(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _is_add(node):
    return (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in ("add", "add_"))


def _only_user(node):
    """The node's single user, if it takes the node as its first argument."""
    users = list(node.users)
    return users[0] if len(users) == 1 and users[0].args and users[0].args[0] is node else None


def _rewrite(gm, path, shapes, report):
    modules = dict(gm.named_modules())
    calls = collections.Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    for node in list(gm.graph.nodes):  # nn.Identity (timm's drop_path at rate 0, ...): gone
        if node.op == "call_module" and type(modules.get(node.target)) is nn.Identity \
                and len(node.args) == 1 and not node.kwargs:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    left = set()  # pools reported with their pad, kept as they are
    for node in list(gm.graph.nodes):
        if node.graph is not None:
            left.add(_rewrite_padded_pool(gm, node, modules, path, report))
    for node in list(gm.graph.nodes):
        if node.graph is not None and node not in left:
            _rewrite_functional_pool(gm, node, path, shapes, report)
    for node in list(gm.graph.nodes):
        if node.graph is None or node.op != "call_module" or node in left:
            continue
        module = gm.get_submodule(node.target)  # (modules added by the pad + pool rewrite too)
        name = _join(path, node.target)
        if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
            _rewrite_conv(gm, node, module, modules, calls, path, report)
        elif isinstance(module, nn.Conv2d):
            report.skipped.append((name, f"{module.kernel_size[0]}x{module.kernel_size[1]} conv"))
        elif _is_pool(module):
            new = _convert_pool(module, name, shapes, report)
            if new is not module:
                gm.set_submodule(node.target, new)
        elif not _is_fused(module) and not _is_norm(module) and next(module.children(), None) is not None:
            new = _convert(module, name, shapes, report)  # a leaf of the trace with children
            if new is not module:
                gm.set_submodule(node.target, new)
    for node in list(gm.graph.nodes):
        if node.graph is not None and _is_add(node):
            _rewrite_add(gm, node, modules, path, report)
    gm.graph.lint()
    gm.recompile()


def _site(add):
    """A readable place for an add node: the module path of its first operand's producer
    (e.g. "layer1.0.bn3 + ..."), else the node's own name."""
    a = add.args[0] if add.args else None
    if isinstance(a, fx.Node) and a.op == "call_module":
        return f"{a.target} + ..."
    return add.name


def _rewrite_conv(gm, node, conv, modules, calls, path, report):
    name = _join(path, node.target)
    reason = _conv_reason(conv)
    if reason is None and calls[node.target] > 1:
        reason = "conv module called more than once"
    if reason:
        report.skipped.append((name, reason))
        return
    chain, bn, relu = [node], None, False
    nxt = _only_user(node)
    norm = modules.get(nxt.target) if nxt is not None and nxt.op == "call_module" else None
    if norm is not None and _is_norm(norm):
        plan = _norm_plan(norm) if calls[nxt.target] == 1 else "norm module called more than once"
        if isinstance(plan, str):  # the conv alone is fused; the norm runs as it is
            report.skipped.append((_join(path, nxt.target), plan))
            nxt = None
        else:
            bn = norm
            chain.append(nxt)
            nxt = _only_user(nxt) if plan.act is None else None
    if nxt is not None and _is_relu(nxt, modules):
        relu = True
        chain.append(nxt)
    gm.set_submodule(node.target, Conv1x1BNAct(conv, bn, relu))
    chain[-1].replace_all_uses_with(node)
    for n in reversed(chain[1:]):
        gm.graph.erase_node(n)
    report.replaced.append((name, _conv_pattern(bn, relu), "conv1x1_relu" + (" (BN folded in eval)" if bn else "")))


def _conv_pattern(norm, relu):
    """"1x1 conv + BN + ReLU", "1x1 conv + BN-act(SiLU)", ... for the report."""
    pattern = "1x1 conv"
    if norm is not None:
        plan = _norm_plan(norm)
        pattern += " + BN" if type(norm) is nn.BatchNorm2d else \
            " + BN-act" + ("(ReLU)" if plan.relu else f"({type(plan.act).__name__})" if plan.act else "")
    return pattern + (" + ReLU" if relu else "")


def _rewrite_add(gm, add, modules, path, report):
    """An add: into the epilogue of the fused 1x1 conv that produces an operand, else
    relu(a + b) -> residual_add, else reported."""
    relu = _only_user(add)
    relu = relu if relu is not None and _is_relu(relu, modules) else None
    if len(add.args) != 2 or add.kwargs or not all(isinstance(a, fx.Node) for a in add.args):
        report.skipped.append((_join(path, _site(add)), "add of a non-tensor or with alpha"))
        return
    a, b = add.args
    in_place = add.target in (operator.iadd, "add_")
    for conv, residual in ((a, b), (b, a)):
        if in_place and conv is not a:  # eager mutates the residual: leave it so
            continue
        module = gm.get_submodule(conv.target) if conv.op == "call_module" else None
        if (type(module) is Conv1x1BNAct and module.takes_residual() and len(conv.users) == 1
                and len(conv.args) == 1 and not conv.kwargs):
            conv.args = (conv.args[0], residual)
            module.relu = relu is not None
            add.prepend(conv)  # after the residual is computed
            end = relu if relu is not None else add
            end.replace_all_uses_with(conv)
            if relu is not None:
                gm.graph.erase_node(relu)
            gm.graph.erase_node(add)
            summed = "1x1 conv + BN + b" if module.bn is not None else "1x1 conv + b"
            pattern = f"relu({summed})" if relu is not None else f"({summed})"
            report.replaced.append((_join(path, conv.target), pattern, "conv1x1_relu(residual=...)"))
            return
    if relu is None:
        report.skipped.append((_join(path, _site(add)), "add without ReLU after it"))
    elif in_place and len(a.users) != 1:  # a is mutated: nothing else may read it
        report.skipped.append((_join(path, _site(add)), "in-place add whose operand is used elsewhere"))
    else:
        target = f"fastconv_residual_add_{add.name}"
        gm.add_submodule(target, _GuardedResidualAdd())
        with gm.graph.inserting_before(relu):
            new = gm.graph.call_module(target, (a, b))
        relu.replace_all_uses_with(new)
        gm.graph.erase_node(relu)
        gm.graph.erase_node(add)
        report.replaced.append((_join(path, _site(add)), "relu(a + b)", "residual_add"))


def _call_args(node, names, defaults):
    """A call node's arguments by name (positional and keyword), with defaults."""
    args = dict(defaults)
    args.update(zip(names, node.args))
    args.update(node.kwargs)
    return args


def _max_pool_args(node, modules):
    """(kernel, stride, padding, dilation, ceil_mode, return_indices) of a max pool node, or None."""
    if node.op == "call_module" and type(modules.get(node.target)) is nn.MaxPool2d:
        m = modules[node.target]
        return m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices
    if node.op == "call_function" and node.target is F.max_pool2d:
        a = _call_args(node, ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                              "return_indices"), dict(stride=None, padding=0, dilation=1,
                                                      ceil_mode=False, return_indices=False))
        return a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"], a["return_indices"]
    return None


def _pad_args(node, modules):
    """(pads, value) of a constant 2-D pad node (F.pad, nn.ConstantPad2d, nn.ZeroPad2d), or None."""
    if node.op == "call_module" and type(modules.get(node.target)) in _PAD_MODULES:
        m = modules[node.target]
        return tuple(m.padding), m.value
    if node.op == "call_function" and node.target is F.pad:
        a = _call_args(node, ("input", "pad", "mode", "value"), dict(mode="constant", value=None))
        if a["mode"] == "constant" and isinstance(a["pad"], (tuple, list)) and len(a["pad"]) == 4 \
                and all(type(p) is int for p in a["pad"]):
            return tuple(a["pad"]), a["value"] or 0.0
    return None


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _rewrite_padded_pool(gm, pad, modules, path, report):
    """F.pad(x, pads, value=-inf) + max pool (no padding of its own) -> a guarded SAME max pool;
    with zero padding, a near miss: a zero can win the max."""
    padding = _pad_args(pad, modules)
    pool = _only_user(pad)
    pool_args = _max_pool_args(pool, modules) if padding is not None and pool is not None else None
    if pool_args is None:
        return None
    (pads, value), (k, s, p, d, ceil_mode, indices) = padding, pool_args
    name = _join(path, pool.target if pool.op == "call_module" else pool.name)
    if value != -math.inf:
        report.skipped.append((name, _finite_pad_reason(value)))
        return pool  # left as it is: not to be converted on its own
    k, s = _pair(k), _pair(s if s is not None else k)
    if _pair(p) != (0, 0) or _pair(d) != (1, 1) or ceil_mode or indices or not isinstance(k[0], int):
        return None
    target = f"fastconv_max_pool_same_{pool.name}"
    gm.add_submodule(target, _PaddedMaxPool(pads, k, s))
    with gm.graph.inserting_before(pool):
        new = gm.graph.call_module(target, (pad.args[0],))
    pool.replace_all_uses_with(new)
    gm.graph.erase_node(pool)
    gm.graph.erase_node(pad)
    report.replaced.append((name, f"-inf pad + max pool {k[0]}x{k[1]}/{s[0]}", "max_pool2d_same (if SAME pads)"))
    return None


def _convert_pool(pool, name, shapes, report, unsized="SAME only for some input sizes: pass example_input"):
    if type(pool) not in (nn.MaxPool2d, nn.AvgPool2d):
        return _convert_timm_pool(pool, name, shapes, report)
    is_max = type(pool) is nn.MaxPool2d
    args = dict(kernel_size=pool.kernel_size, stride=pool.stride, padding=pool.padding,
                ceil_mode=pool.ceil_mode)
    if is_max:
        if pool.return_indices or pool.dilation not in (1, (1, 1)):
            report.skipped.append((name, "max pool with indices or dilation"))
            return pool
        check = dict(dilation=pool.dilation)
    else:
        if pool.divisor_override is not None:
            report.skipped.append((name, "avg pool with divisor_override"))
            return pool
        if pool.count_include_pad and _pair(pool.padding) != (0, 0):
            report.skipped.append((name, "avg pool counts the padding (count_include_pad=True)"))
            return pool
        check = dict(is_max=False, count_include_pad=pool.count_include_pad)
    size = (shapes or {}).get(name)
    if shapes is not None and size is not None:
        if not fusion.pool_is_same(size, **args, **check):
            report.skipped.append((name, f"pool pads symmetrically: not SAME on {size[0]}x{size[1]}"))
            return pool
    elif not all(fusion.pool_is_same((s, s), **args, **check) for s in range(1, 65)):
        report.skipped.append((name, unsized))
        return pool
    fused = FusedMaxPool2d(**args, dilation=pool.dilation) if is_max else \
        FusedAvgPool2d(**args, count_include_pad=pool.count_include_pad)
    report.replaced.append((name, f"{'max' if is_max else 'avg'} pool {_geometry(pool)} (SAME)",
                            f"{'max' if is_max else 'avg'}_pool2d_same"))
    return fused


def _convert_timm_pool(pool, name, shapes, report):
    """timm's dynamic-pad pools (create_pool2d(..., padding='same')): F.pad to SAME, then
    a pool without padding. Max pads with -inf: SAME on every size. Average pads with
    zeros and counts them: SAME only where the padding is empty."""
    k, s = _pair(pool.kernel_size), _pair(pool.stride)
    is_max = _is_type(pool, "MaxPool2dSame")
    if pool.ceil_mode or (is_max and _pair(pool.dilation) != (1, 1)):
        report.skipped.append((name, f"{type(pool).__name__} with ceil_mode or dilation"))
        return pool
    if is_max:
        is_same = _always
    else:
        is_same = _NoSamePadding(k, s)
        size = (shapes or {}).get(name)
        if size is None or not is_same(*size):
            where = f"on {size[0]}x{size[1]}" if size else "(no example_input)"
            report.skipped.append((name, f"avg pool counts its zero padding {where}"))
            return pool
    report.replaced.append((name, f"{type(pool).__name__} {k[0]}x{k[1]}/{s[0]}",
                            f"{'max' if is_max else 'avg'}_pool2d_same"))
    return _SamePool(pool, is_max, k, s, is_same)


def _always(h, w):
    return True


class _NoSamePadding:
    """(h, w) -> True where SAME pooling pads nothing (a picklable predicate)."""

    def __init__(self, kernel_size, stride):
        self.kernel_size, self.stride = kernel_size, stride

    def __call__(self, h, w):
        return not any(_same_pads(h, w, self.kernel_size, self.stride))


def _geometry(pool):
    k = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0]
    s = pool.stride if isinstance(pool.stride, int) else (pool.stride or [k])[0]
    return f"{k}x{k}/{s}"


class _FusedSequential(nn.Sequential):
    """An nn.Sequential whose runs of 1x1 conv [+ norm] [+ ReLU] run as one fused op. The
    modules stay as they were at their indices, so code that indexes or unpacks the
    container, and the state dict, see no change."""

    def forward(self, x):
        mods, i = list(self), 0
        while i < len(mods):
            end, has_norm, relu, act = self.__dict__["runs"].get(i, (None, False, False, None))
            if end is not None and x.dim() == 4:
                x = _fused_conv_norm_act(x, mods[i], mods[i + 1] if has_norm else None, relu, act)
                i = end
            else:
                x = mods[i](x)
                i += 1
        return x


def _fuse_sequential(seq, path, report):
    """nn.Sequential (traced or not): fuse each 1x1 conv [+ norm] [+ ReLU] run by position."""
    mods, runs = list(seq), {}
    for i, conv in enumerate(mods):
        if not isinstance(conv, nn.Conv2d):
            continue
        reason = _conv_reason(conv)
        if reason:
            report.skipped.append((_join(path, str(i)), reason))
            continue
        j, norm, relu, act = i + 1, None, False, None
        if j < len(mods) and _is_norm(mods[j]):
            plan = _norm_plan(mods[j])
            if isinstance(plan, str):
                report.skipped.append((_join(path, str(j)), plan))
            else:
                norm, relu, act, j = mods[j], plan.relu, plan.act, j + 1
        extra_relu = act is None and j < len(mods) and type(mods[j]) is nn.ReLU
        j += extra_relu
        runs[i] = (j, norm is not None, relu or extra_relu, act)
        report.replaced.append((_join(path, str(i)), _conv_pattern(norm, extra_relu), "conv1x1_relu (by position)"))
    if runs:
        seq.__class__ = _FusedSequential
        seq.__dict__["runs"] = runs


def _rewrite_functional_pool(gm, node, path, shapes, report):
    """F.max_pool2d / F.avg_pool2d with constant arguments: converted as the equivalent module."""
    if node.op != "call_function":
        return
    if node.target is F.max_pool2d:
        a = _call_args(node, ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                              "return_indices"), dict(stride=None, padding=0, dilation=1,
                                                      ceil_mode=False, return_indices=False))
        make = nn.MaxPool2d
    elif node.target in (F.avg_pool2d, torch._C._nn.avg_pool2d):
        a = _call_args(node, ("input", "kernel_size", "stride", "padding", "ceil_mode",
                              "count_include_pad", "divisor_override"),
                       dict(stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                            divisor_override=None))
        make = nn.AvgPool2d
    else:
        return
    x = a.pop("input")
    if any(isinstance(v, fx.Node) for v in a.values()) or a["stride"] in ((), []):
        return
    pool = make(**a)
    new = _convert_pool(pool, _join(path, node.name), None, report,
                        unsized="functional pool, SAME only for some input sizes (not recorded for functions)")
    if new is not pool:
        target = f"fastconv_{node.name}"
        gm.add_submodule(target, new)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(target, (x,))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
