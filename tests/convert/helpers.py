"""Shared checks of the converter tests: models whose outputs depend on their input,
outputs against the eager model, and counters of the ops a converted forward calls."""
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastconv
from fastconv import ops, reference


def realistic(model, x, seed=0):
    """The model in eval mode with calibrated BatchNorm (statistics measured on inputs
    like x: every BN normalizes to the scale of its affine parameters), checked to see its
    input. Without this a torchvision model's feature maps can be constant per channel,
    and an equivalence check cannot fail (issue 26)."""
    if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        g = torch.Generator().manual_seed(seed)
        batch = torch.randn((max(x.shape[0], 2),) + x.shape[1:], generator=g).to(x)  # BN needs 2 values
        reference.calibrate_batchnorm(model, [batch], seed)
    assert sees_input(model.eval(), x)
    return model


def sees_input(model, x):
    """The model's eval output changes when its input moves by one pixel."""
    training = model.training
    with torch.no_grad():
        out = model.eval()(x)
        shifted = model(torch.roll(x, 1, -1))
    model.train(training)
    out, shifted = (o[0] if isinstance(o, tuple) else o for o in (out, shifted))
    return reference.rel_error(shifted, out) > 1e-3


class DispatchedOps(TorchDispatchMode):
    """Counts the top-level ops a forward dispatches (fastconv's custom ops once each)."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    def count(self, word):
        """How many dispatched ops have `word` in their name."""
        return sum(n for op, n in self.ops.items() if word in op)


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
