"""fastconv.compare on a small converted CNN: the report, error made vs inherited, the first
failing layer, tolerance overrides, the train step, and the Triton backend in its interpreter."""
import json

import pytest
import torch

import fastconv
from fastconv.compare import Report
from tests.compare.helpers import converted, patch_forward, perturb_folded_bias, shift_pool_window


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_unbroken_passes_with_every_layer_named(dtype):
    ref, cand, x = converted("tiny", dtype)
    report = fastconv.compare(ref, cand, x)
    assert report.passed and report.first_failure is None, str(report)
    names = [r.name for r in report.rows]
    assert names[0] == "(model)" and {"3", "4", "4.conv1", "4.conv2", "10"} <= set(names)
    fused = {r.name: r for r in report.rows}["4.conv1"]
    assert fused.span == "4.conv1 .. 4.relu"  # the conv, its BN and ReLU: one fused op
    assert fused.fused_as.startswith("1x1 conv + BN + ReLU -> conv1x1_relu")
    assert fused.ops == ["conv1x1_relu"] and 0 < fused.ratio <= 1
    assert "PASSED" in str(report) and "own/tol" in str(report)


def test_inputs_and_models_unchanged():
    ref, cand, x = converted("tiny")
    ref.train()
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (ref, cand)]
    x0 = x.clone()
    fastconv.compare(ref, cand, x)
    fastconv.compare(ref, cand, x, train=True)
    assert ref.training and not cand.training  # modes restored
    for m, state in zip((ref, cand), before):
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
        assert all(p.grad is None for p in m.parameters())
    assert torch.equal(x, x0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_broken_fused_layer_is_the_first_failure(dtype):
    ref, cand, x = converted("tiny", dtype)
    perturb_folded_bias(ref, cand, "4.conv1", "4.bn1")
    report = fastconv.compare(ref, cand, x)
    assert report.first_failure == "4.conv1", str(report)
    row = report.failing_row()
    assert row.ratio > 1 and row.kernels[0]["op"] == "conv1x1_relu" and row.kernels[0]["backend"] == "torch"
    assert "first failing layer 4.conv1" in str(report)


def test_error_made_is_told_from_error_inherited():
    """A wrong pool spreads its error to every later layer, which still pass: only the layers
    that make error fail."""
    ref, cand, x = converted("tiny")
    shift_pool_window(cand, "3")
    report = fastconv.compare(ref, cand, x)
    rows = {r.name: r for r in report.rows}
    assert report.first_failure == "3"
    assert rows["4.conv2"].total["norm_rel"] > 1e-2 and rows["4.conv2"].passed  # inherited, not made
    assert [r.name for r in report.rows if r.passed is False] == ["3"]


def test_glue_code_between_boundaries_is_checked():
    """The add + ReLU of block 4 runs in no module of its own: block 4's row checks it."""
    ref, cand, x = converted("tiny")
    add = next(m for name, m in cand.get_submodule("4").named_modules() if "residual_add" in name)
    patch_forward(add, lambda forward: lambda a, b: forward(a, b * 1.001))
    report = fastconv.compare(ref, cand, x)
    assert report.first_failure == "4", str(report)


def test_json_round_trip_and_diff(tmp_path):
    ref, cand, x = converted("tiny")
    report = fastconv.compare(ref, cand, x)
    path = tmp_path / "r.json"
    report.to_json(path)
    data = json.loads(path.read_text())
    assert data["passed"] and data["meta"]["precision"] == "fp32" and len(data["rows"]) == len(report.rows)
    again = Report.from_json(str(path))
    assert str(again) == str(report)
    perturb_folded_bias(ref, cand, "4.conv1", "4.bn1")
    diff = fastconv.compare(ref, cand, x).diff(again)
    assert "ok -> " not in diff and "FAIL -> ok" in diff


def test_tolerance_overrides():
    ref, cand, x = converted("tiny", torch.float16)
    assert not fastconv.compare(ref, cand, x, rtol=0, atol=0).passed  # fp16 rounds: exact fails
    assert not fastconv.compare(ref, cand, x, bound_scale=1e-3).passed
    shift_pool_window(cand, "3")
    report = fastconv.compare(ref, cand, x, atol=1e3)
    assert report.passed and "atol 1000" in report.meta["tolerance"]


def test_mismatched_dtypes_are_refused():
    ref, cand, x = converted("tiny")
    with pytest.raises(ValueError, match="reference is torch.float32 but candidate is torch.float16"):
        fastconv.compare(ref, cand.half(), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_backend_in_the_interpreter(dtype):
    ref, cand, x = converted("tiny", dtype)
    with fastconv.use_backend("triton"):
        report = fastconv.compare(ref, cand, x)
    assert report.passed and report.meta["backend"] == "triton", str(report)
    with fastconv.use_backend("triton"):
        perturb_folded_bias(ref, cand, "4.conv1", "4.bn1")
        report = fastconv.compare(ref, cand, x)
    assert report.first_failure == "4.conv1" and report.failing_row().kernels[0]["backend"] == "triton"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_train_step_gradients(dtype):
    ref, cand, x = converted("tiny", dtype)
    report = fastconv.compare(ref, cand, x, train=True)
    assert report.passed, str(report)
    assert report.rows[0].name == "(output)" and {r.kind for r in report.rows} == {"output", "grad"}
    assert {r.name for r in report.rows} >= {"4.conv1.weight", "4.bn1.bias", "10.weight"}


def test_train_step_names_a_wrong_gradient():
    ref, cand, x = converted("tiny")
    cand.get_submodule("4.conv1").weight.register_hook(lambda g: g * 1.01)  # 1% off
    report = fastconv.compare(ref, cand, x, train=True)
    assert report.first_failure == "4.conv1.weight", str(report)


def test_progress_is_reported():
    ref, cand, x = converted("tiny")
    seen = []
    fastconv.compare(ref, cand, x, progress=lambda done, total, name: seen.append((done, total)))
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] == len(seen) - 1
