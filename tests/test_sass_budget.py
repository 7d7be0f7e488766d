"""The SASS budget of the CUDA kernels, read from the built module without a GPU (tests/sass.py).

Every kernel, sm_80 and sm_90: no local memory (no spills, no stack) and registers within the
occupancy it is designed for. The tensor-core GEMMs (sm_90, the GPUs this is tuned for): the
mma, ldmatrix and cp.async instructions they are built from, 16-byte epilogue stores, and a
mainloop K block (64 HMMA per warp) of at most MAINLOOP_BUDGET instructions: the TF32 rounding
done once per element in shared memory, the 32-bit load path and the skipped K steps past Cin
(issue 20) stay done.
"""
import os
import re

import pytest

from tests import sass

SO = sass.module_path()
pytestmark = pytest.mark.skipif(SO is None or sass.cuobjdump() is None,
                                reason="the extension fastconv._C is not built, or cuobjdump is missing")

SM_REGISTERS = 65536  # per SM on sm_80 and sm_90; a warp's registers come in blocks of 256 (8 a thread)


def tile_shapes():
    """{name: (bm, bn, warps_m, warps_n, stages, blocks_per_sm, x_copy_bytes)} of csrc/gemm_tile_size.h."""
    with open(os.path.join(sass.ROOT, "csrc", "gemm_tile_size.h")) as f:
        found = re.findall(r"inline constexpr TileShape (\w+)\{([^}]*)\};", f.read())
    return {name: tuple(int(v) for v in fields.split(",")) for name, fields in found}


TILES = tile_shapes()
GEMM = re.compile(r"conv1x1_mma<GemmConfig<(\w+),(\w+)>,(\w+)>$")


def register_budget(name):
    """(most registers a thread may use, why): a GEMM tile's from its threads and the blocks per SM
    its shared memory allows (gemm_tile_size.h); the other kernels' by their design."""
    m = GEMM.match(name)
    if m:
        bm, bn, wm, wn, _, blocks, _ = TILES[m.group(2)]
        threads = 32 * wm * wn
        limit = min(255, SM_REGISTERS // (threads * blocks) // 8 * 8)
        return limit, f"{blocks} blocks of {threads} threads per SM ({m.group(2)})"
    family = name.split("<")[0]
    budgets = {
        # __launch_bounds__(256, 1): one 256-thread block per SM is what the fallbacks are built for
        "conv1x1_wmma": (255, "1 block of 256 threads per SM (fallback)"),
        "conv1x1_simt": (255, "1 block of 256 threads per SM (fallback)"),
        # streaming kernels: at least 4 blocks of 256 threads (half the SM's warps) to hide DRAM latency
        "relu_grad_bias_kernel": (64, "4 blocks of 256 threads per SM"),
        "binary_dense": (64, "4 blocks of 256 threads per SM"),
        "binary_strided": (64, "4 blocks of 256 threads per SM"),
        # the pools' 2-row bands of vector accumulators (csrc/README.md): 2 blocks of 256
        "pool_fwd": (128, "2 blocks of 256 threads per SM"),
        "pool_bwd": (128, "2 blocks of 256 threads per SM"),
    }
    assert family in budgets, f"{name}: a new kernel needs a register budget here"
    return budgets[family]


# Instructions of one mainloop K block (one iteration: 64 HMMA per warp) on sm_90, by element
# type and layout (x copy bytes for NCHW). Measured on the build of issue 20: 16-bit NHWC 169
# (128x128) / 184 (128x64, 64x128), NCHW 203 / 255 (8-byte copies: twice the cp.async), TF32 245
# / 299 / 300; before it, 264 (16-bit 128x128), 323 (NCHW) and 461 (TF32 128x128: each value
# rounded to TF32 by every warp reading it, 2 instructions each).
MAINLOOP_BUDGET = {("__half", "NhwcLayout", 16): 190, ("__nv_bfloat16", "NhwcLayout", 16): 190,
                   ("__half", "NchwLayout", 16): 210, ("__nv_bfloat16", "NchwLayout", 16): 210,
                   ("__half", "NchwLayout", 8): 260, ("__nv_bfloat16", "NchwLayout", 8): 260,
                   ("float", "NhwcLayout", 16): 300}
MMA_OPCODE = {"__half": "HMMA.16816.F32 ", "__nv_bfloat16": "HMMA.16816.F32.BF16", "float": "HMMA.1688.F32.TF32"}


def test_every_kernel_within_registers_and_no_local_memory():
    kernels = sass.kernels(SO)
    assert {k.arch for k in kernels} == {"sm_80", "sm_90"}
    for k in kernels:
        assert k.stack == 0 and k.local == 0, f"{k.name} ({k.arch}): {k.stack} B stack, {k.local} B local (spills)"
        limit, why = register_budget(k.name)
        assert k.registers <= limit, f"{k.name} ({k.arch}): {k.registers} registers > {limit} ({why})"


def test_gemm_kernels_and_their_mainloop():
    bodies = sass.sass(SO, "sm_90", b"conv1x1_mma")
    gemms = {name: body for name, body in bodies.items() if GEMM.match(name)}
    # NHWC: 3 tiles x (fp16, bf16, TF32); NCHW: 16- and 8-byte copies x (fp16, bf16)
    assert len(gemms) == 13, sorted(gemms)
    for name, body in gemms.items():
        dtype, tile, layout = GEMM.match(name).groups()
        text = [ins for _, ins in body]
        assert sass.count(text, MMA_OPCODE[dtype]) > 0, f"{name}: no {MMA_OPCODE[dtype]}"
        for op in ("LDSM", "LDGSTS", "STG.E.128"):  # ldmatrix, cp.async, 16-byte epilogue stores
            assert sass.count(text, op) > 0, f"{name}: no {op}"
        if layout == "NchwLayout":  # x[n] is turned into B fragments by ldmatrix.trans
            assert sass.count(text, "LDSM.16.MT88.4") > 0, name
        assert sass.count(text, "LDL") + sass.count(text, "STL") == 0, f"{name}: local-memory traffic"
        loop = sass.mainloop(body)
        assert loop is not None and sass.count(loop, "HMMA") == 64, f"{name}: no K-block loop of 64 HMMA"
        budget = MAINLOOP_BUDGET[(dtype, layout, TILES[tile][6])]
        assert len(loop) <= budget, f"{name}: mainloop K block of {len(loop)} instructions > {budget}"


def test_wmma_fallbacks_use_tensor_cores():
    bodies = sass.sass(SO, "sm_90", b"conv1x1_wmma")
    wmma = [name for name in bodies if name.startswith("conv1x1_wmma<")]
    assert sorted(wmma) == ["conv1x1_wmma<__half>", "conv1x1_wmma<__nv_bfloat16>", "conv1x1_wmma<float>"]
    for name in wmma:
        assert sass.count([ins for _, ins in bodies[name]], "HMMA") > 0, name
