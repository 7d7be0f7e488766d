"""The command line of `python -m fastconv.bench`."""
import argparse
import json
import os

import torch

from fastconv.bench.cases import DTYPES, UsageError, check_dtypes, positive_int
from fastconv.bench.models import MODEL_TWINS, check_providers, run_models
from fastconv.bench.ops import run_ops
from fastconv.bench.report import environment, markdown, models_markdown, plot
from fastconv.bench.zoo import QUICK as ZOO_QUICK
from fastconv.bench.zoo import ZOO, run_zoo, zoo_markdown

LEVELS = ["ops", "models", "all", "plot", "zoo"]
# the levels each option means something to; given to any other level, it is refused
APPLIES = {"from_json": ["plot"], "quick": ["ops", "models", "all", "zoo"], "model": ["models", "all", "zoo"],
           "shapes": ["ops", "all"], "dtype": ["ops", "models", "all"], "batch": ["ops", "models", "all"],
           "size": ["models", "all"], "op": ["ops", "all"], "provider": ["ops", "models", "all"],
           "name": ["ops", "models", "all", "zoo"]}


def parser():
    p = argparse.ArgumentParser(prog="python -m fastconv.bench", description=__doc__.splitlines()[0])
    p.add_argument("level", nargs="?", default="ops", choices=LEVELS,
                   help="what to run (default ops); 'all' is ops then models; 'plot' draws PNGs from "
                        "--from-json; 'zoo' converts torchvision/timm CNNs and checks them against eager")
    p.add_argument("--from-json", default=None, metavar="FILE", help="plot: a result JSON written by --out")
    p.add_argument("--quick", action="store_true",
                   help="a short subset: the quick shapes, batch 32, bf16 (CPU: fp32, batch 2); models: "
                        "ResNet-50 inference only; zoo: a few models")
    p.add_argument("--model", nargs="+", default=None, choices=list(MODEL_TWINS) + list(ZOO), metavar="NAME",
                   help="models: " + " ".join(MODEL_TWINS) + "; zoo: " + " ".join(ZOO))
    p.add_argument("--shapes", default=None, choices=["key", "models"],
                   help="ops: a few key shapes (default on a GPU), or every distinct call of ResNet-50 and "
                        "GoogLeNet; without either, the CPU runs the quick shapes")
    p.add_argument("--dtype", nargs="+", default=None, choices=list(DTYPES),
                   help="default: bf16 fp16 fp32 tf32 on a GPU (--quick: bf16), fp32 on the CPU (no tf32 "
                        "there); models: the first one")
    p.add_argument("--batch", nargs="+", type=positive_int, default=None,
                   help="default: 32 128 256 on a GPU (--quick: 32; models: 128), 2 on the CPU; models: the first one")
    p.add_argument("--size", type=positive_int, default=None, help="models: image height and width (default 224)")
    p.add_argument("--op", nargs="+", default=None,
                   help="ops: only these, e.g. conv1x1_relu residual_add (an op the shapes lack is refused)")
    p.add_argument("--provider", nargs="+", default=None,
                   help="only these; ops: eager auto triton cuda compile compile-max-autotune on a GPU, "
                        "eager torch auto triton on the CPU (triton: the interpreter check, untimed); "
                        "models: eager triton cuda compile on a GPU, eager torch on the CPU")
    p.add_argument("--out", default=None, metavar="DIR", help="folder for NAME.md and NAME.json (plot: the PNGs)")
    p.add_argument("--name", default=None, help="file stem of the results (default: bench)")
    return p


def check_levels(p, args):
    """Refuse an option the chosen level would ignore."""
    for dest, levels in APPLIES.items():
        if args.level not in levels and getattr(args, dest) not in (None, False):
            flag = "--" + dest.replace("_", "-")
            p.error(f"{flag} does not apply to '{args.level}' (only to: {', '.join(levels)})")
    if args.level == "plot" and args.from_json is None:
        p.error("plot needs --from-json FILE (a result JSON written by --out)")
    if args.quick and args.shapes:
        p.error("--shapes and --quick: --quick runs its own small set of shapes; give one or the other")
    zoo = args.level == "zoo"
    wrong = [m for m in args.model or () if (m in ZOO) != zoo]
    if wrong:
        p.error(f"--model {' '.join(wrong)}: not a model of '{args.level}'; choose from "
                f"{', '.join(ZOO if zoo else MODEL_TWINS)}")


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    check_levels(p, args)
    if args.level == "plot":
        with open(args.from_json) as f:
            result = json.load(f)
        out = args.out or os.path.dirname(os.path.abspath(args.from_json))
        stem = os.path.splitext(os.path.basename(args.from_json))[0]
        for path in plot(result, out, stem):
            print(path)
        return result
    try:
        return run(args)
    except UsageError as e:  # what only the run knows: the ops of the shapes, this machine's providers
        p.error(str(e))


def run(args):
    on_gpu = torch.cuda.is_available()
    name = args.name or "bench"
    dtypes = args.dtype or ((["bf16"] if args.quick else ["bf16", "fp16", "fp32", "tf32"]) if on_gpu else ["fp32"])
    batches = args.batch or (([32] if args.quick else [32, 128, 256]) if on_gpu else [2])
    if args.level == "all":  # the models' checks before the ops run, not after it
        check_dtypes(dtypes, on_gpu)
        check_providers(args.provider, on_gpu)
    torch.manual_seed(0)
    env = environment()
    result = {"env": env}
    md = ""

    def checkpoint(key):
        """Rows so far into NAME.json (marked partial) as they come: a run killed at its time
        cap (the GPU check caps each step) keeps what it measured."""
        if not args.out:
            return None

        def write(rows):
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, name + ".json"), "w") as f:
                json.dump({**result, key: rows, "partial": True}, f, indent=1)
        return write
    if args.level in ("ops", "all"):
        shapes = args.shapes or ("quick" if args.quick or not on_gpu else "key")
        rows, bw = run_ops(dtypes, batches, shapes, args.op, args.provider, on_rows=checkpoint("rows"))
        result.update({"copy_GB/s": bw, "rows": rows})
        md += markdown(rows, env, bw)
    if args.level in ("models", "all"):
        names = args.model or (["resnet50"] if args.quick or not on_gpu else list(MODEL_TWINS))
        batch = args.batch[0] if args.batch else 128 if on_gpu else 2
        rows = run_models(names, batch, dtypes[0], args.provider, train_step=not args.quick,
                          size=args.size or 224, on_rows=checkpoint("model_rows"))
        result["model_rows"] = rows
        md += (f"\n# Models ({env['device']}, {dtypes[0]}, channels_last, batch {batch})\n\n"
               + models_markdown(rows))
    if args.level == "zoo":
        rows = run_zoo(args.model or (ZOO_QUICK if args.quick else None))
        result["zoo_rows"] = rows
        md += f"\n# fastconv.convert over the zoo ({env['device']}, fp32, torch backend)\n\n" + zoo_markdown(rows)
    print(md)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, name + ".md"), "w") as f:
            f.write(md)
        with open(os.path.join(args.out, name + ".json"), "w") as f:
            json.dump(result, f, indent=1)
        try:
            plot(result, args.out, name)
        except ImportError:  # matplotlib is optional (the 'bench' extra)
            pass
    return result
