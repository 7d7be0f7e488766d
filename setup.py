"""Builds fastconv and, where nvcc is found, its CUDA C++ extension fastconv._C.

The extension is a pybind11 module whose launchers take raw device pointers,
sizes, strides and a stream handle from Python, and links cudart statically: it
does not include or link torch, so one build works with any torch version and
builds on machines without a GPU (or without a CUDA build of torch).
"""
import concurrent.futures
import glob
import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CUDA_ARCHS = ("80", "90")


def find_nvcc():
    nvcc = os.environ.get("NVCC") or shutil.which("nvcc")
    if nvcc is None and os.path.exists("/usr/local/cuda/bin/nvcc"):
        nvcc = "/usr/local/cuda/bin/nvcc"
    return nvcc


class NvccBuildExt(build_ext):
    """Compiles csrc/ with nvcc (host code through its host compiler) and links one module."""

    def build_extension(self, ext):
        if ext.name != "fastconv._C":
            return super().build_extension(ext)
        import pybind11

        nvcc = find_nvcc()
        build_dir = os.path.join(self.build_temp, "csrc")
        os.makedirs(build_dir, exist_ok=True)
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_ARCHS]
        commands, objects = [], []
        for src in ext.sources:
            # nvcc compiles the .cu files and hands the .cpp bindings to the host compiler
            # with CUDA's include path; warnings are errors in both.
            obj = os.path.join(build_dir, os.path.basename(src) + ".o")
            cmd = [nvcc, "-c", src, "-o", obj, "-O3", "-std=c++17", "-Icsrc", "-Werror", "all-warnings",
                   "-Xcompiler", "-fPIC,-Wall,-Werror,-fvisibility=hidden"]
            if src.endswith(".cu"):
                cmd += ["--expt-relaxed-constexpr", *gencode]
            else:
                cmd += [f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"]
            commands.append(cmd)
            objects.append(obj)
        # One nvcc per source file, as many at once as there are cores: the build takes about
        # as long as its slowest file (the GEMM's instantiations) instead of the sum.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        for cmd in commands:
            self.announce(" ".join(cmd), level=2)
        with concurrent.futures.ThreadPoolExecutor(max_workers=cores) as pool:
            list(pool.map(subprocess.check_call, commands))
        out = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        # nvcc links the device code and cudart_static; -shared makes the Python module.
        subprocess.check_call([nvcc, "-shared", *objects, "-o", out, "-cudart=static",
                               *gencode, "-Xcompiler", "-fPIC", "-lrt", "-ldl", "-lpthread"])


def extensions():
    sources = sorted(glob.glob("csrc/*.cu")) + sorted(glob.glob("csrc/*.cpp"))
    if not sources:
        return []
    if find_nvcc() is None:
        print("fastconv: nvcc not found, building without the CUDA C++ backend "
              "(fastconv._C); the torch and Triton backends still work.", file=sys.stderr)
        return []
    return [Extension("fastconv._C", sources=sources)]


setup(ext_modules=extensions(), cmdclass={"build_ext": NvccBuildExt})
