"""Where results go: the environment record, markdown tables, PNG plots."""
import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

import fastconv


def source_commit():
    """(commit, dirty) of the git checkout fastconv is imported from (an editable install or
    a clone), else (None, None): an installed copy has no commit of its own, and the current
    directory's repository may be anything."""
    package = Path(fastconv.__file__).resolve().parent

    def git(*args):
        try:
            return subprocess.check_output(["git", "-C", str(package.parent), *args], text=True,
                                           stderr=subprocess.DEVNULL).strip()
        except (OSError, subprocess.CalledProcessError):
            return None
    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != package.parent:  # e.g. site-packages inside some repo
        return None, None
    return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))


def environment():
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    commit, dirty = source_commit()
    return {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "CPU",
            "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
            "python": platform.python_version(), "fastconv": fastconv.__version__,
            "commit": commit, "dirty": dirty,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "fastconv_backends": fastconv.available_backends()}


def source(env):
    """'fastconv 0.1.0, commit 1a2b3c4d5e6f (dirty)', or without a commit where none was recorded."""
    text = f"fastconv {env.get('fastconv', '?')}"
    if env.get("commit"):
        text += f", commit {env['commit'][:12]}{' (dirty)' if env.get('dirty') else ''}"
    return text


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def markdown(rows, env, bw):
    lines = [f"# fastconv op benchmark ({env['date'][:10]})", "",
             f"Device: {env['device']}; torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}; "
             f"{source(env)}.",
             f"Copy bandwidth measured here: {bw:.0f} GB/s." if bw else
             "No GPU: CPU times of the torch backend against eager; Triton checked in the interpreter.",
             "Median times; GB/s on the op's minimum traffic; ratios > 1 mean faster than eager/compile.", "",
             "| op | shape | dtype | provider | median us | GB/s | % copy BW | TFLOP/s | vs eager | vs compile "
             "| max err vs eager |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ms = r.get("median_ms")
        lines.append(f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['provider']} | "
                     f"{_fmt(ms and ms * 1e3, '.1f')} | {_fmt(r.get('GB/s'), '.0f')} | "
                     f"{_fmt(r.get('pct_copy_bw'), '.0f')} | {_fmt(r.get('TFLOP/s'), '.1f')} | "
                     f"{_fmt(r.get('vs_eager'), '.2f')} | {_fmt(r.get('vs_compile'), '.2f')} | "
                     f"{r['max_abs_err_vs_eager']:.2e} |")
    return "\n".join(lines) + "\n"


def models_markdown(rows):
    # rel err = ||out - ref|| / ||ref||; "vs fp32": the same model in float32 (IEEE), so eager's
    # own rounding error stands beside ours.
    lines = ["| model | batch | dtype | mode | provider | median ms | images/s | vs eager "
             "| rel err vs eager | rel err vs fp32 |",
             "|---|---:|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['dtype']} | {r['mode']} | {r['provider']} | "
                     f"{r['median_ms']:.2f} | {r['images/s']:.0f} | {_fmt(r.get('vs_eager'), '.2f')} | "
                     f"{_fmt(r.get('rel_err_vs_eager'), '.2e')} | {_fmt(r.get('rel_err_vs_fp32'), '.2e')} |")
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
        ax.set_title(f"{source(env)} on {env.get('device', '?')} ({env.get('date', '')[:10]})", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{stem}_{name}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
