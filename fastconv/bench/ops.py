"""The ops level: every op and shape for every provider, one row each."""
import sys

import torch

import fastconv
from fastconv import reference
from fastconv.bench.cases import DTYPES, conv_case, op_cases, pool_case, residual_case
from fastconv.bench.timing import copy_bandwidth, on_backend, time_ms

def providers(on_gpu, wanted):
    """name -> (backend or None for eager/compile, compile mode)."""
    names = {"eager": (None, None)}
    if on_gpu:
        # "auto": what fastconv runs by default (the tuning table, else the rule)
        names.update({"auto": ("auto", None), "triton": ("triton", None), "cuda": ("cuda", None),
                      "compile": (None, "default"), "compile-max-autotune": (None, "max-autotune")})
        if "cuda" not in fastconv.available_backends():
            names.pop("cuda")
    else:
        names.update({"torch": ("torch", None), "auto": ("auto", None)})
    return {k: v for k, v in names.items() if not wanted or k in wanted}


def run_ops(dtype_names, batches, shapes, op_filter, provider_filter, progress=True, on_rows=None):
    """Rows of every (case, provider); `on_rows(rows)` after each case (a killed run keeps them)."""
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    rows = []
    bw = copy_bandwidth() if on_gpu else None
    provs = providers(on_gpu, provider_filter)
    plan = [(dn, c) for dn in dtype_names
            for c in op_cases(DTYPES[dn], device, batches, shapes)
            if not op_filter or c.op in op_filter]
    for i, (dn, case) in enumerate(plan):
        torch.backends.cudnn.allow_tf32 = dn == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = dn == "tf32"
        inputs = case.make()
        with torch.no_grad():
            eager_out = case.eager(*inputs)
            times = {}
            for name, (backend, mode) in provs.items():
                if mode is not None:
                    fn = torch.compile(case.eager, mode=mode)
                    call = lambda fn=fn: fn(*inputs)  # noqa: E731
                elif backend is not None:
                    call = lambda b=backend: on_backend(b, case.ours, inputs)  # noqa: E731
                else:
                    call = lambda: case.eager(*inputs)  # noqa: E731
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
        for row in rows[-len(times):]:  # this case's rows
            row["vs_eager"] = times["eager"] / row["median_ms"]
            row["vs_compile"] = times["compile"] / row["median_ms"] if "compile" in times else None
            # the strongest baseline: Inductor's max-autotune (a 1x1 conv as a tuned Triton matmul)
            best = times.get("compile-max-autotune")
            row["vs_compile_max_autotune"] = best / row["median_ms"] if best else None
        if on_rows:
            on_rows(rows)
        if progress:
            print(f"\r[{i + 1}/{len(plan)}] {case.op} {case.label} {dn}", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    if not on_gpu:
        rows += interpreter_check(op_filter)
    return rows, bw


def interpreter_check(op_filter=None):
    """CPU only: the Triton kernels through the interpreter against float64, at a small size."""
    rows = []
    for case in op_cases(torch.float32, "cpu", [2], "quick"):
        if op_filter and case.op not in op_filter:
            continue
        small = _shrink(case)
        inputs = small.make()
        with torch.no_grad(), fastconv.use_backend("triton"):
            out = small.ours(*inputs)
        ref = small.eager(*[t.double() for t in inputs])
        rows.append({"op": case.op, "shape": small.label, "dtype": "fp32",
                     "provider": "triton-interpreter", "median_ms": None,
                     "rel_err_vs_eager": reference.rel_error(out, ref),
                     "max_abs_err_vs_eager": (out.double() - ref).abs().max().item()})
    return rows


def _shrink(case):
    """The same op at 1/8 of the channels and spatial size, for the interpreter."""
    op = case.op
    if op.startswith("conv"):
        return conv_case(2, 16, 7, 16, 1, torch.float32, "cpu")
    if op == "residual_add":
        return residual_case(2, 16, 7, torch.float32, "cpu")
    return pool_case(op.split("_")[0], 2, 16, 9, 3, 2, torch.float32, "cpu")
