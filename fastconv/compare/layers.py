"""Checking one boundary: the candidate's layer run on the reference's inputs to it, its
errors against the exact values and the reference's, its tolerance, and what it ran."""
import bisect
import collections
import dataclasses
import json

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from fastconv.compare.record import Ref, hooked
from fastconv.compare.report import Row, error_stats


def check_boundary(runs, i, exact, tolerance, report_names):
    """(Row, where in the reference's forward it first fails or None, the fastconv op calls of
    the candidate's layer) of boundary i; runs: the LocalRuns, which have run every boundary
    nested in it already; exact: replay.exact_and_bounds's result, tolerance(exact value,
    bound) -> tolerance tensor."""
    b, ref_rec, cand_rec = runs.found[i], runs.ref_rec, runs.cand_rec
    local, calls = runs.run(i)
    ops = [name for name, _, _ in calls]
    checks = []  # (output, own error, tolerance, exact value)
    total_err, total_ref, eager_ratios = [], [], []
    for o in b.outputs:
        value, bound = exact[(i, o.position)]
        ref_value = ref_rec.values[o.ref].double()
        tol = tolerance(value, torch.zeros_like(value) if bound is None else bound).expand_as(value).flatten()
        if isinstance(o.position, int) or not total_err:  # its outputs, if it has any
            total_err.append((cand_rec.values[o.cand].double() - ref_value).flatten())
            total_ref.append(ref_value.flatten())
        eager_ratios.append(_worst_ratio((ref_value - value).abs().flatten(), tol)[0])
        if local is not None:
            checks.append((o, (local[o.position].double() - value).abs().flatten(), tol, value.flatten()))
    fields = dict(name=b.name, kind="layer", span=b.span(), level=b.level, ops=sorted(set(ops)),
                  fused_as=_fused_as(b, report_names, ops), eager_ratio=max(eager_ratios),
                  total=error_stats(torch.cat(total_err), torch.cat(total_ref)))
    if local is None:
        return Row(**fields, passed=None, note="an input of this layer has no counterpart in the reference"), None, []
    worst = [_worst_ratio(err, tol) for _, err, tol, _ in checks]
    k = max(range(len(checks)), key=lambda n: worst[n][0])
    ratio, at = worst[k]
    failing = [o.seq() for (o, *_), (r, _) in zip(checks, worst) if r > 1]
    row = Row(**fields, own=error_stats(torch.cat([c[1] for c in checks]), torch.cat([c[3] for c in checks])),
              ratio=ratio, tolerance=checks[k][2][at].item(), passed=ratio <= 1,
              worst_at="output" if isinstance(checks[k][0].position, int) else checks[k][0].position)
    return row, min(failing, default=None), calls


def _worst_ratio(err, tol):
    """(max of err / tol, index of that element); NaN counts as infinite."""
    ratio = (err / tol).masked_fill_(err == 0, 0)
    ratio.nan_to_num_(nan=float("inf"), posinf=float("inf"))
    at = int(ratio.argmax()) if ratio.numel() else 0
    return (ratio[at].item() if ratio.numel() else 0.0), at


