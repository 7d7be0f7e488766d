"""The command line of `python -m fastconv.bench`."""
import argparse
import json
import os

import torch

from fastconv.bench.cases import DTYPES
from fastconv.bench.models import MODEL_TWINS, run_models
from fastconv.bench.ops import run_ops
from fastconv.bench.report import environment, markdown, models_markdown, plot
from fastconv.bench.zoo import QUICK as ZOO_QUICK, ZOO, run_zoo, zoo_markdown

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("level", nargs="?", default="ops", choices=["ops", "models", "all", "plot", "zoo"],
                   help="what to run; 'plot' draws PNGs from --from-json; 'zoo' converts "
                        "torchvision/timm CNNs and checks them against eager")
    p.add_argument("--from-json", default=None, help="with 'plot': a result JSON written by --out")
    p.add_argument("--quick", action="store_true", help="a sub-minute subset")
    p.add_argument("--model", nargs="+", default=None, choices=list(MODEL_TWINS) + list(ZOO), metavar="NAME",
                   help="models: " + " ".join(MODEL_TWINS) + "; zoo: " + " ".join(ZOO))
    p.add_argument("--shapes", default="key", choices=["key", "models"],
                   help="ops: a few key shapes, or every distinct call of ResNet-50 and GoogLeNet")
    p.add_argument("--dtype", nargs="+", default=None, choices=list(DTYPES))
    p.add_argument("--batch", nargs="+", type=int, default=None)
    p.add_argument("--size", type=int, default=224, help="models: image height and width")
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

    def checkpoint(key):
        """Rows so far into NAME.json (marked partial) as they come: a run killed at its time
        cap (the GPU check caps each step) keeps what it measured."""
        if not args.out:
            return None

        def write(rows):
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, args.name + ".json"), "w") as f:
                json.dump({**result, key: rows, "partial": True}, f, indent=1)
        return write
    if args.level in ("ops", "all"):
        shapes = "quick" if args.quick or not on_gpu else args.shapes
        rows, bw = run_ops(dtypes, batches, shapes, args.op, args.provider, on_rows=checkpoint("rows"))
        result.update({"copy_GB/s": bw, "rows": rows})
        md += markdown(rows, env, bw)
    if args.level in ("models", "all"):
        names = args.model or (["resnet50"] if args.quick or not on_gpu else list(MODEL_TWINS))
        batch = (args.batch or [128 if on_gpu else 2])[0]
        rows = run_models(names, batch, dtypes[0], args.provider, train_step=not args.quick, size=args.size,
                          on_rows=checkpoint("model_rows"))
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
        with open(os.path.join(args.out, args.name + ".md"), "w") as f:
            f.write(md)
        with open(os.path.join(args.out, args.name + ".json"), "w") as f:
            json.dump(result, f, indent=1)
        try:
            plot(result, args.out, args.name)
        except ImportError:  # matplotlib is optional (the 'bench' extra)
            pass
    return result
