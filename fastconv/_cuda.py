"""The CUDA C++ backend: thin launchers over the pybind11 extension fastconv._C.

Each launcher passes raw device pointers, sizes and strides (in elements), a dtype
code, the device index and torch's current stream to csrc/ (see csrc/fastconv.h);
a CUDA error comes back as a RuntimeError carrying the CUDA error string.
"""
import torch

try:
    from fastconv import _C
    _IMPORT_ERROR = None
except ImportError as e:  # built only where nvcc was found (setup.py)
    _C = None
    _IMPORT_ERROR = e

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}

# The oldest NVIDIA driver branch that runs a build of each CUDA major version: CUDA's minor
# version compatibility runs a build of CUDA X.y on any driver for CUDA X.0 or newer (NVIDIA's
# "CUDA Compatibility" guide), given SASS for the GPU (PTX needs a driver as new as the build).
DRIVER_FLOOR = {11: "R450", 12: "R525", 13: "R580"}


def _cuda_version(v):
    """'12.9' from the CUDA API's 12090."""
    return f"{v // 1000}.{v % 1000 // 10}"


def driver_needed(cuda_runtime):
    """The driver a build linking CUDA runtime `cuda_runtime` (e.g. 12090) needs, in words."""
    major = cuda_runtime // 1000
    floor = f"{DRIVER_FLOOR[major]} or newer " if major in DRIVER_FLOOR else ""
    return f"an NVIDIA driver {floor}(CUDA {major}.0+)"


def driver_problem(cuda_runtime, driver):
    """Why a driver supporting CUDA `driver` (0: no driver) cannot run a build linking CUDA
    runtime `cuda_runtime`, or None (both as the CUDA API gives them: 12090 for 12.9)."""
    build = f"this fastconv._C (CUDA {_cuda_version(cuda_runtime)}) needs {driver_needed(cuda_runtime)}"
    if driver == 0:
        return f"no NVIDIA driver found (libcuda.so.1 cannot be loaded); {build}"
    if driver // 1000 < cuda_runtime // 1000:
        return f"the NVIDIA driver is too old: it supports CUDA {_cuda_version(driver)}, and {build}"
    return None


def unavailable_reason():
    """Why the CUDA C++ backend cannot run here, or None: extension not built, no driver,
    driver too old for the build, no GPU, or a torch that cannot make CUDA tensors."""
    if _C is None:
        return (f"the extension fastconv._C is not installed ({_IMPORT_ERROR}): an install from "
                "source builds it only where nvcc is found; the binary wheel carries it")
    problem = driver_problem(_C.build_info()["cuda_runtime"], _C.driver_version())
    if problem:
        return problem
    try:
        if _C.device_count() == 0:
            return "no GPU found"
    except RuntimeError as e:  # cudaErrorNoDevice, or a GPU the driver cannot use
        return f"no usable GPU ({e})"
    if not torch.cuda.is_available():
        return (f"torch {torch.__version__} cannot make CUDA tensors (torch.version.cuda is "
                f"{torch.version.cuda}): install a CUDA build of torch")
    return None


def describe_build():
    """One line: what fastconv._C was built with, the driver it needs, the driver here."""
    if _C is None:
        return "fastconv._C: not installed"
    info = _C.build_info()
    driver = _C.driver_version()
    return (f"fastconv._C: CUDA {_cuda_version(info['cuda_runtime'])} (nvcc {info['nvcc']}, "
            f"{info['host_compiler']}), GPU code {info['archs']}; needs "
            f"{driver_needed(info['cuda_runtime'])}; driver here: "
            f"{'CUDA ' + _cuda_version(driver) if driver else 'none found'}")


def _where(t):
    """(device index, raw handle of torch's current stream on t's device)."""
    return t.device.index, torch.cuda.current_stream(t.device).cuda_stream


def binary(a, b, out, op):
    """out = op(a, b) (0 add, 1 add + ReLU, 2 ReLU backward); out dense, a and b any strides."""
    dense = a.stride() == out.stride() and b.stride() == out.stride()
    _C.binary(a.data_ptr(), b.data_ptr(), out.data_ptr(), _DTYPE_CODES[out.dtype], op,
              list(out.shape), list(a.stride()), list(b.stride()), dense,
              not out.is_contiguous(), *_where(out))
    return out


def _conv1x1_args(x, weight, bias, out, stride, relu, tf32, residual):
    """conv1x1's arguments to _C.conv1x1 / _C.conv1x1_kernel_name (before device and stream)."""
    w2 = weight if weight.dim() == 2 else weight[:, :, 0, 0]
    res = residual if residual is not None else out
    return (x.data_ptr(), w2.data_ptr(), 0 if bias is None else bias.data_ptr(),
            0 if residual is None else residual.data_ptr(), out.data_ptr(),
            _DTYPE_CODES[x.dtype], list(x.shape), list(x.stride()), w2.shape[0], w2.stride(0),
            w2.stride(1), 1 if bias is None else bias.stride(0), list(out.stride()),
            list(res.stride()), stride, relu, tf32)


def conv1x1(x, weight, bias, out, stride, relu, tf32, residual=None):
    _C.conv1x1(*_conv1x1_args(x, weight, bias, out, stride, relu, tf32, residual), *_where(x))
    return out


def conv1x1_kernel_name(x, weight, bias, out, stride, relu, tf32, residual=None, sms=132):
    """Which CUDA kernel conv1x1 runs for these tensors on a GPU with `sms` SMs; host-only,
    needs no GPU. "mma_128x128", "mma_128x64", "mma_64x128": the tensor-core GEMM on NHWC;
    "mma_nchw_128x128" / "mma_nchw8_128x128": the same on dense NCHW (16- / 8-byte copies);
    "wmma": the tensor-core fallback (NCHW 7x7 and stride 2, strided views, unaligned rows);
    "simt": IEEE fp32 and fp64. csrc/README.md has the rule and its reasons."""
    return _C.conv1x1_kernel_name(*_conv1x1_args(x, weight, bias, out, stride, relu, tf32, residual), sms)


def relu_grad_bias(grad, y, grad_in, bias_grad, relu):
    _C.relu_grad_bias(grad.data_ptr(), y.data_ptr(), grad_in.data_ptr(), bias_grad.data_ptr(),
                      _DTYPE_CODES[grad.dtype], list(grad.shape), list(grad.stride()),
                      list(y.stride()), list(grad_in.stride()), relu, *_where(grad))


def _geometry(geometry):
    (kh, kw), (sh, sw), (ph, pw) = geometry
    return [kh, kw, sh, sw, ph, pw]


def pool_forward(x, out, idx, geometry, is_max):
    _C.pool_forward(x.data_ptr(), out.data_ptr(), 0 if idx is None else idx.data_ptr(),
                    _DTYPE_CODES[x.dtype], list(x.shape), list(x.stride()), out.shape[2],
                    out.shape[3], _geometry(geometry), is_max, not out.is_contiguous(), *_where(x))
    return out


def pool_backward(grad_out, grad_in, idx, geometry, is_max):
    _C.pool_backward(grad_out.data_ptr(), 0 if idx is None else idx.data_ptr(), grad_in.data_ptr(),
                     _DTYPE_CODES[grad_in.dtype], list(grad_in.shape), list(grad_out.stride()),
                     list(idx.stride()) if idx is not None else [0, 0, 0, 0], grad_out.shape[2],
                     grad_out.shape[3], _geometry(geometry), is_max, not grad_in.is_contiguous(),
                     *_where(grad_in))
    return grad_in
