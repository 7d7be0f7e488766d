"""`python -m fastconv.bench`: every fused op against eager PyTorch and torch.compile.

For each (op, shape, dtype) and provider it reports the median time, the
achieved GB/s on the op's minimum traffic, the % of this card's measured copy
bandwidth, TFLOP/s, the ratio against eager and against compile, and the max
error against eager (a fast wrong kernel is a failure, not a result).

Timing on a GPU: triton.testing.do_bench (median, L2 flushed before each call).
Without a GPU: the torch backend against eager on the CPU (time.perf_counter
medians), and the Triton kernels checked through the interpreter at small sizes.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch.nn.functional as F  # noqa: E402

import fastconv  # noqa: E402
from fastconv import reference  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
          "tf32": torch.float32}


class Case:
    """One op at one shape: inputs, the fastconv call, the eager pattern, and its
    minimum DRAM traffic (every input read once, every output written once)."""

    def __init__(self, op, label, make, ours, eager, min_bytes, flops=0):
        self.op, self.label = op, label
        self.make, self.ours, self.eager = make, ours, eager
        self.min_bytes, self.flops = min_bytes, flops


def _nhwc(shape, dtype, device):
    return torch.randn(shape, device=device).to(dtype).contiguous(memory_format=torch.channels_last)


def conv_case(n, cin, hw, cout, stride, dtype, device, relu=True):
    def make():
        x = _nhwc((n, cin, hw, hw), dtype, device)
        w = (torch.randn(cout, cin, 1, 1, device=device) / cin ** 0.5).to(dtype)
        return x, w, torch.randn(cout, device=device).to(dtype)

    def eager(x, w, b):
        y = F.conv2d(x, w, b, stride)
        return torch.relu(y) if relu else y

    ohw = (hw - 1) // stride + 1
    es = torch.finfo(dtype).bits // 8
    return Case("conv1x1_relu" if relu else "conv1x1", f"{n}x{cin}x{hw}x{hw}->{cout}/s{stride}", make,
                lambda x, w, b: fastconv.conv1x1_relu(x, w, b, stride, relu), eager,
                es * (n * ohw * ohw * (cin + cout) + cout * cin + cout), 2 * n * ohw * ohw * cin * cout)


def residual_case(n, c, hw, dtype, device):
    def make():
        return _nhwc((n, c, hw, hw), dtype, device), _nhwc((n, c, hw, hw), dtype, device)

    def eager(x, r):  # what a torchvision block does: out += identity; relu(out)
        return torch.relu(x + r)

    es = torch.finfo(dtype).bits // 8
    return Case("residual_add", f"{n}x{c}x{hw}x{hw}", make, fastconv.residual_add, eager,
                3 * es * n * c * hw * hw)


def pool_case(kind, n, c, hw, k, s, dtype, device):
    ohw = -(-hw // s)
    pad = max((ohw - 1) * s + k - hw, 0)
    pads = (pad // 2, pad - pad // 2) * 2

    def make():
        return (_nhwc((n, c, hw, hw), dtype, device),)

    if kind == "max":
        ours = lambda x: fastconv.max_pool2d_same(x, k, s)  # noqa: E731
        eager = lambda x: F.max_pool2d(F.pad(x, pads, value=float("-inf")), k, s)  # noqa: E731
    else:  # eager SAME average: pooled sums over pooled counts of real cells
        ours = lambda x: fastconv.avg_pool2d_same(x, k, s)  # noqa: E731
        ones = torch.ones(1, 1, hw, hw, device=device, dtype=dtype)
        count = F.avg_pool2d(F.pad(ones, pads), k, s, divisor_override=1)
        eager = lambda x: F.avg_pool2d(F.pad(x, pads), k, s, divisor_override=1) / count  # noqa: E731
    es = torch.finfo(dtype).bits // 8
    return Case(f"{kind}_pool2d_same", f"{n}x{c}x{hw}x{hw} k{k}s{s}", make, ours, eager,
                es * n * c * (hw * hw + ohw * ohw))


# A few shapes that stand for the rest (ResNet-50 and GoogLeNet layers at 224x224), as
# (op, channels in, size, channels out / kernel, stride, relu); the first of each op form --quick.
KEY_SHAPES = [
    ("conv", 64, 56, 256, 1, True), ("conv", 256, 56, 64, 1, True), ("conv", 256, 56, 512, 2, False),
    ("conv", 1024, 14, 256, 1, True), ("conv", 192, 28, 64, 1, True), ("conv", 832, 7, 384, 1, True),
    ("residual", 256, 56), ("residual", 1024, 14), ("residual", 2048, 7),
    ("max", 64, 112, 3, 2), ("max", 192, 28, 3, 1), ("max", 480, 28, 3, 2), ("avg", 1024, 7, 3, 1),
]


def model_shapes(names=("resnet50", "googlenet")):
    """Every distinct fused-op call of fastconv's models at 224x224, in the KEY_SHAPES form:
    the models run once on the meta device (no memory, no math) while a dispatch mode
    records the fastconv ops they call."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fastconv import models

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.shapes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "fastconv":
                op, x = func.__name__.split(".")[0], args[0]
                _, c, h, _ = x.shape
                if op == "conv1x1_relu":
                    stride, relu = (list(args[3:5]) + [1, True][len(args[3:5]):])
                    self.shapes.append(("conv", c, h, args[1].shape[0], stride, relu))
                elif op == "residual_add":
                    self.shapes.append(("residual", c, h))
                else:
                    self.shapes.append((op.split("_")[0], c, h, args[1][0], args[2][0]))
            return func(*args, **(kwargs or {}))

    recorder = Recorder()
    for name in names:
        with torch.device("meta"):
            model = getattr(models, name)().eval()
            x = torch.empty(1, 3, 224, 224)
        with recorder, torch.no_grad():
            model(x)
    return list(dict.fromkeys(recorder.shapes))


