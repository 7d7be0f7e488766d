"""Which kernels run an op: the backend switch.

Backends:
  "torch"  eager PyTorch compositions: the reference, and what CPU tensors run on.
  "triton" the Triton kernels (CUDA tensors; CPU tensors only under TRITON_INTERPRET=1).
  "cuda"   the hand-written CUDA C++ kernels in csrc/ (CUDA tensors only).
  "auto"   the default: the fastest backend that can run on the tensors' device.

The choice is read when an op runs (not when it is traced), so a compiled graph
follows `set_backend` like eager code does. A backend that cannot run raises; it
never silently falls back to another.
"""
import contextlib
import functools
import threading

import torch

from fastconv import _tuning
from fastconv._launcher_contract import triton_interpreting as _interpreting

BACKENDS = ("auto", "torch", "triton", "cuda")


class _State(threading.local):
    name = None  # a thread that has not chosen reads None here (no AttributeError raised per call)


_state = _State()
_default = "auto"


@functools.cache  # cannot change within a process; resolve() asks on every call
def _triton_problem():
    """Why Triton cannot run here, or None."""
    try:
        import triton  # noqa: F401
    except ImportError as e:  # pragma: no cover - triton ships with CUDA torch builds
        return f"triton is not installed ({e})"
    return None


@functools.cache  # the extension's build and the device count are fixed for the process
def _cuda_problem():
    """Why the CUDA C++ backend cannot run here, or None."""
    from fastconv import _cuda

    return _cuda.unavailable_reason()


def available_backends(verbose: bool = False) -> list:
    """Backends that can run on this machine (for some device). verbose=True also prints
    why each other backend cannot, and what the CUDA C++ extension was built with."""
    problems = {"torch": None, "triton": _triton_problem(), "cuda": _cuda_problem()}
    if problems["triton"] is None and not (torch.cuda.is_available() or _interpreting()):
        problems["triton"] = "no CUDA device (TRITON_INTERPRET=1 runs the kernels on CPU tensors)"
    if verbose:
        from fastconv import _cuda

        for name, problem in problems.items():
            print(f"{name:<7}", "available" if problem is None else f"unavailable: {problem}")
        print(_cuda.describe_build())
    return [name for name, problem in problems.items() if problem is None]


def set_backend(name: str) -> None:
    """Set the backend of this thread, and the default of threads that have not chosen one."""
    global _default
    _check_name(name)
    _state.name = name
    _default = name


def get_backend() -> str:
    return _state.name or _default


@contextlib.contextmanager
def use_backend(name: str):
    """Run the ops inside the block on backend `name`, then restore the previous one."""
    _check_name(name)
    previous = _state.name
    _state.name = name
    try:
        yield
    finally:
        if previous is None:
            del _state.name
        else:
            _state.name = previous


def _check_name(name):
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


# The op whose CUDA C++ kernel measured faster than Triton on an H100; "auto" picks
# "cuda" for these when the extension is available. Empty until measured
# (bench/results/), so "auto" uses Triton for every op on CUDA tensors.
CUDA_PREFERRED_OPS = frozenset()


def launchers(name: str):
    """The module of kernel launchers of backend "triton" or "cuda" (same names and
    signatures: binary, conv1x1, relu_grad_bias, pool_forward, pool_backward)."""
    if name == "triton":
        from fastconv import _triton
        return _triton
    from fastconv import _cuda
    return _cuda


# Ops that are a GEMM over pixels. On an NCHW input a pixel's channels are H*W apart and a
# row of pixels is broken at every image row, so the Triton kernels read and write each element
# alone (scalar accesses, see fastconv.static's table); cuDNN transposes or has NCHW kernels.
PIXEL_GEMM_OPS = frozenset({"conv1x1_relu", "conv1x1_relu_split"})


def rule(device: torch.device, op: str, key=None):
    """(backend, why) where the tuning table has no entry: the rule. `key`: the call's shape
    class (a pixel GEMM's ends with its input layout, fastconv._tuning)."""
    if device.type != "cuda":
        return "torch", "rule: tensors not on a CUDA device run the torch compositions"
    if op in PIXEL_GEMM_OPS and key is not None and key[-1] == "nchw":
        return "torch", ("rule: an NCHW input runs cuDNN (the Triton GEMM is pixel-major: NCHW pixels "
                         "give it scalar loads and stores; channels_last runs Triton)")
    if op in CUDA_PREFERRED_OPS and _cuda_problem() is None:
        return "cuda", "rule: no tuning-table entry; CUDA C++ was measured faster for this op (CUDA_PREFERRED_OPS)"
    return "triton", "rule: no tuning-table entry for this shape class; Triton runs CUDA tensors"


def auto_choice(device: torch.device, op: str, key=None):
    """(backend, table entry or None) that "auto" picks for `op` on `device` at shape class
    `key` (or a function returning it, called only here, so CPU calls never compute it): the
    measured table's entry (fastconv._tuning), else the rule (entry None)."""
    if device.type != "cuda":
        return "torch", None
    if callable(key):
        key = key()
    if key is not None:
        entry = _tuning.lookup(device, op, key)
        if entry is not None and (entry["backend"] != "cuda" or _cuda_problem() is None):
            return entry["backend"], entry
    return rule(device, op, key)[0], None


def resolve(device: torch.device, op: str, key=None) -> str:
    """The backend that runs `op` on tensors of `device`; raises if the chosen one cannot.
    `key`: the call's shape class (fastconv._tuning), or a function returning it, which
    "auto" looks up in the table."""
    name = _state.name or _default  # get_backend(), inlined: this runs on every call
    if name == "auto":
        name = auto_choice(device, op, key)[0]
        if name == "torch":
            return name
    if name == "triton":
        problem = _triton_problem()
        if problem is None and device.type != "cuda" and not _interpreting():
            problem = (f"Triton kernels need CUDA tensors (got {device.type} tensors); "
                       "set TRITON_INTERPRET=1 before importing triton to run them on CPU")
        if problem:
            raise RuntimeError(f"fastconv backend 'triton' cannot run {op}: {problem}")
    elif name == "cuda":
        problem = _cuda_problem()
        if problem is None and device.type != "cuda":
            problem = f"it needs CUDA tensors (got {device.type} tensors)"
        if problem:
            raise RuntimeError(f"fastconv backend 'cuda' cannot run {op}: {problem}")
    return name


def eager_direct(*tensors) -> bool:
    """Whether an op call may skip its torch.library custom op and run its implementation
    directly (Liger style: checks, allocation, launch), saving the custom op's Python
    dispatch (~15 us per call on the CPU). Only when nothing needs the op itself:
    no autograd (grad mode off, or no input requires grad), no torch.compile / export
    tracing, no Python dispatch or function mode (FakeTensorMode, profilers' counters),
    no tensor subclass, no functorch transform. The work issued is the same either way."""
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch._C._are_functorch_transforms_active() or torch._C._has_torch_function(tensors)):
        return False
    return not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in tensors)
