"""The benchmark's code paths on the CPU (no speed is asserted)."""
import json

import pytest

from fastconv import bench


def test_quick_cpu_run_writes_valid_json_and_plots(tmp_path):
    result = bench.main(["--quick", "--out", str(tmp_path), "--name", "quick"])
    data = json.loads((tmp_path / "quick.json").read_text())
    assert data["env"]["torch"] and data["rows"] == json.loads(json.dumps(result["rows"]))
    providers = {r["provider"] for r in data["rows"]}
    assert {"eager", "torch", "triton-interpreter"} <= providers
    for row in data["rows"]:
        assert row["rel_err_vs_eager"] < 1e-5, row
        if row["provider"] != "triton-interpreter":
            assert row["median_ms"] > 0 and row["GB/s"] > 0
    assert "| conv1x1_relu |" in (tmp_path / "quick.md").read_text()
    assert (tmp_path / "quick_speedup.png").stat().st_size > 0
    assert bench.main(["plot", "--from-json", str(tmp_path / "quick.json")])["rows"]


def test_filters():
    rows, _ = bench.run_ops(["fp32"], [1], "quick", op_filter=["residual_add"],
                            provider_filter=["eager"], progress=False)
    assert {r["op"] for r in rows if r["provider"] == "eager"} == {"residual_add"}


def test_interpreter_rows_run_the_form_they_are_labelled_with():
    """Each quick shape's tiny form keeps its kind, stride, ReLU, residual and pool window (the
    row labelled k3s1 ran a k3s2 pool, the residual conv's ran no residual)."""
    for spec in bench.cases.QUICK_SHAPES:
        small = bench.cases.tiny(spec)
        assert (small[0], small[-2:] if spec[0] in ("max", "avg") else small[4:]) == (
            spec[0], spec[-2:] if spec[0] in ("max", "avg") else spec[4:])
    rows = bench.ops.interpreter_check(["max_pool2d_same", "conv1x1_relu_residual"])
    assert sorted((r["op"], r["shape"]) for r in rows) == [
        ("conv1x1_relu_residual", "2x16x7x7->16/s1"), ("max_pool2d_same", "2x16x9x9 k3s1"),
        ("max_pool2d_same", "2x16x9x9 k3s2")]
    assert all(r["rel_err_vs_eager"] < 1e-5 for r in rows)


def test_shapes_enumerated_from_the_models():
    shapes = bench.model_shapes()
    assert ("convres", 64, 56, 256, 1, True) in shapes    # ResNet-50 layer1 conv3 + add + ReLU
    assert ("residual", 2048, 7) in shapes                # ResNet-50 layer4
    assert ("conv", 192, 28, 176, 1, True) in shapes      # GoogLeNet inception3a: 3 sibling 1x1 convs, one GEMM
    assert ("poolconv", 192, 28, 32) in shapes            # inception3a pool projection, pool fused
    assert ("max", 480, 28, 3, 2) in shapes               # GoogLeNet maxpool3
    assert len(shapes) == len(set(shapes)) > 35  # 39 since an Inception block runs 2 GEMMs, not 4 convs


@pytest.mark.parametrize("name", ["resnet50"])
def test_models_level_on_cpu(name, tmp_path):
    rows = bench.run_models([name], batch=1, dtype_name="fp32", provider_filter=None, train_step=False)
    assert {r["provider"] for r in rows} == {"eager", "torch"}
    assert all(r["rel_err_vs_eager"] < 1e-4 and r["images/s"] > 0 for r in rows)
