"""fastconv.compare: layer-by-layer numerical equivalence of a fused model and its original.

    report = fastconv.compare(reference, candidate, inputs)
    report.passed, report.first_failure, report.rows, print(report), report.to_json()

For every layer boundary both models share (a module path called as often in each; convert
keeps module paths, fastconv.models keeps torchvision's), the report gives the errors of the
candidate's value there, a tolerance derived from the arithmetic, and pass/fail. A fused
layer is paired with the span of reference layers it replaced (found from the data flow,
fastconv.compare.match). Errors are separated into the error a layer makes and the error it
inherits: each candidate layer is also run on the reference's own input to that layer and
compared with the exact (float64) result of the reference's layers on that same input; the
tolerance bounds what a correct implementation in the model's precision may create there
(fastconv.compare.bounds: Higham's gamma_K = K u / (1 - K u) times |W|.|x| for a K-term dot
product accumulated in fp32, plus the roundings to the storage precision, BN folding
included). So a layer fails only for error it makes itself, and the first failing layer is
where a bug is, however far its error spreads. `total` (each model on its own inputs) shows
what spreads.

`train=True` compares one training step instead: the output and every parameter's gradient,
each against a float64 copy of the reference; a gradient passes when its RMS error is at most
2x (3x for fp16/bf16) the reference's own (TorchDynamo's accuracy rule, torch._dynamo.utils.same)
plus the typical rounding of an n-term sum, sqrt(n) u RMS(g) (n: the input's N*H*W). A bound
through a whole backward pass would be too loose to catch anything.
"""
import collections
import contextlib
import copy
import functools
import json
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from fastconv.compare.bounds import Precision
from fastconv.compare.match import boundaries
from fastconv.compare.record import record_calls
from fastconv.compare.replay import exact_and_bounds
from fastconv.compare.report import Report, Row, error_stats

__all__ = ["compare", "Report", "Row", "Precision"]


def compare(reference, candidate, inputs, *, train=False, rtol=None, atol=None, bound_scale=1.0,
            progress=False):
    """Compare `candidate` with `reference` on `inputs` (a tensor or a tuple of the model's
    positional arguments), layer by layer in eval mode (their modes are restored after), or
    over one training step with train=True. Returns a Report.

    Tolerances: derived per layer (module docstring) and multiplied by `bound_scale`; or, with
    rtol/atol given, atol + rtol |exact| elementwise for every layer instead. progress: True
    prints the layer being checked to stderr, or a callable(done, total, name)."""
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    dtype = _dtype(candidate, inputs)
    if _dtype(reference, inputs) != dtype:
        raise ValueError(f"reference is {_dtype(reference, inputs)} but candidate is {dtype}: "
                         f"compare two models of one dtype")
    device = next((t.device for t in inputs if isinstance(t, torch.Tensor)), torch.device("cpu"))
    precision = Precision.of(dtype, device)
    custom = rtol is not None or atol is not None
    meta = {"reference": type(reference).__name__, "candidate": type(candidate).__name__,
            "dtype": str(dtype).replace("torch.", ""), "precision": precision.name(), "device": str(device),
            "backend": _backend_name(), "mode": "train step" if train else "eval",
            "inputs": ["x".join(map(str, t.shape)) for t in inputs if isinstance(t, torch.Tensor)],
            "tolerance": (f"atol {atol or 0:g} + rtol {rtol or 0:g} |exact|" if custom else
                          "derived bound" + (f" x {bound_scale:g}" if bound_scale != 1 else ""))}
    if train:
        from fastconv.compare.grads import compare_train_step

        rows = compare_train_step(reference, candidate, inputs, precision)
        outputs = [r.name for r in rows if r.kind == "output" and r.passed is False]
        grads = [r.name for r in rows if r.kind == "grad" and r.passed is False]
        # a wrong output: the eval comparison finds the layer; a gradient bug spreads to every
        # layer before it: the failing gradient nearest the output (the first the backward computes)
        return Report(rows, meta, outputs[0] if outputs else grads[-1] if grads else None)
    with _eval(reference), _eval(candidate):
        ref_rec, cand_rec = record_calls(reference, inputs), record_calls(candidate, inputs)
        found, counterpart = boundaries(ref_rec, cand_rec)
        ref64 = copy.deepcopy(reference).to(torch.float64)
        inputs64 = [t.to(torch.float64, copy=True) if _floating(t) else t for t in inputs]
        exact = exact_and_bounds(ref64, inputs64, ref_rec, found, precision, bounds=not custom)
        del ref64
        report_names = _convert_report(candidate)
        scale = bound_scale * (2 if dtype == torch.float64 else 1)  # fp64: the exact value rounds too

        def tolerance(value, bound):
            return (atol or 0) + (rtol or 0) * value.abs() if custom else scale * bound

        rows, ran = [], {}
        for i, b in enumerate(found):
            _progress(progress, i, len(found), b.name)
            row, calls = _layer_row(candidate, ref_rec, cand_rec, found, i, counterpart, exact, tolerance,
                                    report_names)
            rows.append(row)
            if row.passed is False:
                ran[i] = calls
        _progress(progress, len(found), len(found), "")
    # the first failure: where the reference's forward first computes a value that fails
    failing = min(ran, key=lambda i: rows[i].fail_seq, default=None)
    if failing is not None:
        rows[failing].kernels = _kernels(ran[failing])
    order = sorted(range(len(found)), key=lambda i: found[i].ref.start)
    return Report([rows[i] for i in order], meta, None if failing is None else rows[failing].name)


