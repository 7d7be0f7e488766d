"""The ops level: every op and shape for every provider, one row each."""
import functools

import torch

import fastconv
from fastconv import reference
from fastconv.bench.cases import DTYPES, QUICK_SHAPES, UsageError, check_dtypes, op_cases, tiny
from fastconv.bench.progress import Progress
from fastconv.bench.timing import copy_bandwidth, on_backend, time_ms


def providers(on_gpu, wanted=None):
    """name -> (backend or None for eager/compile, compile mode) of the providers timed here,
    all of them or those `wanted` (a name this machine lacks raises UsageError). On the CPU,
    "triton" is the interpreter check (correctness at a small size, not timed)."""
    names = {"eager": (None, None)}
    if on_gpu:
        # "auto": what fastconv runs by default (the tuning table, else the rule)
        names.update({"auto": ("auto", None), "triton": ("triton", None), "cuda": ("cuda", None),
                      "compile": (None, "default"), "compile-max-autotune": (None, "max-autotune")})
        if "cuda" not in fastconv.available_backends():
            names.pop("cuda")
    else:
        names.update({"torch": ("torch", None), "auto": ("auto", None), "triton": ("triton", None)})
    unknown = [w for w in wanted or () if w not in names]
    if unknown:
        raise UsageError(f"--provider {' '.join(unknown)}: not a provider of the ops benchmark on this "
                         f"machine ({'GPU' if on_gpu else 'CPU'}); choose from {', '.join(names)}")
    return {k: v for k, v in names.items() if not wanted or k in wanted}


def run_ops(dtype_names, batches, shapes, op_filter, provider_filter, progress=True, on_rows=None):
    """Rows of every (case, provider); `on_rows(rows)` after each case (a killed run keeps them).
    The ratios against eager are None where eager was not asked for. On the CPU the Triton
    kernels are checked in the interpreter (provider "triton-interpreter") after the timings."""
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    check_dtypes(dtype_names, on_gpu)
    provs = providers(on_gpu, provider_filter)
    timed = {k: v for k, v in provs.items() if on_gpu or k != "triton"}
    plan = [(dn, c) for dn in dtype_names for c in op_cases(DTYPES[dn], device, batches, shapes)]
    missing = sorted(set(op_filter or ()) - {c.op for _, c in plan})
    if missing:
        where = f"the {shapes!r} shapes" if isinstance(shapes, str) else "these shapes"
        raise UsageError(f"--op {' '.join(missing)}: not an op of {where}; choose from "
                         f"{', '.join(dict.fromkeys(c.op for _, c in plan))}")
    plan = [(dn, c) for dn, c in plan if timed and (not op_filter or c.op in op_filter)]
    rows = []
    bw = copy_bandwidth() if on_gpu else None
    shown = Progress(progress)
    for i, (dn, case) in enumerate(plan):
        shown.step(f"[{i + 1}/{len(plan)}] {case.op} {case.label} {dn}")
        torch.backends.cudnn.allow_tf32 = dn == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = dn == "tf32"
        inputs = case.make()
        with torch.no_grad():
            eager_out = case.eager(*inputs)
            times = {}
            for name, (backend, mode) in timed.items():
                if mode is not None:
                    call = functools.partial(torch.compile(case.eager, mode=mode), *inputs)
                elif backend is not None:
                    call = functools.partial(on_backend, backend, case.ours, inputs)
                else:
                    call = functools.partial(case.eager, *inputs)
                try:
                    out = call()
                except NotImplementedError:  # the backend has no kernel for this op yet
                    continue
                err = (out.float() - eager_out.float()).abs().max().item()
                ms = time_ms(call, on_gpu)
                times[name] = ms
                rows.append({"op": case.op, "shape": case.label, "dtype": dn, "provider": name,
                             "median_ms": ms, "max_abs_err_vs_eager": err,
                             "rel_err_vs_eager": reference.rel_error(out, eager_out),
                             "GB/s": case.min_bytes / ms / 1e6,
                             "pct_copy_bw": 100 * case.min_bytes / ms / 1e6 / bw if bw else None,
                             "TFLOP/s": case.flops / ms / 1e9 if case.flops else None})
        for row in rows[len(rows) - len(times):]:  # this case's rows
            ms = row["median_ms"]
            row["vs_eager"] = times["eager"] / ms if "eager" in times else None
            row["vs_compile"] = times["compile"] / ms if "compile" in times else None
            # the strongest baseline: Inductor's max-autotune (a 1x1 conv as a tuned Triton matmul)
            best = times.get("compile-max-autotune")
            row["vs_compile_max_autotune"] = best / ms if best else None
        if on_rows:
            on_rows(rows)
    if not on_gpu and "triton" in provs:
        rows += interpreter_check(op_filter, shown)
    shown.close()
    return rows, bw


def interpreter_check(op_filter=None, shown=None):
    """CPU only: the Triton kernels through the interpreter against float64, each quick
    shape's op form (kind, stride, ReLU, residual, pool window) at a tiny size."""
    rows = []
    cases = [c for c in op_cases(torch.float32, "cpu", [2], [tiny(s) for s in QUICK_SHAPES])
             if not op_filter or c.op in op_filter]
    for i, case in enumerate(cases):
        if shown:
            shown.step(f"[{i + 1}/{len(cases)}] Triton interpreter: {case.op} {case.label} fp32")
        inputs = case.make()
        with torch.no_grad(), fastconv.use_backend("triton"):
            out = case.ours(*inputs)
        ref = case.eager(*[t.double() for t in inputs])
        rows.append({"op": case.op, "shape": case.label, "dtype": "fp32",
                     "provider": "triton-interpreter", "median_ms": None,
                     "rel_err_vs_eager": reference.rel_error(out, ref),
                     "max_abs_err_vs_eager": (out.double() - ref).abs().max().item()})
    return rows
