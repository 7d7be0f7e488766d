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


def test_auto_sends_nchw_pixel_gemms_to_cudnn(table, monkeypatch):
    """The rule: an NCHW input gives the pixel-major Triton GEMM scalar accesses (the static
    gate's table), so "auto" runs cuDNN for it, and explain says why."""
    nchw = table[:1] + (4096,) + table[2:7] + ("nchw",)  # not in the table
    assert _backend.resolve(CUDA0, "conv1x1_relu", key=nchw) == "torch"
    assert _backend.resolve(CUDA0, "conv1x1_relu", key=nchw[:7] + ("nhwc",)) == "triton"
    split = _tuning.split_key(make_input((16, 192, 16, 16), torch.float16, "nchw"), torch.randn(176, 192), True)
    assert split == ("fp16", 4096, 192, 176, True, "nchw")
    assert _backend.resolve(CUDA0, "conv1x1_relu_split", key=split) == "torch"
    assert _backend.resolve(CUDA0, "residual_add", key=("bf16", 64, 256, 14, 14, "nchw")) == "triton"
    monkeypatch.setattr(_backend, "get_backend", lambda: "auto")
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: CUDA0))
    x, w = torch.empty(8, 256, 14, 14, device="meta"), torch.empty(64, 256, 1, 1, device="meta")
    info = fastconv.explain("conv1x1_relu", x, w)
    assert info.backend == "torch" and "NCHW" in info.why


@pytest.fixture
def gpu_path(monkeypatch):
    """choose_config's GPU branch on the CPU: CUDA-looking meta tensors, an empty table."""
    import importlib
    tconv = importlib.import_module("fastconv._triton.conv1x1")
    monkeypatch.setattr(tconv, "_INTERPRETING", False)
    monkeypatch.setattr(tconv, "AUTOTUNE_ON_FIRST_USE", True)
    monkeypatch.setattr(tconv, "_tuned", {})
    monkeypatch.setitem(_tuning._tables, 0, {})
    monkeypatch.setattr(_tuning, "arch", lambda device: "sm90")
    nhwc = torch.channels_last
    x = torch.empty(64, 256, 14, 14, device="meta", dtype=torch.bfloat16, memory_format=nhwc)
    w = torch.empty(128, 256, 1, 1, device="meta", dtype=torch.bfloat16)
    out = torch.empty(64, 128, 14, 14, device="meta", dtype=torch.bfloat16, memory_format=nhwc)
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: CUDA0))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)  # no CUDA here to ask
    return tconv, x, w, out


@pytest.mark.parametrize("inside", ["capture", "compile"])
def test_a_first_call_under_capture_or_compile_fixes_the_rule(gpu_path, monkeypatch, inside):
    """No timing inside a CUDA-graph capture or torch.compile, and the eager calls after it run
    the kernel the graph captured: one config per shape class and process."""
    tconv, x, w, out = gpu_path
    monkeypatch.setattr(tconv, "autotune", lambda *a, **k: pytest.fail("tuned inside a capture"))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: inside == "capture")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: inside == "compile")
    config, why = tconv.choose_config(x, w, out, 1, True, None)
    assert config == tconv.heuristic_config(64 * 196, 128, 256, torch.bfloat16) and "capture" in why
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    assert tconv.choose_config(x[:48], w, out[:48], 1, True, None) == (config, "tuned in this process")


def test_tuned_configs_persist_on_disk(gpu_path, monkeypatch, tmp_path):
    """FASTCONV_TUNED_CACHE: what one process tuned, the next one runs without tuning."""
    tconv, x, w, out = gpu_path
    best = tconv.GemmConfig(64, 128, 64, 8, 1, 4, 4)
    monkeypatch.setattr(tconv, "TUNED_CACHE", str(tmp_path / "tuned.json"))
    monkeypatch.setattr(tconv, "_on_disk", None)
    monkeypatch.setattr(tconv, "autotune", lambda *a, **k: (best, {}))
    assert tconv.choose_config(x, w, out, 1, True, None) == (best, "tuned in this process")
    monkeypatch.setattr(tconv, "_tuned", {})  # a new process
    monkeypatch.setattr(tconv, "_on_disk", None)
    monkeypatch.setattr(tconv, "autotune", lambda *a, **k: pytest.fail("tuned again"))
    assert tconv.choose_config(x[:48], w, out[:48], 1, True, None) == (best, "tuned in this process")
    nchw = x.contiguous()  # NCHW: the rule, never tuned (auto runs cuDNN)
    assert tconv.choose_config(nchw, w, out.contiguous(), 1, True, None)[1].startswith("rule (not tuned")
