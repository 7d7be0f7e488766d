"""The CUDA C++ extension: built and importable wherever nvcc is (CI included), a clear
error without a GPU, its conv1x1 dispatch rule and the sanitizer script's reach over every
kernel of the module (both checked without a GPU; the SASS budget is tests/test_sass_budget.py),
the GEMM's shape classes, stage refills and tails against float64 (on a GPU), and a short run
for compute-sanitizer. The other numerical checks of the "cuda" backend are the shared,
backend-parametrised op tests."""
import importlib.util
import os
import shutil

import pytest
import torch

import fastconv
from fastconv import _cuda, reference
from tests import sass
from tests.conftest import DEVICE, HAS_CUDA, TOL, gpu, make_input
from tests.ops.helpers import pool_against_float64

HAS_NVCC = shutil.which("nvcc") is not None or os.path.exists("/usr/local/cuda/bin/nvcc")
built = pytest.mark.skipif(_cuda._C is None, reason="the extension fastconv._C is not built")


@pytest.mark.skipif(not HAS_NVCC, reason="nvcc not found: the extension is not built")
def test_extension_is_built_and_imports():
    assert _cuda._C is not None, _cuda._IMPORT_ERROR
    for name in ("binary", "conv1x1", "conv1x1_kernel_name", "relu_grad_bias", "pool_forward",
                 "pool_backward", "device_count"):
        assert hasattr(_cuda._C, name)


@pytest.mark.skipif(HAS_CUDA or not HAS_NVCC, reason="checks the behaviour without a GPU")
def test_without_gpu_errors_are_clear():
    assert _cuda.unavailable_reason().startswith(("no NVIDIA driver found", "no usable GPU", "no GPU found"))
    assert "cuda" not in fastconv.available_backends()
    with pytest.raises(RuntimeError, match="fastconv CUDA error in cudaGetDeviceCount: cudaError"):
        _cuda._C.device_count()


