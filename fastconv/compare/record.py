"""Recording a model's forward: which modules ran, in what order and nesting, and on which
tensors (by identity), with a copy of every tensor's value as it was at that moment."""
import collections
import contextlib
import functools

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten


class Ref(collections.namedtuple("Ref", "id version")):
    """A tensor as one module call saw it: its identity and its version (an in-place op, such
    as ReLU(inplace=True), makes the same tensor a new value)."""


class Call:
    """One call of the module at `path` (its `index`-th): start/end in the recording's
    sequence, the call it ran in (parent), and its arguments and outputs as pytree leaves,
    tensors replaced by Refs."""

    __slots__ = ("path", "index", "start", "end", "parent", "spec", "leaves", "outputs", "out_spec")

    def __init__(self, path, index, start, parent, spec, leaves):
        self.path, self.index, self.start, self.parent = path, index, start, parent
        self.spec, self.leaves = spec, leaves
        self.end, self.outputs, self.out_spec = None, [], None

    def inputs(self):
        """The tensor arguments, in order (positional, then keyword)."""
        return [leaf for leaf in self.leaves if isinstance(leaf, Ref)]

    def inside(self, other):
        return other.start < self.start and self.end < other.end

    def __repr__(self):
        return f"Call({self.path!r}#{self.index})"


class Recording:
    """The module calls of one forward, in start order, and the tensors they saw."""

    def __init__(self):
        self.calls, self.values = [], {}
        self.inputs, self.outputs = [], []
        self._alive = []  # every tensor seen stays alive, so that no id is reused
        self._stack, self._counts, self._seq = [], collections.Counter(), 0

    def ref(self, t):
        key = Ref(id(t), t._version)
        if key not in self.values:
            self.values[key] = t.detach().clone()
            self._alive.append(t)
        return key

    def _leaves(self, tree):
        leaves, spec = tree_flatten(tree)
        return spec, [self.ref(t) if isinstance(t, torch.Tensor) else t for t in leaves]

    def _enter(self, path, module, args, kwargs):
        spec, leaves = self._leaves((args, kwargs))
        call = Call(path, self._counts[path], self._seq, self._stack[-1] if self._stack else None, spec, leaves)
        self._counts[path] += 1
        self._seq += 1
        self._stack.append(call)
        self.calls.append(call)

    def _leave(self, path, module, args, kwargs, output):
        call = self._stack.pop()
        call.end = self._seq
        self._seq += 1
        call.out_spec, call.outputs = self._leaves(output)

    def rebuild(self, call, tensor_of):
        """(args, kwargs) of `call` with each tensor leaf replaced by tensor_of(ref)."""
        leaves = [tensor_of(leaf) if isinstance(leaf, Ref) else leaf for leaf in call.leaves]
        return tree_unflatten(leaves, call.spec)


@contextlib.contextmanager
def hooked(modules, enter, leave, forward=None, replace=()):
    """Inside: each (path, module) of `modules` calls enter(path, module, args, kwargs) before
    its forward and leave(path, module, args, kwargs, output) after (forward hooks with kwargs:
    a value returned replaces the arguments or the output); a module whose path is in `replace`
    runs forward(path, its forward, *args, **kwargs) instead. After: the modules as they were
    (an instance's own forward, set by its user, stays)."""
    hooks, patched = [], []
    try:
        for path, module in modules:
            hooks.append(module.register_forward_pre_hook(functools.partial(enter, path), with_kwargs=True))
            hooks.append(module.register_forward_hook(functools.partial(leave, path), with_kwargs=True))
            if path in replace:
                patched.append((module, module.__dict__.get("forward")))
                module.forward = functools.partial(forward, path, module.forward)
        yield
    finally:
        for h in hooks:
            h.remove()
        for module, own in patched:
            if own is None:
                del module.forward
            else:
                module.forward = own


def record_calls(model, inputs):
    """Run model(*inputs) under no_grad with every named module hooked; the Recording."""
    rec = Recording()
    with hooked(model.named_modules(), rec._enter, rec._leave), torch.no_grad():
        rec.inputs = [rec.ref(t) for t in inputs if isinstance(t, torch.Tensor)]
        out = model(*inputs)
    rec.outputs = rec._leaves(out)[1]
    return rec