def _layer_row(candidate, ref_rec, cand_rec, found, i, counterpart, exact, tolerance, report_names):
    """(Row, the fastconv op calls of the candidate's layer) of boundary found[i]."""
    b = found[i]
    local, calls = _run_local(candidate, ref_rec, cand_rec, found, b, counterpart)
    ops = [name for name, _, _ in calls]
    checks = []  # (output, own error, tolerance, exact value)
    total_err, total_ref, eager_err = [], [], []
    for o in b.outputs:
        value, bound = exact[(i, o.position)]
        ref_value = ref_rec.values[o.ref].double()
        tol = tolerance(value, torch.zeros_like(value) if bound is None else bound).expand_as(value).flatten()
        if isinstance(o.position, int) or not total_err:  # its outputs, if it has any
            total_err.append((cand_rec.values[o.cand].double() - ref_value).flatten())
            total_ref.append(ref_value.flatten())
        eager_err.append(_worst_ratio((ref_value - value).abs().flatten(), tol)[0])
        if local is not None:
            checks.append((o, (local[o.position].double() - value).abs().flatten(), tol, value.flatten()))
    fields = dict(name=b.name, kind="layer", span=b.span(), level=b.level, ops=sorted(set(ops)),
                  fused_as=_fused_as(b, report_names, ops), eager_ratio=max(eager_err),
                  total=error_stats(torch.cat(total_err), torch.cat(total_ref)))
    if local is None:
        return Row(**fields, passed=None, note="an input of this layer has no counterpart in the reference"), []
    worst = [_worst_ratio(err, tol) for _, err, tol, _ in checks]
    k = max(range(len(checks)), key=lambda n: worst[n][0])
    ratio, at = worst[k]
    failing = [o.seq() for (o, *_), (r, _) in zip(checks, worst) if r > 1]
    row = Row(**fields, own=error_stats(torch.cat([c[1] for c in checks]), torch.cat([c[3] for c in checks])),
              ratio=ratio, tolerance=checks[k][2][at].item(), passed=ratio <= 1,
              worst_at="output" if isinstance(checks[k][0].position, int) else checks[k][0].position)
    row.fail_seq = min(failing, default=None)
    return row, calls


def _worst_ratio(err, tol):
    """(max of err / tol, index of that element); NaN counts as infinite."""
    ratio = torch.where(err == 0, torch.zeros_like(err), err / tol)
    ratio = torch.nan_to_num(ratio, nan=float("inf"), posinf=float("inf"))
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


