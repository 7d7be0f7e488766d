"""fastconv.convert: swap fastconv's fused ops into an existing model.

The model is traced with torch.fx and these patterns are rewritten where they are
provably equivalent:
  - a 1x1 nn.Conv2d (groups 1, dilation 1, no padding, any stride), optionally followed
    by BatchNorm2d, optionally by a ReLU (module, F.relu, torch.relu, in place or not)
    -> one Conv1x1BNAct (BN folded in eval mode; in train mode BN runs as its layer);
  - relu(a + b) and `a += b; relu(a)` -> residual_add (shapes checked at run time:
    a broadcasting add runs as eager);
  - an nn.MaxPool2d / nn.AvgPool2d that is exactly SAME pooling on the input sizes
    it sees (from `example_input`; without one, only pools that are SAME for every
    input size) -> FusedMaxPool2d / FusedAvgPool2d, which also check at run time.
Module paths, parameters and buffers keep their names, so state dicts load both ways.

A module whose forward depends on train/eval mode (it traces to different graphs,
e.g. GoogLeNet's aux heads) or cannot be traced (data-dependent control flow) keeps
its own forward: the converter descends into its children instead, and in an
nn.Sequential fuses runs of 1x1 conv / BN / ReLU by position.
"""
import collections
import copy
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from fastconv import fusion, ops
from fastconv.nn import FusedAvgPool2d, FusedMaxPool2d, ResidualAdd

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, torch.nn.functional.relu}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}


class Conv1x1BNAct(nn.Conv2d):
    """relu(bn(conv1x1(x))) on the fused kernel, holding the conv's own parameters (same
    names) and a reference to the BN module, which stays registered where it was (its
    parameters and statistics keep their names). Eval mode folds BN into the conv; train
    mode runs BN as a layer so its batch statistics are right."""

    def __init__(self, conv, bn=None, relu=False):
        super().__init__(conv.in_channels, conv.out_channels, 1, stride=conv.stride,
                         bias=conv.bias is not None, device="meta")
        self.weight, self.bias = conv.weight, conv.bias
        self.__dict__["bn"] = bn  # not a child: it is registered at its own path
        self.relu = relu

    def forward(self, x):
        bn = self.bn
        if x.dim() == 4 and (bn is None or fusion.bn_foldable(bn)):
            return fusion.conv1x1_bn_act(x, self, bn, self.relu)  # one kernel, BN folded
        # Train-mode BN (batch statistics) or unbatched input: the conv, then BN as a layer.
        y = ops.conv1x1_relu(x, self.weight, self.bias, self.stride[0], relu=False) \
            if x.dim() == 4 else super().forward(x)
        y = bn(y) if bn is not None else y
        return torch.relu(y) if self.relu else y

    def extra_repr(self):
        return super().extra_repr() + f", bn={self.bn is not None}, relu={self.relu}"


class _GuardedResidualAdd(ResidualAdd):
    """residual_add where it applies (same shape, dtype, device, 4-D); eager otherwise."""

    def forward(self, x, residual):
        if (x.dim() == 4 and x.shape == residual.shape and x.dtype == residual.dtype
                and x.device == residual.device and x.is_floating_point()):
            return ops.residual_add(x, residual, True)
        return torch.relu(x + residual)


def _is_fused(module):
    return isinstance(module, (Conv1x1BNAct, ResidualAdd, FusedMaxPool2d, FusedAvgPool2d,
                               _FusedSequential))


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
    def is_leaf_module(self, m, qualname):
        return _is_fused(m) or super().is_leaf_module(m, qualname)


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


def _convert(module, path, shapes, report):
    if type(module) in (nn.MaxPool2d, nn.AvgPool2d):
        return _convert_pool(module, path, shapes, report)
    if _is_fused(module) or next(module.children(), None) is None:  # done, or a leaf
        return module
    if not isinstance(module, nn.Sequential):  # a Sequential is fused by position (below)
        gm = _trace_mode_independent(module)
        if gm is not None:
            _rewrite(gm, path, shapes, report)
            return _keep_attributes(gm, module)
    # Its own forward stays: convert inside the children, keeping their types.
    for name, child in module.named_children():
        new = _convert(child, _join(path, name), shapes, report)
        if new is not child:
            setattr(module, name, new)
    if isinstance(module, nn.Sequential):
        _fuse_sequential(module, path, report)
    return module


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


def _only_user(node):
    """The node's single user, if it takes the node as its first argument."""
    users = list(node.users)
    return users[0] if len(users) == 1 and users[0].args and users[0].args[0] is node else None


def _rewrite(gm, path, shapes, report):
    modules = dict(gm.named_modules())
    calls = collections.Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    for node in list(gm.graph.nodes):
        if node.graph is None or node.op != "call_module":
            continue
        module = modules.get(node.target)
        name = _join(path, node.target)
        if type(module) is nn.Conv2d:
            _rewrite_conv(gm, node, module, modules, calls, name, report)
        elif type(module) in (nn.MaxPool2d, nn.AvgPool2d):
            new = _convert_pool(module, name, shapes, report)
            if new is not module:
                gm.set_submodule(node.target, new)
    for node in list(gm.graph.nodes):
        if node.graph is not None and _is_relu(node, modules):
            _rewrite_add_relu(gm, node, path, report)
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in _ADD_FUNCTIONS or (
                node.op == "call_method" and node.target in ("add", "add_")):
            report.skipped.append((_join(path, _site(node)), "add without ReLU after it"))
    gm.graph.lint()
    gm.recompile()


