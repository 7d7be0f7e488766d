"""Forward error bounds: how far a correct implementation of a layer, in a given precision,
may be from the exact result on the same input.

The reference model is re-run in float64 under `ErrorBound`, a dispatch mode that carries
beside every tensor an elementwise bound `e` on the error an implementation in the target
precision could have accumulated since the last boundary (where the inputs are exact: the
reference's own values at that point). Each aten op adds the error it may create and
propagates the error it inherits, to first order (Higham, *Accuracy and Stability of
Numerical Algorithms*, 2nd ed., ch. 3):

  dot products (convolution, addmm, mm): with the products and the sum in precision `ua`
  (fp32 accumulation for fp32/fp16/bf16, fp64 for fp64), Higham's Lemma 3.1 and (3.5):
      |fl(a.b) - a.b| <= gamma_K |a|.|b|,   gamma_K = K ua / (1 - K ua),
  K the reduction length (Cin/groups * kh * kw for a conv, +1 for the bias), plus `u |out|`
  for rounding the result to the storage precision `u`, plus (TF32) 2 u_tf32 |a|.|b| for
  rounding both operands to TF32; the inherited error goes through |W|: |W| e_x;
  batch norm (eval) y = s x + t, s = gamma / sqrt(var + eps), t = beta - mean s: |s| e_x
  + u (a + |out|) + 5 ua a, with a = |s| (D_x + |mean|) + |beta| bounding every intermediate of
  eager's arithmetic and of folding BN into the conv before it (its weights and bias rounded
  to `u`), D_x being the |W|.|x| + |b| of that conv (|x| if x does not come straight from one);
  sums and means over n elements (average pools, mean): gamma_n |x| summed alike;
  every rounding to the storage precision: u |out| + eta, eta the subnormal spacing (underflow);
  add, sub, mul, div: the usual first-order terms plus u |out|;
  relu, max pools, hardtanh, clamps: 1-Lipschitz and exact: the inherited error, pooled alike;
  smooth activations: L e_x + u |out| + 4 ua |out| (L their Lipschitz constant), plus an
  fp32 intermediate's underflow scaled by |x|;
  copies, views, concatenation, padding: the same op applied to e.

Every term is an upper bound for any evaluation order and any fusion of the same ops in that
precision (a fused kernel rounds less often than eager PyTorch, never more), so a correct
layer never exceeds its bound, however unlucky; second-order terms (u^2) are dropped. A
convolution is assumed to be a sum of products (direct, im2col or implicit GEMM): Winograd
and FFT algorithms transform their operands and are outside these bounds.
"""
import functools
import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

aten = torch.ops.aten

# Unit roundoff u = 2^-p (p: significand bits incl. the implicit one): half the machine epsilon.
UNIT_ROUNDOFF = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11,
                 torch.bfloat16: 2.0 ** -8}
TF32_UNIT_ROUNDOFF = 2.0 ** -11  # 10 stored significand bits, as fp16


