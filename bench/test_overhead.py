"""Python-side cost of a call (pytest-benchmark): each fused op against the eager
calls it replaces, on tiny CPU tensors where dispatch dominates. A regression in
per-call overhead shows here. Run with timing:
    python -m pytest bench/test_overhead.py --benchmark-enable
(CI runs each once, untimed, as a smoke test.)"""
import pytest
import torch
import torch.nn.functional as F

import fastconv

x = torch.randn(1, 8, 4, 4)
w = torch.randn(8, 8, 1, 1)
b = torch.randn(8)

CALLS = {
    "fastconv.conv1x1_relu": lambda: fastconv.conv1x1_relu(x, w, b),
    "eager conv2d+relu": lambda: torch.relu(F.conv2d(x, w, b)),
    "fastconv.residual_add": lambda: fastconv.residual_add(x, x),
    "eager add+relu": lambda: torch.relu(x + x),
    "fastconv.max_pool2d_same": lambda: fastconv.max_pool2d_same(x, 3, 2),
    "eager pad+max_pool2d": lambda: F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 3, 2),
}


@pytest.mark.parametrize("name", CALLS)
def test_call_overhead(benchmark, name):
    with torch.no_grad():
        benchmark(CALLS[name])
