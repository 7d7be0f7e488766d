"""What the built CUDA module fastconv._C holds, read without a GPU (cuobjdump, c++filt):
every kernel's name, registers and local memory per architecture, and the SASS of chosen
kernels with the instructions of their mainloop.

    python -m tests.sass   one line per kernel (sm_90): registers, local bytes, HMMA, LDSM,
                           LDGSTS, 16-byte stores, LDL/STL, mainloop instructions (`make sass`)

tests/test_sass_budget.py holds the kernels to their budget; tests/test_cuda.py checks that
bench/sanitize_cuda.py reaches every kernel named here.
"""
import dataclasses
import functools
import glob
import os
import re
import shutil
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cuobjdump():
    """CUDA's cuobjdump, or the copy Triton ships; None if neither is there."""
    import importlib.util
    spec = importlib.util.find_spec("triton")
    triton_dir = os.path.dirname(spec.origin) if spec and spec.origin else ""
    for cand in (shutil.which("cuobjdump"), "/usr/local/cuda/bin/cuobjdump",
                 os.path.join(triton_dir, "backends/nvidia/bin/cuobjdump")):
        if cand and os.path.exists(cand):
            return cand
    return None


def module_path():
    """The built extension next to the package (None if not built)."""
    found = sorted(glob.glob(os.path.join(ROOT, "fastconv", "_C*.so")))
    return found[0] if found else None


def short_name(demangled):
    """`void fastconv::(anonymous namespace)::pool_fwd<__half, 8>(...)` -> `pool_fwd<__half,8>`:
    the form in which bench/sanitize_cuda.py names the kernels its cases launch."""
    name = demangled.replace("void ", "", 1) if demangled.startswith("void ") else demangled
    name = name.replace("(anonymous namespace)::", "").replace("fastconv::", "")
    depth, end = 0, len(name)
    for i, ch in enumerate(name):  # cut the argument list: the first '(' outside template brackets
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "(" and depth == 0:
            end = i
            break
    return name[:end].replace(" ", "")


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


@dataclasses.dataclass
class Kernel:
    name: str       # short_name of the demangled name
    arch: str       # "sm_80", "sm_90"
    registers: int
    stack: int      # bytes of stack frame (spills land here)
    local: int      # bytes of local memory per thread
    shared: int     # static shared memory (the GEMM's is dynamic: 0 here)


def _run(*args, cwd=None):
    return subprocess.run([cuobjdump(), *args], capture_output=True, text=True, check=True, cwd=cwd).stdout


@functools.cache
def kernels(so):
    """Every kernel of the module, per architecture, from --dump-resource-usage (no disassembly)."""
    found, arch = [], None
    lines = _run("--dump-resource-usage", so).splitlines()
    for i, line in enumerate(lines):
        if line.startswith("arch = "):
            arch = line.split("=")[1].strip()
        m = re.match(r"\s*Function (\S+):$", line)
        if m:
            usage = dict(re.findall(r"(\w+):(\d+)", lines[i + 1]))
            found.append((m.group(1), arch, usage))
    names = demangle([mangled for mangled, _, _ in found])
    return [Kernel(short_name(name), arch, int(u["REG"]), int(u["STACK"]), int(u["LOCAL"]), int(u["SHARED"]))
            for name, (_, arch, u) in zip(names, found)]


@functools.cache
def sass(so, arch, holding):
    """{short name: [(address, instruction)]} of the kernels in the module's `arch` cubins that
    hold `holding` (bytes in a kernel's mangled name): disassembling only those keeps this to
    seconds (the whole module takes a minute on a loaded machine)."""
    with tempfile.TemporaryDirectory() as tmp:
        _run("--extract-elf", "all", so, cwd=tmp)
        cubins = [p for p in sorted(glob.glob(os.path.join(tmp, f"*.{arch}.cubin")))
                  if holding in open(p, "rb").read()]
        texts = [_run("--dump-sass", p) for p in cubins]
    bodies = {}
    for text in texts:
        parts = re.split(r"\n\s*Function : (\S+)", text)
        for mangled, body in zip(parts[1::2], parts[2::2]):
            bodies[mangled] = [(int(a, 16), ins.strip())
                               for a, ins in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", body)]
    return {short_name(d): body for d, body in zip(demangle(list(bodies)), bodies.values())}


def mainloop(instructions):
    """The instructions of the innermost loop that holds mma instructions (HMMA): from the
    target of its backward branch to the branch, the K-block loop of the GEMM. None if none."""
    mmas = [a for a, ins in instructions if "HMMA" in ins]
    best = None
    for a, ins in instructions:
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", ins)
        if m and int(m.group(1), 16) <= a:
            lo = int(m.group(1), 16)
            if any(lo <= h <= a for h in mmas) and (best is None or a - lo < best[1] - best[0]):
                best = (lo, a)
    return None if best is None else [ins for a, ins in instructions if best[0] <= a <= best[1]]


def count(instructions, opcode):
    """Instructions whose opcode (predicate stripped) starts with `opcode`."""
    return sum(re.sub(r"^@!?U?P\w+\s+", "", ins).startswith(opcode) for ins in instructions)


def main():
    so = module_path()
    usage = {k.name: k for k in kernels(so) if k.arch == "sm_90"}
    bodies = sass(so, "sm_90", b"conv1x1")  # the conv kernels; the others' SASS is not read
    print(f"{'regs':>4} {'local':>5} {'HMMA':>4} {'LDSM':>4} {'LDGSTS':>6} {'STG.128':>7} {'LDL/STL':>7} "
          f"{'loop':>4}  kernel (sm_90)")
    for name, k in usage.items():
        body = [ins for _, ins in bodies.get(name, [])]
        loop = mainloop(bodies[name]) if name in bodies else None
        cells = [count(body, op) for op in ("HMMA", "LDSM", "LDGSTS", "STG.E.128")] if body else ["-"] * 4
        local = count(body, "LDL") + count(body, "STL") if body else "-"
        print(f"{k.registers:>4} {k.local + k.stack:>5} {cells[0]:>4} {cells[1]:>4} {cells[2]:>6} {cells[3]:>7} "
              f"{local:>7} {len(loop) if loop else '-':>4}  {name}")


if __name__ == "__main__":
    main()
