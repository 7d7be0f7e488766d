"""How it is timed: do_bench medians (L2 flushed) on a GPU, perf_counter medians on the CPU."""
import statistics
import time

import torch

import fastconv


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


def on_backend(backend, fn, inputs):
    with fastconv.use_backend(backend):
        return fn(*inputs)


def cuda_graphed(fn, x):
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