def gamma(n, u):
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of an n-term sum or dot product."""
    if n * u >= 1:
        return math.inf
    return n * u / (1 - n * u)


class Precision:
    """The arithmetic a model runs in: storage unit roundoff `u` (outputs, folded weights),
    accumulation `ua` (sums and dot products), and `operand` (TF32: each factor of a dot product
    rounded to 10 bits first; 0 otherwise)."""

    def __init__(self, dtype, tf32=False):
        if dtype not in UNIT_ROUNDOFF:
            raise ValueError(f"dtype must be one of {list(UNIT_ROUNDOFF)}, got {dtype}")
        self.dtype = dtype
        self.u = UNIT_ROUNDOFF[dtype]
        self.ua = UNIT_ROUNDOFF[torch.float64 if dtype == torch.float64 else torch.float32]
        self.operand = TF32_UNIT_ROUNDOFF if tf32 and dtype == torch.float32 else 0.0
        # underflow (Higham (2.8): fl(x) = x (1 + d) + eta): a subnormal result errs by up to
        # the subnormal spacing; an fp32 intermediate flushed to zero (FTZ) by up to fp32's
        # smallest normal number
        self.flush = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).tiny
        self.eta = max(torch.finfo(dtype).tiny * torch.finfo(dtype).eps, self.flush)

    @classmethod
    def of(cls, dtype, device):
        """The precision PyTorch uses for `dtype` on `device`: on a CUDA device, fp32
        convolutions follow torch.backends.cudnn.allow_tf32 (True by default) and matmuls
        torch.backends.cuda.matmul.allow_tf32; if either allows TF32, every dot product's
        bound does (the larger bound)."""
        tf32 = torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32
        return cls(dtype, tf32=torch.device(device).type == "cuda" and tf32)

    def name(self):
        names = {torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
        return "tf32" if self.operand else names[self.dtype]

    def rounding(self, out):
        """The error bound of rounding `out` to the storage precision: u |out| + eta."""
        return self.u * out.abs() + self.eta

    def dot(self, k):
        """The coefficient of |a|.|b| in the bound of a K-term dot product (times 1 + u: the
        result's rounding applies to the sum's error too)."""
        return (gamma(k, self.ua) + 2 * self.operand) * (1 + self.u)


# Lipschitz constants of the smooth activations (max |f'| over the reals).
_LIPSCHITZ = {aten.sigmoid: 0.25, aten.sigmoid_: 0.25, aten.tanh: 1.0, aten.tanh_: 1.0,
              aten.silu: 1.0998, aten.silu_: 1.0998, aten.gelu: 1.1289, aten.hardsigmoid: 1 / 6,
              aten.hardsigmoid_: 1 / 6, aten.hardswish: 1.5, aten.hardswish_: 1.5, aten.elu: 1.0,
              aten.elu_: 1.0, aten.mish: 1.0891, aten.mish_: 1.0891, aten.leaky_relu: 1.0,
              aten.leaky_relu_: 1.0}
# In-place ops whose bound reads the input's value, which the op overwrites.
_IN_PLACE_READING_INPUT = {aten.mul_, aten.div_} | {p for p in _LIPSCHITZ if p.__name__.endswith("_")}
# Exact and 1-Lipschitz: the inherited error passes unchanged (pooled alike for max pools).
_EXACT_1_LIPSCHITZ = {aten.relu, aten.relu_, aten.hardtanh, aten.hardtanh_, aten.clamp,
                      aten.clamp_, aten.clamp_min, aten.clamp_min_, aten.clamp_max, aten.clamp_max_,
                      aten.neg, aten.abs}
# The same op applied to the error tensor gives the bound (copies, views, gathers).
_STRUCTURAL = {aten.view, aten._unsafe_view, aten.t, aten.transpose, aten.permute,
               aten.expand, aten.squeeze, aten.unsqueeze, aten.flatten, aten.clone, aten.contiguous,
               aten.alias, aten.slice, aten.select, aten.cat, aten.stack, aten.split,
               aten.split_with_sizes, aten.unbind, aten.chunk, aten.narrow, aten.detach,
               aten.lift_fresh, aten.index_select}
_CREATION = {aten.empty, aten.zeros, aten.ones, aten.full, aten.arange, aten.scalar_tensor,
             aten.new_empty, aten.new_zeros, aten.new_ones, aten.new_full, aten.empty_like,
             aten.zeros_like, aten.ones_like, aten.full_like, aten.randn, aten.rand,
             aten.empty_strided, aten.new_empty_strided}


class UnboundedOp(NotImplementedError):
    """The reference ran an op this module has no error bound for."""


class ErrorBound(TorchDispatchMode):
    """Runs float64 code and keeps, for each tensor it produces, an elementwise bound on the
    error of computing it in `precision` (see the module docstring). Tensors it did not see
    produced (inputs, parameters, buffers, the reference's values forced in) are exact."""

    def __init__(self, precision, bounds=True):
        super().__init__()
        self.p, self.bounds = precision, bounds  # bounds=False: only runs the ops (fixed tolerances)
        self._bound = WeakIdKeyDictionary()  # tensor -> (e, D), dropped with the tensor

    def error(self, t):
        """The bound of t, or None where t is exact."""
        entry = self._bound.get(t) if isinstance(t, torch.Tensor) else None
        return None if entry is None else entry[0]

    def dot_magnitude(self, t):
        """D of t: |W|.|x| + |b| of the conv it comes straight from (through batch norm), else |t|."""
        entry = self._bound.get(t)
        return entry[1] if entry is not None and entry[1] is not None else t.abs()

    def set(self, t, e, dot=None):
        self._bound[t] = (e, dot)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in _IN_PLACE_READING_INPUT and self.bounds:  # their rules need the operand as it was
            before = args[0].clone()
            self.set(before, self.error(args[0]))
            out = func(*args, **kwargs)
            args = (before,) + tuple(args[1:])
        else:
            out = func(*args, **kwargs)
        if not self.bounds or packet in _CREATION or not any(
                isinstance(t, torch.Tensor) and t.is_floating_point() for t in tree_flatten((args, kwargs))[0]):
            return out
        rule = _RULES.get(packet)
        if rule is not None:
            rule(self, args, kwargs, out)
        elif packet in _STRUCTURAL:
            self._structural(func, args, kwargs, out)
        elif packet in _EXACT_1_LIPSCHITZ:
            self.set(out, self.error(args[0]))
        elif packet in _LIPSCHITZ:
            # its few fp32 roundings, and an intermediate (sigmoid(x) of silu = x sigmoid(x))
            # flushed to zero, scaled by up to |x|
            self.set(out, _sum(_scaled(_LIPSCHITZ[packet], self.error(args[0])), self.p.rounding(out)
                               + 4 * self.p.ua * out.abs() + self.p.flush * args[0].abs()))
        elif packet is aten.copy_:
            e = self.error(args[1])
            self.set(args[0], None if e is None else e.expand_as(args[0]).clone())
        elif packet in (aten.fill_, aten.zero_):
            self.set(args[0], None)
        else:
            raise UnboundedOp(f"no error bound for {func} in the reference: fastconv.compare knows "
                              f"convolutions, matmuls, batch norm, pools, adds, activations and views; "
                              f"pass rtol/atol to compare with fixed tolerances instead")
        return out

    def _structural(self, func, args, kwargs, out):
        """The same op on the bounds (zeros standing in for exact tensors), if any is not exact."""
        leaves = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if all(self.error(t) is None for t in leaves):
            for o in tree_flatten(out)[0]:
                if isinstance(o, torch.Tensor):
                    self.set(o, None)
            return
        errors = tree_map(lambda t: _or_zeros(self.error(t), t) if isinstance(t, torch.Tensor)
                          and t.is_floating_point() else t, (args, kwargs))
        e = func(*errors[0], **errors[1])
        for o, eo in zip(tree_flatten(out)[0], tree_flatten(e)[0]):
            if isinstance(o, torch.Tensor):
                self.set(o, eo)


def _or_zeros(e, like):
    return torch.zeros_like(like) if e is None else e


def _sum(*terms):
    """The sum of the terms that are not None (None: an exact, zero bound)."""
    terms = [t for t in terms if t is not None]
    return None if not terms else functools.reduce(torch.add, terms)


def _scaled(c, e):
    return None if e is None else c * e


def _conv(mode, args, kwargs, out):
    x, w, b, stride, padding, dilation, transposed, output_padding, groups = args

    def conv(inp, weight, bias=None):
        return aten.convolution(inp, weight, bias, stride, padding, dilation, transposed,
                                output_padding, groups)

    k = (w.shape[0] // groups if transposed else w.shape[1]) * math.prod(w.shape[2:]) + (b is not None)
    wa, e_x, e_w, e_b = w.abs(), mode.error(x), mode.error(w), mode.error(b)
    mag = conv(x.abs(), wa, None if b is None else b.abs())
    inherited = None if e_x is None else conv(e_x, wa)
    if e_w is not None:  # a computed weight (standardized, folded): its error times |x|
        inherited = _sum(inherited, conv(x.abs(), e_w))
    if e_b is not None:
        inherited = _sum(inherited, e_b.view(-1, *([1] * (out.dim() - 2))))
    mode.set(out, _sum(inherited, mode.p.dot(k) * mag, mode.p.rounding(out)), mag)


def _addmm(mode, args, kwargs, out):
    bias, m1, m2 = args[:3]
    beta, alpha = abs(kwargs.get("beta", 1)), abs(kwargs.get("alpha", 1))
    mag = beta * bias.abs() + alpha * (m1.abs() @ m2.abs())
    e1, e2, eb = mode.error(m1), mode.error(m2), mode.error(bias)
    inherited = _sum(None if e1 is None else alpha * (e1 @ m2.abs()),
                     None if e2 is None else alpha * (m1.abs() @ e2), _scaled(beta, eb))
    mode.set(out, _sum(inherited, mode.p.dot(m1.shape[-1] + 1) * mag, mode.p.rounding(out)), mag)


def _mm(mode, args, kwargs, out):
    a, b = args[:2]
    mag = a.abs() @ b.abs()
    ea, eb = mode.error(a), mode.error(b)
    inherited = _sum(None if ea is None else ea @ b.abs(), None if eb is None else a.abs() @ eb)
    mode.set(out, _sum(inherited, mode.p.dot(a.shape[-1]) * mag, mode.p.rounding(out)), mag)


def _batch_norm(mode, args, kwargs, out):
    """Eval-mode batch norm, y = s x + t with s = weight / sqrt(var + eps), t = bias - mean s.
    Its magnitude a = |s| (D_x + |mean|) + |bias| bounds every intermediate of eager's
    ((x - mean) * rsqrt(var + eps) * weight + bias) and of the fold into the conv before it
    (weights w s and bias (b - mean) s + bias, each rounded to the storage precision): the
    bound is u (a + |y|) for those roundings plus 5 ua a for up to five roundings in fp32."""
    x, weight, bias, mean, var, training, _, eps = args[:8]
    if training:
        raise UnboundedOp("batch norm on batch statistics (a training-mode BN, or timm's weight "
                          "standardization) in the reference: no error bound; pass rtol/atol instead")
    shape = (-1,) + (1,) * (x.dim() - 2)
    s = (torch.rsqrt(var + eps) * (weight if weight is not None else 1)).view(shape)
    beta = bias.view(shape) if bias is not None else 0
    t = beta - mean.view(shape) * s
    a = s.abs() * (mode.dot_magnitude(x) + mean.view(shape).abs()) + _abs(beta)
    y, e_x = out[0], mode.error(x)
    e = _sum(None if e_x is None else s.abs() * e_x, mode.p.u * a + mode.p.rounding(y), 5 * mode.p.ua * a)
    mode.set(y, e, s.abs() * mode.dot_magnitude(x) + t.abs())


def _add(mode, args, kwargs, out):
    """a + alpha b, a - alpha b."""
    a, b = args[:2]
    alpha = abs(kwargs.get("alpha", args[2] if len(args) > 2 else 1))
    mode.set(out, _sum(mode.error(a), _scaled(alpha, mode.error(b)), mode.p.rounding(out)))


def _rsub(mode, args, kwargs, out):
    """b - alpha a."""
    a, b = args[:2]
    alpha = abs(kwargs.get("alpha", args[2] if len(args) > 2 else 1))
    mode.set(out, _sum(_scaled(alpha, mode.error(a)), mode.error(b), mode.p.rounding(out)))


def _abs(v):
    return v.abs() if isinstance(v, torch.Tensor) else abs(v)


def _mul(mode, args, kwargs, out):
    a, b = args[:2]
    ea, eb = mode.error(a), mode.error(b)
    mode.set(out, _sum(None if ea is None else _abs(b) * ea, None if eb is None else _abs(a) * eb,
                       mode.p.rounding(out)))


def _div(mode, args, kwargs, out):
    a, b = args[:2]
    ea, eb = mode.error(a), mode.error(b)
    mode.set(out, _sum(None if ea is None else ea / _abs(b), None if eb is None else _abs(a / (b * b)) * eb,
                       mode.p.rounding(out)))


def _max_pool(mode, args, kwargs, out):
    e = mode.error(args[0])
    y = out[0] if isinstance(out, tuple) else out
    mode.set(y, None if e is None else aten.max_pool2d_with_indices(e, *args[1:], **kwargs)[0])


def _reduction(n_of, op):
    """Bound rule for a sum or average over windows of n elements (n: the largest window): the
    error summed alike, gamma_n times |x| summed alike, and the output's rounding."""
    def rule(mode, args, kwargs, out):
        x, e = args[0], mode.error(args[0])
        n = n_of(x, args, out)
        mode.set(out, _sum(None if e is None else op(e, *args[1:], **kwargs),
                           mode.p.dot(n) * op(x.abs(), *args[1:], **kwargs), mode.p.rounding(out)))
    return rule


def _pool_window(x, args, out):
    k = args[1]
    return math.prod(k) if len(k) == 2 else k[0] * k[0]


def _adaptive_window(x, args, out):
    return math.prod(-(-i // o) + 1 for i, o in zip(x.shape[-2:], out.shape[-2:]))


def _reduced(x, args, out):
    dims = args[1] if len(args) > 1 and args[1] is not None else range(x.dim())
    dims = [dims] if isinstance(dims, int) else dims
    return math.prod(x.shape[d] for d in dims) if len(dims) else x.numel()


def _constant_pad(mode, args, kwargs, out):
    e = mode.error(args[0])
    mode.set(out, None if e is None else aten.constant_pad_nd(e, args[1], 0.0))


def _to_copy(mode, args, kwargs, out):
    """A copy, maybe to another dtype: a cast below float64 inside the replay rounds."""
    e = mode.error(args[0])
    rounding = None if out.dtype == torch.float64 else torch.finfo(out.dtype).eps / 2 * out.abs()
    mode.set(out, _sum(None if e is None else e.to(out.dtype), rounding))


def _no_training_batch_norm(mode, args, kwargs, out):
    x, weight, bias, mean, var, momentum, eps = args[:7]
    _batch_norm(mode, (x, weight, bias, mean, var, False, momentum, eps), kwargs, out)


_RULES = {
    aten.convolution: _conv, aten.addmm: _addmm, aten.mm: _mm, aten.bmm: _mm,
    aten.native_batch_norm: _batch_norm, aten._native_batch_norm_legit_no_training: _no_training_batch_norm,
    aten.add: _add, aten.add_: _add, aten.sub: _add, aten.sub_: _add, aten.rsub: _rsub,
    aten.mul: _mul, aten.mul_: _mul, aten.div: _div, aten.div_: _div,
    aten.max_pool2d_with_indices: _max_pool, aten.max_pool2d: _max_pool,
    aten.avg_pool2d: _reduction(_pool_window, aten.avg_pool2d),
    aten._adaptive_avg_pool2d: _reduction(_adaptive_window, aten._adaptive_avg_pool2d),
    aten.mean: _reduction(_reduced, aten.mean),
    aten.sum: _reduction(_reduced, aten.sum),
    aten.constant_pad_nd: _constant_pad, aten._to_copy: _to_copy,
}
