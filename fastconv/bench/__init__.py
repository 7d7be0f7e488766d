"""`python -m fastconv.bench` (also `fastconv-bench`): every fused op against eager PyTorch and torch.compile.

For each (op, shape, dtype) and provider it reports the median time, the
achieved GB/s on the op's minimum traffic, the % of this card's measured copy
bandwidth, TFLOP/s, the ratio against eager and against compile, and the max
error against eager (a fast wrong kernel is a failure, not a result).

Timing on a GPU: triton.testing.do_bench (median, L2 flushed before each call).
Without a GPU: the torch backend against eager on the CPU (time.perf_counter
medians), and the Triton kernels checked through the interpreter at small sizes.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

from fastconv.bench.cases import model_shapes, op_cases  # noqa: E402
from fastconv.bench.cli import main  # noqa: E402
from fastconv.bench.models import run_models  # noqa: E402
from fastconv.bench.ops import run_ops  # noqa: E402
from fastconv.bench.report import plot  # noqa: E402

__all__ = ["main", "run_ops", "run_models", "model_shapes", "op_cases", "plot"]
