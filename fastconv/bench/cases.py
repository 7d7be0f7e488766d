"""What is benchmarked: each op at a shape, with its minimum DRAM traffic, and the shapes
(a key list, or every distinct fused-op call of ResNet-50 and GoogLeNet)."""
import argparse

import torch
import torch.nn.functional as F

import fastconv
from fastconv.ops.pool_same import same_geometry

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
          "tf32": torch.float32}


class UsageError(ValueError):
    """A benchmark asked for something this machine or these shapes do not have (the command
    line reports it as a usage error naming the flag)."""


def positive_int(text):
    """argparse type of counts and sizes."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def check_dtypes(names, on_gpu):
    """Raise UsageError unless every dtype name runs here: TF32 needs CUDA tensor cores."""
    allowed = [d for d in DTYPES if on_gpu or d != "tf32"]
    bad = [n for n in names if n not in allowed]
    if bad:
        raise UsageError(f"--dtype {' '.join(bad)}: not a dtype of the benchmark on "
                         f"{'this GPU' if on_gpu else 'the CPU (TF32 is a CUDA tensor-core mode)'}; "
                         f"choose from {', '.join(allowed)}")


class Case:
    """One op at one shape: inputs, the fastconv call, the eager pattern, and its
    minimum DRAM traffic (every input read once, every output written once)."""

    def __init__(self, op, label, make, ours, eager, min_bytes, flops=0):
        self.op, self.label = op, label
        self.make, self.ours, self.eager = make, ours, eager
        self.min_bytes, self.flops = min_bytes, flops


def _nhwc(shape, dtype, device):
    return torch.randn(shape, device=device).to(dtype).contiguous(memory_format=torch.channels_last)


def conv_case(n, cin, hw, cout, stride, dtype, device, relu=True, residual=False):
    """1x1 conv + bias (+ ReLU); with `residual`, relu(conv + bias + r): the end of a ResNet
    bottleneck, which eager runs as conv, add and ReLU."""
    ohw = (hw - 1) // stride + 1

    def make():
        x = _nhwc((n, cin, hw, hw), dtype, device)
        w = (torch.randn(cout, cin, 1, 1, device=device) / cin ** 0.5).to(dtype)
        r = (_nhwc((n, cout, ohw, ohw), dtype, device),) if residual else ()
        return (x, w, torch.randn(cout, device=device).to(dtype)) + r

    def eager(x, w, b, r=None):
        y = F.conv2d(x, w, b, stride)
        y = y if r is None else y + r
        return torch.relu(y) if relu else y

    def ours(x, w, b, r=None):
        return fastconv.conv1x1_relu(x, w, b, stride, relu, r)

    es = torch.finfo(dtype).bits // 8
    name = ("conv1x1_relu" if relu else "conv1x1") + ("_residual" if residual else "")
    moved = n * ohw * ohw * (cin + cout * (2 if residual else 1)) + cout * cin + cout
    return Case(name, f"{n}x{cin}x{hw}x{hw}->{cout}/s{stride}", make, ours, eager,
                es * moved, 2 * n * ohw * ohw * cin * cout)


def residual_case(n, c, hw, dtype, device):
    def make():
        return _nhwc((n, c, hw, hw), dtype, device), _nhwc((n, c, hw, hw), dtype, device)

    def eager(x, r):  # what a torchvision block does: out += identity; relu(out)
        return torch.relu(x + r)

    es = torch.finfo(dtype).bits // 8
    return Case("residual_add", f"{n}x{c}x{hw}x{hw}", make, fastconv.residual_add, eager,
                3 * es * n * c * hw * hw)


def pool_case(kind, n, c, hw, k, s, dtype, device):
    (_, _, (pt, pl)), (ohw, _), (pad_h, pad_w) = same_geometry(hw, hw, (k, k), (s, s))
    pads = (pl, pad_w - pl, pt, pad_h - pt)  # what eager has to F.pad first

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


def pool_conv_case(n, cin, hw, cout, dtype, device):
    """An Inception pool projection: relu(conv1x1(maxpool3x3_s1(x)) + b), the pool inside the
    GEMM's operand load; eager pools (writing the pooled tensor), then convolves."""
    def make():
        x = _nhwc((n, cin, hw, hw), dtype, device)
        w = (torch.randn(cout, cin, 1, 1, device=device) / cin ** 0.5).to(dtype)
        return x, w, torch.randn(cout, device=device).to(dtype)

    def eager(x, w, b):
        return torch.relu(F.conv2d(F.max_pool2d(x, 3, 1, 1), w, b))

    es = torch.finfo(dtype).bits // 8
    return Case("pool_conv1x1_relu", f"{n}x{cin}x{hw}x{hw}->{cout}", make, fastconv.pool_conv1x1_relu,
                eager, es * (n * hw * hw * (cin + cout) + cout * cin + cout), 2 * n * hw * hw * cin * cout)