def op_cases(dtype, device, batches, shapes):
    """Cases at each batch size for the shapes "quick" (one of each op form), "key"
    (KEY_SHAPES) or "models" (every distinct call of ResNet-50 and GoogLeNet)."""
    specs = model_shapes() if shapes == "models" else KEY_SHAPES
    if shapes == "quick":
        specs = [KEY_SHAPES[i] for i in (0, 1, 6, 9, 10)]
    cases = []
    for n in batches:
        for kind, *spec in specs:
            if kind == "conv":
                cin, hw, cout, stride, relu = spec
                cases.append(conv_case(n, cin, hw, cout, stride, dtype, device, relu))
            elif kind == "residual":
                cases.append(residual_case(n, *spec, dtype, device))
            else:
                cases.append(pool_case(kind, n, *spec, dtype, device))
    return cases


def copy_bandwidth():
    """Device-to-device copy GB/s (bytes read + written) of a 1 GiB buffer on this card."""
    import triton.testing
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.numel() / ms / 1e6


def time_ms(fn, on_gpu):
    if on_gpu:
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def providers(on_gpu, wanted):
    """name -> (backend or None for eager/compile, compile mode)."""
    names = {"eager": (None, None)}
    if on_gpu:
        names.update({"triton": ("triton", None), "cuda": ("cuda", None),
                      "compile": (None, "default"), "compile-max-autotune": (None, "max-autotune")})
        if "cuda" not in fastconv.available_backends():
            names.pop("cuda")
    else:
        names.update({"torch": ("torch", None)})
    return {k: v for k, v in names.items() if not wanted or k in wanted}


