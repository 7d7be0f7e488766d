"""The zoo level of the benchmark on one small model (the full sweep is run by hand:
bench/results/2026-11-30-cpu-zoo/)."""
import json

import pytest
import torch

import fastconv
from fastconv import bench, reference
from fastconv.bench.zoo import ZOO
from tests.conftest import gpu


def test_zoo_level_on_one_small_model(tmp_path):
    pytest.importorskip("timm")
    bench.main(["zoo", "--model", "timm/mobilenetv3_small_100", "--out", str(tmp_path), "--name", "zoo"])
    (row,) = json.loads((tmp_path / "zoo.json").read_text())["zoo_rows"]
    assert row["dense 1x1"] == row["dense fused"] > 0  # every dense 1x1 conv is a fastconv op ...
    assert row["eager 1x1 calls"] == 0                  # ... and none ran as an eager conv
    assert row["residual adds fused"] > 0
    assert row["BN passes eager"] > 0 and row["BN passes converted"] == 0  # every BN folded
    assert row["rel_err_vs_eager"] <= 1e-5
    table = (tmp_path / "zoo.md").read_text()
    bns = row["BN passes eager"]
    assert "| timm/mobilenetv3_small_100 |" in table and f"| {bns}/{bns} |" in table


@gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("name", ["timm/efficientnet_b0", "tv/resnet50"])
def test_zoo_models_on_gpu_backends(name, backend):
    """Converted zoo models on the GPU kernels: IEEE fp32 both sides (TF32 off in conftest)."""
    if name.startswith("timm/"):
        pytest.importorskip("timm")
    build, size = ZOO[name]
    x = torch.randn(4, 3, size, size, device="cuda")
    model = reference.calibrate_batchnorm(build().cuda(), [torch.randn_like(x)]).eval()
    converted = fastconv.convert(model, example_input=x)
    with torch.no_grad():
        ref = model(x)
        with fastconv.use_backend(backend):
            out = converted(x)
    assert reference.rel_error(out, ref) < 1e-3  # 50 layers deep, as test_convert's GPU check