def _conv_tensors(N, cin, H, W, cout, stride, dtype, layout, device=DEVICE):
    x = make_input((N, cin, H, W), dtype, layout, device=device)
    w = torch.randn(cout, cin, 1, 1, device=device).to(dtype) / cin ** 0.5
    out = fastconv._checks.empty_like_layout(x, (N, cout, (H - 1) // stride + 1, (W - 1) // stride + 1))
    return x, w, out


def _kernel(x, w, out, stride, dtype, tf32=False, sms=132, residual=None):
    return _cuda.conv1x1_kernel_name(x, w, None, out, stride, True, tf32, residual, sms)


@built
@pytest.mark.parametrize("shape, layout, dtype, tf32, expected", [
    # channels_last 16-bit, stride 1 and 2: the tensor-core GEMM; tile by shape class
    ((2, 64, 7, 13, 32, 2), "nhwc", torch.float16, False, "mma_128x64"),   # Cout <= 64
    ((2, 64, 7, 7, 512, 1), "nhwc", torch.bfloat16, False, "mma_64x128"),  # few pixels
    ((8, 64, 96, 96, 128, 1), "nhwc", torch.bfloat16, False, "mma_128x128"),
    ((2, 64, 7, 7, 256, 1), "nhwc", torch.float32, True, "mma_64x128"),    # TF32
    ((2, 64, 7, 7, 256, 1), "nhwc", torch.float32, False, "simt"),         # IEEE fp32
    ((2, 64, 7, 7, 256, 1), "nhwc", torch.float64, False, "simt"),
    ((2, 64, 8, 7, 256, 1), "nchw", torch.bfloat16, False, "mma_nchw_128x128"),  # NCHW GEMM
    ((2, 64, 14, 14, 256, 1), "nchw", torch.float16, False, "mma_nchw8_128x128"),  # 392-byte planes
    ((2, 64, 7, 7, 256, 1), "nchw", torch.float16, False, "wmma"),         # 98-byte channel planes
    ((2, 64, 8, 8, 256, 2), "nchw", torch.float16, False, "wmma"),         # NCHW, stride 2
    ((2, 64, 8, 8, 256, 1), "nchw", torch.float32, True, "wmma"),          # NCHW TF32
    ((2, 17, 7, 7, 256, 1), "nhwc", torch.float16, False, "wmma"),         # 34-byte pixel rows
    ((2, 64, 7, 7, 256, 1), "strided", torch.float16, False, "wmma"),      # channel stride 2
])
def test_conv1x1_dispatch_rule(shape, layout, dtype, tf32, expected):
    x, w, out = _conv_tensors(*shape, dtype, layout, device="cpu")
    assert _kernel(x, w, out, shape[5], dtype, tf32) == expected


@built
def test_conv1x1_dispatch_alignment():
    """16-byte rows or no GEMM: a misaligned base or pixel stride takes the fallback."""
    x, w, out = _conv_tensors(2, 64, 5, 5, 96, 1, torch.float16, "nhwc", device="cpu")
    assert _kernel(x, w, out, 1, torch.float16).startswith("mma")
    shifted = torch.empty(x.numel() + 1, dtype=x.dtype)[1:].as_strided(x.shape, x.stride())
    assert _kernel(shifted, w, out, 1, torch.float16) == "wmma"
    w_rows = torch.empty(96, 72, dtype=w.dtype)[:, :64]  # 144-byte weight rows
    assert _kernel(x, w_rows, out, 1, torch.float16) == "mma_64x128"
    w_odd = torch.empty(96, 68, dtype=w.dtype)[:, :64]   # 136-byte weight rows
    assert _kernel(x, w_odd, out, 1, torch.float16) == "wmma"
    sliced = torch.empty(2, 5, 5, 32, dtype=x.dtype).permute(0, 3, 1, 2)[:, :20]  # C = 20 of 32
    assert _kernel(sliced, w[:, :20], out, 1, torch.float16).startswith("mma")


def _sanitizer():
    """bench/sanitize_cuda.py as a module (its cases and the kernels each launches)."""
    spec = importlib.util.spec_from_file_location(
        "sanitize_cuda", os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench", "sanitize_cuda.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@built
@pytest.mark.skipif(sass.cuobjdump() is None, reason="cuobjdump not found")
def test_sanitizer_cases_reach_every_kernel():
    """Every kernel in the built module (both architectures) is launched by some case of the
    sanitizer script, so memcheck and racecheck see it: a new kernel without a case fails here."""
    san = _sanitizer()
    covered = set()
    for name, op, args in san.cases():
        covered |= san.kernels_of(op, args, san.DTYPES[name.split()[-2]][1])
    module = {k.name for k in sass.kernels(sass.module_path())}
    assert not module - covered, f"kernels no case of bench/sanitize_cuda.py launches: {sorted(module - covered)}"
    assert not covered - module, f"cases name kernels the module lacks: {sorted(covered - module)}"


@gpu
def test_sanitizer_cases_launch_the_kernels_they_name():
    """The profiler's record of what each sanitizer case launches is what the case names (the
    rules kernels_of writes out are the extension's)."""
    from torch.profiler import ProfilerActivity, profile

    san = _sanitizer()
    sms = torch.cuda.get_device_properties(DEVICE).multi_processor_count
    for name, op, args in san.cases():
        tf32 = san.DTYPES[name.split()[-2]][1]
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            san.run_case(op, args, tf32)
        launched = {sass.short_name(e.name) for e in prof.events() if "fastconv::" in e.name}
        assert launched == san.kernels_of(op, args, tf32, sms), name


def _gemm_case(N, cin, H, W, cout, stride, dtype, tf32, bias_stride=1, residual=None, x=None):
    if x is None:
        x = make_input((N, cin, H, W), dtype, "nhwc")
    # weight rows padded to 16 bytes, as the GEMM needs (a contiguous one where Cin allows)
    w = (torch.randn(cout, -(-cin // 8) * 8, device=DEVICE) / cin ** 0.5).to(dtype)[:, :cin, None, None]
    b = torch.randn(cout * bias_stride, device=DEVICE).to(dtype)[::bias_stride]
    out_shape = (N, cout, (H - 1) // stride + 1, (W - 1) // stride + 1)
    r = make_input(out_shape, dtype, residual) if residual else None
    sms = torch.cuda.get_device_properties(DEVICE).multi_processor_count
    probe = fastconv._checks.empty_like_layout(x, out_shape)
    kernel = _cuda.conv1x1_kernel_name(x, w, b, probe, stride, True, tf32, r, sms)
    torch.backends.cudnn.allow_tf32 = tf32
    with fastconv.use_backend("cuda"):
        out = fastconv.conv1x1_relu(x, w, b, stride=stride, residual=r)
    torch.backends.cudnn.allow_tf32 = False
    ref = reference.conv1x1_relu(x.double(), w.double(), b.double(), stride, True,
                                 None if r is None else r.double())
    return kernel, reference.rel_error(out, ref)


GEMM_DTYPES = [(torch.float16, False), (torch.bfloat16, False), (torch.float32, True)]


@gpu
@pytest.mark.parametrize("dtype, tf32", GEMM_DTYPES)
@pytest.mark.parametrize("case, tile", [
    ((2, 200, 9, 7, 40, 2), "mma_128x64"),    # K tail inside a K block, N tail, stride 2
    ((3, 72, 11, 5, 136, 1), "mma_64x128"),   # two K blocks (the last one 8 deep), N tail of 8
    ((2, 16, 184, 184, 136, 1), "mma_128x128"),  # many tiles: grouped order, last group short
    ((1, 32, 13, 13, 17, 1), "mma_128x64"),   # Cout 17: scalar epilogue (34-byte output rows)
    # K = 320: 5 K blocks of 16-bit (10 of TF32), more than any tile's stages: every stage
    # refilled, on each tile (132 SMs: the 64x128 and 128x128 choices)
    ((2, 320, 9, 7, 40, 1), "mma_128x64"),
    ((3, 320, 11, 5, 136, 1), "mma_64x128"),
    ((8, 320, 40, 40, 1024, 1), "mma_128x128"),
])
def test_gemm_shape_classes(dtype, tf32, case, tile, poison):
    kernel, err = _gemm_case(*case, dtype, tf32)
    assert kernel == tile
    assert err <= (3e-3 if tf32 else TOL[dtype]), err


@gpu
@pytest.mark.parametrize("dtype, tf32", GEMM_DTYPES)
def test_gemm_views_bias_residual(dtype, tf32, poison):
    """A channel slice (a K tail of half a chunk), a strided bias, residuals NHWC and strided."""
    base = make_input((2, 32, 9, 9), dtype, "nhwc")
    for residual in ("nhwc", "strided"):
        kernel, err = _gemm_case(2, 20, 9, 9, 48, 1, dtype, tf32, bias_stride=3, residual=residual,
                                 x=base[:, :20] if dtype != torch.float32 else base[:, :18])
        assert kernel.startswith("mma")
        assert err <= (3e-3 if tf32 else TOL[dtype]), (residual, err)


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case, kernel", [
    ((2, 72, 7, 8, 136), "mma_nchw_128x128"),   # two K blocks, Cout tail of 8, one partial pixel block
    ((1, 200, 4, 6, 40), "mma_nchw_128x128"),   # K tail inside a K block, Cout 40
    ((3, 16, 16, 17, 8), "mma_nchw_128x128"),   # 272 pixels: 3 pixel blocks, the last partial
    ((2, 320, 8, 8, 136), "mma_nchw_128x128"),  # 5 K blocks: every stage refilled
    ((2, 320, 14, 14, 136), "mma_nchw8_128x128"),  # 392-byte planes: 8-byte copies, refills
    ((3, 40, 2, 6, 24), "mma_nchw8_128x128"),   # 12 pixels: most of the pixel block past the image
])
def test_gemm_nchw(dtype, case, kernel, poison):
    """The NCHW GEMM (ldmatrix.trans on pixel-major x): bias strided, residual NCHW and strided."""
    N, cin, H, W, cout = case
    x = make_input((N, cin, H, W), dtype, "nchw")
    for residual in ("nchw", "strided"):
        got, err = _gemm_case(N, cin, H, W, cout, 1, dtype, False, bias_stride=2, residual=residual, x=x)
        assert got == (kernel if residual == "nchw" else "wmma")
        assert err <= TOL[dtype], (residual, err)


@gpu
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_conv1x1_empty_inputs(layout):
    """H = 0 at stride 2 (C++ division truncates: (0 - 1) / 2 + 1 would be 1 row), N = 0, Cin = 0."""
    w = torch.randn(16, 8, 1, 1, device=DEVICE, dtype=torch.float16)
    with fastconv.use_backend("cuda"):
        for shape, stride in [((2, 8, 0, 5), 2), ((0, 8, 4, 4), 1)]:
            x = make_input(shape, torch.float16, layout)
            out = fastconv.conv1x1_relu(x, w, stride=stride)
            assert out.shape == (shape[0], 16, (shape[2] - 1) // stride + 1, (shape[3] - 1) // stride + 1)
        x = make_input((2, 0, 3, 3), torch.float16, layout)
        b = torch.randn(16, device=DEVICE, dtype=torch.float16)
        out = fastconv.conv1x1_relu(x, w[:, :0], b)  # no input channels: relu(bias)
    torch.cuda.synchronize()
    assert torch.equal(out, b.relu()[None, :, None, None].expand_as(out))


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("geometry", [(3, 2), (3, 1), ((3, 2), (2, 1)), (1, 2), (5, 3)])
def test_pools_vectorized(dtype, kind, geometry, poison):
    """The 16-byte channel-vector pools (channels_last, C a multiple of 16 bytes), forward and
    backward, beside the band logic's edges: H = 1, 7 (a short last band), 13."""
    for shape in [(2, 16, 7, 7), (1, 32, 13, 9), (2, 16, 1, 5)]:
        pool_against_float64(kind, geometry, shape, dtype, "nhwc", "cuda")


@gpu
def test_sanitizer_short_run():
    """Each CUDA kernel family once, forward and backward, at odd sizes, in one short pytest run
    (bench/sanitize_cuda.py is the sanitizer step's run over every kernel)."""
    with fastconv.use_backend("cuda"):
        for dtype in (torch.float16, torch.float32):
            x = make_input((2, 17, 7, 9), dtype, "strided", requires_grad=True)
            w = torch.randn(5, 17, 1, 1, device="cuda", dtype=dtype, requires_grad=True)
            b = torch.randn(5, device="cuda", dtype=dtype, requires_grad=True)
            y = fastconv.conv1x1_relu(x, w, b, stride=2)
            z = fastconv.residual_add(y, torch.randn_like(y))
            p = fastconv.max_pool2d_same(z, 3, 2) + fastconv.avg_pool2d_same(z, 3, 2)
            p.sum().backward()
            # the tensor-core GEMM (channels_last, 16-byte rows; TF32 for float32) and the
            # vectorized pools
            xv = make_input((2, 24, 5, 7), dtype, "nhwc", requires_grad=True)
            wv = torch.randn(70, 24, 1, 1, device="cuda", dtype=dtype)
            torch.backends.cudnn.allow_tf32 = True
            yv = fastconv.conv1x1_relu(xv, wv, b[:1].expand(70), stride=2, residual=torch.randn(
                2, 70, 3, 4, device="cuda", dtype=dtype).to(memory_format=torch.channels_last))
            torch.backends.cudnn.allow_tf32 = False
            if dtype == torch.float16:  # the NCHW GEMM (16-bit only)
                yv = yv.sum() + fastconv.conv1x1_relu(make_input((2, 24, 4, 6), dtype, "nchw"), wv).sum()
            qv = fastconv.max_pool2d_same(xv, 3, 2).sum() + fastconv.avg_pool2d_same(xv, 3, 1).sum()
            (yv.sum() + qv).backward()
            torch.cuda.synchronize()
            assert reference.rel_error(y, reference.conv1x1_relu(x, w, b, 2)) < 2e-3
