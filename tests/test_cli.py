"""Every flag of the command lines works or is refused, naming the flag and what it allows:
`python -m fastconv.bench [ops|models|all|plot|zoo]`, `python -m fastconv.bench.host`,
`python -m fastconv.tune`. Refusals run in this process (they exit before any work); the
runs go through subprocess, at tiny sizes."""
import io
import json
import os
import shutil
import subprocess
import sys

import pytest

import fastconv
from fastconv import bench, tune
from fastconv.bench import host
from fastconv.bench.progress import Progress
from tests.conftest import HAS_CUDA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
cpu_only = pytest.mark.skipif(HAS_CUDA, reason="what this CPU machine lacks")

def refused(main, argv, message, cpu=False):
    """A command line that must exit with a usage error containing `message`; `cpu`: only on
    a CPU-only machine (it names what the CPU lacks)."""
    name = {bench.main: "bench", host.main: "bench.host", tune.main: "tune"}[main]
    return pytest.param(main, argv, message, id=f"{name} {' '.join(argv)}", marks=[cpu_only] if cpu else [])


REFUSED = [
    refused(bench.main, ["sideways"], "argument level: invalid choice: 'sideways'"),
    refused(bench.main, ["ops", "--op", "nonsense"], "--op nonsense: not an op of the "),
    refused(bench.main, ["ops", "--op", "avg_pool2d_same"], "--op avg_pool2d_same: not an op of the 'quick' "
            "shapes; choose from conv1x1_relu, conv1x1_relu_residual, residual_add, max_pool2d_same", cpu=True),
    refused(bench.main, ["ops", "--provider", "eager", "cuda"], "--provider cuda: not a provider of the ops "
            "benchmark on this machine (CPU); choose from eager, torch, auto, triton", cpu=True),
    refused(bench.main, ["ops", "--dtype", "fp32", "tf32"], "--dtype tf32: not a dtype of the benchmark on the "
            "CPU (TF32 is a CUDA tensor-core mode); choose from bf16, fp16, fp32", cpu=True),
    refused(bench.main, ["ops", "--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
    refused(bench.main, ["ops", "--batch", "0"], "argument --batch: must be a positive integer, got 0"),
    refused(bench.main, ["ops", "--quick", "--shapes", "key"], "--shapes and --quick"),
    refused(bench.main, ["ops", "--from-json", "x.json"], "--from-json does not apply to 'ops' (only to: plot)"),
    refused(bench.main, ["ops", "--size", "32"], "--size does not apply to 'ops' (only to: models, all)"),
    refused(bench.main, ["models", "--op", "residual_add"], "--op does not apply to 'models' (only to: ops, all)"),
    refused(bench.main, ["models", "--provider", "auto"], "--provider auto: not a provider of whole models "
            "on this machine (CPU); choose from eager, torch", cpu=True),
    refused(bench.main, ["all", "--provider", "auto"], "--provider auto: not a provider of whole models",
            cpu=True),  # refused before the ops run, not after
    refused(bench.main, ["models", "--model", "tv/resnet18"], "--model tv/resnet18: not a model of 'models'; "
            "choose from resnet50, googlenet, vgg16, alexnet, resnet18"),
    refused(bench.main, ["zoo", "--model", "resnet50"], "--model resnet50: not a model of 'zoo'; choose from "
            "tv/resnet18"),
    refused(bench.main, ["zoo", "--dtype", "bf16"], "--dtype does not apply to 'zoo' (only to: ops, models, all)"),
    refused(bench.main, ["plot"], "plot needs --from-json FILE"),
    refused(bench.main, ["plot", "--from-json", "x.json", "--name", "y"], "--name does not apply to 'plot'"),
    refused(host.main, ["--provider", "triton"], "--provider triton: not a provider of whole models on this "
            "machine (CPU); choose from eager, torch", cpu=True),
    refused(host.main, ["--dtype", "tf32"], "--dtype tf32: not a dtype of the benchmark on the CPU", cpu=True),
    refused(host.main, ["--forwards", "0"], "argument --forwards: must be a positive integer, got 0"),
    refused(host.main, ["--model", "lenet5"], "argument --model: invalid choice: 'lenet5'"),
    refused(tune.main, ["--dry-run", "--batch", "4"], "--batch does not apply to --dry-run"),
    refused(tune.main, ["--dry-run", "--dtype", "bf16"], "--dtype does not apply to --dry-run"),
    refused(tune.main, ["--budget-s", "0"], "argument --budget-s: must be a positive number of seconds, got 0"),
]


@pytest.mark.parametrize("main, argv, message", REFUSED)
def test_refused_with_the_flag_and_the_allowed_values(main, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def run_module(*args, cwd, pythonpath=ROOT):
    """`python -m ARGS` in cwd, importing fastconv from `pythonpath`, stderr not a terminal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = pythonpath
    run = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def git_commit(path):
    try:
        return subprocess.check_output(["git", "-C", path, "rev-parse", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def test_ops_in_bf16_without_eager_records_fastconvs_own_commit(tmp_path):
    """--provider without eager (was KeyError 'eager'): ratios left empty; --dtype bf16 on the
    CPU runs bf16 (was silently fp32); run from a directory outside any checkout, the commit
    recorded is fastconv's (was the current directory's: none); one progress line per step."""
    run = run_module("fastconv.bench", "ops", "--dtype", "bf16", "--provider", "torch", "--op", "residual_add",
                     "--batch", "1", "--out", "out", "--name", "run", cwd=tmp_path)
    result = json.loads((tmp_path / "out" / "run.json").read_text())
    (row,) = result["rows"]
    assert (row["op"], row["dtype"], row["provider"], row["vs_eager"]) == ("residual_add", "bf16", "torch", None)
    moved = row["GB/s"] * row["median_ms"] * 1e6
    assert moved == pytest.approx(3 * 2 * 1 * 256 * 56 * 56)  # x, residual, out at 2 bytes each
    assert result["env"]["fastconv"] == fastconv.__version__
    assert result["env"]["commit"] == git_commit(ROOT)
    if not HAS_CUDA:
        assert run.stderr.endswith("[1/1] residual_add 1x256x56x56 bf16\n")


def test_outside_a_git_checkout_the_version_is_recorded_and_the_plots_drawn(tmp_path):
    """fastconv imported from a copy with no repository around it (as installed): no commit,
    its version, and the PNG step still draws (it crashed on the missing commit)."""
    pytest.importorskip("matplotlib")
    site = tmp_path / "site"
    shutil.copytree(os.path.join(ROOT, "fastconv"), site / "fastconv",
                    ignore=shutil.ignore_patterns("__pycache__", "_C*.so"))
    work = tmp_path / "work"
    work.mkdir()
    run_module("fastconv.bench", "ops", "--provider", "eager", "torch", "--op", "residual_add", "--batch", "1",
               "--out", "out", "--name", "run", cwd=work, pythonpath=str(site))
    env = json.loads((work / "out" / "run.json").read_text())["env"]
    assert (env["commit"], env["dirty"], env["fastconv"]) == (None, None, fastconv.__version__)
    assert f"fastconv {fastconv.__version__}." in (work / "out" / "run.md").read_text()
    assert (work / "out" / "run_speedup.png").stat().st_size > 0


@pytest.mark.check
def test_models_quick_shows_each_step_and_runs_without_eager(tmp_path):
    """`models --quick` says what it is doing, a line per step (it was silent for 41 s);
    --provider without eager (was StopIteration); GoogLeNet's twin built without
    torchvision's FutureWarning."""
    provider = "triton" if HAS_CUDA else "torch"
    run = run_module("fastconv.bench", "models", "--quick", "--model", "googlenet", "--batch", "1", "--size", "32",
                     "--provider", provider, cwd=tmp_path)
    assert f"| googlenet | 1 | {'bf16' if HAS_CUDA else 'fp32'} | inference | {provider} |" in run.stdout
    steps = [ln for ln in run.stderr.splitlines() if ln.startswith("googlenet: ")]
    assert steps[:2] == [f"googlenet: building it and torchvision's twin (batch 1, {'bf16' if HAS_CUDA else 'fp32'}, "
                         "32x32)", f"googlenet: inference on {provider}"]
    assert "Warning" not in run.stderr, run.stderr


def test_host_help_is_complete(tmp_path):
    text = run_module("fastconv.bench.host", "--help", cwd=tmp_path).stdout
    assert host.__doc__.strip().splitlines()[-1].strip() in text  # the docstring to its last line
    for flag in ("--model", "--batch", "--size", "--dtype", "--forwards", "--provider", "--out"):
        assert flag in text


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_is_a_line_per_step_off_a_terminal_and_in_place_on_one(terminal):
    class Stream(io.StringIO):
        def isatty(self):
            return terminal
    stream = Stream()
    shown = Progress(stream=stream)
    for text in ("[1/2] a longer step", "[2/2] short"):
        shown.step(text)
    shown.close()
    if terminal:
        assert stream.getvalue() == "\r[1/2] a longer step\r[2/2] short        \n"
    else:
        assert stream.getvalue() == "[1/2] a longer step\n[2/2] short\n"
