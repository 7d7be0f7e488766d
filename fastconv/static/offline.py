"""Triton without a GPU: record what the launchers launch, compile it for a GPU arch, and run
the host side of a launch up to the driver call.

- `recording()`: `kernel[grid](...)` inside the block appends a `Launch` instead of running, so
  the launchers' own Python (checks, allocation, tile choice, TMA descriptors) decides what
  would run, on CPU tensors with the real shapes and strides.
- `compile_launch(launch, arch)`: the JIT's own argument binder specializes the recorded
  arguments as a launch would (integers divisible by 16 or equal to 1, pointer alignment,
  descriptor types), then `triton.compile` builds PTX and a cubin for `sm_<arch>`; ptxas's
  log gives registers and spills, the PTX the instruction mix (`ptx_stats`).
- `host_path()`: `JITFunction.run` with a stand-in driver and a stand-in compiled kernel, so
  a launch runs all of Triton's Python (binding, cache key, grid) but not the C launcher
  (which encodes TMA descriptors and calls cuLaunchKernel).

These use Triton internals (KernelInterface.__getitem__, JITFunction.params/_pack_args/
device_caches/_do_compile, create_function_from_signature, the driver registry, knobs), read
in the versions below; another version raises unless FASTCONV_ANY_TRITON=1.
"""
import contextlib
import io
import os
import re
import tempfile
import time
from dataclasses import dataclass

import triton

TESTED_TRITON = ("3.6.0", "3.8.0")  # 3.6.0: the GPU machine's (bench/README.md); 3.8.0: the project's


def require_tested_triton():
    if triton.__version__ not in TESTED_TRITON and os.environ.get("FASTCONV_ANY_TRITON") != "1":
        raise RuntimeError(f"fastconv.static.offline uses Triton internals read in Triton "
                           f"{' and '.join(TESTED_TRITON)}, not {triton.__version__}: check them "
                           f"(see the module's docstring), then set FASTCONV_ANY_TRITON=1")


@dataclass
class Launch:
    """One `kernel[grid](*args, **kwargs)` call, as a launcher made it."""
    kernel: object  # the JITFunction
    grid: tuple
    args: tuple
    kwargs: dict

    @property
    def name(self):
        return self.kernel.fn.__name__


@contextlib.contextmanager
def recording():
    """Inside the block, Triton launches are recorded (a list of Launch), not run."""
    from triton.runtime.jit import KernelInterface

    launches = []
    original = KernelInterface.__getitem__
    KernelInterface.__getitem__ = lambda self, grid: lambda *a, **k: launches.append(Launch(self, grid, a, k))
    try:
        yield launches
    finally:
        KernelInterface.__getitem__ = original


def _launch_kwargs(fn, kwargs):
    """The options JITFunction.run adds before binding."""
    from triton import knobs

    return dict(kwargs, debug=kwargs.get("debug", fn.debug) or knobs.runtime.debug,
                instrumentation_mode=knobs.compilation.instrumentation_mode)


def specialize(launch, arch):
    """(signature, constexprs, attrs, options, key) of `launch` compiled for sm_<arch>, as
    JITFunction.run computes them; `key` identifies the compiled kernel."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn, backend = launch.kernel, make_backend(target(arch))
    kwargs = _launch_kwargs(fn, launch.kwargs)
    bound, spec, opts = create_function_from_signature(fn.signature, fn.params, backend)(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    return signature, constexprs, attrs, options, (launch.name, str(spec), str(options))


def target(arch):
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", arch, 32)


@dataclass
class Compiled:
    name: str
    shared: int  # bytes of shared memory per block
    ptx: str
    ptxas_log: str
    seconds: float


def compile_launch(launch, arch=90):
    """Compile `launch` for sm_<arch> (always compiled, so ptxas's log is there to read)."""
    from triton import knobs
    from triton.compiler import ASTSource

    signature, constexprs, attrs, options, _ = specialize(launch, arch)
    log = io.StringIO()
    with knobs.compilation.scope(), knobs.nvidia.scope():
        knobs.compilation.always_compile = True
        knobs.nvidia.dump_ptxas_log = True  # printed to stdout
        start = time.perf_counter()
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(ASTSource(launch.kernel, signature, constexprs, attrs), target=target(arch),
                                    options=options.__dict__)
        seconds = time.perf_counter() - start
    return Compiled(launch.name, kernel.metadata.shared, kernel.asm["ptx"], log.getvalue(), seconds)


@contextlib.contextmanager
def private_cache():
    """Triton's cache in a temporary folder for the block (compiles never touch ~/.triton)."""
    from triton import knobs

    with tempfile.TemporaryDirectory(prefix="fastconv-static-") as d, knobs.cache.scope():
        knobs.cache.dir = d
        yield


# --- what the compiled code does -----------------------------------------------------------------

_WIDTH = re.compile(r"\.(?:b|u|s|f)(8|16|32|64)$")
# a cp.async's bytes: its third operand (0x10 = 16)
_CP_ASYNC = re.compile(r"cp\.async\.c[ag]\.\S+\s+\[[^\]]+\],\s*\[[^\]]+\],\s*(0x[0-9a-f]+|\d+)")
_GLOBAL = re.compile(r"^\s*(?:@!?%p\d+\s+)?(ld|st)\.global((?:\.[\w:]+)+)\s")


def _access_bytes(modifiers):
    """Bytes one ld/st.global instruction moves, from its modifiers (".v4.b32" -> 16)."""
    vec = re.search(r"\.v(\d)", modifiers)
    width = _WIDTH.search(modifiers)
    return (int(vec.group(1)) if vec else 1) * int(width.group(1)) // 8 if width else 0


def _loop_lines(lines):
    """Which PTX lines are inside a loop (between a label and a later branch back to it)."""
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\$L__\w+):", line))}
    inside = [False] * len(lines)
    for i, line in enumerate(lines):
        m = re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+);", line)
        if m and labels.get(m.group(1), i) < i:
            inside[labels[m.group(1)]:i + 1] = [True] * (i + 1 - labels[m.group(1)])
    return inside