def _site(add):
    """A readable place for an add node: the module path of its first operand's producer
    (e.g. "layer1.0.bn3 + ..."), else the node's own name."""
    a = add.args[0] if add.args else None
    if isinstance(a, fx.Node) and a.op == "call_module":
        return f"{a.target} + ..."
    return add.name


def _rewrite_conv(gm, node, conv, modules, calls, name, report):
    reason = fusion.is_fusable_conv1x1(conv)
    if reason is None and calls[node.target] > 1:
        reason = "conv module called more than once"
    if reason:
        report.skipped.append((name, reason))
        return
    chain, bn, relu = [node], None, False
    nxt = _only_user(node)
    if nxt is not None and nxt.op == "call_module" and type(modules.get(nxt.target)) is nn.BatchNorm2d \
            and calls[nxt.target] == 1:
        bn = modules[nxt.target]
        chain.append(nxt)
        nxt = _only_user(nxt)
    if nxt is not None and _is_relu(nxt, modules):
        relu = True
        chain.append(nxt)
    gm.set_submodule(node.target, Conv1x1BNAct(conv, bn, relu))
    chain[-1].replace_all_uses_with(node)
    for n in reversed(chain[1:]):
        gm.graph.erase_node(n)
    pattern = "1x1 conv" + (" + BN" if bn is not None else "") + (" + ReLU" if relu else "")
    report.replaced.append((name, pattern, "conv1x1_relu" + (" (BN folded in eval)" if bn else "")))


def _rewrite_add_relu(gm, relu, path, report):
    add = relu.args[0] if relu.args else None
    if not isinstance(add, fx.Node) or len(add.users) != 1 or add.kwargs:
        return
    is_add = (add.op == "call_function" and add.target in _ADD_FUNCTIONS) or (
        add.op == "call_method" and add.target in ("add", "add_"))
    if not is_add or len(add.args) != 2 or not all(isinstance(a, fx.Node) for a in add.args):
        return
    a, b = add.args
    in_place = add.target in (operator.iadd, "add_")
    if in_place and len(a.users) != 1:  # a is mutated: nothing else may read it
        report.skipped.append((_join(path, _site(add)), "in-place add whose operand is used elsewhere"))
        return
    target = f"fastconv_residual_add_{add.name}"
    gm.add_submodule(target, _GuardedResidualAdd())
    with gm.graph.inserting_before(relu):
        new = gm.graph.call_module(target, (a, b))
    relu.replace_all_uses_with(new)
    gm.graph.erase_node(relu)
    gm.graph.erase_node(add)
    report.replaced.append((_join(path, _site(add)), "relu(a + b)", "residual_add"))


def _convert_pool(pool, name, shapes, report):
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
        check = dict(is_max=False, count_include_pad=pool.count_include_pad)
    size = (shapes or {}).get(name)
    if shapes is not None and size is not None:
        if not fusion.pool_is_same(size, **args, **check):
            report.skipped.append((name, f"pool pads symmetrically: not SAME on {size[0]}x{size[1]}"))
            return pool
    elif not all(fusion.pool_is_same((s, s), **args, **check) for s in range(1, 65)):
        report.skipped.append((name, "SAME only for some input sizes: pass example_input"))
        return pool
    fused = FusedMaxPool2d(**args, dilation=pool.dilation) if is_max else \
        FusedAvgPool2d(**args, count_include_pad=pool.count_include_pad)
    report.replaced.append((name, f"{'max' if is_max else 'avg'} pool {_geometry(pool)} (SAME)",
                            f"{'max' if is_max else 'avg'}_pool2d_same"))
    return fused


def _geometry(pool):
    k = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0]
    s = pool.stride if isinstance(pool.stride, int) else (pool.stride or [k])[0]
    return f"{k}x{k}/{s}"


class _FusedSequential(nn.Sequential):
    """An nn.Sequential whose runs of 1x1 conv [+ BN] [+ ReLU] run as one fused op. The
    modules stay as they were at their indices, so code that indexes or unpacks the
    container, and the state dict, see no change."""

    def forward(self, x):
        mods, i = list(self), 0
        while i < len(mods):
            end, has_bn, relu = self.__dict__["runs"].get(i, (None, False, False))
            if end is not None and x.dim() == 4:
                x = fusion.conv1x1_bn_act(x, mods[i], mods[i + 1] if has_bn else None, relu)
                i = end
            else:
                x = mods[i](x)
                i += 1
        return x


def _fuse_sequential(seq, path, report):
    """nn.Sequential (traced or not): fuse each 1x1 conv [+ BN] [+ ReLU] run by position."""
    mods, runs = list(seq), {}
    for i, conv in enumerate(mods):
        reason = fusion.is_fusable_conv1x1(conv)
        if reason:
            if isinstance(conv, nn.Conv2d):
                report.skipped.append((_join(path, str(i)), reason))
            continue
        j = i + 1
        has_bn = j < len(mods) and type(mods[j]) is nn.BatchNorm2d
        j += has_bn
        relu = j < len(mods) and type(mods[j]) is nn.ReLU
        j += relu
        runs[i] = (j, has_bn, relu)
        report.replaced.append((_join(path, str(i)), "1x1 conv" + (" + BN" if has_bn else "") +
                                (" + ReLU" if relu else ""), "conv1x1_relu (by position)"))
    if runs:
        seq.__class__ = _FusedSequential
        seq.__dict__["runs"] = runs