class _FastconvOps(TorchDispatchMode):
    """Records the fastconv custom ops a call runs (with a mode active, fastconv ops go
    through their torch.library op instead of their direct eager path: the same work)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fastconv":
            self.calls.append((func.overloadpacket.__name__, args, kwargs or {}))
        return func(*args, **(kwargs or {}))


class LocalRuns:
    """The candidate's layers, each run on the reference's inputs to it.

    Boundaries nested in a layer give the reference's values, as in the replay
    (fastconv.compare.replay), and the inputs the layer's own code passes them are read. A
    nested boundary that has been run already (run() goes from the innermost boundaries out)
    is not computed again: its call returns the reference's values and counts its fastconv op
    calls, so each layer's work runs once, not once per boundary around it."""

    def __init__(self, candidate, ref_rec, cand_rec, found, counterpart):
        self.ref_rec, self.cand_rec, self.found, self.counterpart = ref_rec, cand_rec, found, counterpart
        self.modules = dict(candidate.named_modules())
        self.index = {(b.cand.path, b.cand.index): j for j, b in enumerate(found)}
        self.by_ref = {id(b.ref): b for b in found}
        # boundaries whose every tensor output has the reference's value to stand for it
        self.complete = {j for j, b in enumerate(found) if sum(isinstance(leaf, Ref) for leaf in b.cand.outputs)
                         == sum(isinstance(o.position, int) for o in b.outputs)}
        self.starts = [c.start for c in cand_rec.calls]  # the calls are in start order
        self.done = {}  # boundary index -> the fastconv op calls of its run, for those that ran

    def run(self, i):
        """({position: value}, the fastconv op calls) of boundary i's candidate layer, or
        (None, []) if one of its inputs has no counterpart."""
        b, ref_values = self.found[i], self.ref_rec.values
        if any(k not in self.counterpart for k in b.cand.inputs()):
            return None, []
        module = self.modules[b.cand.path]
        args, kwargs = self.cand_rec.rebuild(b.cand, lambda k: ref_values[self.counterpart[k]].clone())
        inside = self.cand_rec.calls[bisect.bisect_right(self.starts, b.cand.start):
                                     bisect.bisect_left(self.starts, b.cand.end)]
        inner = {}  # (path, index) of a nested boundary's call -> its boundary
        first = {}  # path -> index of its first call inside this one
        for c in inside:
            first.setdefault(c.path, c.index)
            j = self.index.get((c.path, c.index))
            if j is not None:
                inner[(c.path, c.index)] = j
        reads = collections.defaultdict(list)  # (path, index) of a nested call -> [(input, position)]
        for o in b.outputs:
            if not isinstance(o.position, int):
                child = self.by_ref[id(o.where[1])]
                reads[(child.cand.path, child.cand.index)].append((o.where[2], o.position))
        counts, running, values = collections.Counter(), collections.defaultdict(list), {}

        def enter(path, m, args, kwargs):
            index = first.get(path, 0) + counts[path]
            counts[path] += 1
            running[path].append(index)
            tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            for j, position in reads.get((path, index), ()):
                values[position] = tensors[j].clone()

        def forward(path, original, *args, **kwargs):
            j = inner.get((path, running[path][-1]))
            if j is None or not self._reusable(j):
                return original(*args, **kwargs)
            ops.calls.extend(self.done[j])
            return self._reference_outputs(self.found[j])

        def leave(path, m, args, kwargs, output):
            j = inner.get((path, running[path].pop()))
            if j is None or self._reusable(j):
                return None
            return self._reference_outputs(self.found[j], output)

        # by path in the whole model: a fused layer may call a module registered elsewhere
        paths = {path for path, _ in inner}
        with hooked([(path, self.modules[path]) for path in paths], enter, leave, forward, replace=paths), \
                torch.no_grad(), _FastconvOps() as ops:
            out = module(*args, **kwargs)
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        values.update({o.position: outs[o.position] for o in b.outputs if isinstance(o.position, int)})
        self.done[i] = ops.calls
        return values, ops.calls

    def _reusable(self, j):
        """Boundary j's call need not be computed inside another: it ran, and the reference
        has a value for each tensor it returns."""
        return j in self.done and j in self.complete

    def _reference_outputs(self, nested, output=None):
        """The outputs of a nested boundary's call (`output`, or as recorded where it was not
        computed), each matched tensor replaced by the reference's value (a copy: the
        enclosing layer may write into it)."""
        leaves, spec = (list(nested.cand.outputs), nested.cand.out_spec) if output is None else tree_flatten(output)
        tensors = [n for n, leaf in enumerate(leaves) if isinstance(leaf, (torch.Tensor, Ref))]
        for o in nested.outputs:
            if isinstance(o.position, int):
                leaves[tensors[o.position]] = self.ref_rec.values[o.ref].clone()
        return tree_unflatten(leaves, spec)


def kernels(calls):
    """What the failing layer ran: per distinct fastconv op call, fastconv.explain's answer
    (op, backend, why, shape class, Triton config), or the op's name where explain has none."""
    from fastconv._tuning.explain import explain

    seen, kernels = set(), []
    for name, args, kwargs in calls:
        try:
            info = explain(name, *args, **kwargs)
        except (TypeError, ValueError):
            info = {"op": name, "why": "fastconv.explain does not cover this op"}
        if dataclasses.is_dataclass(info):  # fastconv.explain's Explanation
            info = dataclasses.asdict(info)
        key = json.dumps(info, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            kernels.append(json.loads(key))
    return kernels


def _fused_as(b, report_names, ops):
    if b.ref.path in report_names:
        return report_names[b.ref.path]
    if ops:
        return "fastconv " + ", ".join(sorted(set(ops)))
    return "-"


def convert_report(model):
    """{path: "pattern -> op"} from fastconv.convert's report (the last entry of a path wins:
    a conv whose add went into its epilogue is listed twice)."""
    report = getattr(model, "fastconv_report", None)
    names = {}
    for name, pattern, op in getattr(report, "replaced", ()):
        for path in name.split(", "):
            names[path] = f"{pattern} -> {op}"
    return names
