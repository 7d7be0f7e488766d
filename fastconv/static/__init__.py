"""The static gate: every Triton kernel fastconv can launch, compiled for an NVIDIA GPU on a
machine without one, and what the compiler made of it.

    python -m fastconv.static [--full] [--arch 90|80] [--jobs N] [--out DIR] [--triton VERSION]

Each case (fastconv.static.cases) calls a real launcher on CPU tensors while its launches are
recorded; each distinct launch is compiled for sm_<arch> with the launcher's own specialization
(fastconv.static.offline) and becomes a row: kernel, op form, config, dtype, layout, epilogue,
Cout alignment -> shared memory, registers, spills, tensor-core MMAs, global loads and stores
by width (all, and inside loops: the mainloop), cp.async and TMA copies, atomics, compile time.
tests/test_static_gate.py holds the budgets the rows must meet. `--triton 3.6.0` runs the same
with another Triton release (the GPU machine's), downloaded once with pip into a cache folder.
"""
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from fastconv._triton import utils
from fastconv.static import offline

_JOBS, _ARCH = [], 90  # what to compile, and for which arch: set before the workers fork


def _compile(i):
    case, launch = _JOBS[i]
    with offline.private_cache():
        compiled = offline.compile_launch(launch, _ARCH)
    regs, spill_st, spill_ld, stack = offline.ptxas_stats(compiled.ptxas_log)
    row = {k: v for k, v in vars(case).items() if k != "run"}
    row.update(kernel=launch.name, shared=compiled.shared, regs=regs, spill_stores=spill_st,
               spill_loads=spill_ld, stack=stack, seconds=round(compiled.seconds, 2))
    row.update(offline.ptx_stats(compiled.ptx))
    return row


def compile_cases(cases, arch=90, jobs=None, progress=None):
    """One row per distinct kernel the cases launch, compiled for sm_<arch> in `jobs` processes."""
    from triton.runtime.jit import JITFunction

    global _JOBS, _ARCH
    offline.require_tested_triton()
    todo, seen = [], set()
    utils.CPU_TARGET = divmod(arch, 10)  # the launchers decide (TMA or not) as on that GPU
    for case in cases:
        with offline.recording() as launches:
            case.run()
        for launch in launches:
            if not isinstance(launch.kernel, JITFunction):
                raise RuntimeError("the static gate compiles kernels: run it in a process that imported "
                                   "triton without TRITON_INTERPRET=1")
            key = offline.specialize(launch, arch)[-1]
            if key not in seen:
                seen.add(key)
                todo.append((case, launch))
    _JOBS, _ARCH = todo, arch
    jobs = jobs or min(2, os.cpu_count() or 1)
    rows = []
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        for row in pool.map(_compile, range(len(todo))):
            rows.append(row)
            if progress:
                progress(len(rows), len(todo), row)
    return rows


def _widths(counts):
    """{bytes: count} -> '16B:12 2B:4' (widest first); '-' when there is none."""
    return " ".join(f"{b}B:{n}" for b, n in sorted(counts.items(), key=lambda kv: -int(kv[0]))) or "-"


COLUMNS = ["kernel", "form", "config", "dtype", "layout", "epilogue", "shape", "align", "smem", "regs",
           "spill st/ld", "wgmma/mma", "ld", "ld in loops", "st", "cp.async/TMA", "atomics", "compile s"]


def markdown(rows, header):
    """The table, one line per compiled kernel; pruned configs (not selectable) marked."""
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for r in rows:
        cells = [r["kernel"], r["form"], r["config"] + ("" if r["selectable"] else " (pruned)"), r["dtype"],
                 r["layout"], r["epilogue"], r["shape"], f"%{r['align']}", str(r["shared"]), str(r["regs"]),
                 f"{r['spill_stores']}/{r['spill_loads']}", f"{r['wgmma']}/{r['mma_sync']}", _widths(r["ld"]),
                 _widths(r["loop_ld"]), _widths(r["st"]), f"{_widths(r['cp_async'])} / {r['tma']}", str(r["atomics"]),
                 f"{r['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
