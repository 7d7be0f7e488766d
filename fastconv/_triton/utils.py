"""Helpers shared by the Triton launchers: arithmetic and dot precision, 32- vs 64-bit offsets,
16-byte alignment flags, and the device a launch runs on."""
import contextlib
import functools

import torch
import triton.language as tl

# The GPU (compute capability) that CPU tensors stand for: under Triton's interpreter, and in
# fastconv.static, which sets its target arch here, the launchers decide as on that GPU.
CPU_TARGET = (9, 0)
INT32_LIMIT = 2 ** 31  # offsets at or past this need 64-bit address arithmetic
VECTOR_BYTES = 16  # one 128-bit global load or store per thread


def cdiv(a, b):
    """ceil(a / b) for host code: triton.cdiv is a constexpr function in Triton 3.8 and costs
    ~1.5 us per call from Python, several times per launch."""
    return -(-a // b)


def next_power_of_2(n):
    """The smallest power of 2 >= n (1 for n <= 1), for host code (see cdiv)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def acc_type(t):
    """Arithmetic dtype of the kernels: fp32 (fp64 for float64 tensors, so gradcheck can run)."""
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def dot_precision(dtype, tf32):
    """tl.dot's input precision: TF32 or IEEE for float32, IEEE for float64, native for 16-bit."""
    if dtype == torch.float32:
        return "tf32" if tf32 else "ieee"
    return "ieee" if dtype == torch.float64 else None


def needs_int64(tensors):
    """Whether an element of these tensors lies INT32_LIMIT or more elements past its base.
    Below that, int32 offsets are exact: a [BLOCK_M, BLOCK_N] tile of int64 offsets costs
    BLOCK_M * BLOCK_N / threads registers more per thread, which spilled epilogues."""
    return any(sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) >= INT32_LIMIT
               for t in tensors if t is not None and t.numel())


def vector(t, *extents):
    """Elements per 16-byte vector if t's channel axis (dim 1) has unit stride, t starts on a
    16-byte boundary, every other stride and the `extents` (channel counts that bound the masks)
    are whole vectors; else 1. Triton proves divisibility by 16 elements only, so NHWC rows of
    Cout = 24 or 40 get scalar accesses unless the kernel is told what this returns."""
    vec, strides = VECTOR_BYTES // t.element_size(), t.stride()
    if vec <= 1 or strides[1] != 1 or t.data_ptr() % VECTOR_BYTES:
        return 1
    return vec if all(v % vec == 0 for v in strides[:1] + strides[2:] + extents) else 1


def capability(device):
    """(major, minor) compute capability of the GPU a launch on `device` runs on."""
    return _cuda_capability(device.index) if device.type == "cuda" else CPU_TARGET


@functools.lru_cache
def _cuda_capability(index):
    return torch.cuda.get_device_capability(index)


def on_device(t):
    """The context to launch in for tensor t: its CUDA device (Triton launches on the current
    device's current stream, so a tensor on cuda:1 while cuda:0 is current would otherwise run
    on the wrong device). Nothing to switch for CPU tensors (the interpreter)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