def ptx_stats(ptx):
    """The instruction mix that decides speed: tensor-core MMAs, global accesses by width (all,
    and inside loops: the mainloop), asynchronous copies, TMA, atomics."""
    lines = ptx.splitlines()
    in_loop = _loop_lines(lines)
    stats = {"wgmma": 0, "mma_sync": 0, "tma": 0, "atomics": 0,
             "ld": {}, "st": {}, "loop_ld": {}, "loop_st": {}, "cp_async": {}}
    for line, looped in zip(lines, in_loop):
        m = _GLOBAL.match(line)
        if m:
            op, size = m.group(1), _access_bytes(m.group(2))
            stats[op][size] = stats[op].get(size, 0) + 1
            if looped:
                stats["loop_" + op][size] = stats["loop_" + op].get(size, 0) + 1
            continue
        s = line.strip()
        if s.startswith("@"):
            s = s.split(None, 1)[-1]
        stats["wgmma"] += s.startswith("wgmma.mma_async")
        stats["mma_sync"] += s.startswith("mma.sync")
        stats["tma"] += s.startswith("cp.async.bulk.tensor")
        copy = _CP_ASYNC.match(s)
        if copy:
            size = int(copy.group(1), 0)
            stats["cp_async"][size] = stats["cp_async"].get(size, 0) + 1
        stats["atomics"] += bool(re.match(r"(atom|red)\.", s))
    return stats


def ptxas_stats(log):
    """(registers, spill store bytes, spill load bytes, stack frame bytes) from ptxas -v."""
    def number(pattern):
        m = re.search(pattern, log)
        if m is None:
            raise ValueError(f"ptxas log without {pattern!r}:\n{log}")
        return int(m.group(1))
    return (number(r"Used (\d+) registers"), number(r"(\d+) bytes spill stores"),
            number(r"(\d+) bytes spill loads"), number(r"(\d+) bytes stack frame"))


# --- the host side of a launch, up to the driver call --------------------------------------------

class _StubDriver:
    """What JITFunction.run asks the driver for, on a machine without a GPU."""

    def __init__(self, arch):
        self.arch = arch

    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return 0

    def get_current_target(self):
        return target(self.arch)


class _StubKernel:
    """A compiled kernel whose launch is a no-op (the C launcher is what is left out)."""
    function = packed_metadata = None

    def launch_metadata(self, grid, stream, *args):
        return None

    def run(self, *args):
        pass


@contextlib.contextmanager
def host_path(arch=90):
    """Inside the block, `kernel[grid](...)` runs JITFunction.run's Python (binding, cache key,
    grid) with a stand-in driver, and every compile returns a kernel whose launch does nothing."""
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    stub = _StubKernel()

    def do_compile(self, key, signature, device, constexprs, options, attrs, warmup):
        self.device_caches[device][0][key] = stub
        return stub

    original_compile, original_driver = JITFunction._do_compile, driver._active
    JITFunction._do_compile = do_compile
    driver.set_active(_StubDriver(arch))
    try:
        yield
    finally:
        JITFunction._do_compile = original_compile
        driver._active = original_driver
