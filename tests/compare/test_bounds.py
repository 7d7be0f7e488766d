"""The error bounds of fastconv.compare.bounds: never exceeded by a correct computation in
the precision they are for, exceeded by the precision bugs they are meant to catch."""
import pytest
import torch
import torch.nn.functional as F

from fastconv.compare.bounds import ErrorBound, Precision, UnboundedOp, gamma

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def test_gamma_is_highams():
    u = 2.0 ** -24
    assert gamma(1000, u) == 1000 * u / (1 - 1000 * u)
    assert gamma(2 ** 24, u) == float("inf")  # n u >= 1: no bound


def bound_of(fn, *args, dtype):
    """(exact float64 result, its bound in `dtype`) of fn on float64 copies of args."""
    args64 = [a.double() if isinstance(a, torch.Tensor) else a for a in args]
    mode = ErrorBound(Precision(dtype))
    with mode:
        out = fn(*args64)
    return out, mode.error(out)


def ratio(out, exact, bound):
    return ((out.double() - exact).abs() / bound).max().item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [3, 64, 1000])
def test_conv_within_bound_and_tight(dtype, k):
    g = torch.Generator().manual_seed(k)
    x = torch.rand(2, k, 5, 7, generator=g).to(dtype)  # post-ReLU activations: no cancellation help
    w = (torch.randn(17, k, 1, 1, generator=g) / k ** 0.5).to(dtype)
    b = torch.randn(17, generator=g).to(dtype)
    exact, bound = bound_of(F.conv2d, x, w, b, dtype=dtype)
    r = ratio(F.conv2d(x, w, b), exact, bound)
    assert r <= 1
    if dtype != torch.float32:  # the output's rounding dominates: the bound is nearly reached
        assert r > 0.3


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_pools_and_add_within_bound(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 9, 9, generator=g).to(dtype)
    y = torch.randn(2, 8, 9, 9, generator=g).to(dtype)
    w, b = torch.randn(5, 8 * 9, generator=g).to(dtype), torch.randn(5, generator=g).to(dtype)

    def net(x, y, w, b):
        z = F.avg_pool2d(torch.relu(x + y), 3, 1, 1)
        z = F.adaptive_avg_pool2d(z, 3) * torch.sigmoid(F.max_pool2d(y, 3, 3))
        return F.linear(z.flatten(1), w, b)
    exact, bound = bound_of(net, x, y, w, b, dtype=dtype)
    assert ratio(net(x, y, w, b), exact, bound) <= 1


def test_bf16_accumulation_exceeds_the_bound():
    """Summing a K = 256 dot product in a bfloat16 accumulator errs far beyond what bf16
    storage with fp32 accumulation allows."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 256, 8, 8, generator=g).bfloat16()
    w = (torch.randn(32, 256, 1, 1, generator=g) / 16).bfloat16()
    exact, bound = bound_of(F.conv2d, x, w, dtype=torch.bfloat16)
    acc = torch.zeros(1, 32, 8, 8, dtype=torch.bfloat16)
    for k in range(256):
        acc = (acc.float() + w[:, k].float().view(1, -1, 1, 1) * x[:, k:k + 1].float()).bfloat16()
    assert ratio(acc, exact, bound) > 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_eager_and_folded_within_bound(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 64, 6, 6, generator=g).to(dtype)
    w = (torch.randn(32, 64, 1, 1, generator=g) / 8).to(dtype)
    mean, var = torch.randn(32, generator=g).to(dtype), (torch.rand(32, generator=g) + 0.1).to(dtype)
    gamma_, beta = (torch.rand(32, generator=g) + 0.5).to(dtype), torch.randn(32, generator=g).to(dtype)

    def conv_bn(x, w, mean, var, gamma_, beta):
        return F.batch_norm(F.conv2d(x, w), mean, var, gamma_, beta, eps=1e-5)
    exact, bound = bound_of(conv_bn, x, w, mean, var, gamma_, beta, dtype=dtype)
    assert ratio(conv_bn(x, w, mean, var, gamma_, beta), exact, bound) <= 1
    scale = torch.rsqrt(var.float() + 1e-5) * gamma_.float()  # the fold, in fp32, rounded once
    folded = F.conv2d(x, (w.float() * scale.view(-1, 1, 1, 1)).to(dtype),
                      (beta.float() - mean.float() * scale).to(dtype))
    assert ratio(folded, exact, bound) <= 1
    if dtype == torch.float32:  # the same fold computed in bf16 is far outside an fp32 bound
        bf = torch.rsqrt(var.bfloat16() + 1e-5) * gamma_.bfloat16()
        bad = F.conv2d(x, (w.bfloat16() * bf.view(-1, 1, 1, 1)).float(),
                       (beta.bfloat16() - mean.bfloat16() * bf).float())
        assert ratio(bad, exact, bound) > 10


def test_tf32_bound_is_wider():
    fp32, tf32 = Precision(torch.float32), Precision(torch.float32, tf32=True)
    assert tf32.dot(64) > fp32.dot(64) + 2 * 2.0 ** -11 * 0.99
    assert Precision(torch.float16, tf32=True).dot(64) == Precision(torch.float16).dot(64)
    assert Precision.of(torch.float32, "cpu").operand == 0  # no TF32 on a CPU


def test_an_op_without_a_rule_is_named():
    with pytest.raises(UnboundedOp, match=r"aten\.exp.*rtol/atol"):
        bound_of(torch.exp, torch.randn(3), dtype=torch.float32)


def test_precision_refuses_integer_dtypes():
    with pytest.raises(ValueError, match="dtype must be one of"):
        Precision(torch.int32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_activation_near_underflow_within_bound(dtype):
    """silu_ overwrites its input (the bound reads it before), and its sigmoid underflows
    for x < -87: fp32 returns -0 where the exact value is -7e-38 at x = -90."""
    x = torch.tensor([-104.0, -90.0, -87.0, -3.0, -1e-36, 0.0, 1e-36, 2.5, 40.0]).to(dtype)
    exact, bound = bound_of(lambda t: F.silu(t.clone(), inplace=True), x, dtype=dtype)
    assert ratio(F.silu(x.clone(), inplace=True), exact, bound) <= 1
