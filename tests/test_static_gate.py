"""The static gate: every Triton kernel fastconv can launch, compiled for the H100/H200 (sm_90)
on this machine with the launchers' own specialization (python -m fastconv.static), and the
budgets the compiled code must meet. Each test is one budget; a failure lists the offending
kernels with their op form, config, dtype, layout, epilogue and shape.

Marked `static` and `check` (make check; about 1-2 minutes of compiles on 2 cores per Triton
version). The GPU machine's Triton (bench/README.md) also carries `static_gpu_triton`: its
wheel is downloaded once with pip into $FASTCONV_CACHE (default ~/.cache/fastconv).
"""
import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.static, pytest.mark.check]

GPU_TRITON = "3.6.0"  # the GPU machine's Triton (bench/README.md)
SMEM_BYTES = 232448  # shared memory an H100/H200 block may use
GEMMS = ("_conv1x1_kernel", "_split_gemm_kernel")
EPILOGUES = GEMMS + ("_splitk_epilogue_kernel",)
MEMORY_BOUND = ("residual_add", "relu_backward", "max_pool", "avg_pool", "max_pool bwd", "avg_pool bwd")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=[
    "project", pytest.param(GPU_TRITON, marks=pytest.mark.static_gpu_triton)])
def rows(request, tmp_path_factory):
    """The everyday table's rows, compiled with the project's Triton or the GPU machine's."""
    out = tmp_path_factory.mktemp("static")
    command = [sys.executable, "-m", "fastconv.static", "--out", str(out)]
    command += ["--triton", request.param] if request.param != "project" else []
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # conftest sets it
    subprocess.run(command, env=env, cwd=ROOT, check=True)
    (table,) = out.glob("*.json")
    doc = json.loads(table.read_text())
    assert request.param == "project" or doc["triton"] == request.param
    return doc["rows"]


def _assert_none(rows, bad):
    """Every row meets the budget (`bad` is False), and there are rows to check."""
    assert rows, "no kernel of this kind in the table"
    offenders = [f"{r['kernel']} {r['form']} {r['config']} {r['dtype']} {r['layout']} {r['epilogue']} {r['shape']}"
                 for r in rows if bad(r)]
    assert not offenders, f"{len(offenders)} kernels: " + "; ".join(offenders)


def _widths(counts):
    return {int(b) for b in counts}


def test_every_kernel_is_compiled(rows):
    """A new kernel that no case launches would escape every budget below."""
    kernels = set()
    package = importlib.import_module("fastconv._triton")
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"fastconv._triton.{info.name}")
        kernels |= {name for name in vars(module) if name.startswith("_") and name.endswith("_kernel")}
    assert kernels and kernels <= {r["kernel"] for r in rows}


def test_shared_memory_fits_an_sm90_block(rows):
    _assert_none(rows, lambda r: r["selectable"] and r["shared"] > SMEM_BYTES)


def test_the_pruner_estimate_bounds_the_gemm_shared_memory(rows):
    """early_config_prune admits a config by pipeline_smem: it must not undercount (float64 is
    the rule's only, never pruned: gradcheck)."""
    gemm = [r for r in rows if r["kernel"] == "_conv1x1_kernel" and r["dtype"] != "fp64"]
    _assert_none(gemm, lambda r: r["shared"] > r["smem_estimate"])


def test_no_spills(rows):
    """Every selectable config in every dtype: fp16, bf16, TF32 and IEEE fp32 (its FMA tiles
    were chosen for this; float64 is gradcheck-only and not compiled)."""
    _assert_none(rows, lambda r: r["selectable"] and r["spill_stores"] + r["spill_loads"] > 0)


def test_wgmma_in_every_16bit_and_tf32_gemm(rows):
    gemms = [r for r in rows if r["kernel"] in GEMMS and r["dtype"] in ("bf16", "fp16", "tf32")]
    _assert_none(gemms, lambda r: r["wgmma"] == 0 or r["mma_sync"] > 0)


def test_16_byte_stores_on_aligned_nhwc_outputs(rows):
    """Cout % 8 == 0 (24, 40: EfficientNet, GoogLeNet 4b) as well as % 16."""
    aligned = [r for r in rows if r["kernel"] in EPILOGUES and r["layout"] == "nhwc" and r["align"] >= 8]
    _assert_none(aligned, lambda r: _widths(r["st"]) != {16})


def test_no_scalar_loads_in_the_nhwc_mainloop(rows):
    """Inside loops (the K loop): loads and cp.async copies of 8 bytes or more (16 where a
    thread's share of the tile allows: a 16 x 32 bf16 weight tile gives 128 threads 8 B each)."""
    loops = [r for r in rows if r["kernel"] in GEMMS and r["layout"] == "nhwc" and r["align"] >= 8]
    _assert_none(loops, lambda r: min(_widths(r["loop_ld"]) | _widths(r["cp_async"]) | {16}) < 8)


def test_16_byte_vectors_in_pools_and_the_residual_add(rows):
    aligned = [r for r in rows if r["form"] in MEMORY_BOUND and r["layout"] == "nhwc" and r["align"] >= 8]
    _assert_none(aligned, lambda r: _widths(r["ld"]) | _widths(r["st"]) != {16})


def test_no_atomics(rows):
    """Split-K and the bias gradient add in a fixed order: the same bits every run."""
    _assert_none(rows, lambda r: r["atomics"] > 0)
