"""What the Triton launchers promise beyond their numbers (tests/ops checks those): every launch
on its tensors' device, 64-bit offsets where 32 bits would wrap, TMA descriptors cached without
going stale or keeping tensors alive, and a bias gradient with the same bits every run."""
import contextlib
import gc
import importlib
import weakref

import pytest
import torch

import fastconv
from fastconv import reference
from fastconv._launcher_contract import BINARY_ADD_RELU
from fastconv._triton import elementwise, pool_conv1x1, pool_same, utils
from fastconv.ops.pool_same import same_geometry
from tests.conftest import DEVICE, HAS_CUDA, assert_close, gpu, make_input

tconv = importlib.import_module("fastconv._triton.conv1x1")  # the package exports a function of that name


def _every_launcher():
    """One call of each launcher (split-K included), on small CPU or CUDA tensors."""
    x = make_input((2, 32, 5, 5), torch.float32, "nhwc")
    w = torch.randn(16, 32, 1, 1, device=DEVICE)
    out = torch.empty(2, 16, 5, 5, device=DEVICE).to(memory_format=torch.channels_last)
    tconv.launch(x, w, None, out, 1, True, False, None, tconv.GemmConfig(16, 16, 16, 1, 2, 4, 2))
    tconv.relu_grad_bias(out, out, torch.empty_like(out), torch.zeros(16, device=DEVICE), True)
    elementwise.binary(out, out, torch.empty_like(out), BINARY_ADD_RELU)
    geometry, (oh, ow), _ = same_geometry(5, 5, (3, 3), (2, 2))
    idx = torch.empty(2, 32, oh, ow, dtype=torch.int32, device=DEVICE).to(memory_format=torch.channels_last)
    pool_same.pool_forward(x, torch.empty_like(idx, dtype=x.dtype), idx, geometry, True)
    pool_same.pool_backward(torch.randn_like(idx, dtype=x.dtype), torch.empty_like(x), idx, geometry, True)
    pool_conv1x1.conv1x1_split(x, w, None, [out], True, False)


def test_every_launch_is_on_its_tensors_device(monkeypatch):
    """Triton launches on the current device's current stream: each launcher switches to its
    tensors' device around its launches (a cuda:1 tensor while cuda:0 is current)."""
    from triton.runtime.jit import KernelInterface
    inside, launches = [], []

    @contextlib.contextmanager
    def on_device(t):
        inside.append(t.device)
        yield
        inside.pop()

    for module in (tconv, elementwise, pool_same, pool_conv1x1):
        monkeypatch.setattr(module, "on_device", on_device)
    monkeypatch.setattr(KernelInterface, "__getitem__",
                        lambda self, grid: lambda *a, **k: launches.append((self.fn.__name__, list(inside))))
    _every_launcher()
    assert len({name for name, _ in launches}) == 7
    assert all(devices == [torch.device(DEVICE)] for _, devices in launches), launches


@gpu
@pytest.mark.skipif(HAS_CUDA and torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_tensor_on_the_second_gpu():
    x = torch.randn(2, 32, 5, 5, device="cuda:1").to(memory_format=torch.channels_last)
    w = torch.randn(16, 32, 1, 1, device="cuda:1")
    with torch.cuda.device(0), fastconv.use_backend("triton"):
        y = fastconv.conv1x1_relu(x, w)
    assert y.device == x.device
    assert_close(y, reference.conv1x1_relu(x.double(), w.double()), torch.float32)


def test_64_bit_offsets(monkeypatch):
    """The int64 address path (taken at 2**31 elements), forced on small tensors: the GEMM with
    its epilogue, split-K's partial sums and their reduction."""
    monkeypatch.setattr(utils, "INT32_LIMIT", 0)
    x = make_input((2, 48, 5, 5), torch.float32, "nhwc")
    w = torch.randn(24, 48, 1, 1, device=DEVICE)
    b = torch.randn(24, device=DEVICE)
    r = make_input((2, 24, 5, 5), torch.float32, "nhwc")
    ref = reference.conv1x1_relu(x.double(), w.double(), b.double(), 1, True, r.double())
    for split_k in (1, 3):
        out = torch.full_like(r, float("nan"))
        tconv.launch(x, w, b, out, 1, True, False, r, tconv.GemmConfig(16, 16, 16, 1, split_k, 4, 2))
        assert_close(out, ref, torch.float32)


@pytest.fixture
def descriptors(monkeypatch):
    if tconv.TensorDescriptor is None:
        pytest.skip("this Triton has no host-side TMA descriptors")
    monkeypatch.setattr(tconv, "_descriptors", {})
    monkeypatch.setattr(tconv, "_INTERPRETING", False)  # the GPU's cache: descriptors of addresses
    return tconv._descriptor


def test_tma_descriptors_are_cached_by_everything_they_encode(descriptors):
    x = torch.randn(64, 32)
    first = descriptors(x, (64, 32), (32, 1), (16, 16))
    assert descriptors(x, (64, 32), (32, 1), (16, 16)) is first  # the next call: no new descriptor
    assert first.base.data_ptr() == x.data_ptr() and first.base.dtype == x.dtype
    other = [descriptors(x, (32, 32), (32, 1), (16, 16)), descriptors(x, (64, 32), (32, 1), (16, 32)),
             descriptors(x[1:], (63, 32), (32, 1), (16, 16)), descriptors(x.half(), (64, 32), (32, 1), (16, 16))]
    assert len({id(d) for d in other + [first]}) == 5


def test_cached_descriptors_hold_no_tensor_and_the_cache_is_bounded(descriptors, monkeypatch):
    monkeypatch.setattr(tconv, "DESCRIPTOR_CACHE_SIZE", 4)
    x = torch.randn(64, 32)
    alive = weakref.ref(x)
    descriptors(x, (64, 32), (32, 1), (16, 16))
    del x
    gc.collect()
    assert alive() is None  # a cached descriptor never keeps an activation alive
    for rows in range(1, 10):
        descriptors(torch.randn(rows, 32), (rows, 32), (32, 1), (16, 16))
    assert len(tconv._descriptors) == 4


def test_the_bias_gradient_has_the_same_bits_every_run():
    """No float atomics: per-tile partial sums added in a fixed order, so it holds under
    torch.use_deterministic_algorithms (the static gate checks there is no atomic at all)."""
    grad = make_input((2, 40, 9, 9), torch.float32, "nhwc")
    y = make_input((2, 40, 9, 9), torch.float32, "nhwc")
    sums = []
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for config in (tconv.GradConfig(16, 16, 4), tconv.GradConfig(16, 16, 4), tconv.GradConfig(32, 64, 4)):
            bias_grad = torch.zeros(40, device=DEVICE)
            tconv.launch_grad(grad, y, torch.empty_like(grad), bias_grad, True, config)
            sums.append(bias_grad)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(sums[0], sums[1])
    assert_close(sums[2], torch.where(y <= 0, 0, grad).double().sum((0, 2, 3)), torch.float32, "bias_grad")
