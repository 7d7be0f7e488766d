"""`python -m fastconv.info`: what this installation of fastconv can run here, and why not.

Prints fastconv's version and location, the Python, torch and Triton versions, the GPUs
torch sees, each backend's availability (with the reason when unavailable) and what the
CUDA C++ extension was built with (CUDA version, GPU code, compilers, driver it needs).
"""
import importlib.metadata
import os
import platform

import torch

import fastconv


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main():
    print(f"fastconv {fastconv.__version__} ({os.path.dirname(fastconv.__file__)})")
    print(f"python {platform.python_version()}, torch {torch.__version__} "
          f"(CUDA {torch.version.cuda or 'none: a CPU build'}), triton {_version('triton')}")
    gpus = [f"{torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
            for i in range(torch.cuda.device_count())]
    print(f"GPUs torch sees: {', '.join(gpus) or 'none'}")
    fastconv.available_backends(verbose=True)


if __name__ == "__main__":
    main()
