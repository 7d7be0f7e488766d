"""Python-side cost of a call (pytest-benchmark): each fused op against the eager
calls it replaces, on tiny CPU tensors where dispatch dominates. A regression in
per-call overhead shows here. Run with timing:
    python -m pytest bench/test_overhead.py --benchmark-enable
(CI runs each once, untimed, as a smoke test.)

And the host cost of a Triton launch, without a GPU: `python bench/test_overhead.py` times,
per op, everything a call on the triton backend does on the CPU up to the driver call
(fastconv's checks and allocation, the backend choice, the config choice, TMA descriptors,
Triton's argument binding and cache lookup); fastconv.static.offline.host_path stands in for
the driver and the compiled kernel. CI runs it once with few rounds, in a process without
Triton's interpreter."""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fastconv

x = torch.randn(1, 8, 4, 4)
w = torch.randn(8, 8, 1, 1)
b = torch.randn(8)

CALLS = {
    "fastconv.conv1x1_relu": lambda: fastconv.conv1x1_relu(x, w, b),
    "eager conv2d+relu": lambda: torch.relu(F.conv2d(x, w, b)),
    "fastconv.residual_add": lambda: fastconv.residual_add(x, x),
    "eager add+relu": lambda: torch.relu(x + x),
    "fastconv.max_pool2d_same": lambda: fastconv.max_pool2d_same(x, 3, 2),
    "eager pad+max_pool2d": lambda: F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 3, 2),
}


@pytest.mark.parametrize("name", CALLS)
def test_call_overhead(benchmark, name):
    with torch.no_grad():
        benchmark(CALLS[name])


def test_triton_launch_host_cost():
    """The measurement runs (each op, a few rounds) and accounts for every launch."""
    root = str(Path(__file__).resolve().parents[1])  # this checkout's fastconv, not an installed one
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    done = subprocess.run([sys.executable, __file__, "--rounds", "2", "--calls", "5"], env=env, text=True,
                          capture_output=True, cwd=root)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(_host_cases()) and all(float(r.split("|")[3]) > 0 for r in rows), done.stdout


# --- the host cost of a Triton launch (run as a script) -------------------------------------------

def _nhwc(*shape, dtype=torch.bfloat16):
    return torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)


def _host_cases():
    """(name, call) at ResNet-50 / GoogLeNet shapes, batch 1 (the host work does not depend on
    the batch; CPU allocations stand in for the CUDA caching allocator's)."""
    x56, x64, x192 = _nhwc(1, 256, 56, 56), _nhwc(1, 64, 56, 56), _nhwc(1, 192, 28, 28)
    w64, w256, w512 = _nhwc(64, 256, 1, 1), _nhwc(256, 64, 1, 1), _nhwc(512, 256, 1, 1)
    b64, b256 = torch.randn(64).bfloat16(), torch.randn(256).bfloat16()
    w3a, b3a = _nhwc(176, 192, 1, 1), torch.randn(176).bfloat16()
    wp, bp = _nhwc(32, 192, 1, 1), torch.randn(32).bfloat16()
    return [
        ("conv1x1_relu 256x56->64 (TMA)", lambda: fastconv.conv1x1_relu(x56, w64, b64)),
        ("conv1x1_relu 64x56->256 + residual", lambda: fastconv.conv1x1_relu(x64, w256, b256, residual=x56)),
        ("conv1x1_relu 256x56->512 stride 2", lambda: fastconv.conv1x1_relu(x56, w512, None, 2, False)),
        ("residual_add 256x56", lambda: fastconv.residual_add(x56, x56)),
        ("max_pool2d_same 3/2 64x56", lambda: fastconv.max_pool2d_same(x64, 3, 2)),
        ("conv1x1_relu_split 3a (3 outputs)", lambda: fastconv.conv1x1_relu_split(x192, w3a, b3a, [64, 96, 16])),
        ("pool_conv1x1_relu 3a", lambda: fastconv.pool_conv1x1_relu(x192, wp, bp)),
        ("relu_bias_backward 64x56 (a custom op)", lambda: torch.ops.fastconv.relu_bias_backward(x64, x64, True)),
    ]


