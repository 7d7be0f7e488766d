"""python -m fastconv.compare: every flag works or is refused with a message naming it.
Everyday (make test): the refusals; the runs (a model converted and compared, each) are marked
`check` (make check)."""
import json

import pytest
import torch

from fastconv.compare.__main__ import main

SMALL = ["--model", "torchvision:resnet18", "--input", "2x3x32x32"]


def refused(capsys, argv, flag):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [
    (["--model", "keras:resnet50"], "--model"),
    (["--model", "torchvision:nonet"], "--model"),
    (["--model", "timm:nonet"], "--model"),
    (SMALL + ["--dtype", "fp8"], "--dtype"),
    (SMALL + ["--backend", "tpu"], "--backend"),
    (SMALL + ["--input", "3x224x224"], "--input"),
    ([], "--model"),
    (["--against", "a.json", "b.json"] + SMALL, "--against"),
    (["--against", "a.json", "b.json", "c.json"], "--against"),
] + ([] if torch.cuda.is_available() else [
    (SMALL + ["--device", "cuda"], "--device cuda"),
    (SMALL + ["--dtype", "tf32"], "--dtype tf32"),
    (SMALL + ["--backend", "cuda"], "--backend cuda"),
    (SMALL + ["--backend", "triton", "--dtype", "bf16"], "--backend triton --dtype bf16"),
]))
def test_refused_with_the_flag_named(capsys, argv, flag):
    refused(capsys, argv, flag)


@pytest.mark.check
def test_run_save_and_compare_runs(capsys, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(SMALL + ["--json", str(a)]) == 0
    out = capsys.readouterr().out
    assert "fastconv.compare: ResNet vs ResNet, eval, fp32 on" in out and "PASSED" in out
    assert "layer2.0.downsample.0" in out  # a fused projection conv, by its torchvision path
    saved = json.loads(a.read_text())
    assert saved["meta"]["model"] == "torchvision:resnet18" and saved["passed"]
    assert main(SMALL + ["--dtype", "bf16", "--seed", "1", "--json", str(b), "--against", str(a)]) == 0
    out = capsys.readouterr().out
    assert "bf16 on cpu" in out and "own/tol A  own/tol B" in out
    assert main(["--against", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("A: ResNet fp32") and "B: ResNet bf16" in out


@pytest.mark.check
def test_train_step_and_triton_backend(capsys):
    """The Triton backend through its interpreter (conftest sets TRITON_INTERPRET=1 on a CPU)."""
    assert main(["--model", "torchvision:resnet18", "--input", "2x3x16x16", "--dtype", "fp16",
                 "--backend", "triton"]) == 0
    assert "(backend triton)" in capsys.readouterr().out
    assert main(SMALL + ["--train"]) == 0
    assert "train step" in capsys.readouterr().out
