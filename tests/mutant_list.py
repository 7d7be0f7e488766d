"""The mutants of the mutation run (tests/mutants.py): one-line bugs, each an exact replacement
(file, old text, new text), and the tests that must catch it (pytest node ids, few and small:
the whole CPU run takes minutes on 2 cores). Anchors are short and distinctive so they move
with the code; `python -m tests.mutants --list` checks them all. At least one mutant per kernel
and per op family; "issue 26" marks the bugs that slipped through the suite before it."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple
    gpu: bool = False  # CUDA C++: the extension is rebuilt, the tests need a GPU


OPS = "tests/ops/"
QUICK = "tests/test_quick_tier.py::"
CONV = "fastconv/_triton/conv1x1.py"
POOL = "fastconv/_triton/pool_same.py"
SPLIT = "fastconv/_triton/pool_conv1x1.py"
TIES = OPS + "test_pool_same.py::test_max_ties_nan_inf_against_float64"

MUTANTS = [
    # --- the Triton 1x1 conv (GEMM + fused epilogue) and its bias/ReLU backward --------------
    Mutant("conv epilogue: ReLU before the residual add", CONV,
           "        acc += tl.load(r_ptr + r_rows[:, None]",
           "        acc = tl.maximum(acc, 0.0) + tl.load(r_ptr + r_rows[:, None]",
           (QUICK + "test_op[conv1x1_relu-nhwc-float32-triton]",)),
    Mutant("conv mainloop: weight column tile offset dropped", CONV,
           "b = tl.load(w_ptr + ks[:, None] * sw_i + cols[None, :] * _whole(sw_o, K_VEC),",
           "b = tl.load(w_ptr + ks[:, None] * sw_i + tl.arange(0, BLOCK_N)[None, :] * _whole(sw_o, K_VEC),",
           (OPS + "test_conv1x1.py::test_forward_backward[bias_relu0-nchw-case1-dtype0-triton]",)),
    Mutant("conv mainloop: stride ignored along columns", CONV,
           "(rows % OW) * STRIDE * _whole(sx_w, K_VEC)", "(rows % OW) * _whole(sx_w, K_VEC)",
           (OPS + "test_conv1x1.py::test_forward_backward[bias_relu0-nchw-case3-dtype0-triton]",)),
    Mutant("conv split-K: every slice sums all of K", CONV,
           "k_hi = tl.minimum(_whole(CIN, K_VEC), k_lo + K_PER_SPLIT)", "k_hi = _whole(CIN, K_VEC)",
           (OPS + "test_conv1x1.py::test_split_k_is_deterministic",)),
    Mutant("conv backward: ReLU mask passes y == 0", CONV,
           "g = tl.where(y <= 0.0, 0.0, g)", "g = tl.where(y < 0.0, 0.0, g)",
           (QUICK + "test_op[conv1x1_relu-nchw-float32-triton]",)),
    Mutant("conv op backward: gradients not masked by the ReLU when there is a bias",
           "fastconv/ops/conv1x1.py",
           "        grad, bias_grad = relu_bias_backward_op(", "        _, bias_grad = relu_bias_backward_op(",
           (QUICK + "test_op[conv1x1_relu-nchw-float32-torch]",)),

    # --- the Triton residual add + ReLU (elementwise) ------------------------------------------
    Mutant("residual: ReLU drops NaN", "fastconv/_triton/elementwise.py",
           "y = tl.where(y < 0.0, 0.0, y)", "y = tl.where(y > 0.0, y, 0.0)",
           (OPS + "test_residual.py::test_relu_keeps_nan_and_zero_size[triton]",)),
    Mutant("residual: the shortcut read through x's strides", "fastconv/_triton/elementwise.py",
           "b_offs = n * sb_n + c * sb_c + h * sb_h + w * sb_w", "b_offs = n * sa_n + c * sa_c + h * sa_h + w * sa_w",
           (OPS + "test_residual.py::test_forward_backward[True-layouts3-shape0-dtype0-triton]",)),
    Mutant("residual: ReLU dropped, torch backend (issue 26: -1 + 1 = 0 hid it)", "fastconv/ops/residual.py",
           "        return out.relu_() if relu else out", "        return out",
           (OPS + "test_residual.py::test_relu_keeps_nan_and_zero_size[torch]",)),

    # --- SAME pooling: the padding rule, the Triton kernels' ties, NaN, tiles and strides --------
    Mutant("pool: SAME's extra pad cell moved to the top/left (issue 26)", "fastconv/ops/pool_same.py",
           "(pads[0] // 2, pads[1] // 2)", "((pads[0] + 1) // 2, (pads[1] + 1) // 2)",
           (TIES + "[3-2-pads0-nchw-dtype0-triton]", TIES + "[2-2-pads2-nchw-dtype0-triton]")),
    Mutant("pool: ties go to the last maximum", POOL,
           "take = real & ((v > best) | (v != v) | (arg < 0))", "take = real & ((v >= best) | (v != v) | (arg < 0))",
           (OPS + "test_pool_same.py::test_max_nan_propagates_and_ties_go_to_first[triton]",)),
    Mutant("pool: a NaN in a later window row loses to the rows above", POOL,
           "((v > acc) | (v != v) | (acc_arg < 0))", "((v > acc) | (acc_arg < 0))",
           (TIES + "[3-1-pads1-nchw-dtype0-triton]", TIES + "[3-2-pads0-nchw-dtype0-triton]")),
    Mutant("pool forward: columns padded by the row padding", POOL,
           "*x.stride(), *out.stride(), ph, pw,", "*x.stride(), *out.stride(), ph, ph,",
           (OPS + "test_pool_same.py::test_triton_small_tiles[nhwc-max-geometry0]",)),
    Mutant("pool backward: columns padded by the row padding", POOL,
           "ow_last = (w + pad_w) // SW", "ow_last = (w + pad_h) // SW",
           (OPS + "test_pool_same.py::test_triton_small_tiles[nhwc-max-geometry0]",)),
    Mutant("pool avg: a right padding cell counted as real", POOL,
           "tl.minimum(start + K, size) - tl.maximum(start, 0)",
           "tl.minimum(start + K, size + 1) - tl.maximum(start, 0)",
           (OPS + "test_pool_same.py::test_triton_small_tiles[nchw-avg-geometry4]",)),
    Mutant("pool forward: a band's last input row never read", POOL,
           "tl.static_range((BLOCK_ROWS - 1) * SH + KH)", "tl.static_range((BLOCK_ROWS - 1) * SH + KH - 1)",
           (OPS + "test_pool_same.py::test_triton_small_tiles[nhwc-max-geometry1]",)),
    Mutant("pool: the strided fallback ignores the channel stride", POOL,
           "offs = col * s_col + c.to(tl.int64) * s_c", "offs = col * s_col + c.to(tl.int64)",
           (OPS + "test_pool_same.py::test_triton_small_tiles[strided-max-geometry5]",)),

    # --- the Inception kernel (sibling 1x1 convs, pool projection) and its torch path ----------
    Mutant("split GEMM: weight column tile offset dropped (issue 26)", SPLIT,
           "b = tl.load(w_ptr + ks[:, None] * sw_i + cols[None, :] * sw_o,",
           "b = tl.load(w_ptr + ks[:, None] * sw_i + tl.arange(0, BLOCK_N)[None, :] * sw_o,",
           (OPS + "test_inception.py::test_split_forward_backward[False-case3-dtype0-triton]",
            OPS + "test_inception.py::test_split_forward_backward[True-case2-dtype0-triton]")),
    Mutant("split GEMM: a column tile shared by two outputs stores only the first", SPLIT,
           "(first_col < END1) & (first_col + BLOCK_N > END0)", "(first_col < END1) & (first_col > END0)",
           (OPS + "test_inception.py::test_split_forward_backward[False-case0-dtype0-triton]",)),
    Mutant("pool projection: NaN dropped by the fused pool", SPLIT,
           "a = tl.where((v > a) | (v != v), v, a)", "a = tl.where(v > a, v, a)",
           (OPS + "test_inception.py::test_pool_is_same_nan_propagates_ties_go_first[triton]",)),
    Mutant("pool projection: masked channels keep -inf (-inf * 0 = NaN)", SPLIT,
           "a = tl.where(ok, a, 0.0)", "a = tl.where(row_ok[:, None], a, 0.0)",
           (QUICK + "test_inception_op[pool_conv1x1_relu-nhwc-float32-triton]",)),
    Mutant("split, torch backend: every output gets the first columns", "fastconv/ops/inception.py",
           "        lo += o.shape[1]", "        lo += 0",
           (OPS + "test_inception.py::test_split_forward_backward[False-case0-dtype0-torch]",)),

    # --- BN folding, the converter's pattern checks, the models' wiring --------------------------
    Mutant("fold: an in-place edit does not refold (stale cache)", "fastconv/fusion.py",
           "t is not stamp[0] or t._version != stamp[2] or", "t is not stamp[0] or",
           ("tests/test_host_path.py::test_in_place_edit_of_any_source_refolds",)),
    Mutant("pattern check: a grouped 1x1 conv taken as dense", "fastconv/fusion.py",
           "if conv.groups != 1:", "if conv.groups < 1:",
           ("tests/convert/test_near_misses.py::test_1x1_convs_the_fused_op_cannot_run_still_fold_their_bn"
            "[<lambda>-grouped]",)),
    Mutant("pattern check: a BatchNorm subclass with its own forward folded", "fastconv/convert/layers.py",
           "    if type(norm) is nn.BatchNorm2d:\n        return NO_NORM",
           "    if isinstance(norm, nn.BatchNorm2d):\n        return NO_NORM",
           ("tests/convert/test_near_misses.py::test_norm_with_extra_work_is_not_folded",)),
    Mutant("pattern check: an average pool counting its padding taken as SAME", "fastconv/fusion.py",
           "if not is_max and p > 0 and count_include_pad:", "if not is_max and p > 1 and count_include_pad:",
           ("tests/test_fusion.py::test_pool_is_same_never_claims_a_false_equality",)),
    Mutant("GoogLeNet: the stem conv reads its input shifted by a pixel (issue 26)",
           "fastconv/models/googlenet.py",
           "        return conv_bn_act(x, self.conv, self.bn, relu=True)",
           "        return conv_bn_act(x.roll(1, -1) if self.conv.stride == (2, 2) else x, self.conv, self.bn, "
           "relu=True)",
           ("tests/models/test_equivalence.py::test_eval_full_size_torch_backend[googlenet]",)),
    Mutant("ResNet: a ReLU on the projection shortcut", "fastconv/models/resnet.py",
           "return conv1x1_bn_act(x, conv, bn, relu=False)", "return conv1x1_bn_act(x, conv, bn, relu=True)",
           ("tests/models/test_equivalence.py::test_eval_full_size_torch_backend[resnet18]",)),

    # --- CUDA C++ (run by the GPU check: the copy's extension is rebuilt) -----------------------
    Mutant("CUDA residual: ReLU drops NaN", "csrc/residual.cu",
           "(op == BinaryOp::add_relu && y < A(0))", "(op == BinaryOp::add_relu && !(y > A(0)))",
           (OPS + "test_residual.py::test_relu_keeps_nan_and_zero_size[cuda]",), gpu=True),
    Mutant("CUDA ReLU backward: passes y == 0", "csrc/residual.cu",
           "return b <= A(0) ? A(0) : a;", "return b < A(0) ? A(0) : a;",
           (QUICK + "test_op[residual_add-nhwc-float32-cuda]",), gpu=True),
    Mutant("CUDA pool: ties go to the last maximum", "csrc/pool_same.cu",
           "if (v > acc || v != v || arg < 0) {", "if (v >= acc || v != v || arg < 0) {",
           (OPS + "test_pool_same.py::test_max_nan_propagates_and_ties_go_to_first[cuda]",), gpu=True),
    Mutant("CUDA conv SIMT/WMMA epilogue: ReLU drops NaN", "csrc/conv1x1.cu",
           "if (relu && v < A(0)) v = A(0);", "if (relu && !(v >= A(0))) v = A(0);",
           (OPS + "test_conv1x1.py::test_zero_batch_and_nan[nchw-dtype0-cuda]",), gpu=True),
    Mutant("CUDA conv tensor-core epilogue: ReLU drops NaN", "csrc/gemm_epilogue.cuh",
           "y[v] = y[v] < 0.f ? 0.f : y[v];", "y[v] = y[v] > 0.f ? y[v] : 0.f;",
           (OPS + "test_conv1x1.py::test_zero_batch_and_nan[nhwc-dtype1-cuda]",), gpu=True),
]
