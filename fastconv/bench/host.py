"""Host cost of a whole-network forward: how long Python and the launches take to issue it,
against how long the GPU takes to run it, and where fastconv's own Python spends the time.

    python -m fastconv.bench.host [--model resnet50 googlenet] [--batch 128] [--dtype bf16]
                                  [--forwards 5] [--out host.md]

Per model and provider (eager, and each fastconv backend):
  host ms  perf_counter around the forward call, GPU idle or not: the time to issue it;
  GPU ms   CUDA events around the same forward queued behind a GPU sleep longer than its
           host time, so the GPU runs it back to back: its kernel time without host gaps;
  wall ms  the forward to its synchronize. host > GPU means the GPU waits on Python
           (the first GPU run: ResNet-50 on triton, 25.5 ms host for 8.8 ms of GPU work).
Then cProfile over a few forwards on each fastconv backend, restricted to fastconv's own
functions: the top 20 by own time and by cumulative time. On a CPU (the dry run of the GPU
check) the same runs with eager and the torch backend, and GPU ms is left empty.
"""
import argparse
import cProfile
import functools
import io
import os
import pstats
import re
import statistics
import time

import torch

import fastconv
from fastconv.bench.cases import DTYPES, UsageError, check_dtypes, positive_int
from fastconv.bench.models import MODEL_TWINS, check_providers, model_pair
from fastconv.bench.progress import Progress
from fastconv.bench.timing import on_backend

SLEEP_CYCLES_PER_MS = 2_000_000  # ~2 GHz SM clock; the sleep is sized at twice the host time


def _synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_forward(call, forwards):
    """(host ms, GPU ms or None, wall ms): medians over `forwards` calls, after one warm-up."""
    call()
    _synchronize()
    host, wall, gpu = [], [], []
    for _ in range(forwards):
        _synchronize()
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
        _synchronize()
        host.append((t1 - t0) * 1e3)
        wall.append((time.perf_counter() - t0) * 1e3)
    if torch.cuda.is_available() and hasattr(torch.cuda, "_sleep"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(forwards):
            torch.cuda._sleep(int(2 * max(host) * SLEEP_CYCLES_PER_MS))  # the queue fills meanwhile
            start.record()
            call()
            end.record()
            torch.cuda.synchronize()
            gpu.append(start.elapsed_time(end))
    return statistics.median(host), (statistics.median(gpu) if gpu else None), statistics.median(wall)


def profile_text(call, forwards, title):
    """cProfile of `forwards` calls: fastconv's own functions, top 20 by own and by cumulative time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(forwards):
        call()
    _synchronize()
    profiler.disable()
    ours = re.escape(os.path.dirname(os.path.abspath(fastconv.__file__)))
    text = [f"## cProfile: {title}, {forwards} forwards, fastconv's own functions", ""]
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats(key).print_stats(ours, 20)
        body = buf.getvalue().strip().splitlines()
        start = next((i for i, ln in enumerate(body) if "ncalls" in ln), 0)
        text += [f"Top 20 by {key}:", "```", *body[start:], "```", ""]
    return "\n".join(text)


def run_host(names, batch, dtype_name, forwards=5, size=224, providers=None, progress=None, shown=None):
    """Rows of host/GPU/wall ms per model and provider, and the cProfile sections;
    progress(rows, profiles) after each provider (the check writes its file each time);
    `shown` (a Progress) gets a line per step."""
    on_gpu = torch.cuda.is_available()
    check_dtypes([dtype_name], on_gpu)
    backends = [b for b in ("triton", "cuda") if b in fastconv.available_backends()] if on_gpu else ["torch"]
    check_providers(providers, on_gpu, ["eager", *backends])
    device, dtype = ("cuda" if on_gpu else "cpu"), DTYPES[dtype_name]
    shown = shown or Progress(False)
    rows, profiles = [], []
    for name in names:
        shown.step(f"{name}: building it and torchvision's twin")
        eager, ours, x, _ = model_pair(name, device, dtype, batch, size)
        calls = {"eager": functools.partial(eager, x)}
        calls.update({b: functools.partial(on_backend, b, ours, (x,)) for b in backends})
        with torch.no_grad():
            for prov, call in calls.items():
                if providers and prov not in providers:
                    continue
                shown.step(f"{name}: {forwards} forwards on {prov}" + (", then cProfile" if prov != "eager" else ""))
                host, gpu, wall = time_forward(call, forwards)
                rows.append({"model": name, "provider": prov, "host_ms": host, "gpu_ms": gpu, "wall_ms": wall})
                if prov != "eager":
                    profiles.append(profile_text(call, forwards, f"{name} on {prov}"))
                if progress:
                    progress(rows, profiles)
        del calls, eager, ours  # before the next model is built
    return rows, profiles


def markdown(rows, profiles, title):
    lines = [f"# {title}", "", "| model | provider | host ms | GPU ms | wall ms | host / GPU |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        gpu = "" if r["gpu_ms"] is None else f"{r['gpu_ms']:.2f}"
        ratio = "" if r["gpu_ms"] is None else f"{r['host_ms'] / r['gpu_ms']:.2f}"
        lines.append(f"| {r['model']} | {r['provider']} | {r['host_ms']:.2f} | {gpu} | {r['wall_ms']:.2f} | {ratio} |")
    return "\n".join(lines + [""] + profiles) + "\n"


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each option's default (this machine's)."""


def main(argv=None):
    on_gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python -m fastconv.bench.host", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--model", nargs="+", default=["resnet50", "googlenet"], choices=list(MODEL_TWINS),
                   metavar="NAME", help=" ".join(MODEL_TWINS))
    p.add_argument("--batch", type=positive_int, default=128 if on_gpu else 1, help="images per forward")
    p.add_argument("--size", type=positive_int, default=224 if on_gpu else 64, help="image height and width")
    p.add_argument("--dtype", default="bf16" if on_gpu else "fp32", choices=list(DTYPES),
                   help="tf32 only on a GPU")
    p.add_argument("--forwards", type=positive_int, default=5, help="timed forwards per provider")
    p.add_argument("--provider", nargs="+", default=None,
                   help="only these: eager and each fastconv backend here (GPU: triton, cuda; CPU: torch)")
    p.add_argument("--out", default=None, help="write the markdown here (else print it)")
    args = p.parse_args(argv)
    device = torch.cuda.get_device_name() if on_gpu else "CPU"
    title = (f"Host cost per forward ({device}, {args.dtype}, channels_last, batch {args.batch}, "
             f"{args.size}x{args.size}, median of {args.forwards})")

    def write(rows, profiles):  # after every provider: a run killed at its time cap keeps the rows so far
        with open(args.out, "w") as f:
            f.write(markdown(rows, profiles, title))
    shown = Progress()
    try:
        rows, profiles = run_host(args.model, args.batch, args.dtype, args.forwards, args.size, args.provider,
                                  progress=write if args.out else None, shown=shown)
    except UsageError as e:
        p.error(str(e))
    shown.close()
    if not args.out:
        print(markdown(rows, profiles, title))
    return rows


if __name__ == "__main__":
    main()
