"""What fastconv._C reports of its build, why the CUDA C++ backend is unavailable (no
extension, no driver, a driver too old for the build), `available_backends(verbose=True)`
and `python -m fastconv.info`. On this CPU machine the no-driver path is the real one; the
old-driver path runs the backend layer against a stand-in for the extension."""
import subprocess
import sys
import types

import pytest
import torch

import fastconv
from fastconv import _backend, _cuda

needs_extension = pytest.mark.skipif(_cuda._C is None, reason="fastconv._C is not built here")


@pytest.fixture
def extension(monkeypatch):
    """Replace fastconv._C by a stand-in with the given build and driver; the backend layer
    forgets what it concluded before and after."""
    def install(cuda_runtime, driver):
        fake = types.SimpleNamespace(
            build_info=lambda: {"cuda_runtime": cuda_runtime, "nvcc": "x", "archs": "sm_80 sm_90 compute_90",
                                "host_compiler": "gcc"},
            driver_version=lambda: driver,
            device_count=lambda: pytest.fail("the driver check comes first"))
        monkeypatch.setattr(_cuda, "_C", fake)
        _backend._cuda_problem.cache_clear()

    yield install
    _backend._cuda_problem.cache_clear()


@pytest.mark.parametrize("cuda_runtime, driver, expected", [
    (12090, 0, "no NVIDIA driver found (libcuda.so.1 cannot be loaded); this fastconv._C (CUDA 12.9) "
               "needs an NVIDIA driver R525 or newer (CUDA 12.0+)"),
    (12090, 11080, "the NVIDIA driver is too old: it supports CUDA 11.8, and this fastconv._C (CUDA 12.9) "
                   "needs an NVIDIA driver R525 or newer (CUDA 12.0+)"),
    (13000, 12090, "the NVIDIA driver is too old: it supports CUDA 12.9, and this fastconv._C (CUDA 13.0) "
                   "needs an NVIDIA driver R580 or newer (CUDA 13.0+)"),
    (12090, 12000, None),  # minor version compatibility: a driver for CUDA 12.0 runs a 12.9 build
    (12090, 13020, None),
    (13000, 13000, None),
])
def test_driver_problem(cuda_runtime, driver, expected):
    assert _cuda.driver_problem(cuda_runtime, driver) == expected


@pytest.mark.parametrize("op", ["conv1x1_relu", "residual_add"])
def test_driver_too_old_is_an_error_naming_the_driver(extension, op):
    extension(cuda_runtime=13000, driver=12040)
    assert "cuda" not in fastconv.available_backends()
    x = torch.randn(1, 8, 3, 3)
    call = {"conv1x1_relu": lambda: fastconv.conv1x1_relu(x, torch.randn(4, 8, 1, 1)),
            "residual_add": lambda: fastconv.residual_add(x, x)}[op]
    with fastconv.use_backend("cuda"), pytest.raises(
            RuntimeError, match=rf"backend 'cuda' cannot run {op}: the NVIDIA driver is too old: it "
                                r"supports CUDA 12\.4, .* needs an NVIDIA driver R580 or newer"):
        call()


def test_extension_not_installed(monkeypatch):
    monkeypatch.setattr(_cuda, "_C", None)
    monkeypatch.setattr(_cuda, "_IMPORT_ERROR", ImportError("No module named 'fastconv._C'"))
    reason = _cuda.unavailable_reason()
    assert reason.startswith("the extension fastconv._C is not installed (No module named 'fastconv._C')")
    assert "nvcc" in reason and "wheel" in reason
    assert _cuda.describe_build() == "fastconv._C: not installed"


@needs_extension
def test_build_info():
    info = _cuda._C.build_info()
    assert info["archs"].split() == ["sm_80", "sm_90", "compute_90"]  # SASS per arch, PTX of the newest
    major, minor = divmod(info["cuda_runtime"], 1000)
    assert major >= 12 and info["nvcc"].startswith(f"{major}.{minor // 10}.")
    assert info["host_compiler"].split()[0] in ("gcc", "clang")
    described = _cuda.describe_build()
    assert f"CUDA {major}.{minor // 10} (nvcc {info['nvcc']}" in described
    assert _cuda.DRIVER_FLOOR[major] in described


@needs_extension
@pytest.mark.skipif(_cuda._C is not None and _cuda._C.driver_version() != 0, reason="an NVIDIA driver is installed")
def test_no_driver_is_a_reason_not_a_crash():
    reason = _cuda.unavailable_reason()
    assert reason.startswith("no NVIDIA driver found")
    assert _cuda.DRIVER_FLOOR[_cuda._C.build_info()["cuda_runtime"] // 1000] in reason
    assert "cuda" not in fastconv.available_backends()
    x = torch.randn(1, 4, 3, 3)
    with fastconv.use_backend("cuda"), pytest.raises(RuntimeError, match="cannot run residual_add: no NVIDIA driver"):
        fastconv.residual_add(x, x)


def test_available_backends_verbose(capsys):
    names = fastconv.available_backends(verbose=True)
    lines = capsys.readouterr().out.splitlines()
    assert names[0] == "torch" and names == fastconv.available_backends()
    for name in ("torch", "triton", "cuda"):
        (line,) = [line for line in lines if line.split()[0] == name]
        assert line.split()[1] == ("available" if name in names else "unavailable:")
    assert lines[-1] == _cuda.describe_build()


def test_info_command():
    out = subprocess.run([sys.executable, "-m", "fastconv.info"], check=True, capture_output=True,
                         text=True).stdout
    assert out.startswith(f"fastconv {fastconv.__version__} (")
    assert f"torch {torch.__version__}" in out
    assert out.rstrip().endswith(_cuda.describe_build())
