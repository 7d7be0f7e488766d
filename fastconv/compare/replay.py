"""The exact output of every boundary on the reference's own input to it, and its error bound.

The reference is re-run in float64 (a copy) under bounds.ErrorBound, once per level of
nesting of the boundaries (boundaries of one level never overlap). In the run of a level,
each boundary's inputs are replaced by the reference's recorded values (upcast: exactly the
numbers the layer received), and at the end of its span the float64 result and its bound are
read, then replaced by the reference's recorded value too. Boundaries nested deeper are not
computed: their calls return the reference's recorded outputs, so an enclosing boundary is
judged on its own arithmetic (the glue between its inner boundaries: a concatenation, an
add), which the candidate's run of it matches (fastconv.compare forces the same values).
So each boundary is computed exactly from the numbers the candidate's layer will be given,
and its bound covers the error that layer may create, not the error it inherits.
"""
import collections

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from fastconv.compare.bounds import ErrorBound
from fastconv.compare.record import Ref, hooked


def exact_and_bounds(ref64, inputs64, rec, found, precision, bounds=True):
    """{(boundary index, output position): (float64 exact value, bound or None if zero)} for
    all boundaries (bounds=False: the exact values only)."""
    result = {}
    for level in sorted({b.level for b in found}):
        result.update(_Replay(rec, found, level, precision, bounds).run(ref64, inputs64))
    return result


class _Replay:
    def __init__(self, rec, found, level, precision, bounds):
        self.rec, self.mode = rec, ErrorBound(precision, bounds)
        self.rows = {(b.ref.path, b.ref.index): b for b in found if b.level == level}
        self.skipped = {(b.ref.path, b.ref.index): b.ref for b in found if b.level > level}
        # (path, index, "enter"/"leave") -> [(leaf or input position, result key or None, ref)]
        self.reads = collections.defaultdict(list)
        for i, b in enumerate(found):
            if b.level >= level:
                for o in b.outputs:
                    kind, call, position = o.where
                    key = (i, o.position) if b.level == level else None  # deeper: forced only
                    self.reads[(call.path, call.index, kind)].append((position, key, o.ref))
        self.counts, self.result = collections.Counter(), {}

    def forced(self, leaf):
        """The reference's recorded value, upcast (a fresh copy: the model may write into it)."""
        return self.rec.values[leaf].to(torch.float64, copy=True) if isinstance(leaf, Ref) else leaf

    def _read(self, leaves, reads, tensor_positions=None):
        for position, key, ref in reads:
            n = position if tensor_positions is None else tensor_positions[position]
            if key is not None:
                t = leaves[n]
                e = self.mode.error(t)
                self.result[key] = (t.detach().clone(), None if e is None else e.clone())
            leaves[n] = self.forced(ref)

    def enter(self, path, module, args, kwargs):
        index = self.counts[path]
        self.counts[path] += 1
        reads = self.reads.get((path, index, "enter"), ())
        if not reads and (path, index) not in self.rows:
            return None
        leaves, spec = tree_flatten((args, kwargs))
        tensors = [n for n, t in enumerate(leaves) if isinstance(t, torch.Tensor)]
        self._read(leaves, reads, tensors)
        if (path, index) in self.rows:  # the boundary's own inputs: the reference's values
            for n, ref in zip(tensors, self.rows[(path, index)].ref.inputs()):
                leaves[n] = self.forced(ref)
        return tree_unflatten(leaves, spec)

    def leave(self, path, module, args, kwargs, output):
        reads = self.reads.get((path, self.counts[path] - 1, "leave"), ())  # calls of a path do not nest
        if not reads:
            return None
        leaves, spec = tree_flatten(output)
        self._read(leaves, reads)
        return tree_unflatten(leaves, spec)

    def forward(self, path, original, *args, **kwargs):
        """A deeper boundary returns the reference's recorded outputs without computing."""
        call = self.skipped.get((path, self.counts[path] - 1))
        if call is None:
            return original(*args, **kwargs)
        return tree_unflatten([self.forced(leaf) for leaf in call.outputs], call.out_spec)

    def run(self, ref64, inputs64):
        skipped_paths = {path for path, _ in self.skipped}
        with hooked(ref64.named_modules(), self.enter, self.leave, self.forward, replace=skipped_paths), \
                torch.no_grad(), self.mode:
            ref64(*inputs64)
        return self.result