def run_ops(dtype_names, batches, shapes, op_filter, provider_filter, progress=True):
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
                    call = lambda b=backend: _on(b, case.ours, inputs)  # noqa: E731
                else:
                    call = lambda: case.eager(*inputs)  # noqa: E731
                out = call()
                err = (out.float() - eager_out.float()).abs().max().item()
                ms = time_ms(call, on_gpu)
                times[name] = ms
                rows.append({"op": case.op, "shape": case.label, "dtype": dn, "provider": name,
                             "median_ms": ms, "max_abs_err_vs_eager": err,
                             "rel_err_vs_eager": reference.rel_error(out, eager_out),
                             "GB/s": case.min_bytes / ms / 1e6,
                             "pct_copy_bw": 100 * case.min_bytes / ms / 1e6 / bw if bw else None,
                             "TFLOP/s": case.flops / ms / 1e9 if case.flops else None})
        for row in rows[-len(provs):]:
            row["vs_eager"] = times["eager"] / row["median_ms"]
            row["vs_compile"] = times["compile"] / row["median_ms"] if "compile" in times else None
        if progress:
            print(f"\r[{i + 1}/{len(plan)}] {case.op} {case.label} {dn}", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    if not on_gpu:
        rows += interpreter_check()
    return rows, bw


MODEL_TWINS = {  # fastconv builder name -> torchvision builder name
    "resnet50": "resnet50", "googlenet": "googlenet", "vgg16": "vgg16", "alexnet": "alexnet"}


def _cuda_graphed(fn, x):
    """fn(x) captured into a CUDA graph (static input x); returns a replay callable."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(x)
    return lambda: (graph.replay(), out)[1]


def run_models(names, batch, dtype_name, provider_filter, train_step=True):
    """Whole-network inference (and one training step) in images/s: fastconv's backends
    against the torchvision model in eager mode and under torch.compile, channels_last."""
    import torchvision.models as tvm

    from fastconv import models
    on_gpu = torch.cuda.is_available()
    device, dtype = ("cuda" if on_gpu else "cpu"), DTYPES[dtype_name]
    rows = []
    for name in names:
        torch.manual_seed(0)
        eager = getattr(tvm, MODEL_TWINS[name])(weights=None)
        ours = getattr(models, name)()
        ours.load_state_dict(eager.state_dict())
        eager, ours = (m.eval().to(device, dtype, memory_format=torch.channels_last) for m in (eager, ours))
        x = torch.randn(batch, 3, 224, 224, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            ref = eager(x)
            calls = {"eager": lambda: eager(x)}
            if on_gpu:
                calls["compile"] = (lambda f: lambda: f(x))(torch.compile(eager))
                for backend in [b for b in ("triton", "cuda") if b in fastconv.available_backends()]:
                    calls[backend] = (lambda b: lambda: _on(b, ours, (x,)))(backend)
                calls["eager+graph"] = _cuda_graphed(eager, x)
                calls["triton+graph"] = _cuda_graphed(lambda t: _on("triton", ours, (t,)), x)
            else:
                calls["torch"] = lambda: _on("torch", ours, (x,))
            for prov, call in calls.items():
                if provider_filter and prov.split("+")[0] not in provider_filter:
                    continue
                out = call()
                ms = time_ms(call, on_gpu)
                rows.append({"model": name, "batch": batch, "dtype": dtype_name, "mode": "inference",
                             "provider": prov, "median_ms": ms, "images/s": batch / ms * 1e3,
                             "max_abs_err_vs_eager": (out.float() - ref.float()).abs().max().item(),
                             "rel_err_vs_eager": reference.rel_error(out, ref)})
        if train_step:
            rows += _train_rows(name, ours, eager, x, dtype_name, on_gpu, provider_filter)
    for row in rows:
        base = next(r for r in rows if r["model"] == row["model"] and r["mode"] == row["mode"]
                    and r["provider"] == "eager")
        row["vs_eager"] = base["median_ms"] / row["median_ms"]
    return rows


def _train_rows(name, ours, eager, x, dtype_name, on_gpu, provider_filter):
    """One SGD step (forward, backward, update) in train mode, images/s."""
    rows = []
    providers_ = {"eager": (eager, "torch")}
    for backend in [b for b in ("triton", "cuda") if b in fastconv.available_backends()] if on_gpu else ["torch"]:
        providers_[backend] = (ours, backend)
    for prov, (model, backend) in providers_.items():
        if provider_filter and prov not in provider_filter:
            continue
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step():
            with fastconv.use_backend(backend):
                out = model(x)
                loss = (out[0] if isinstance(out, tuple) else out).float().square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        ms = time_ms(step, on_gpu)
        rows.append({"model": name, "batch": x.shape[0], "dtype": dtype_name,
                     "mode": "train step", "provider": prov, "median_ms": ms,
                     "images/s": x.shape[0] / ms * 1e3, "max_abs_err_vs_eager": None,
                     "rel_err_vs_eager": None})
        model.eval()
    return rows


def models_markdown(rows):
    lines = ["| model | batch | dtype | mode | provider | median ms | images/s | vs eager | max err vs eager |",
             "|---|---:|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['dtype']} | {r['mode']} | {r['provider']} | "
                     f"{r['median_ms']:.2f} | {r['images/s']:.0f} | {r['vs_eager']:.2f} | "
                     f"{_fmt(r['max_abs_err_vs_eager'], '.2e')} |")
    return "\n".join(lines) + "\n"


def plot(result, out_dir, stem):
    """PNG plots of an ops result: speedup against eager per op and shape, and % of the
    card's copy bandwidth (GPU results only). Returns the paths written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.get("rows", []) if r.get("median_ms") and r["provider"] != "eager"]
    paths = []
    for metric, label, name in (("vs_eager", "speedup vs eager (x)", "speedup"),
                                ("pct_copy_bw", "% of measured copy bandwidth", "roofline")):
        data = [r for r in rows if r.get(metric) is not None]
        if not data:
            continue
        cases = sorted({(r["op"], r["shape"], r["dtype"]) for r in data})
        provs = sorted({r["provider"] for r in data})
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(cases) * len(provs)), 4.5))
        width = 0.8 / len(provs)
        for k, prov in enumerate(provs):
            vals = {(r["op"], r["shape"], r["dtype"]): r[metric] for r in data if r["provider"] == prov}
            ax.bar([i + k * width for i in range(len(cases))], [vals.get(c, 0) for c in cases],
                   width, label=prov)
        if metric == "vs_eager":
            ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
        ax.set_xticklabels([f"{o}\n{sh} {dt}" for o, sh, dt in cases], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(label)
        env = result.get("env", {})
        ax.set_title(f"fastconv on {env.get('device', '?')} ({env.get('date', '')[:10]}, {env.get('commit', '')[:8]})",
                     fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{stem}_{name}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _on(backend, fn, inputs):
    with fastconv.use_backend(backend):
        return fn(*inputs)


def interpreter_check():
    """CPU only: the Triton kernels through the interpreter against float64, at a small size."""
    rows = []
    for case in op_cases(torch.float32, "cpu", [2], "quick"):
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


def environment():
    def git(*args):
        try:
            return subprocess.check_output(["git", *args], text=True, stderr=subprocess.DEVNULL).strip()
        except (OSError, subprocess.CalledProcessError):
            return None
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "CPU",
            "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
            "python": platform.python_version(), "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "fastconv_backends": fastconv.available_backends()}


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def markdown(rows, env, bw):
    lines = [f"# fastconv op benchmark ({env['date'][:10]})", "",
             f"Device: {env['device']}; torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}; "
             f"commit {env['commit']}{' (dirty)' if env['dirty'] else ''}.",
             f"Copy bandwidth measured here: {bw:.0f} GB/s." if bw else
             "No GPU: CPU times of the torch backend against eager; Triton checked in the interpreter.",
             "Median times; GB/s on the op's minimum traffic; ratios > 1 mean faster than eager/compile.", "",
             "| op | shape | dtype | provider | median us | GB/s | % copy BW | TFLOP/s | vs eager | vs compile | max err vs eager |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ms = r.get("median_ms")
        lines.append(f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['provider']} | "
                     f"{_fmt(ms and ms * 1e3, '.1f')} | {_fmt(r.get('GB/s'), '.0f')} | "
                     f"{_fmt(r.get('pct_copy_bw'), '.0f')} | {_fmt(r.get('TFLOP/s'), '.1f')} | "
                     f"{_fmt(r.get('vs_eager'), '.2f')} | {_fmt(r.get('vs_compile'), '.2f')} | "
                     f"{r['max_abs_err_vs_eager']:.2e} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("level", nargs="?", default="ops", choices=["ops", "models", "all", "plot"],
                   help="what to run; 'plot' draws PNGs from --from-json")
    p.add_argument("--from-json", default=None, help="with 'plot': a result JSON written by --out")
    p.add_argument("--quick", action="store_true", help="a sub-minute subset")
    p.add_argument("--model", nargs="+", default=None, choices=list(MODEL_TWINS))
    p.add_argument("--shapes", default="key", choices=["key", "models"],
                   help="ops: a few key shapes, or every distinct call of ResNet-50 and GoogLeNet")
    p.add_argument("--dtype", nargs="+", default=None, choices=list(DTYPES))
    p.add_argument("--batch", nargs="+", type=int, default=None)
    p.add_argument("--op", nargs="+", default=None, help="e.g. conv1x1_relu residual_add")
    p.add_argument("--provider", nargs="+", default=None)
    p.add_argument("--out", default=None, help="folder for NAME.md and NAME.json")
    p.add_argument("--name", default="bench", help="file stem of the results (default: bench)")
    args = p.parse_args(argv)
    if args.level == "plot":
        with open(args.from_json) as f:
            result = json.load(f)
        out = args.out or os.path.dirname(os.path.abspath(args.from_json))
        stem = os.path.splitext(os.path.basename(args.from_json))[0]
        for path in plot(result, out, stem):
            print(path)
        return result
    on_gpu = torch.cuda.is_available()
    dtypes = args.dtype or (["bf16"] if args.quick or not on_gpu else ["bf16", "fp16", "fp32", "tf32"])
    if not on_gpu:
        dtypes = ["fp32"]  # the CPU run: the torch backend against eager
    batches = args.batch or (([32] if args.quick else [32, 128, 256]) if on_gpu else [2])
    torch.manual_seed(0)
    env = environment()
    result = {"env": env}
    md = ""
    if args.level in ("ops", "all"):
        shapes = "quick" if args.quick or not on_gpu else args.shapes
        rows, bw = run_ops(dtypes, batches, shapes, args.op, args.provider)
        result.update({"copy_GB/s": bw, "rows": rows})
        md += markdown(rows, env, bw)
    if args.level in ("models", "all"):
        names = args.model or (["resnet50"] if args.quick or not on_gpu else list(MODEL_TWINS))
        batch = (args.batch or [128 if on_gpu else 2])[0]
        rows = run_models(names, batch, dtypes[0], args.provider, train_step=not args.quick)
        result["model_rows"] = rows
        md += (f"\n# Models ({env['device']}, {dtypes[0]}, channels_last, batch {batch})\n\n"
               + models_markdown(rows))
    print(md)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, args.name + ".md"), "w") as f:
            f.write(md)
        with open(os.path.join(args.out, args.name + ".json"), "w") as f:
            json.dump(result, f, indent=1)
        try:
            plot(result, args.out, args.name)
        except ImportError:  # matplotlib is optional (the 'bench' extra)
            pass
    return result

if __name__ == "__main__":
    main()
