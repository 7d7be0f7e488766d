"""Tracing a module with torch.fx for the converter, and reading the graph's nodes.

A module is traced only if it traces to the same graph in train and eval mode (GoogLeNet's
top level, whose aux heads run only in train mode, does not: the converter descends into
its children instead). Convs, norms, pools, stochastic depth and the modules timm marks
as not traceable stay whole (leaves), so the patterns see them as modules.
"""
import operator
import sys

import torch
import torch.nn.functional as F
from torch import fx, nn

from fastconv._module_state import modes_and_buffers_kept
from fastconv.convert.layers import is_drop
from fastconv.convert.modules import is_fused

_LEAF_TYPES = (nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.MaxPool2d, nn.AvgPool2d)
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}


class _Tracer(fx.Tracer):
    def __init__(self):
        timm_fx = sys.modules.get("timm.layers._fx")
        wrap = tuple(f for f in timm_fx.get_notrace_functions() if callable(f)) if timm_fx else ()
        super().__init__(autowrap_functions=wrap)
        self.timm_leaves = tuple(timm_fx.get_notrace_modules()) if timm_fx else ()

    def is_leaf_module(self, m, qualname):
        return (is_fused(m) or isinstance(m, _LEAF_TYPES) or is_drop(m) or type(m) in self.timm_leaves
                or super().is_leaf_module(m, qualname))


def trace_mode_independent(module):
    """module traced by torch.fx if it traces to the same graph in train and eval mode, else None."""
    # Tracing runs the forward's Python: buffers it updates in place (BN's batch counter) are real.
    with modes_and_buffers_kept(module) as modes:
        try:
            graphs = [_traced(module, training) for training in (True, False)]
        except Exception:  # untraceable: data-dependent control flow, non-tensor ops on inputs, ...
            return None
    if graphs[0].code != graphs[1].code:
        return None
    gm = graphs[1]
    gm.training = modes[module]
    return keep_attributes(gm, module)


def _traced(module, training):
    module.train(training)
    return fx.GraphModule(module, _Tracer().trace(module), type(module).__name__)


def keep_attributes(gm, module):
    """The traced module keeps the original's plain public attributes (stride, expansion,
    ...), which code outside its forward may read."""
    for key, value in vars(module).items():
        if not key.startswith("_") and not hasattr(gm, key):
            setattr(gm, key, value)
    return gm


def input_shapes(model, example_input):
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


def add_submodule(gm, target, module):
    """Register a new module in a traced graph, in the graph module's train/eval mode."""
    gm.add_submodule(target, module.train(gm.training))


# --- reading nodes ---------------------------------------------------------------------

def join(prefix, name):
    return f"{prefix}.{name}" if prefix else name


def module_path(node, path):
    """The path of the module whose forward made a node, `path` being the traced module's
    (torch.fx records the stack of modules the tracer was in)."""
    stack = node.meta.get("nn_module_stack")
    return join(path, next(reversed(stack.values()))[0]) if stack else path


def only_user(node):
    """The node's single user, if it takes the node as its first argument."""
    users = list(node.users)
    return users[0] if len(users) == 1 and users[0].args and users[0].args[0] is node else None


def module_of(node, modules):
    """The module a call_module node calls (None for other nodes)."""
    return modules.get(node.target) if node.op == "call_module" else None


def is_relu(node, modules):
    if node.op == "call_module":
        return type(modules.get(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def is_add(node):
    return (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in ("add", "add_"))


def call_args(node, names, defaults):
    """A call node's arguments by name (positional and keyword), with defaults."""
    args = dict(defaults)
    args.update(zip(names, node.args))
    args.update(node.kwargs)
    return args


def cat_parts(node):
    """The tensors (nodes) a torch.cat node joins along dim 1, the channels; else None."""
    if not isinstance(node, fx.Node) or node.op != "call_function" or node.target not in (torch.cat, torch.concat):
        return None
    args = call_args(node, ("tensors", "dim"), {"dim": 0})
    parts = args.get("tensors")
    if args["dim"] != 1 or not isinstance(parts, (list, tuple)) or not all(isinstance(p, fx.Node) for p in parts):
        return None
    return list(parts)
