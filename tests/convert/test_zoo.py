"""The zoo level of the benchmark on one small model (the full sweep is run by hand:
bench/results/2026-11-27-cpu-zoo/)."""
import json

import pytest

from fastconv import bench


def test_zoo_level_on_one_small_model(tmp_path):
    pytest.importorskip("timm")
    bench.main(["zoo", "--model", "timm/mobilenetv3_small_100", "--out", str(tmp_path), "--name", "zoo"])
    (row,) = json.loads((tmp_path / "zoo.json").read_text())["zoo_rows"]
    assert row["dense 1x1"] == row["dense fused"] > 0  # every dense 1x1 conv is a fastconv op ...
    assert row["eager 1x1 calls"] == 0                  # ... and none ran as an eager conv
    assert row["residual adds fused"] > 0
    assert row["rel_err_vs_eager"] <= 1e-5
    assert "| timm/mobilenetv3_small_100 |" in (tmp_path / "zoo.md").read_text()
