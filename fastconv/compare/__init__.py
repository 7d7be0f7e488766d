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
import contextlib
import copy
import sys

import torch

from fastconv.compare.bounds import Precision
from fastconv.compare.layers import LocalRuns, check_boundary, convert_report, kernels
from fastconv.compare.match import boundaries
from fastconv.compare.record import record_calls
from fastconv.compare.replay import exact_and_bounds
from fastconv.compare.report import Report, Row

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
        report_names = convert_report(candidate)
        scale = bound_scale * (2 if dtype == torch.float64 else 1)  # fp64: the exact value rounds too

        def tolerance(value, bound):
            if custom:
                return (atol or 0) + (rtol or 0) * value.abs()
            return bound if scale == 1 else scale * bound  # (bound is read only)

        runs = LocalRuns(candidate, ref_rec, cand_rec, found, counterpart)
        rows, ran = [None] * len(found), {}  # ran: index of a failing row -> (where it first fails, its op calls)
        for done, i in enumerate(reversed(range(len(found)))):  # inner layers first: the outer reuse their runs
            _progress(progress, done, len(found), found[i].name)
            rows[i], fails_at, calls = check_boundary(runs, i, exact, tolerance, report_names)
            if rows[i].passed is False:
                ran[i] = fails_at, calls
        _progress(progress, len(found), len(found), "")
    # the first failure: where the reference's forward first computes a value that fails
    failing = min(ran, key=lambda i: ran[i][0], default=None)
    if failing is not None:
        rows[failing].kernels = kernels(ran[failing][1])
    order = sorted(range(len(found)), key=lambda i: found[i].ref.start)
    return Report([rows[i] for i in order], meta, None if failing is None else rows[failing].name)


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
    from fastconv._backend import get_backend

    return get_backend()
