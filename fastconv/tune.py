"""python -m fastconv.tune [--quick] [--dry-run] [--out PATH] [--batch N] [--dtype ...] [--budget-s S]

Times each fused op on each backend ("torch" - the eager composition -, "triton", and "cuda"
when built) at the shape classes of the reference architectures (every distinct fused-op call
of ResNet-50 and GoogLeNet, fastconv.bench.cases.model_shapes()), tunes the Triton 1x1 conv's
tile configuration per shape class, and writes the table "auto" reads
(fastconv/_tuning/<arch>.json; see fastconv/_tuning): per op, shape class and dtype, the
fastest backend that matches the torch composition's result, its Triton config, and every
backend's median time.

  --quick    the key shapes (fastconv.bench.cases.KEY_SHAPES), bf16, 3 configs per conv class,
             short timings and a time budget (default 50 s): a step of the GPU check
  --dry-run  CPU: tiny shapes through the Triton interpreter, no timing decisions go to the
             package (the table goes to --out, or to stdout); tests the plumbing in CI
  --out      where the table goes (default: the package's table for this GPU); entries already
             there at other shape classes are kept
"""
import argparse
import datetime
import importlib
import json
import sys
import time
from pathlib import Path

import torch

import fastconv
from fastconv import _tuning, reference
from fastconv.bench.cases import KEY_SHAPES, conv_case, model_shapes, pool_case, positive_int, residual_case

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "tf32": torch.float32}
# the largest relative error vs the torch composition a backend may have and still be chosen
MAX_REL_ERROR = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 5e-3}


def _triton_conv():
    return importlib.import_module("fastconv._triton.conv1x1")  # the package exports a function of that name


# The op forms with a choice of backend; Inception's fused ops ("poolconv", "inception") have
# one kernel (Triton) and no tuned configuration yet, so the tuner skips them.
TUNED_KINDS = ("conv", "convres", "residual", "max", "avg")


def _case(spec, batch, dtype, device):
    """(table op, Case, shape-class function of the Case's inputs) for a KEY_SHAPES-form spec."""
    kind, *s = spec
    if kind in ("conv", "convres"):
        cin, hw, cout, stride, relu = s
        case = conv_case(batch, cin, hw, cout, stride, dtype, device, relu, kind == "convres")
        return "conv1x1_relu", case, lambda x, w, b, r=None: _tuning.conv_key(x, w, stride, relu, r)
    if kind == "residual":
        return "residual_add", residual_case(batch, *s, dtype, device), lambda x, r: _tuning.tensor_key(x)
    c, hw, k, st = s
    op = f"{kind}_pool2d_same"
    return op, pool_case(kind, batch, c, hw, k, st, dtype, device), lambda x: _tuning.pool_key(x, (k, k), (st, st))


def _tiny(spec):
    """The same op form at a size the interpreter runs in well under a second."""
    kind = spec[0]
    if kind in ("conv", "convres"):
        return (kind, 16, 5, 24) + tuple(spec[4:])
    if kind == "residual":
        return ("residual", 8, 5)
    return (kind, 8, 7) + tuple(spec[3:])


def _timer(on_gpu, quick):
    if on_gpu:
        from triton.testing import do_bench
        warmup, rep = (5, 20) if quick else (25, 100)
        return lambda fn: do_bench(fn, warmup=warmup, rep=rep, return_mode="median")

    def once(fn):  # dry run: one call, timed only to fill the table's fields
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return once


def _time_backends(entry, backends, call, expected, dtype, timer, pins):
    """Fill entry["ms"] with each backend's median (pinned to pins[backend], if any), skipping
    a backend whose result differs from the torch composition's; pick the fastest."""
    tconv = _triton_conv()
    for backend in backends:
        with tconv.pinned_config(pins.get(backend)), fastconv.use_backend(backend):
            outs = call()
            outs, refs = (outs, expected) if isinstance(outs, tuple) else ((outs,), (expected,))
            err = max(reference.rel_error(o, e) for o, e in zip(outs, refs))
            if not err <= MAX_REL_ERROR.get(dtype, 0.0):
                entry["rejected"][backend] = f"relative error {err:.3g} vs the torch composition"
                continue
            entry["ms"][backend] = timer(call)
    entry["backend"] = min(entry["ms"], key=entry["ms"].get)
    if entry["backend"] != "triton":
        entry["config"] = None
    return entry


def tune_case(op, case, key_of, backends, timer, limit):
    """Table entries for one case: every backend timed through the op itself (host cost
    included), the Triton conv with its tuned config; the fastest backend whose output matches
    torch's. A ReLU conv adds the entry of its backward's ReLU-mask + bias-gradient op."""
    inputs = case.make()
    x = inputs[0]
    key = key_of(*inputs)
    entry = {"op": op, "key": key, "label": case.label, "config": None, "ms": {}, "rejected": {}}
    with torch.no_grad():
        with fastconv.use_backend("torch"):
            expected = case.ours(*inputs)
        pins = {}
        if op == "conv1x1_relu" and x.is_cuda and "triton" in backends:
            w, r = inputs[1], (inputs[3] if len(inputs) > 3 else None)
            pins["triton"], _ = _triton_conv().autotune(x, w, torch.empty_like(expected), key[4], key[5], r, limit)
            entry["config"] = pins["triton"].as_dict()
        entries = [_time_backends(entry, backends, lambda: case.ours(*inputs), expected, x.dtype, timer, pins)]
        if op == "conv1x1_relu":
            entries.append(_tune_backward(case.label, expected, key[5], backends, timer, limit))
    return entries