def _run_local(candidate, ref_rec, cand_rec, found, b, counterpart):
    """The candidate's layer run on the reference's inputs to it: ({position: value}, the
    fastconv op calls it made), or (None, []) if an input has no counterpart. Boundaries
    nested in it give the reference's values, as in the replay (fastconv.compare.replay),
    and the inputs its own code passes them are read."""
    if any(k not in counterpart for k in b.cand.inputs()):
        return None, []
    module = candidate.get_submodule(b.cand.path)
    args, kwargs = cand_rec.rebuild(b.cand, lambda k: ref_rec.values[counterpart[k]].clone())
    inner = {(x.cand.path, x.cand.index): x for x in found if x.cand.inside(b.cand)}
    by_ref = {id(x.ref): x for x in found}
    reads = collections.defaultdict(list)  # (path, index) of a nested call -> [(input, position)]
    for o in b.outputs:
        if not isinstance(o.position, int):
            child = by_ref[id(o.where[1])]
            reads[(child.cand.path, child.cand.index)].append((o.where[2], o.position))
    first = {}  # path -> index of its first call inside this one
    for c in cand_rec.calls:
        if c.inside(b.cand):
            first.setdefault(c.path, c.index)
    counts, running, values = collections.Counter(), collections.defaultdict(list), {}

    def enter(path, m, args, kwargs):
        index = first.get(path, 0) + counts[path]
        counts[path] += 1
        running[path].append(index)
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        for j, position in reads.get((path, index), ()):
            values[position] = tensors[j].clone()

    def leave(path, m, args, kwargs, output):
        nested = inner.get((path, running[path].pop()))
        if nested is None:
            return None
        leaves, spec = tree_flatten(output)
        tensors = [n for n, t in enumerate(leaves) if isinstance(t, torch.Tensor)]
        for o in nested.outputs:
            if isinstance(o.position, int):
                leaves[tensors[o.position]] = ref_rec.values[o.ref].clone()
        return tree_unflatten(leaves, spec)

    hooks, watched = [], {path for path, _ in inner}
    try:  # by path in the whole model: a fused layer may call a module registered elsewhere
        for path, m in candidate.named_modules():
            if path in watched:
                hooks.append(m.register_forward_pre_hook(functools.partial(enter, path), with_kwargs=True))
                hooks.append(m.register_forward_hook(functools.partial(leave, path), with_kwargs=True))
        with torch.no_grad(), _FastconvOps() as ops:
            out = module(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    values.update({o.position: outs[o.position] for o in b.outputs if isinstance(o.position, int)})
    return values, ops.calls


def _kernels(calls):
    """What the failing layer ran: per distinct fastconv op call, fastconv.explain's answer
    (op, backend, why, shape class, Triton config), or the op's name where explain has none."""
    from fastconv import explain

    seen, kernels = set(), []
    for name, args, kwargs in calls:
        try:
            info = explain(name, *args, **kwargs)
        except (TypeError, ValueError):
            info = {"op": name, "why": "fastconv.explain does not cover this op"}
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


def _convert_report(model):
    """{path: "pattern -> op"} from fastconv.convert's report (the last entry of a path wins:
    a conv whose add went into its epilogue is listed twice)."""
    report = getattr(model, "fastconv_report", None)
    names = {}
    for name, pattern, op in getattr(report, "replaced", ()):
        for path in name.split(", "):
            names[path] = f"{pattern} -> {op}"
    return names


def _progress(progress, done, total, name):
    if callable(progress):
        progress(done, total, name)
    elif progress:
        end = "\n" if done == total else ""
        sys.stderr.write(f"\r\033[K[{done}/{total}] {name}{end}")
        sys.stderr.flush()


@contextlib.contextmanager
def _eval(model):
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training


def _floating(t):
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _dtype(model, inputs):
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    if p is not None:
        return p.dtype
    t = next((t for t in inputs if _floating(t)), None)
    if t is None:
        raise ValueError("inputs: no floating-point tensor, and the model has no float parameters")
    return t.dtype


def _backend_name():
    from fastconv import get_backend

    return get_backend()
