import threading

import pytest
import torch

import fastconv
from fastconv import _cuda
from tests.conftest import DEVICE, HAS_CUDA


def test_set_and_use_backend():
    assert fastconv.get_backend() == "auto"
    fastconv.set_backend("torch")
    assert fastconv.get_backend() == "torch"
    with fastconv.use_backend("triton"):
        assert fastconv.get_backend() == "triton"
        with fastconv.use_backend("torch"):
            assert fastconv.get_backend() == "torch"
        assert fastconv.get_backend() == "triton"
    assert fastconv.get_backend() == "torch"


def test_use_backend_restores_after_error():
    with pytest.raises(KeyError):
        with fastconv.use_backend("torch"):
            raise KeyError
    assert fastconv.get_backend() == "auto"


def test_use_backend_is_per_thread():
    seen = []
    with fastconv.use_backend("torch"):
        t = threading.Thread(target=lambda: seen.append(fastconv.get_backend()))
        t.start()
        t.join()
    assert seen == ["auto"]


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        fastconv.set_backend("cudnn")
    with pytest.raises(ValueError, match="backend must be one of"):
        with fastconv.use_backend("tpu"):
            pass


def test_available_backends():
    names = fastconv.available_backends()
    assert "torch" in names and "triton" in names  # triton: a GPU, or the interpreter in tests
    assert ("cuda" in names) == (HAS_CUDA and fastconv._cuda.unavailable_reason() is None)


def test_auto_uses_torch_on_cpu(monkeypatch):
    calls = []
    from fastconv import _triton
    monkeypatch.setattr(_triton, "binary", lambda *a: calls.append(a))
    x = torch.randn(1, 2, 3, 3)
    fastconv.residual_add(x, x)
    assert calls == []
    with fastconv.use_backend("triton"):
        fastconv.residual_add(x, x)
    assert len(calls) == 1


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with fastconv.use_backend("triton"), pytest.raises(RuntimeError, match="need CUDA tensors"):
        fastconv.residual_add(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3))


def test_cuda_backend_on_cpu_raises_with_reason():
    with fastconv.use_backend("cuda"), pytest.raises(RuntimeError, match="backend 'cuda' cannot run"):
        fastconv.max_pool2d_same(torch.randn(1, 2, 3, 3), 2)


@pytest.mark.skipif(HAS_CUDA, reason="CPU-only check")
def test_cuda_reason_without_gpu():
    assert _cuda.unavailable_reason() is not None
    assert DEVICE == "cpu"
