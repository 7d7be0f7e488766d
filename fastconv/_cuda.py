"""The CUDA C++ backend: thin launchers over the pybind11 extension fastconv._C."""
import torch

try:
    from fastconv import _C
    _IMPORT_ERROR = None
except ImportError as e:  # built only where nvcc was found (setup.py)
    _C = None
    _IMPORT_ERROR = e


def unavailable_reason():
    """Why the CUDA C++ backend cannot run here, or None."""
    if _C is None:
        return f"the extension fastconv._C is not built ({_IMPORT_ERROR})"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    return None
