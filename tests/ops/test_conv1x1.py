import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv import reference
from tests.conftest import (
    BACKENDS,
    DEVICE,
    DTYPES,
    LAYOUTS,
    assert_close,
    assert_layout_like_eager,
    gpu,
    grad_away_from_relu_edge,
    make_input,
    unchanged,
)

# (N, Cin, H, W, Cout, stride): odd channel counts, 1x1 and odd spatial sizes,
# Cin > BLOCK_K (several K steps), Cout > BLOCK_N (several column tiles), stride 2.
CASES = [(2, 3, 7, 7, 17, 1), (1, 17, 13, 13, 129, 1), (2, 129, 1, 1, 3, 1),
         (1, 17, 13, 13, 5, 2), (3, 64, 7, 13, 32, 2)]


def _weight(cout, cin, dtype, form):
    w = torch.randn(cout, cin, 1, 1, device=DEVICE).to(dtype) / cin ** 0.5
    if form == "2d":
        return w[:, :, 0, 0]
    if form == "transposed":  # a non-contiguous [Cout, Cin] view
        return torch.randn(cin, cout, device=DEVICE).to(dtype).t() / cin ** 0.5
    return w


def _run(case, dtype, layout, backend, bias_relu, wform="4d"):
    N, cin, H, W, cout, stride = case
    has_bias, relu, *res_layout = bias_relu
    x = make_input((N, cin, H, W), dtype, layout, requires_grad=True)
    w = _weight(cout, cin, dtype, wform).requires_grad_()
    b = torch.randn(cout, device=DEVICE).to(dtype).requires_grad_() if has_bias else None
    out_shape = (N, cout, (H - 1) // stride + 1, (W - 1) // stride + 1)
    r = make_input(out_shape, dtype, res_layout[0], requires_grad=True) if res_layout else None
    tensors = [t for t in (x, w, b, r) if t is not None]
    inputs = [t.detach().clone() for t in tensors]
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if has_bias else None
    r64 = r.detach().double().requires_grad_() if r is not None else None
    ref = reference.conv1x1_relu(x64, w64, b64, stride, relu, r64)
    with fastconv.use_backend(backend):
        out = fastconv.conv1x1_relu(x, w, b, stride=stride, relu=relu, residual=r)
        grad = grad_away_from_relu_edge(out, reference.conv1x1_relu(x64, w64, b64, stride, False, r64), dtype)
        out.backward(grad)
    ref.backward(grad.double())
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close(out, ref, dtype)
    assert_close(x.grad, x64.grad, dtype, "x.grad")
    assert_close(w.grad, w64.grad, dtype, "weight.grad")
    if has_bias:
        assert_close(b.grad, b64.grad, dtype, "bias.grad")
    if r is not None:
        assert_close(r.grad, r64.grad, dtype, "residual.grad")
    assert all(unchanged(a, t.detach()) for a, t in zip(inputs, tensors))
    return x, w, b, out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
# (bias, relu[, residual layout]): the residual is added in the epilogue, before the ReLU
@pytest.mark.parametrize("bias_relu", [(True, True), (False, True), (True, False),
                                       (True, True, "strided"), (False, False, "nhwc")])
def test_forward_backward(backend, dtype, case, layout, bias_relu, poison):
    x, w, b, out = _run(case, dtype, layout, backend, bias_relu)
    with torch.no_grad():
        eager = F.conv2d(x, w, b, stride=case[5])
    assert_layout_like_eager(out, eager)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wform", ["2d", "transposed"])
def test_weight_forms(backend, wform, poison):
    _run(CASES[0], torch.float32, "nhwc", backend, (True, True), wform)


@pytest.mark.parametrize("backend", BACKENDS)
# fp16 channels_last with 16-byte pixel rows: the CUDA backend's tensor-core GEMM; fp32 NCHW its SIMT one
@pytest.mark.parametrize("layout, dtype", [("nchw", torch.float32), ("nhwc", torch.float16)])
def test_zero_batch_and_nan(backend, layout, dtype):
    """N = 0: an empty output of the right shape. A NaN in x: NaN in every output channel of
    its pixel (through the ReLU) and nowhere else; every other output as float64 gives."""
    w = (torch.randn(5, 8, 1, 1, device=DEVICE) / 8 ** 0.5).to(dtype)
    b = torch.randn(5, device=DEVICE).to(dtype)
    x = make_input((1, 8, 3, 3), dtype, layout)
    x[0, 2, 1, 1] = float("nan")
    with fastconv.use_backend(backend):
        empty = fastconv.conv1x1_relu(make_input((0, 8, 3, 3), dtype, layout), w, b)
        out = fastconv.conv1x1_relu(x, w, b)
    assert empty.shape == (0, 5, 3, 3)
    nan_at = torch.zeros(1, 5, 3, 3, dtype=torch.bool)
    nan_at[..., 1, 1] = True
    assert torch.equal(torch.isnan(out).cpu(), nan_at)
    assert_close(out.nan_to_num(7.0), reference.conv1x1_relu(x, w, b).nan_to_num(7.0), dtype)


@gpu
@pytest.mark.parametrize("backend", ["triton", pytest.param("cuda", marks=gpu)])
def test_fp32_follows_cudnn_tf32_flag(backend):
    """allow_tf32=True: TF32 error (~1e-4..1e-3); False: IEEE fp32 (< 1e-5), as eager."""
    x = make_input((8, 256, 14, 14), torch.float32, "nhwc")
    w = torch.randn(128, 256, 1, 1, device=DEVICE) / 16
    ref = reference.conv1x1_relu(x, w)
    with fastconv.use_backend(backend):
        torch.backends.cudnn.allow_tf32 = False
        assert reference.rel_error(fastconv.conv1x1_relu(x, w), ref) < 1e-5
        torch.backends.cudnn.allow_tf32 = True
        err = reference.rel_error(fastconv.conv1x1_relu(x, w), ref)
    assert 1e-5 < err < 3e-3


def test_errors():
    x = torch.randn(2, 3, 4, 4)
    w = torch.randn(5, 3, 1, 1)
    cases = [
        ((x[0], w), ValueError, "x must be a 4-D"),
        ((x, w[0]), ValueError, "weight must be a"),
        ((x, torch.randn(5, 3, 3, 3)), ValueError, "weight must be a 1x1 kernel"),
        ((x, torch.randn(5, 4, 1, 1)), ValueError, "weight has 4 input channels but x has 3"),
        ((x, w, torch.randn(4)), ValueError, "bias must have 5 elements"),
        ((x, w, torch.randn(5, 1)), ValueError, "bias must be a 1-D"),
        ((x, w.half()), TypeError, "weight has dtype"),
        ((x, w, torch.randn(5).double()), TypeError, "bias has dtype"),
        ((x.long(), w.long()), TypeError, "x must be a floating-point"),
        ((x, "w"), TypeError, "weight must be a torch.Tensor"),
        ((x, w, None, 1, True, torch.randn(2, 5, 4, 3)), ValueError, "residual must have the output's shape"),
        ((x, w, None, 2, True, torch.randn(2, 5, 4, 4)), ValueError, "residual must have the output's shape"),
        ((x, w, None, 1, True, torch.randn(2, 5, 4, 4).half()), TypeError, "residual has dtype"),
        ((x, w, None, 1, True, 3.0), TypeError, "residual must be a torch.Tensor"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fastconv.conv1x1_relu(*args)
    for stride in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="stride must be a positive int"):
            fastconv.conv1x1_relu(x, w, stride=stride)


@gpu
def test_mixed_devices_error():
    with pytest.raises(ValueError, match="weight is on"):
        fastconv.conv1x1_relu(torch.randn(1, 3, 4, 4), torch.randn(5, 3, 1, 1, device="cuda"))


@pytest.mark.check
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck_and_gradcheck(backend):
    x = make_input((2, 5, 5, 5), torch.float64, "nhwc", requires_grad=True)
    w = torch.randn(4, 5, 1, 1, dtype=torch.float64, device=DEVICE, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    with fastconv.use_backend(backend):
        r = make_input((2, 4, 3, 3), torch.float64, "strided", requires_grad=True)
        for args in [(x, w, b, 2, True), (x, w, None, 1, False), (x, w[:, :, 0, 0], b, 1, True),
                     (x, w, b, 2, True, r), (x, w, None, 2, False, r)]:
            torch.library.opcheck(torch.ops.fastconv.conv1x1_relu.default, args)
        y = fastconv.conv1x1_relu(x, w).detach()
        torch.library.opcheck(torch.ops.fastconv.relu_bias_backward.default, (torch.randn_like(y), y, True))
        assert torch.autograd.gradcheck(lambda *a: fastconv.conv1x1_relu(*a, stride=2), (x, w, b))
        assert torch.autograd.gradcheck(
            lambda *a: fastconv.conv1x1_relu(a[0], a[1], None, 2, True, a[2]), (x, w, r))


# --- the Triton GEMM's configurations, each pinned (the interpreter never autotunes) ---------

import importlib  # noqa: E402

from fastconv._triton.conv1x1 import GemmConfig  # noqa: E402

tconv = importlib.import_module("fastconv._triton.conv1x1")  # the package exports a function of that name

# the tuner's candidates, plus small tiles where split-K leaves a ragged last slice (K=80 in
# BLOCK_K=16 steps over 4 splits -> 3 slices of 32, 32, 16) and a one-row group order
CONFIGS = tconv.gemm_configs() + [GemmConfig(16, 16, 16, 1, 4, 4, 2), GemmConfig(32, 16, 32, 2, 2, 4, 3)]


def _pinned_run(config, dtype, layout, epilogue, use_tma=True, shape=(2, 80, 5, 5, 24, 1)):
    N, cin, hw, _, cout, stride = shape
    has_bias, relu, res_layout = epilogue
    x = make_input((N, cin, hw, hw), dtype, layout)
    w = _weight(cout, cin, dtype, "4d")
    b = torch.randn(cout, device=DEVICE).to(dtype) if has_bias else None
    out_shape = (N, cout, (hw - 1) // stride + 1, (hw - 1) // stride + 1)
    r = make_input(out_shape, dtype, res_layout) if res_layout else None
    out = fastconv._checks.empty_like_layout(x, out_shape).fill_(float("nan"))
    tconv.launch(x, w, b, out, stride, relu, False, r, config, use_tma)
    ref = reference.conv1x1_relu(*[t.double() if t is not None else None for t in (x, w, b)],
                                 stride, relu, r.double() if r is not None else None)
    assert_close(out, ref, dtype)
    return x, w, out


# fp32 pins only the configs whose pipeline fits an H100/H200 block's shared memory at 4 bytes
# per element (the others raise OutOfResources at launch; the pruner never picks them)
EVERY_CONFIG = [pytest.param(c, d, id="{}x{}x{}-g{}-split{}-w{}-s{}".format(*c.as_dict().values()) + f"-{d}")
                for d in (torch.float32, torch.float16) for c in CONFIGS
                if tconv.pipeline_smem(c, d.itemsize) <= tconv.SMEM_BYTES_SM90]


@pytest.mark.parametrize("config, dtype", EVERY_CONFIG)
def test_every_config(config, dtype):
    """Each candidate on a dense NHWC input (the TMA path where descriptors exist; IEEE fp32
    reads through pointers) and, in fp32, on an NCHW one (pointer loads), with bias + residual
    + ReLU."""
    x, w, _ = _pinned_run(config, dtype, "nhwc", (True, True, "nhwc"))
    assert (tconv._tma_views(x, w[:, :, 0, 0], 1, config) is not None) == (tconv.TensorDescriptor is not None)
    if dtype == torch.float32:
        _pinned_run(config, dtype, "nchw", (True, True, "strided"))


@pytest.mark.parametrize("epilogue, use_tma", [((True, True, None), True), ((False, False, None), True),
                                               ((True, False, "strided"), True), ((False, True, "nchw"), True),
                                               ((True, True, "nhwc"), False)])  # the pointer fallback
@pytest.mark.parametrize("split_k", [1, 3])
def test_epilogues_split_k_and_tma_fallback(epilogue, use_tma, split_k):
    """Every epilogue variant through the fused epilogue and split-K's reduction kernel (TMA
    loads where x allows them), and the pointer fallback on a TMA-able input; odd Cout, 1x1 and
    5x5 images, stride 2 (pointer loads)."""
    config = GemmConfig(16, 16, 16, 2, split_k, 4, 2)
    for shape in [(2, 48, 5, 5, 17, 1), (2, 48, 1, 1, 3, 1), (1, 64, 5, 5, 5, 2)]:
        _pinned_run(config, torch.float16, "nhwc", epilogue, use_tma, shape)


def test_split_k_is_deterministic():
    config = GemmConfig(16, 16, 16, 1, 4, 4, 2)
    x, w, first = _pinned_run(config, torch.float32, "nhwc", (True, True, None))
    again = torch.empty_like(first)
    tconv.launch(x, w, None, again, 1, True, False, None, config)
    tconv.launch(x, w, None, first, 1, True, False, None, config)
    assert torch.equal(first, again)


def test_tma_needs_dense_aligned_nhwc():
    c = GemmConfig(16, 16, 16)
    w = torch.randn(8, 16, device=DEVICE)
    ok = make_input((1, 16, 3, 3), torch.float32, "nhwc")
    assert (tconv._tma_views(ok, w, 1, c) is not None) == (tconv.TensorDescriptor is not None)
    for x, stride, w2 in [(make_input((1, 16, 3, 3), torch.float32, "nchw"), 1, w),  # not NHWC
                          (ok, 2, w),                                               # strided conv
                          (make_input((1, 3, 3, 3), torch.float32, "nhwc"), 1, w[:, :3]),  # 12-byte rows
                          (ok, 1, w.t().contiguous().t()),                           # column-major w
                          (ok.double(), 1, w.double())]:                             # no fp64 dot
        assert tconv._tma_views(x, w2, stride, c) is None


def test_config_prune_rule():
    configs = tconv.gemm_configs()
    assert all(16 <= c.block_k <= 128 and c.block_m <= 256 and c.block_n <= 256 and 3 <= c.num_stages <= 5
               and c.num_warps in (4, 8) for c in configs)
    # fp32 doubles the pipeline's bytes: 256x128x64 in 3 stages (288 KiB) no longer fits
    big = GemmConfig(256, 128, 64, 8, 1, 8, 3)
    assert big in tconv.early_config_prune([big], 100352, 256, 1024, 2, limit=9)
    assert not tconv.early_config_prune([big], 100352, 256, 1024, 4)
    # split-K only where the plain tiles do not fill 132 SMs and each slice keeps 2 K steps
    split = GemmConfig(128, 128, 64, 8, 2, 8, 4)
    assert tconv.early_config_prune([split], 6272, 256, 1024, 2)        # 98 tiles
    assert not tconv.early_config_prune([split], 100352, 256, 1024, 2)  # 1568 tiles
    assert not tconv.early_config_prune([split], 6272, 256, 128, 2)     # 64 channels per slice
    # a short list per shape class, never empty at the reference shapes
    for m, n, k in [(401408, 64, 256), (6272, 384, 832), (6272, 2048, 512), (25088, 1024, 256)]:
        assert 1 <= len(tconv.early_config_prune(configs, m, n, k, 2)) <= 6


def test_choose_config_in_the_interpreter_is_the_rule_or_the_pin():
    x = make_input((2, 16, 3, 3), torch.float32, "nhwc")
    w = torch.randn(8, 16, 1, 1, device=DEVICE)
    out = torch.empty(2, 8, 3, 3, device=DEVICE)
    config, why = tconv.choose_config(x, w, out, 1, True, None)
    assert config == tconv.heuristic_config(18, 8, 16, torch.float32) and why.startswith("rule")
    pin = GemmConfig(16, 16, 16, 1, 2, 4, 2)
    with tconv.pinned_config(pin):
        assert tconv.choose_config(x, w, out, 1, True, None) == (pin, "pinned")
        with fastconv.use_backend("triton"):
            y = fastconv.conv1x1_relu(x, w)
    assert tconv.choose_config(x, w, out, 1, True, None)[1].startswith("rule")
    assert_close(y, reference.conv1x1_relu(x.double(), w.double()), torch.float32)


@pytest.mark.parametrize("relu", [True, False])
def test_every_grad_config(relu):
    """The backward's candidates, each pinned: masked gradient and fp32 bias sums; odd C,
    a strided gradient, 7x7 pixels in several pixel tiles."""
    grad = make_input((2, 33, 7, 7), torch.float16, "strided")
    y = make_input((2, 33, 7, 7), torch.float16, "nhwc")
    ref = torch.where(y.double() <= 0, 0.0, grad.double()) if relu else grad.double()
    for config in tconv.grad_configs():
        g = torch.full_like(y, float("nan"))
        bias_grad = torch.zeros(33, device=DEVICE)
        with tconv.pinned_config(config):
            assert tconv.choose_grad_config(grad, relu) == (config, "pinned")
            tconv.relu_grad_bias(grad, y, g, bias_grad, relu)
        assert_close(g, ref, torch.float16)
        assert_close(bias_grad, ref.sum((0, 2, 3)), torch.float16, "bias_grad")


def test_autotune_keeps_the_fastest_and_skips_failing_configs(monkeypatch):
    """The tuning loop on the CPU: a fake clock (each config runs once in the interpreter) that
    makes the second candidate fastest and the third fail to launch."""
    import triton.testing
    timed = []

    def fake_bench(fn, warmup, rep, return_mode):
        timed.append(fn)
        if len(timed) == 3:
            raise RuntimeError("out of resources")
        fn()
        return 1.0 if len(timed) != 2 else 0.5

    monkeypatch.setattr(triton.testing, "do_bench", fake_bench)
    monkeypatch.setattr(tconv, "_device_limits", lambda device: (tconv.SMEM_BYTES_SM90, 132))
    x = make_input((2, 128, 12, 12), torch.float16, "nhwc")
    w = _weight(128, 128, torch.float16, "4d")
    out = torch.empty(2, 128, 12, 12, dtype=torch.float16, device=DEVICE)
    best, times = tconv.autotune(x, w, out, 1, True, None, limit=4)
    short = tconv.early_config_prune(tconv.gemm_configs(), 288, 128, 128, 2, limit=4)
    assert len(timed) == len(short) == 4 and list(times) == [c for i, c in enumerate(short) if i != 2]
    assert best == short[1]


@gpu
def test_every_config_compiled():
    """Every candidate compiled for this GPU (bf16: TMA loads; one compile each), at a shape
    with several tiles and K steps, and split-K's slices."""
    for config in CONFIGS:
        _pinned_run(config, torch.bfloat16, "nhwc", (True, True, "nhwc"), shape=(4, 256, 14, 14, 320, 1))


@gpu
def test_first_call_tunes_once_per_shape_class(monkeypatch):
    monkeypatch.setattr(tconv, "AUTOTUNE_ON_FIRST_USE", True)
    x = make_input((8, 256, 14, 14), torch.bfloat16, "nhwc")
    w = torch.randn(128, 256, 1, 1, device=DEVICE).to(torch.bfloat16)
    tconv._tuned.clear()
    with fastconv.use_backend("triton"):
        fastconv.conv1x1_relu(x, w)
        out = torch.empty(6, 128, 14, 14, device=DEVICE, dtype=torch.bfloat16)
        config, why = tconv.choose_config(x[:6], w, out, 1, True, None)  # batch 6: same class
    assert why in ("tuned in this process", "tuning table") and len(tconv._tuned) <= 1
