"""python -m fastconv.compare: convert a torchvision or timm model, compare it layer by layer
with the original, print the table, save it as JSON, compare two saved runs.

    python -m fastconv.compare --model torchvision:resnet50 --dtype bf16 --backend triton --json r.json
    python -m fastconv.compare --model timm:resnet26d --against r.json      # this run vs a saved one
    python -m fastconv.compare --against a.json b.json                      # two saved runs

Weights are random (nothing is downloaded); BatchNorm statistics are measured on random
inputs (fastconv.reference.calibrate_batchnorm) so that every layer's output depends on its
input. Exit status 0 when every layer passes, 1 when one fails.
"""
import argparse
import os
import sys

import torch

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
          "bf16": torch.bfloat16}


def _model_spec(text):
    source, _, name = text.partition(":")
    if source not in ("torchvision", "timm") or not name:
        raise argparse.ArgumentTypeError(f"expected torchvision:NAME or timm:NAME, got {text!r}")
    return source, name


def _shape(text):
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"expected NxCxHxW (e.g. 1x3x224x224), got {text!r}")
    return shape


def parser():
    p = argparse.ArgumentParser(prog="python -m fastconv.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=_model_spec, help="torchvision:NAME or timm:NAME (random weights)")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                   help="tf32: fp32 with TF32 convolutions (CUDA only); default fp32")
    p.add_argument("--backend", choices=["auto", "torch", "triton", "cuda"], default="auto",
                   help="fastconv backend of the converted model (default auto)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu",
                   help="default cuda where there is one")
    p.add_argument("--input", type=_shape, default=(1, 3, 224, 224), metavar="NxCxHxW",
                   help="input shape (default 1x3x224x224)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, statistics and input")
    p.add_argument("--train", action="store_true", help="compare one training step (gradients) instead")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--against", nargs="+", metavar="FILE",
                   help="a saved run to compare this run with, or two saved runs to compare (no --model)")
    return p


def _check(p, args):
    """Refuse, naming the flag, what cannot run here."""
    if args.against and len(args.against) > 2:
        p.error("--against takes one saved run (with --model) or two (without)")
    if args.against and len(args.against) == 2:
        if args.model:
            p.error("--against with two files compares them: drop --model, or give one file")
        return
    if args.model is None:
        p.error("--model is required (or --against A.json B.json to compare two saved runs)")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    if args.dtype == "tf32" and args.device != "cuda":
        p.error("--dtype tf32: TF32 is a CUDA tensor-core format; on a CPU use fp32")
    if args.backend == "cuda" and args.device != "cuda":
        p.error("--backend cuda: the CUDA C++ kernels need --device cuda")
    if args.backend == "triton" and args.device == "cpu":
        if args.dtype == "bf16":
            p.error("--backend triton --dtype bf16 on a CPU: Triton's interpreter computes bfloat16 "
                    "wrongly (raw bits); use --backend torch on a CPU, or a GPU")
        if os.environ.get("TRITON_INTERPRET") != "1":
            if "triton" in sys.modules:
                p.error("--backend triton on a CPU needs TRITON_INTERPRET=1 before triton is imported: "
                        "set it in the environment")
            os.environ["TRITON_INTERPRET"] = "1"  # Triton's interpreter: slow, keep --input small
    source, name = args.model
    if source == "timm":
        import timm

        known = timm.is_model(name)
    else:
        import torchvision

        known = name in torchvision.models.list_models(torchvision.models)
    if not known:
        p.error(f"--model: {source} has no model {name!r}")


def build(source, name, shape, seed):
    """(reference model in eval mode with calibrated BatchNorm, example input), in fp32."""
    torch.manual_seed(seed)
    if source == "timm":
        import timm

        model = timm.create_model(name, pretrained=False)
    else:
        import torchvision

        extra = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
        model = torchvision.models.get_model(name, weights=None, **extra)
    from fastconv import reference

    g = torch.Generator().manual_seed(seed)
    reference.calibrate_batchnorm(model, [torch.randn(shape, generator=g) for _ in range(2)], seed=seed)
    return model.eval(), torch.randn(shape, generator=g)


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    _check(p, args)
    from fastconv.compare import Report, compare

    if args.against and len(args.against) == 2:
        print(Report.from_json(args.against[0]).diff(Report.from_json(args.against[1])))
        return 0
    import fastconv

    reference, x = build(*args.model, args.input, args.seed)
    candidate = fastconv.convert(reference, example_input=x)
    dtype, device = DTYPES[args.dtype], torch.device(args.device)
    reference, candidate, x = (t.to(device=device, dtype=dtype) for t in (reference, candidate, x))
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.dtype == "tf32"
    try:
        with fastconv.use_backend(args.backend):
            report = compare(reference, candidate, x, train=args.train, progress=sys.stderr.isatty())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    report.meta.update(model=":".join(args.model), seed=args.seed)
    print(report)
    if args.json:
        report.to_json(args.json)
    if args.against:
        print()
        print(report.diff(Report.from_json(args.against[0])))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