def _tune_backward(label, y, relu, backends, timer, limit):
    grad = torch.randn_like(y)
    key = _tuning.tensor_key(grad) + (bool(relu),)
    entry = {"op": "relu_bias_backward", "key": key, "label": label + " backward", "config": None,
             "ms": {}, "rejected": {}}
    call = lambda: torch.ops.fastconv.relu_bias_backward(grad, y, relu)  # noqa: E731
    with fastconv.use_backend("torch"):
        expected = call()
    pins = {}
    if y.is_cuda and "triton" in backends:
        pins["triton"], _ = _triton_conv().autotune_grad(grad, y, relu, limit)
        entry["config"] = pins["triton"].as_dict()
    return _time_backends(entry, backends, call, expected, y.dtype, timer, pins)


def run(specs, dtypes, batch, device, backends, quick, budget_s=None, progress=True):
    """Entries for every (spec, dtype), in order, until the time budget is spent."""
    timer = _timer(device == "cuda", quick)
    start, entries = time.perf_counter(), []
    plan = [(dn, spec) for dn in dtypes for spec in specs if spec[0] in TUNED_KINDS]
    for i, (dn, spec) in enumerate(plan):
        if budget_s is not None and time.perf_counter() - start > budget_s:
            print(f"\ntime budget of {budget_s} s spent: {len(plan) - i} cases not tuned", file=sys.stderr)
            break
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = dn == "tf32"
        op, case, key_of = _case(spec, batch, DTYPES[dn], device)
        new = tune_case(op, case, key_of, backends, timer, 3 if quick else 6)
        entries += new
        if progress:
            e = new[0]
            print(f"\r[{i + 1}/{len(plan)}] {op} {case.label} {dn}: {e['backend']}  ", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    return entries


def table(entries, mode, batch, previous=None):
    """The table document; entries of `previous` at other (op, shape class) pairs are kept."""
    seen = {(e["op"], tuple(e["key"])) for e in entries}
    kept = [e for e in (previous or {}).get("entries", []) if (e["op"], _tuning._as_key(e["key"])) not in seen]
    on_gpu = torch.cuda.is_available()
    import triton
    return {"format": _tuning.FORMAT, "arch": _tuning.arch(0) if on_gpu else "cpu-dry-run",
            "device": torch.cuda.get_device_name(0) if on_gpu else "cpu (Triton interpreter)",
            "torch": torch.__version__, "triton": triton.__version__, "mode": mode, "batch": batch,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "entries": kept + entries}


def dump(doc):
    """The table as JSON, one entry per line (readable diffs when a table is re-tuned)."""
    head = json.dumps({k: v for k, v in doc.items() if k != "entries"}, indent=1)[:-2]
    return head + ',\n "entries": [\n  ' + ",\n  ".join(json.dumps(e) for e in doc["entries"]) + "\n ]\n}\n"


def positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastconv.tune", description=__doc__.split("\n\n")[1])
    p.add_argument("--quick", action="store_true", help="key shapes, bf16, 3 configs, ~1 minute")
    p.add_argument("--dry-run", action="store_true", help="CPU: tiny shapes in the interpreter")
    p.add_argument("--out", type=Path, help="table file (default: the package's, for this GPU)")
    p.add_argument("--batch", type=positive_int, help="images per timed call (default 128)")
    p.add_argument("--dtype", nargs="+", choices=list(DTYPES), help="default: bf16 (--quick), bf16 fp16")
    p.add_argument("--budget-s", type=positive_float, help="stop tuning after this many seconds (--quick: 50)")
    args = p.parse_args(argv)
    on_gpu = torch.cuda.is_available()
    if args.dry_run:
        for flag, value in (("--batch", args.batch), ("--dtype", args.dtype)):
            if value is not None:
                p.error(f"{flag} does not apply to --dry-run (it runs fp32 at batch 2 in the interpreter)")
        if on_gpu:
            p.error("--dry-run is the CPU check of the tuner; on a GPU, run --quick")
        from fastconv._launcher_contract import triton_interpreting
        if not triton_interpreting():
            p.error("--dry-run runs the Triton kernels in the interpreter: set TRITON_INTERPRET=1")
        specs = list(dict.fromkeys(_tiny(s) for s in KEY_SHAPES))
        dtypes, batch, device, mode, budget = ["fp32"], 2, "cpu", "dry-run", args.budget_s
    elif not on_gpu:
        p.error("tuning needs a CUDA device (use --dry-run to check the tuner on the CPU)")
    else:
        specs = KEY_SHAPES if args.quick else model_shapes()
        dtypes = args.dtype or (["bf16"] if args.quick else ["bf16", "fp16"])
        batch, device = args.batch or 128, "cuda"
        mode, budget = ("quick" if args.quick else "full"), args.budget_s or (50 if args.quick else None)
    backends = [b for b in ("torch", "triton", "cuda") if b in fastconv.available_backends()]
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        entries = run(specs, dtypes, batch, device, backends, args.quick or args.dry_run, budget)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    out = args.out or (None if args.dry_run else _tuning.TABLE_DIR / f"{_tuning.arch(0)}.json")
    previous = json.loads(out.read_text()) if out is not None and out.is_file() else None
    if previous is not None and previous.get("arch") != table([], mode, batch)["arch"]:
        previous = None  # another GPU's table: replaced, not merged
    doc = dump(table(entries, mode, batch, previous))
    if out is None:
        print(doc)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(doc)
        _tuning.clear_cache()
        print(f"{len(entries)} entries -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
