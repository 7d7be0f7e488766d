"""One training step of both models, each output and parameter gradient compared with a
float64 copy of the reference (fastconv.compare(..., train=True)).

The models themselves run (a float64 copy of the reference beside them); their buffers (BN
statistics), gradients and modes are restored after. Dropout layers stay in eval mode (a
random mask cannot be reproduced across dtypes); everything else trains (BN on batch
statistics). The same random upstream gradient, in the models' dtype, is fed to every
output. A value passes when its RMS error against float64 is at most `multiplier` times the
reference's own (2, or 3 for fp16/bf16: TorchDynamo's accuracy rule, torch._dynamo.utils.same)
plus sqrt(n) u RMS(exact), the typical rounding error of an n-term sum (Higham and Mary,
SIAM J. Sci. Comput. 2019), n being the input's N*H*W: the longest sum a CNN's gradient takes.
"""
import contextlib
import copy
import math

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from fastconv._module_state import modes_and_buffers_kept
from fastconv.compare.report import Row, error_stats


def compare_train_step(reference, candidate, inputs, precision):
    """Rows for the outputs, then every parameter gradient in the reference's order."""
    dtype = precision.dtype
    ref64 = copy.deepcopy(reference).to(torch.float64)
    inputs64 = [t.to(torch.float64) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                for t in inputs]
    outs, params, upstream = [], [], None
    for model, xs in ((reference, inputs), (candidate, inputs), (ref64, inputs64)):
        with _restored(model):
            leaves = [t for t in tree_flatten(model(*xs))[0] if isinstance(t, torch.Tensor) and t.requires_grad]
            if upstream is None:
                g = torch.Generator().manual_seed(0)
                upstream = [torch.randn(t.shape, generator=g).to(dtype) for t in leaves]
            torch.autograd.backward(leaves, [u.to(device=t.device, dtype=t.dtype) for u, t in zip(upstream, leaves)])
            outs.append([t.detach() for t in leaves])
            params.append({name: p.grad for name, p in model.named_parameters()})
    missing = sorted(set(params[0]) - set(params[1]))
    if missing:
        raise ValueError(f"candidate has no parameter named {missing[0]} ({len(missing)} missing): "
                         f"train=True compares gradients by parameter name")
    x = next(t for t in inputs if isinstance(t, torch.Tensor))
    n = x.numel() // x.shape[1] if x.dim() == 4 else x.numel()
    multiplier = 3.0 if dtype in (torch.float16, torch.bfloat16) else 2.0
    rows = [_row(f"(output {i})" if len(outs[0]) > 1 else "(output)", "output", outs[0][i], outs[1][i],
                 outs[2][i], precision.u, n, multiplier) for i in range(len(outs[0]))]
    for name, grad in params[0].items():
        if grad is not None:
            rows.append(_row(name, "grad", grad, params[1][name], params[2][name], precision.u, n, multiplier))
    return rows


@contextlib.contextmanager
def _restored(model):
    """The model in train mode (dropout in eval), without gradients; after: its modes, buffers
    and gradients as they were."""
    grads = [(p, p.grad) for p in model.parameters()]
    with modes_and_buffers_kept(model):
        model.train()
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.eval()
        for p, _ in grads:
            p.grad = None
        try:
            yield model
        finally:
            for p, grad in grads:
                p.grad = grad


def _rms(t):
    return t.double().pow(2).mean().sqrt().item() if t.numel() else 0.0


def _row(name, kind, ref, cand, exact, u, n, multiplier):
    exact = exact.double()
    if cand is None:
        return Row(name=name, kind=kind, span=name, level=0, fused_as="-", passed=False,
                   ratio=math.inf, note="the candidate computed no gradient for it")
    cand_err, ref_err = cand.double() - exact, ref.double() - exact
    tol = multiplier * _rms(ref_err) + math.sqrt(n) * u * _rms(exact)
    rms = _rms(cand_err)
    ratio = rms / tol if tol > 0 else (0.0 if rms == 0 else math.inf)
    if not math.isfinite(rms):
        ratio = math.inf
    return Row(name=name, kind=kind, span=name, level=0, fused_as="-", own=error_stats(cand_err, exact),
               total=error_stats(cand.double() - ref.double(), ref.double()), tolerance=tol, ratio=ratio,
               eager_ratio=_rms(ref_err) / tol if tol > 0 else 0.0, passed=ratio <= 1, worst_at="RMS")
