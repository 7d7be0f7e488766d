"""The tuner (dry run on the CPU), the tables, "auto" over a table, and fastconv.explain."""
import json

import pytest
import torch

import fastconv
from fastconv import _backend, _tuning, tune
from tests.conftest import DEVICE, HAS_CUDA, gpu, make_input

CUDA0 = torch.device("cuda", 0)


def test_dry_run_writes_a_loadable_table_and_nothing_in_the_package(tmp_path):
    before = sorted(_tuning.TABLE_DIR.glob("*.json"))
    out = tmp_path / "table.json"
    out.write_text(json.dumps({"format": 1, "arch": "cpu-dry-run", "entries": [
        {"op": "conv1x1_relu", "key": ["bf16", 1, 2, 3, 1, True, False, "nhwc"], "backend": "torch"}]}))
    assert tune.main(["--dry-run", "--out", str(out)]) == 0
    assert sorted(_tuning.TABLE_DIR.glob("*.json")) == before
    doc = json.loads(out.read_text())
    assert doc["mode"] == "dry-run" and doc["arch"] == "cpu-dry-run"
    table = _tuning.load(out)
    assert set(table) == {"conv1x1_relu", "relu_bias_backward", "residual_add", "max_pool2d_same",
                          "avg_pool2d_same"}
    assert ("bf16", 1, 2, 3, 1, True, False, "nhwc") in table["conv1x1_relu"]  # merged, not dropped
    for entries in table.values():
        for key, e in entries.items():
            if key[0] == "bf16":
                continue  # the one kept from before
            assert e["backend"] in ("torch", "triton") and set(e["ms"]) == {"torch", "triton"}
            assert e["backend"] == min(e["ms"], key=e["ms"].get) and not e["rejected"]
    # the pool keys come back as the tuples the op computes
    x = make_input((2, 8, 7, 7), torch.float32, "nhwc")
    assert _tuning.pool_key(x, [3, 3], [2, 2]) in table["max_pool2d_same"]


def test_tuning_needs_a_gpu_or_the_dry_run():
    if HAS_CUDA:
        pytest.skip("on a GPU, tuning runs")
    with pytest.raises(SystemExit):
        tune.main(["--quick"])


def test_shape_class():
    w = torch.randn(512, 2048, 1, 1, device=DEVICE)
    key = _tuning.conv_key(make_input((128, 2048, 7, 7), torch.float16, "nhwc"), w, 1, True, None)
    assert key == ("fp16", 8192, 2048, 512, 1, True, False, "nhwc")
    # another batch size in the same power-of-two class: no new entry, no re-tuning
    assert _tuning.conv_key(make_input((100, 2048, 7, 7), torch.float16, "nhwc"), w, 1, True, None) == key
    assert _tuning.conv_key(make_input((100, 2048, 7, 7), torch.float16, "nchw"), w, 1, True, None) != key
    x32 = make_input((1, 8, 3, 3), torch.float32, "strided")
    w32 = torch.randn(4, 8, device=DEVICE)
    assert _tuning.conv_key(x32, w32, 2, False, x32)[0] == "fp32"
    torch.backends.cudnn.allow_tf32 = True
    assert _tuning.conv_key(x32, w32, 2, False, x32) == ("tf32", 4, 8, 4, 2, False, True, "strided")


@pytest.fixture
def table(monkeypatch):
    """A measured table for CUDA device 0 (no GPU needed: "auto" only reads it)."""
    key = ("bf16", 8192, 2048, 512, 1, True, False, "nhwc")
    entries = {"conv1x1_relu": {key: {"backend": "torch", "config": None, "ms": {"torch": 1.0, "triton": 2.0}},
                                key[:6] + (True, "nhwc"): {"backend": "cuda", "config": None, "ms": {"cuda": 1.0}}}}
    monkeypatch.setitem(_tuning._tables, 0, entries)
    monkeypatch.setattr(_tuning, "arch", lambda device: "sm90")
    return key


