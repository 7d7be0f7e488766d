"""bench/gpu_check.sh is tested where the code is tested: its dry run runs every step on this
CPU-only machine (tiny shapes, torch and interpreter backends, no nvidia-smi, no sanitizer,
no build), exits 0, writes at most 8 files, and its test log names each test's outcome."""
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from tests.conftest import HAS_CUDA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = {"check.log", "tests.log", "host.md", "ops.md", "ops.json", "models.md", "models.json", "extras.tar.gz"}
STEPS = ["environment", "build", "pytest quick", "sanitizer", "host", "ops", "models", "tune", "pytest deep"]


@pytest.mark.check
@pytest.mark.skipif(HAS_CUDA, reason="the dry run is the CPU machines' check of the script; "
                                     "a GPU runs the check itself")
def test_dry_run_runs_every_step(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # not an xdist worker's
    env["PYTHON"] = sys.executable
    run = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    check = (tmp_path / "check.log").read_text()
    assert run.returncode == 0, check + run.stderr[-2000:]
    assert {p.name for p in tmp_path.iterdir()} == FILES
    for step in STEPS:
        assert f"   {step}: exit 0 after" in check, f"step {step!r} missing or failed:\n{check}"

    tests = (tmp_path / "tests.log").read_text().splitlines()
    quick = [ln for ln in tests if "tests/test_quick_tier.py::test_op[" in ln and not ln.startswith("#")]
    for op in ("conv1x1_relu", "residual_add", "max_pool2d_same", "avg_pool2d_same"):
        for backend, outcome in (("torch", "PASSED"), ("triton", "PASSED"), ("cuda", "SKIPPED")):
            assert any(ln.startswith(f"{outcome}  ") and f"{op}-nhwc-float32-{backend}]" in ln for ln in quick), op
    summaries = [ln for ln in tests if ln.startswith("== summary:")]
    assert len(summaries) == 2 and all("exit status 0" in s for s in summaries), summaries

    assert "| resnet18 | eager |" in (tmp_path / "host.md").read_text()
    assert "rel err vs fp32" in (tmp_path / "models.md").read_text()
    with tarfile.open(tmp_path / "extras.tar.gz") as tar:
        names = {os.path.basename(n) for n in tar.getnames()}
    assert {"pytest-quick.txt", "pytest-deep.txt", "sanitizer-memcheck.txt"} <= names
    if os.path.exists(os.path.join(ROOT, "fastconv", "tune.py")):  # the tuner's dry run, once it exists
        assert "tune.json" in names


def _no_torch_python(path):
    """An interpreter stand-in whose `import torch` fails, as python3 outside the venv."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("venv", [False, True])
def test_an_interpreter_without_torch_stops_the_check_at_once(tmp_path, venv):
    """The checkout's .venv/bin/python when there is one, else $PYTHON; without torch the
    check stops before its first step, non-zero, naming the interpreter (run in a copy of
    the script: this checkout may have a working .venv)."""
    checkout = tmp_path / "checkout"
    (checkout / "bench").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "bench", "gpu_check.sh"), checkout / "bench")
    python = _no_torch_python(tmp_path / "bin" / "python")
    venv_python = _no_torch_python(checkout / ".venv" / "bin" / "python") if venv else None
    env = dict(os.environ, PYTHON=str(python))
    run = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", str(tmp_path / "out")], cwd=checkout,
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 3, run.stderr
    used = venv_python if venv else python
    assert f"{used} cannot import torch: ModuleNotFoundError: No module named 'torch'" in run.stderr
    check = (tmp_path / "out" / "check.log").read_text()
    assert "cannot import torch" in check and "== environment" not in check