def inception_case(n, widths, hw, dtype, device):
    """A whole GoogLeNet Inception block in eval mode (BN statistics random), fastconv's
    against torchvision's: widths = (in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj).
    Minimum traffic: x read once, the block output written once, the two reductions
    written and read once."""
    import importlib

    from fastconv import models, reference

    tv = importlib.import_module("torchvision.models.googlenet")
    blocks = {}

    def make():
        torch.manual_seed(0)
        eager = reference.randomize_batchnorm(tv.Inception(*widths))
        ours = models.Inception(*widths)
        ours.load_state_dict(eager.state_dict())
        for name, m in (("eager", eager), ("ours", ours)):
            blocks[name] = m.eval().to(device, dtype, memory_format=torch.channels_last)
        return (_nhwc((n, widths[0], hw, hw), dtype, device),)

    cin, c1, c3r, c3, c5r, c5, cp = widths
    es = torch.finfo(dtype).bits // 8
    moved = n * hw * hw * (cin + c1 + c3 + c5 + cp + 2 * (c3r + c5r))
    flops = 2 * n * hw * hw * (cin * (c1 + c3r + c5r + cp) + 9 * (c3r * c3 + c5r * c5))
    return Case("inception_block", f"{n}x{cin}x{hw}x{hw}->{c1 + c3 + c5 + cp}", make,
                lambda x: blocks["ours"](x), lambda x: blocks["eager"](x), es * moved, flops)


# A few shapes that stand for the rest (ResNet-50 and GoogLeNet layers at 224x224), as
# (op, channels in, size, channels out / kernel, stride, relu); "convres" adds a residual in
# the conv's epilogue (a ResNet bottleneck's conv3).
KEY_SHAPES = [
    ("conv", 64, 56, 256, 1, True), ("convres", 64, 56, 256, 1, True), ("conv", 256, 56, 64, 1, True),
    ("conv", 256, 56, 512, 2, False),
    ("conv", 1024, 14, 256, 1, True), ("conv", 192, 28, 64, 1, True), ("conv", 832, 7, 384, 1, True),
    ("residual", 256, 56), ("residual", 1024, 14), ("residual", 2048, 7),
    ("max", 64, 112, 3, 2), ("max", 192, 28, 3, 1), ("max", 480, 28, 3, 2), ("avg", 1024, 7, 3, 1),
    ("poolconv", 192, 28, 32), ("inception", (192, 64, 96, 128, 16, 32, 32), 28),  # GoogLeNet 3a
]
QUICK_SHAPES = [KEY_SHAPES[i] for i in (0, 1, 7, 10, 11)]  # one of each conv, add and pool form


def tiny(spec):
    """The same op form (kind, stride, ReLU, pool window) at 16 channels and a 7x7 or 9x9
    input: what Triton's interpreter runs in about a second."""
    kind, *rest = spec
    if kind in ("conv", "convres"):
        return (kind, 16, 7, 16) + tuple(rest[3:])
    if kind == "residual":
        return ("residual", 16, 7)
    if kind in ("max", "avg"):
        return (kind, 16, 9) + tuple(rest[2:])
    raise ValueError(f"no tiny form of {kind!r} shapes")


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
                    stride, relu, residual = (list(args[3:6]) + [1, True, None][len(args[3:6]):])
                    kind = "conv" if residual is None else "convres"
                    self.shapes.append((kind, c, h, args[1].shape[0], stride, relu))
                    if residual is not None:  # the same add runs alone in train mode and
                        self.shapes.append(("residual", *residual.shape[1:3]))  # converted models
                elif op == "residual_add":
                    self.shapes.append(("residual", c, h))
                elif op.startswith("conv1x1_relu_split"):  # (x, weight, bias, outs/sizes, pool)
                    cout, pool = args[1].shape[0], args[4]
                    self.shapes.append(("poolconv", c, h, cout) if pool else ("conv", c, h, cout, 1, True))
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
    """Cases at each batch size for the shapes "quick" (QUICK_SHAPES: one of each op form),
    "key" (KEY_SHAPES), "models" (every distinct call of ResNet-50 and GoogLeNet), or a list
    of specs in the KEY_SHAPES form."""
    if shapes == "models":
        specs = model_shapes()
    elif isinstance(shapes, str):
        if shapes not in ("quick", "key"):
            raise ValueError(f"shapes must be 'quick', 'key', 'models' or a list of specs, got {shapes!r}")
        specs = QUICK_SHAPES if shapes == "quick" else KEY_SHAPES
    else:
        specs = shapes
    cases = []
    for n in batches:
        for kind, *spec in specs:
            if kind in ("conv", "convres"):
                cin, hw, cout, stride, relu = spec
                cases.append(conv_case(n, cin, hw, cout, stride, dtype, device, relu, kind == "convres"))
            elif kind == "residual":
                cases.append(residual_case(n, *spec, dtype, device))
            elif kind == "poolconv":
                cases.append(pool_conv_case(n, *spec, dtype, device))
            elif kind == "inception":
                cases.append(inception_case(n, *spec, dtype, device))
            else:
                cases.append(pool_case(kind, n, *spec, dtype, device))
    return cases