def test_auto_follows_the_table_else_the_rule(table, monkeypatch):
    op = "conv1x1_relu"
    assert _backend.resolve(CUDA0, op, key=table) == "torch"                 # measured fastest
    assert _backend.resolve(CUDA0, op, key=table[:1] + (4096,) + table[2:]) == "triton"  # not in it
    assert _backend.resolve(CUDA0, op) == "triton"                           # two-argument form
    assert _backend.resolve(torch.device("cpu"), op, key=table) == "torch"   # rule for CPU
    monkeypatch.setattr(_backend, "_cuda_problem", lambda: "not built")
    assert _backend.resolve(CUDA0, op, key=table[:6] + (True, "nhwc")) == "triton"  # cuda not here
    with fastconv.use_backend("triton"):
        assert _backend.resolve(CUDA0, op, key=table) == "triton"            # an explicit choice wins


def test_explain(table, monkeypatch):
    x = make_input((2, 16, 5, 5), torch.float32, "nhwc")
    w = torch.randn(8, 16, 1, 1, device=DEVICE)
    info = fastconv.explain("conv1x1_relu", x, w, stride=2)
    if not HAS_CUDA:
        assert info.backend == "torch" and info.why.startswith("rule")
    assert info.shape_class == _tuning.conv_key(x, w, 2, True, None)
    with fastconv.use_backend("triton"):
        info = fastconv.explain(fastconv.conv1x1_relu, x, w, None, 1, False)
    assert info.backend == "triton" and "use_backend" in info.why
    assert info.triton_config["block_m"] >= 16 and info.config_why
    assert fastconv.explain("max_pool2d_same", x, 3, 2).shape_class[-2:] == ((3, 3), (2, 2))
    assert fastconv.explain("residual_add", x, x).shape_class == _tuning.tensor_key(x)
    # a CUDA call in the table (the auto branch reads only x.device and shapes)
    monkeypatch.setattr(_backend, "get_backend", lambda: "auto")
    fake_x = torch.empty(128, 2048, 7, 7, device="meta").to(memory_format=torch.channels_last)
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: CUDA0))
    info = fastconv.explain("conv1x1_relu", fake_x.bfloat16(), torch.empty(512, 2048, 1, 1, device="meta").bfloat16())
    assert info.backend == "torch" and info.why.startswith("tuning table sm90")
    with pytest.raises(ValueError, match="op must be one of"):
        fastconv.explain("conv3x3", x)


def test_explain_reads_as_a_sentence_and_names_the_arithmetic_that_runs():
    x = make_input((2, 16, 5, 5), torch.float32, "nhwc")
    w = torch.randn(8, 16, 1, 1, device=DEVICE)
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default (the fixture restores it)
    info = fastconv.explain("conv1x1_relu", x, w)
    assert info.dtype == ("tf32" if HAS_CUDA else "fp32")  # a CPU conv runs IEEE fp32, flag or not
    assert str(info) == f"conv1x1_relu in {info.dtype} runs on the {info.backend} backend ({info.why})."
    with fastconv.use_backend("triton"):
        text = str(fastconv.explain("conv1x1_relu", x.half(), w.half()))
    assert text.startswith("conv1x1_relu in fp16 runs on the triton backend (backend 'triton' set by")
    assert "with Triton tiles block_m " in text and text.endswith(").")
    torch.backends.cudnn.allow_tf32 = False
    assert fastconv.explain("conv1x1_relu", x, w).dtype == "fp32"
    assert fastconv.explain("max_pool2d_same", x, 3).dtype == "fp32"


@gpu
def test_quick_tune_on_a_gpu(tmp_path):
    out = tmp_path / "t.json"
    tune.main(["--quick", "--out", str(out), "--budget-s", "1"])  # the first case only
    table = _tuning.load(out)
    assert table["conv1x1_relu"]
    for e in table["conv1x1_relu"].values():
        assert (e["config"] is not None) == (e["backend"] == "triton")
