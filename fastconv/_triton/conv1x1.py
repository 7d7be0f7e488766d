"""Triton kernels for the fused 1x1 convolution + bias + ReLU, and its bias/ReLU backward.

A 1x1 conv with stride s is a GEMM over the subsampled pixels:
    out[m, j] = relu(sum_k x[m, k] * w[j, k] + bias[j])
with m = (n, oh, ow) reading x[n, :, oh*s, ow*s]. Rows are pixels, so one
kernel serves NCHW and NHWC: a row's pixel offset is computed once per tile and
the channel dimension is walked through x's channel stride.

Napkin math (16-bit, Cin=192 -> Cout=64, N*H*W pixels): read x 384 B/pixel,
write 128 B/pixel, weights stay in L2: 48 FLOP/B, far below the H100's ~266
ridge, so memory-bound. Fusing bias+ReLU into the epilogue saves eager's second
pass (read + write the output again: 256 B/pixel); fusing a residual add saves
another (write the conv output, read it and the residual, write the sum: the
residual is read once either way, so 4 B per output element at 16-bit).
"""
import torch
import triton
import triton.language as tl

from fastconv._triton.elementwise import acc_type


@triton.jit
def _conv1x1_kernel(x_ptr, w_ptr, b_ptr, r_ptr, out_ptr, M, COUT, CIN, OH, OW, STRIDE,
                    sx_n, sx_c, sx_h, sx_w, sw_o, sw_i, so_n, so_c, so_h, so_w,
                    sr_n, sr_c, sr_h, sr_w,
                    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_M: tl.constexpr, USE_DOT: tl.constexpr):
    # Grouped program order (as in Triton's matmul tutorial): GROUP_M row tiles
    # share each weight column tile while it is hot in L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(COUT, BLOCK_N)
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    group_size = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % group_size
    pid_n = (pid % (GROUP_M * num_n)) // group_size

    # rows: BLOCK_M output pixels -> their base offsets in x and out (int64).
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = rows // (OH * OW)
    oh = (rows // OW) % OH
    ow = rows % OW
    x_rows = n * sx_n + oh * STRIDE * sx_h + ow * STRIDE * sx_w
    o_rows = n * so_n + oh * so_h + ow * so_w
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < COUT

    # Mainloop: a [BLOCK_M, BLOCK_K] pixel-by-channel tile of x times a
    # [BLOCK_K, BLOCK_N] tile of w^T, accumulated in fp32.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, CIN, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < CIN
        a = tl.load(x_ptr + x_rows[:, None] + ks[None, :] * sx_c,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_ptr + ks[:, None] * sw_i + cols[None, :] * sw_o,
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if USE_DOT:
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        else:  # float64 (gradcheck): tl.dot has no fp64 path on every Triton; small tiles
            acc += tl.sum(a.to(ACC)[:, :, None] * b.to(ACC)[None, :, :], axis=1)

    # Epilogue: bias, residual and ReLU on the fp32 accumulator, one rounding, one store.
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(ACC)[None, :]
    if HAS_RES:
        r_rows = n * sr_n + oh * sr_h + ow * sr_w
        acc += tl.load(r_ptr + r_rows[:, None] + cols[None, :] * sr_c,
                       mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(ACC)
    if RELU:
        acc = tl.where(acc < 0.0, 0.0, acc)  # keeps NaN, as torch.relu
    tl.store(out_ptr + o_rows[:, None] + cols[None, :] * so_c,
             acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def _tiles(m, cout, cin, dtype):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps). CNN 1x1 convs have many pixels and
    16..2048 channels: 128 pixel rows per tile keep the tensor cores fed, the
    output-channel tile covers small Couts in one pass (no re-reading x), and
    BLOCK_K=32 keeps a 3-stage pipeline within shared memory. tl.dot needs >= 16.
    float64 multiplies without tl.dot, through a [M, K, N] product: small tiles."""
    if dtype == torch.float64:
        return 32, 32, 8, 4
    block_n = min(max(triton.next_power_of_2(cout), 16), 128)
    block_k = min(max(triton.next_power_of_2(cin), 16), 32)
    block_m = 128 if m >= 128 else 64
    return block_m, block_n, block_k, 8 if block_n >= 128 else 4


def _precision(dtype, tf32):
    """tl.dot's input precision: TF32 or IEEE for float32, IEEE for float64, native for 16-bit."""
    if dtype == torch.float32:
        return "tf32" if tf32 else "ieee"
    return "ieee" if dtype == torch.float64 else None


def conv1x1(x, weight, bias, out, stride, relu, tf32, residual=None):
    """out (dense NCHW/NHWC) = [relu](conv1x1(x, weight [Cout, Cin(, 1, 1)], bias, stride)
    [+ residual (out's shape, any strides)]); tf32: float32 may be rounded to TF32 in the dot."""
    w2d = weight if weight.dim() == 2 else weight[:, :, 0, 0]
    N, COUT, OH, OW = out.shape
    M, CIN = N * OH * OW, x.shape[1]
    if out.numel() == 0:
        return out
    bm, bn, bk, warps = _tiles(M, COUT, CIN, x.dtype)
    grid = (triton.cdiv(M, bm) * triton.cdiv(COUT, bn),)
    res = residual if residual is not None else out  # not read without a residual
    _conv1x1_kernel[grid](x, w2d, bias if bias is not None else w2d, res, out, M, COUT, CIN, OH, OW,
                          stride, *x.stride(), *w2d.stride(), *out.stride(), *res.stride(),
                          HAS_BIAS=bias is not None, HAS_RES=residual is not None, RELU=relu, PRECISION=_precision(x.dtype, tf32), ACC=acc_type(x),
                          BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
                          USE_DOT=x.dtype != torch.float64,
                          num_warps=warps, num_stages=3)
    return out


@triton.jit
def _relu_grad_bias_kernel(g_ptr, y_ptr, gin_ptr, db_ptr, P, C, H, W,
                           sg_n, sg_c, sg_h, sg_w, sy_n, sy_c, sy_h, sy_w,
                           si_n, si_c, si_h, si_w, RELU: tl.constexpr, ACC: tl.constexpr,
                           BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # A [BLOCK_P pixels, BLOCK_C channels] tile: mask the gradient by the ReLU
    # output (y > 0), store it, and add its column sums into the fp32 bias
    # gradient (one atomic per channel per tile).
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = p // (H * W)
    h = (p // W) % H
    w = p % W
    mask = (p < P)[:, None] & (c < C)[None, :]
    g = tl.load(g_ptr + (n * sg_n + h * sg_h + w * sg_w)[:, None] + c[None, :] * sg_c,
                mask=mask, other=0.0).to(ACC)
    if RELU:
        y = tl.load(y_ptr + (n * sy_n + h * sy_h + w * sy_w)[:, None] + c[None, :] * sy_c,
                    mask=mask, other=0.0).to(ACC)
        g = tl.where(y <= 0.0, 0.0, g)
    g = g.to(gin_ptr.dtype.element_ty)
    tl.store(gin_ptr + (n * si_n + h * si_h + w * si_w)[:, None] + c[None, :] * si_c, g, mask=mask)
    tl.atomic_add(db_ptr + c, tl.sum(g.to(ACC), axis=0), mask=c < C)


def relu_grad_bias(grad, y, grad_in, bias_grad, relu):
    """grad_in = grad * (y > 0) (or grad if not relu); bias_grad (fp32, zeroed) += its channel sums."""
    N, C, H, W = grad.shape
    P = N * H * W
    if grad.numel() == 0:
        return
    block_c = min(triton.next_power_of_2(C), 64)
    block_p = 4096 // block_c
    grid = (triton.cdiv(P, block_p), triton.cdiv(C, block_c))
    _relu_grad_bias_kernel[grid](grad, y, grad_in, bias_grad, P, C, H, W, *grad.stride(),
                                 *y.stride(), *grad_in.stride(), RELU=relu, ACC=acc_type(grad),
                                 BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4)
