"""Pattern: residual adds (in a traced graph).

  - a fused 1x1 conv + norm, then an add (+ ReLU): the add goes into the conv's epilogue,
    conv1x1_relu(..., residual=...) in eval mode (train mode: the norm as its layer, then
    residual_add). Stochastic depth between the norm and the add (torchvision's
    StochasticDepth, timm's DropPath: the identity in eval mode) stays in train mode;
  - relu(a + b) and `a += b; relu(a)` otherwise -> residual_add (shapes checked at run
    time: a broadcasting add runs as eager);
  - any other add stays, reported with the reason.
An add is named in the report by the path of the module whose forward makes it.
"""
import operator

from torch import fx

from fastconv.convert.layers import is_drop, is_norm
from fastconv.convert.modules import Conv1x1BNAct, GuardedResidualAdd
from fastconv.convert.tracing import add_submodule, cat_parts, is_relu, join, module_of, module_path, only_user


def rewrite_add(gm, add, modules, path, report):
    where = module_path(add, path)  # the block whose forward adds
    relu = only_user(add)
    relu = relu if relu is not None and is_relu(relu, modules) else None
    if len(add.args) != 2 or add.kwargs or not all(isinstance(a, fx.Node) for a in add.args):
        report.skip(report.site(where), "add of a non-tensor or with alpha")
        return
    a, b = add.args
    in_place = add.target in (operator.iadd, "add_")
    for operand, residual in ((a, b), (b, a)):
        if in_place and operand is not a:  # eager mutates the residual: leave it so
            continue
        if _into_epilogue(gm, add, relu, operand, residual, modules, path, report):
            return
    if relu is None:
        report.skip(report.site(where), _no_relu_reason(a, b, modules))
    elif in_place and len(a.users) != 1:  # a is mutated: nothing else may read it
        report.skip(report.site(where), "in-place add whose operand is used elsewhere")
    else:
        target = f"fastconv_residual_add_{add.name}"
        add_submodule(gm, target, GuardedResidualAdd())
        with gm.graph.inserting_before(relu):
            new = gm.graph.call_module(target, (a, b))
        relu.replace_all_uses_with(new)
        gm.graph.erase_node(relu)
        gm.graph.erase_node(add)
        report.replace(report.site(where), "relu(a + b)", "residual_add")


def _into_epilogue(gm, add, relu, operand, residual, modules, path, report):
    """The add (and its ReLU) into the epilogue of the fused 1x1 conv that makes `operand`
    (through stochastic depth): whether it was done."""
    drop = module_of(operand, modules)
    if is_drop(drop) and len(operand.users) == 1 and len(operand.args) == 1 and not operand.kwargs:
        drop_node, conv = operand, operand.args[0]
    else:
        drop_node, drop, conv = None, None, operand
    module = gm.get_submodule(conv.target) if isinstance(conv, fx.Node) and conv.op == "call_module" else None
    if not (type(module) is Conv1x1BNAct and module.takes_residual() and len(conv.users) == 1
            and len(conv.args) == 1 and not conv.kwargs):
        return False
    conv.args = (conv.args[0], residual)
    module.relu = relu is not None
    module.__dict__["drop"] = drop
    add.prepend(conv)  # after the residual is computed
    (relu or add).replace_all_uses_with(conv)
    for node in (relu, add, drop_node):
        if node is not None:
            gm.graph.erase_node(node)
    summed = "1x1 conv" + (" + BN" if module.bn is not None else "") + \
        (f" + {type(drop).__name__}" if drop is not None else "") + " + b"
    report.replace(join(path, conv.target), f"relu({summed})" if relu is not None else f"({summed})",
                   "conv1x1_relu(residual=...)")
    return True


def _no_relu_reason(a, b, modules):
    """Why an add without a ReLU after it stays (no fused 1x1 conv + norm makes an operand)."""
    for operand in (a, b):
        if is_norm(module_of(operand, modules)) and operand.args and cat_parts(operand.args[0]) is not None:
            return "add without ReLU after a norm of a torch.cat: no one conv's epilogue takes it"  # MixNet
    return "add without ReLU after it"
