"""README.md's code blocks run as written, so they cannot rot: each ```python block, in a fresh
interpreter outside the checkout (importing fastconv from it). A block is marked
`<!-- test: cpu -->` (runs anywhere) or `<!-- test: gpu -->` (needs a CUDA device); an
unmarked one fails here. Nothing the block calls may print a warning."""
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import HAS_CUDA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blocks():
    """(mark, code) of every ```python block of README.md, in order."""
    text = open(os.path.join(ROOT, "README.md")).read()
    found = re.findall(r"(?:<!-- test: (\w+) -->\n)?```python\n(.*?)```", text, re.S)
    return [(mark or None, code) for mark, code in found]


def test_every_python_block_is_marked():
    marks = [mark for mark, _ in blocks()]
    assert marks and set(marks) <= {"cpu", "gpu"}, marks
    assert "cpu" in marks  # the example that runs where there is no GPU


@pytest.mark.parametrize("mark, code", blocks(), ids=[f"block{i}-{m}" for i, (m, _) in enumerate(blocks())])
def test_block_runs(mark, code, tmp_path):
    if mark == "gpu" and not HAS_CUDA:
        pytest.skip("a GPU example; the CPU variant runs here")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TRITON_INTERPRET"))}
    env["PYTHONPATH"] = ROOT  # a user's script: no TRITON_INTERPRET, which the tests set
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Warning" not in run.stderr, run.stderr[-3000:]


def test_fastconv_models_is_reachable_after_import_fastconv_alone(tmp_path):
    """The README's `import torch, fastconv; fastconv.models.resnet50()` (it raised AttributeError);
    torchvision is imported on that first use, not by `import fastconv`."""
    code = ("import sys, fastconv\n"
            "assert 'torchvision' not in sys.modules and 'fastconv.models' not in sys.modules\n"
            "assert fastconv.models.resnet18().fc.out_features == 1000 and 'torchvision' in sys.modules\n"
            "from fastconv import models\n"
            "assert models is fastconv.models and 'models' not in fastconv.__all__\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = ROOT
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