def _per_call_us(fn, calls, rounds):
    """Minimum over rounds of the mean CPU time (this thread's: a shared machine's other jobs
    do not count) of `calls` calls."""
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.thread_time() - start) / calls)
    return best * 1e6


def host_costs(rounds, calls):
    """Per op: (name, launches, total us, Triton's share us) of a call on the triton backend."""
    from fastconv import _backend
    from fastconv.static import offline

    offline.require_tested_triton()
    rows = []
    real = _backend._interpreting
    _backend._interpreting = lambda: True  # resolve() then lets "triton" run on CPU tensors
    try:
        with torch.no_grad(), fastconv.use_backend("triton"), offline.host_path():
            for name, call in _host_cases():
                with offline.recording() as launches:
                    call()
                call()  # Triton's caches warm (binder, kernel cache key)
                total = _per_call_us(call, calls, rounds)

                def triton_only(launches=launches):
                    for launch in launches:
                        launch.kernel[launch.grid](*launch.args, **launch.kwargs)
                rows.append((name, len(launches), total, _per_call_us(triton_only, calls, rounds)))
    finally:
        _backend._interpreting = real
    return rows


def lookups_on_a_gpu(rounds, calls):
    """What a CUDA call adds that a CPU one skips: "auto"'s table lookup (the shape class and a
    dict lookup) and the conv's (the table again, then this process's tuned configs)."""
    from fastconv import _backend, _tuning

    cuda0 = torch.device("cuda", 0)
    _tuning._tables[0] = {}
    x, w = _nhwc(1, 256, 56, 56), _nhwc(64, 256, 1, 1)
    key = _tuning.conv_key(x, w, 1, True, None)
    tuned = {(0, key): None}

    def conv_lookups():
        _backend.auto_choice(cuda0, "conv1x1_relu", lambda: _tuning.conv_key(x, w, 1, True, None))
        _tuning.lookup(cuda0, "conv1x1_relu", _tuning.conv_key(x, w, 1, True, None))
        tuned.get((cuda0.index, key))
    return _per_call_us(conv_lookups, calls, rounds)


def descriptor_costs(rounds, calls):
    """The conv's two TMA descriptors per call: from the cache, and built anew (before issue 19)."""
    import importlib
    tconv = importlib.import_module("fastconv._triton.conv1x1")
    x, w2d = _nhwc(1, 256, 56, 56), _nhwc(64, 256, 1, 1)[:, :, 0, 0]
    config = tconv.GemmConfig(128, 64, 64)

    def fresh():
        tconv._descriptors.clear()
        tconv._tma_views(x, w2d, 1, config)
    return _per_call_us(lambda: tconv._tma_views(x, w2d, 1, config), calls, rounds), _per_call_us(fresh, calls, rounds)


def main(argv=None):
    p = argparse.ArgumentParser(description="Host cost of fastconv's Triton launches, up to the driver call")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--calls", type=int, default=20)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import triton
    print(f"Triton {triton.__version__}, torch {torch.__version__}, one thread; CPU time per call (us), "
          f"the minimum over {args.rounds} rounds of {args.calls} calls\n")
    print("| op (bf16, channels_last) | launches | host us up to the driver | of which Triton's run() |")
    print("| --- | ---: | ---: | ---: |")
    for name, launches, total, triton_us in host_costs(args.rounds, args.calls):
        print(f"| {name} | {launches} | {total:.1f} | {triton_us:.1f} |")
    hit, miss = descriptor_costs(args.rounds, args.calls)
    print(f"\nconv TMA descriptors per call: {hit:.1f} us cached, {miss:.1f} us built anew")
    print(f"CUDA-only lookups of a conv call (auto's table, the config's table and cache): "
          f"{lookups_on_a_gpu(args.rounds, args.calls):.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
