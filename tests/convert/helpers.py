"""Shared checks of the converter tests: outputs against the eager model, and counters
of the fused ops a converted forward calls."""
import collections

import torch

import fastconv
from fastconv import ops, reference


def assert_same_function(original, converted, x, backend="torch", tol=1e-5):
    """Eval outputs equal (fp32 relative error <= tol), the input unchanged."""
    original.eval(), converted.eval()
    before = x.clone()
    with torch.no_grad():
        ref = original(x.clone())
        with fastconv.use_backend(backend):
            out = converted(x)
    assert torch.equal(x, before), "the converted model modified its input"
    err = reference.rel_error(out, ref)
    assert err <= tol, f"relative error {err:.2e}"


def count_op_calls(monkeypatch):
    """Counter of fastconv op calls by name ("conv1x1_relu+residual" when a residual is passed)."""
    calls = collections.Counter()
    for name in ("conv1x1_relu", "residual_add", "max_pool2d_same", "avg_pool2d_same"):
        real = getattr(ops, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            has_residual = kwargs.get("residual") is not None or (_name == "conv1x1_relu" and len(args) > 5
                                                                  and args[5] is not None)
            calls[_name + ("+residual" if has_residual else "")] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(ops, name, counted)
    return calls


def train_step_matches(original, converted, x, tol=1e-4):
    """One train-mode forward and backward: gradients and BN running statistics alike."""
    grads = []
    for model in (original, converted):
        model.train()
        out = model(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    # A conv bias before train-mode BN has a zero gradient, computed as rounding noise:
    # errors are measured against the largest gradient's scale too.
    floor = 1e-5 * max(g.norm() for g in grads[0].values())
    for k, g in grads[0].items():
        assert (grads[1][k] - g).norm() <= tol * g.norm() + floor, k
    for (k, a), b in zip(original.state_dict().items(), converted.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6), k
