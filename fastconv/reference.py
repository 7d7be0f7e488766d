"""Float64 references for the fused ops, written from the definitions and
independent of fastconv's kernels and backends: the tests, the benchmarks and
the demo compare against these."""
import torch
import torch.nn.functional as F


def conv1x1_relu(x, weight, bias=None, stride=1, relu=True, residual=None):
    w = weight if weight.dim() == 4 else weight[:, :, None, None]
    y = F.conv2d(x.double(), w.double(), None if bias is None else bias.double(), stride=stride)
    y = y if residual is None else y + residual.double()
    return F.relu(y) if relu else y


def residual_add(x, residual, relu=True):
    y = x.double() + residual.double()
    return F.relu(y) if relu else y


def _pool_same(x, kernel_size, stride, is_max):
    """Window by window, from TensorFlow's SAME definition: the window of output
    (i, j) covers rows i*s - pad_top ... + k - 1 clipped to the input; max takes
    the first maximum in row-major order (as PyTorch), average the mean of the
    real cells. Differentiable (autograd gives the reference gradients)."""
    x = x.double()
    H, W = x.shape[2:]
    (kh, kw), (sh, sw) = kernel_size, stride
    oh, ow = -(-H // sh), -(-W // sw)
    pt = max((oh - 1) * sh + kh - H, 0) // 2
    pl = max((ow - 1) * sw + kw - W, 0) // 2
    rows = []
    for i in range(oh):
        h0, h1 = max(i * sh - pt, 0), min(i * sh - pt + kh, H)
        cols = []
        for j in range(ow):
            w0, w1 = max(j * sw - pl, 0), min(j * sw - pl + kw, W)
            cells = x[:, :, h0:h1, w0:w1].flatten(2)
            if is_max:
                cols.append(cells.gather(2, cells.argmax(2, keepdim=True))[:, :, 0])
            else:
                cols.append(cells.mean(2))
        rows.append(torch.stack(cols, -1))
    return torch.stack(rows, -2)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def max_pool2d_same(x, kernel_size, stride=None):
    k = _pair(kernel_size)
    return _pool_same(x, k, k if stride is None else _pair(stride), is_max=True)


def avg_pool2d_same(x, kernel_size, stride=None):
    k = _pair(kernel_size)
    return _pool_same(x, k, k if stride is None else _pair(stride), is_max=False)


def randomize_batchnorm(model, seed=0):
    """Give every BatchNorm2d random statistics and affine parameters (in place), so that
    comparisons exercise BN folding instead of the identity a fresh BN computes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                weight, bias = torch.rand(n, generator=g) + 0.5, torch.randn(n, generator=g) * 0.2
                if m.affine:  # (drawn either way: the draws after stay the same)
                    m.weight.copy_(weight)
                    m.bias.copy_(bias)
    return model


def calibrate_batchnorm(model, inputs, seed=0):
    """Realistic BatchNorm (in place): random affine parameters, then running statistics
    measured on `inputs` (train-mode forwards, cumulative average), as training leaves them.
    Every BN then normalizes its input to the scale of its affine parameters, so activations
    keep a realistic scale at any depth whatever the weight init: with fresh statistics BN is
    an identity that rounds away in bf16, and GoogLeNet's default init shrinks its bf16
    features to ~2e-11 (its logits then equal the classifier's bias, and any error hides)."""
    randomize_batchnorm(model, seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration forwards
    was_training = model.training
    model.train()
    with torch.no_grad():
        for x in inputs:
            model(x)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    return model.train(was_training)


def rel_error(out, ref):
    """||out - ref|| / ||ref|| in float64 (inf if out has a NaN or ref is 0 where out is not)."""
    out, ref = out.double().cpu(), ref.double().cpu()
    if out.shape != ref.shape:
        raise ValueError(f"shape {tuple(out.shape)} != reference shape {tuple(ref.shape)}")
    if not torch.isfinite(out).all():
        return float("inf")
    diff = (out - ref).norm().item()
    scale = ref.norm().item()
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
