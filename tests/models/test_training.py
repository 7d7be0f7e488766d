"""A short training run on real data shipped with scikit-learn (8x8 handwritten
digits, no download): a small network on all three fused ops learns, and tracks
the same network written in eager PyTorch step for step."""
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import fastconv
from fastconv import reference
from tests.conftest import DEVICE


class FastNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.reduce = fastconv.nn.Conv1x1ReLU(16, 16)
        self.expand = fastconv.nn.Conv1x1ReLU(16, 16, relu=False)
        self.add = fastconv.nn.ResidualAdd()
        self.pool = fastconv.nn.MaxPool2dSame(3, 2)       # 8x8 -> 4x4, pads (0, 1)
        self.widen = fastconv.nn.Conv1x1ReLU(16, 32)
        self.avg = fastconv.nn.AvgPool2dSame(3, 2)        # 4x4 -> 2x2, pads (0, 1)
        self.fc = nn.Linear(32 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.add(self.expand(self.reduce(x)), x)
        x = self.avg(self.widen(self.pool(x)))
        return self.fc(x.flatten(1))


class EagerNet(FastNet):
    """The same parameters, computed as eager PyTorch would."""

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = F.conv2d(torch.relu(F.conv2d(x, self.reduce.weight, self.reduce.bias)),
                     self.expand.weight, self.expand.bias)
        x = torch.relu(y + x)
        x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 3, 2)
        x = torch.relu(F.conv2d(x, self.widen.weight, self.widen.bias))
        total = F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 3, 2, divisor_override=1)
        count = F.avg_pool2d(F.pad(torch.ones_like(x[:1, :1]), (0, 1, 0, 1)), 3, 2, divisor_override=1)
        return self.fc((total / count).flatten(1))


def _digits():
    d = load_digits()
    x = (torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) - 4.9) / 6.0  # ~zero mean, unit variance
    y = torch.tensor(d.target)
    return x[:1400].to(DEVICE), y[:1400].to(DEVICE), x[1400:].to(DEVICE), y[1400:].to(DEVICE)


def _train(model, backend, xs, ys, steps, batch=64):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    g = torch.Generator().manual_seed(0)
    order = torch.cat([torch.randperm(len(xs), generator=g) for _ in range(steps * batch // len(xs) + 1)])
    with fastconv.use_backend(backend):
        for i in range(steps):
            idx = order[i * batch:(i + 1) * batch].to(xs.device)
            loss = F.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


def _track(ours, eager, backend, xs, ys, steps, tol, batch=64):
    """Eager trains; at every step ours gets eager's current parameters and must give the same
    loss and gradients (fastconv's backward against autograd's, step by step along a real
    training trajectory). Comparing two free-running trajectories instead would compare
    chaos: float32 sums in another order grow into 1e-3 loss differences within 50 Adam steps."""
    opt = torch.optim.Adam(eager.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    order = torch.cat([torch.randperm(len(xs), generator=g) for _ in range(steps * batch // len(xs) + 1)])
    losses = []
    for i in range(steps):
        idx = order[i * batch:(i + 1) * batch].to(xs.device)
        ours.load_state_dict(eager.state_dict())
        ours.zero_grad()
        with fastconv.use_backend(backend):
            loss = F.cross_entropy(ours(xs[idx]), ys[idx])
            loss.backward()
        opt.zero_grad()
        ref = F.cross_entropy(eager(xs[idx]), ys[idx])
        ref.backward()
        assert abs(loss.item() - ref.item()) <= tol * max(1.0, abs(ref.item())), \
            f"step {i}: loss {loss.item()} vs eager {ref.item()}"
        for (name, p), q in zip(ours.named_parameters(), eager.parameters()):
            err = reference.rel_error(p.grad, q.grad)
            assert err <= tol, f"step {i}: {name}.grad relative error {err:.2e}"
        opt.step()
        losses.append(ref.item())
    return losses


# torch: five epochs on the CPU; triton: a dozen steps through the interpreter.
@pytest.mark.parametrize("backend,steps,tol", [("torch", 110, 1e-4),
                                               pytest.param("triton", 12, 1e-3, marks=pytest.mark.check)])
def test_digits_training_tracks_eager(backend, steps, tol):
    xs, ys, xt, yt = _digits()
    torch.manual_seed(0)
    ours = FastNet().to(DEVICE)
    eager = EagerNet().to(DEVICE)
    eager.load_state_dict(ours.state_dict())
    init = {k: v.clone() for k, v in ours.state_dict().items()}
    tracked = _track(ours, eager, backend, xs, ys, steps, tol)
    assert sum(tracked[-3:]) / 3 < 0.9 * tracked[0], "the loss did not fall"
    if backend == "torch":  # five epochs of fastconv's own training: it has learned the digits
        ours.load_state_dict(init)
        losses = _train(ours, backend, xs, ys, steps)
        assert sum(losses[-5:]) / 5 < 0.3 * losses[0]
        with torch.no_grad():
            accuracy = (ours.eval()(xt).argmax(1) == yt).float().mean().item()
        assert accuracy > 0.85, f"test accuracy {accuracy:.2f}"
