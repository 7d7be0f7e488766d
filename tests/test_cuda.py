"""The CUDA C++ extension: built and importable wherever nvcc is (CI included), a clear
error without a GPU, and (on a GPU) a short run for compute-sanitizer. The numerical
checks of the "cuda" backend are the shared, backend-parametrised op tests."""
import os
import shutil

import pytest
import torch

import fastconv
from fastconv import _cuda, reference
from tests.conftest import HAS_CUDA, gpu, make_input

HAS_NVCC = shutil.which("nvcc") is not None or os.path.exists("/usr/local/cuda/bin/nvcc")


@pytest.mark.skipif(not HAS_NVCC, reason="nvcc not found: the extension is not built")
def test_extension_is_built_and_imports():
    assert _cuda._C is not None, _cuda._IMPORT_ERROR
    for name in ("binary", "conv1x1", "relu_grad_bias", "pool_forward", "pool_backward", "device_count"):
        assert hasattr(_cuda._C, name)


@pytest.mark.skipif(HAS_CUDA or not HAS_NVCC, reason="checks the behaviour without a GPU")
def test_without_gpu_errors_are_clear():
    assert _cuda.unavailable_reason() == "no CUDA device is available"
    assert "cuda" not in fastconv.available_backends()
    with pytest.raises(RuntimeError, match="fastconv CUDA error in cudaGetDeviceCount: cudaError"):
        _cuda._C.device_count()


@gpu
def test_sanitizer_short_run():
    """Every CUDA kernel once, forward and backward, at odd sizes (run under compute-sanitizer)."""
    with fastconv.use_backend("cuda"):
        for dtype in (torch.float16, torch.float32):
            x = make_input((2, 17, 7, 9), dtype, "strided", requires_grad=True)
            w = torch.randn(5, 17, 1, 1, device="cuda", dtype=dtype, requires_grad=True)
            b = torch.randn(5, device="cuda", dtype=dtype, requires_grad=True)
            y = fastconv.conv1x1_relu(x, w, b, stride=2)
            z = fastconv.residual_add(y, torch.randn_like(y))
            p = fastconv.max_pool2d_same(z, 3, 2) + fastconv.avg_pool2d_same(z, 3, 2)
            p.sum().backward()
            torch.cuda.synchronize()
            assert reference.rel_error(y, reference.conv1x1_relu(x, w, b, 2)) < 2e-3
