"""Builds fastconv and, where nvcc is found, its CUDA C++ extension fastconv._C.

The extension is a pybind11 module whose launchers take raw device pointers,
sizes, strides and a stream handle from Python, and links cudart statically: it
does not include or link torch, so one build works with any torch version and
builds on machines without a GPU (or without a CUDA build of torch).

Variables:
  NVCC                    the nvcc to build with; default: nvcc on PATH, else
                          $CUDA_HOME/bin/nvcc (CUDA_HOME defaults to /usr/local/cuda)
  FASTCONV_REQUIRE_CUDA=1 fail without nvcc instead of building without fastconv._C
                          (`make wheel` sets it: a binary wheel must carry the kernels)
"""
import concurrent.futures
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# SASS for each of these, and the PTX of the newest, which the driver compiles for GPUs
# newer than every SASS here (on a driver at least as new as the build's CUDA).
CUDA_ARCHS = ("80", "90")
GENCODE = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_ARCHS] + \
          [f"-gencode=arch=compute_{CUDA_ARCHS[-1]},code=compute_{CUDA_ARCHS[-1]}"]
ARCHS_NAME = " ".join([f"sm_{a}" for a in CUDA_ARCHS] + [f"compute_{CUDA_ARCHS[-1]}"])
HERE = os.path.dirname(os.path.abspath(__file__))


def find_nvcc():
    nvcc = os.environ.get("NVCC") or shutil.which("nvcc")
    default = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    if nvcc is None and os.path.exists(default):
        nvcc = default
    return nvcc


def nvcc_version(nvcc):
    """'13.0.88' from `nvcc --version` ("Cuda compilation tools, release 13.0, V13.0.88")."""
    out = subprocess.run([nvcc, "--version"], check=True, capture_output=True, text=True).stdout
    return re.search(r"release \S+ V(\S+)", out).group(1)


def stale(obj, cmd):
    """Whether obj must be compiled again: missing, compiled by another command (compiler,
    flags), or older than a file it includes (nvcc's dependency list, written beside it)."""
    try:
        with open(obj + ".cmd") as f:
            if f.read() != "\n".join(cmd):
                return True
        with open(obj + ".d") as f:
            deps = f.read().replace("\\\n", " ").split(":", 1)[1].split()
        built = os.path.getmtime(obj)
        return any(os.path.getmtime(dep) > built for dep in deps)
    except OSError:  # no object, command or dependency list yet, or an include is gone
        return True


def compile_and_record(cmd, obj):
    subprocess.check_call(cmd)
    with open(obj + ".cmd", "w") as f:
        f.write("\n".join(cmd))


class NvccBuildExt(build_ext):
    """Compiles csrc/ with nvcc (host code through its host compiler) and links one module."""

    def build_extension(self, ext):
        if ext.name != "fastconv._C":
            return super().build_extension(ext)
        import pybind11

        nvcc = find_nvcc()
        # Objects are kept per nvcc version under build/, outside setuptools' temporary
        # folders, so every build (editable install, wheel) reuses those still up to date.
        build_dir = os.path.join(HERE, "build", f"csrc-nvcc{nvcc_version(nvcc)}")
        os.makedirs(build_dir, exist_ok=True)
        pending, objects = [], []
        for src in ext.sources:
            # nvcc compiles the .cu files and hands the .cpp bindings to the host compiler
            # with CUDA's include path; warnings are errors in both.
            obj = os.path.join(build_dir, os.path.basename(src) + ".o")
            cmd = [nvcc, "-c", src, "-o", obj, "-MD", "-MF", obj + ".d", "-O3", "-std=c++17", "-Icsrc",
                   "-Werror", "all-warnings", "-Xcompiler", "-fPIC,-Wall,-Werror,-fvisibility=hidden"]
            if src.endswith(".cu"):
                cmd += ["--expt-relaxed-constexpr", *GENCODE]
            else:  # the bindings report the GPU code embedded (fastconv._C.build_info)
                cmd += [f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}",
                        f'-DFASTCONV_CUDA_ARCHS="{ARCHS_NAME}"']
            if stale(obj, cmd):
                pending.append((cmd, obj))
            objects.append(obj)
        # One nvcc per source file, as many at once as there are cores: the build takes about
        # as long as its slowest file (the GEMM's instantiations) instead of the sum.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        for cmd, _ in pending:
            self.announce(" ".join(cmd), level=2)
        with concurrent.futures.ThreadPoolExecutor(max_workers=cores) as pool:
            list(pool.map(lambda job: compile_and_record(*job), pending))
        out = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        # nvcc links the device code and cudart_static; -shared makes the Python module.
        subprocess.check_call([nvcc, "-shared", *objects, "-o", out, "-cudart=static",
                               *GENCODE, "-Xcompiler", "-fPIC", "-lrt", "-ldl", "-lpthread"])


def extensions():
    sources = sorted(glob.glob("csrc/*.cu")) + sorted(glob.glob("csrc/*.cpp"))
    if not sources:
        return []
    if find_nvcc() is None:
        if os.environ.get("FASTCONV_REQUIRE_CUDA") == "1":
            sys.exit("fastconv: FASTCONV_REQUIRE_CUDA=1 but no nvcc was found "
                     "(set NVCC, put nvcc on PATH or set CUDA_HOME)")
        print("fastconv: nvcc not found (not on PATH, no $CUDA_HOME/bin/nvcc, NVCC not set): "
              "building without the CUDA C++ backend (fastconv._C). The torch and Triton "
              "backends work; `python -m fastconv.info` says what runs. The binary wheel "
              "carries the CUDA C++ kernels prebuilt.", file=sys.stderr)
        return []
    return [Extension("fastconv._C", sources=sources)]


setup(ext_modules=extensions(), cmdclass={"build_ext": NvccBuildExt})
