// TensorFlow-"SAME" max and average pooling, forward and backward.
// The padding is never materialised: window cells outside the input are skipped.
//
// Forward: each thread owns one output column position (n, ow) of VEC channels and a band of
// BAND output rows. It walks the input rows the band's windows cover once, top to bottom:
// each row is reduced horizontally (kw loads of VEC channels), then merged into every output
// row of the band whose window holds it. So an input row is read once per band, not once per
// output row (3x3 stride 1: 6 rows for 4 outputs instead of 12; stride 2: 9 instead of 12),
// and the horizontal overlap between neighbouring threads is served by L1.
// Backward (gather): each thread owns VEC channels of one input pixel and visits the
// <= ceil(k/s)^2 windows that hold it; no atomics.
// VEC: 16 / sizeof(T) channels per 16-byte access where x, out (and grad, idx) are NHWC with
// aligned pixel rows and C % VEC == 0 (channels_last activations); 1 otherwise (NCHW, where
// consecutive threads walk W, or any strides), through strides, never copied.
// Napkin math (forward, bf16, NHWC): per output 2 B written (+4 B argmax when training) and,
// from DRAM, each input byte once (1 B per input element at k3 s2 ~ 4 B per output); the
// floor is the copy time of input + output. Eager F.pad + pool first writes and re-reads a
// padded copy of the input.
#include <math.h>

#include "common.cuh"

namespace fastconv {
namespace {

// Output rows per forward thread: input-row reuse against registers (BAND x VEC accumulators
// and argmaxes): 4 for scalar threads; 2 for 16-byte vectors, which keeps them near 100
// registers (4 would take ~150 and cut the resident warps that hide DRAM latency).
template <int VEC> constexpr int kBand = VEC > 1 ? 2 : 4;
// 16-byte channel vectors for 16- and 32-bit types; float64 (gradcheck) stays scalar.
template <typename T> constexpr int kVec = sizeof(T) <= 4 ? 16 / sizeof(T) : 1;

template <typename T, int VEC> struct alignas(VEC * sizeof(T)) Vec { T v[VEC]; };
// VEC argmaxes (32 bytes for 8 channels): 16-byte aligned at most, as the host checks idx.
template <int VEC> struct alignas(VEC * 4 < 16 ? VEC * 4 : 16) IdxVec { int32_t v[VEC]; };

// VEC values of p[0], p[cs], ..., as the accumulator type: one 16-byte load when VEC > 1
// (then cs == 1 and p is aligned, checked on the host).
template <int VEC, typename T, typename A>
__device__ __forceinline__ void load_vec(const T* p, int64_t cs, A (&r)[VEC]) {
  if constexpr (VEC == 1) {
    r[0] = to_acc<A>(p[0]);
  } else {
    const Vec<T, VEC> v = *reinterpret_cast<const Vec<T, VEC>*>(p);
#pragma unroll
    for (int i = 0; i < VEC; ++i) r[i] = to_acc<A>(v.v[i]);
  }
}

// As PyTorch's max pool: the first maximum wins, a NaN always wins (NaN propagates), and an
// all -inf window keeps its first real cell. Merging row maxima top to bottom keeps this
// row-major order.
template <typename A>
__device__ __forceinline__ void max_merge(A& acc, int32_t& arg, A v, int32_t at) {
  if (v > acc || v != v || arg < 0) {
    acc = v;
    arg = at;
  }
}

// The work item (n, channel vector, row, column) of flat index i: consecutive items take
// consecutive channel vectors (channels_last: coalesced along C) or consecutive columns (NCHW:
// along W). Forward: rows are bands of output rows, columns output columns; backward: input
// rows and columns.
struct WorkItem { int64_t n, cv, row, col; };

__device__ __forceinline__ WorkItem work_item(int64_t i, int64_t CV, int64_t rows, int64_t cols, bool channels_last) {
  WorkItem w;
  if (channels_last) {
    w.cv = i % CV; i /= CV; w.col = i % cols; i /= cols; w.row = i % rows; w.n = i / rows;
  } else {
    w.col = i % cols; i /= cols; w.row = i % rows; i /= rows; w.cv = i % CV; w.n = i / CV;
  }
  return w;
}

// The cells [lo, lo + k) of a window along one axis clipped to the input [0, size): SAME's
// padding is never read, and average pooling divides by the real cells only (>= 1 in SAME).
struct Span {
  int64_t lo, hi;
  __device__ __forceinline__ int64_t size() const { return hi - lo; }
};
__device__ __forceinline__ Span clip(int64_t lo, int64_t k, int64_t size) {
  return {lo > 0 ? lo : 0, lo + k < size ? lo + k : size};
}

// Output element (n, c, oh, ow) of a dense NCHW or NHWC tensor of C channels, OH x OW.
__device__ __forceinline__ int64_t dense_offset(bool channels_last, int64_t n, int64_t c, int64_t oh, int64_t ow,
                                                int64_t C, int64_t OH, int64_t OW) {
  return channels_last ? ((n * OH + oh) * OW + ow) * C + c : ((n * C + c) * OH + oh) * OW + ow;
}

template <typename T, int VEC>
__global__ void pool_fwd(const T* __restrict__ x, T* __restrict__ out, int32_t* __restrict__ idx, Shape4 xs,
                         Shape4 xst, int64_t OH, int64_t OW, PoolGeometry g, bool is_max, bool channels_last) {
  using A = typename Acc<T>::type;
  constexpr int BAND = kBand<VEC>;
  const int64_t N = xs.d[0], C = xs.d[1], H = xs.d[2], W = xs.d[3];
  const int64_t CV = C / VEC, bands = (OH + BAND - 1) / BAND;
  const int64_t work = N * CV * bands * OW;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < work; i += step) {
    const WorkItem it = work_item(i, CV, bands, OW, channels_last);
    const int64_t n = it.n, c = it.cv * VEC, ow = it.col, oh0 = it.row * BAND;
    const int rows = OH - oh0 < BAND ? static_cast<int>(OH - oh0) : BAND;
    const int64_t w0 = ow * g.sw - g.pad_w;
    const Span cols = clip(w0, g.kw, W);
    const int64_t h_top = oh0 * g.sh - g.pad_h;  // the band's windows cover rows h_top..h_top + span
    const Span band_rows = clip(h_top, (rows - 1) * g.sh + g.kh, H);
    const T* base = x + n * xst.d[0] + c * xst.d[1];

    A acc[BAND][VEC];
    int32_t arg[BAND][VEC];
#pragma unroll
    for (int b = 0; b < BAND; ++b)
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        acc[b][v] = is_max ? A(-INFINITY) : A(0);
        arg[b][v] = -1;
      }
    for (int64_t h = band_rows.lo; h < band_rows.hi; ++h) {
      A row[VEC];  // the row's max (or sum) over the window's columns
      int32_t row_w[VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        row[v] = is_max ? A(-INFINITY) : A(0);
        row_w[v] = -1;
      }
      for (int64_t w = cols.lo; w < cols.hi; ++w) {
        A val[VEC];
        load_vec<VEC>(base + h * xst.d[2] + w * xst.d[3], xst.d[1], val);
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          if (is_max) max_merge(row[v], row_w[v], val[v], static_cast<int32_t>(w - w0));
          else row[v] += val[v];
        }
      }
#pragma unroll
      for (int b = 0; b < BAND; ++b) {
        const int64_t hb = (oh0 + b) * g.sh - g.pad_h;  // first row of output row oh0 + b's window
        if (b >= rows || h < hb || h >= hb + g.kh) continue;
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          if (is_max) max_merge(acc[b][v], arg[b][v], row[v], static_cast<int32_t>((h - hb) * g.kw) + row_w[v]);
          else acc[b][v] += row[v];
        }
      }
    }
#pragma unroll
    for (int b = 0; b < BAND; ++b) {
      if (b >= rows) break;
      const int64_t oh = oh0 + b;
      const int64_t cells = clip(oh * g.sh - g.pad_h, g.kh, H).size() * cols.size();
      const int64_t o = dense_offset(channels_last, n, c, oh, ow, C, OH, OW);
      Vec<T, VEC> ov;
      IdxVec<VEC> iv;
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        ov.v[v] = from_acc<T>(is_max ? acc[b][v] : acc[b][v] / A(cells));
        iv.v[v] = arg[b][v];
      }
      *reinterpret_cast<Vec<T, VEC>*>(out + o) = ov;  // VEC > 1: NHWC, aligned (host)
      if (idx != nullptr) *reinterpret_cast<IdxVec<VEC>*>(idx + o) = iv;
    }
  }
}

template <typename T, int VEC>
__global__ void pool_bwd(const T* __restrict__ gout, const int32_t* __restrict__ idx, T* __restrict__ gin,
                         Shape4 is, Shape4 gst, Shape4 ist, int64_t OH, int64_t OW, PoolGeometry g, bool is_max,
                         bool channels_last) {
  using A = typename Acc<T>::type;
  const int64_t N = is.d[0], C = is.d[1], H = is.d[2], W = is.d[3];
  const int64_t CV = C / VEC, work = N * CV * H * W;
  const int cand_h = (g.kh + g.sh - 1) / g.sh, cand_w = (g.kw + g.sw - 1) / g.sw;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < work; i += step) {
    const WorkItem it = work_item(i, CV, H, W, channels_last);
    const int64_t n = it.n, c = it.cv * VEC, h = it.row, w = it.col;
    const int64_t oh_last = (h + g.pad_h) / g.sh, ow_last = (w + g.pad_w) / g.sw;
    A acc[VEC] = {};
    for (int a = 0; a < cand_h; ++a) {
      const int64_t oh = oh_last - a;
      const int64_t dh = h - (oh * g.sh - g.pad_h);  // row of (h, w) inside window (oh, .)
      if (oh < 0 || oh >= OH || dh >= g.kh) continue;
      for (int b = 0; b < cand_w; ++b) {
        const int64_t ow = ow_last - b;
        const int64_t dw = w - (ow * g.sw - g.pad_w);
        if (ow < 0 || ow >= OW || dw >= g.kw) continue;
        A gv[VEC];
        load_vec<VEC>(gout + offset(gst, n, c, oh, ow), gst.d[1], gv);
        if (is_max) {
          const int32_t* ip = idx + offset(ist, n, c, oh, ow);
          IdxVec<VEC> iv;
          if constexpr (VEC == 1) iv.v[0] = ip[0];
          else iv = *reinterpret_cast<const IdxVec<VEC>*>(ip);
#pragma unroll
          for (int v = 0; v < VEC; ++v)
            if (iv.v[v] == dh * g.kw + dw) acc[v] += gv[v];
        } else {
          const int64_t cells = clip(oh * g.sh - g.pad_h, g.kh, H).size() * clip(ow * g.sw - g.pad_w, g.kw, W).size();
#pragma unroll
          for (int v = 0; v < VEC; ++v) acc[v] += gv[v] / A(cells);
        }
      }
    }
    Vec<T, VEC> o;
#pragma unroll
    for (int v = 0; v < VEC; ++v) o.v[v] = from_acc<T>(acc[v]);
    *reinterpret_cast<Vec<T, VEC>*>(gin + dense_offset(channels_last, n, c, h, w, C, H, W)) = o;
  }
}

// 16-byte channel vectors are legal for tensor t (strides st, C channels) when its channels are
// contiguous, its base is 16-byte aligned and every pixel stride is a multiple of the vector.
bool vectorizable(const void* t, const Shape4& sizes, const Shape4& st, int64_t vec) {
  if (t == nullptr) return true;
  const auto mult = [&](int dim) { return sizes.d[dim] <= 1 || st.d[dim] % vec == 0; };
  return sizes.d[1] % vec == 0 && (st.d[1] == 1 || sizes.d[1] == 1) && reinterpret_cast<uintptr_t>(t) % 16 == 0 &&
         mult(0) && mult(2) && mult(3);
}

// Dense outputs' strides: NHWC (channels_last) or NCHW.
Shape4 dense_strides(const Shape4& s, bool channels_last) {
  return channels_last ? Shape4{{s.d[1] * s.d[2] * s.d[3], 1, s.d[3] * s.d[1], s.d[1]}}
                       : Shape4{{s.d[1] * s.d[2] * s.d[3], s.d[2] * s.d[3], s.d[3], 1}};
}

}  // namespace

cudaError_t pool_forward(const void* x, void* out, int32_t* idx, DType dtype, Shape4 x_sizes,
                         Shape4 x_strides, int64_t oh, int64_t ow, PoolGeometry g, bool is_max,
                         bool channels_last, cudaStream_t stream) {
  const Shape4 os{{x_sizes.d[0], x_sizes.d[1], oh, ow}};
  if (os.d[0] * os.d[1] * oh * ow == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int V = kVec<T>;
    const Shape4 ost = dense_strides(os, channels_last);
    const bool vec = V > 1 && channels_last && vectorizable(x, x_sizes, x_strides, V) &&
                     vectorizable(out, os, ost, V) && vectorizable(idx, os, ost, V);
    const auto threads = [&](int v, int band) { return os.d[0] * (os.d[1] / v) * ((oh + band - 1) / band) * ow; };
    const auto* xp = static_cast<const T*>(x);
    auto* op = static_cast<T*>(out);
    if constexpr (V > 1) {
      if (vec) {
        pool_fwd<T, V><<<grid_for(threads(V, kBand<V>), 256), 256, 0, stream>>>(xp, op, idx, x_sizes, x_strides,
                                                                                 oh, ow, g, is_max, channels_last);
        return cudaGetLastError();
      }
    }
    pool_fwd<T, 1><<<grid_for(threads(1, kBand<1>), 256), 256, 0, stream>>>(xp, op, idx, x_sizes, x_strides, oh, ow,
                                                                             g, is_max, channels_last);
    return cudaGetLastError();
  });
}

cudaError_t pool_backward(const void* grad_out, const int32_t* idx, void* grad_in, DType dtype,
                          Shape4 in_sizes, Shape4 g_strides, Shape4 idx_strides, int64_t oh,
                          int64_t ow, PoolGeometry g, bool is_max, bool channels_last,
                          cudaStream_t stream) {
  const int64_t numel = in_sizes.d[0] * in_sizes.d[1] * in_sizes.d[2] * in_sizes.d[3];
  if (numel == 0) return cudaSuccess;
  const Shape4 os{{in_sizes.d[0], in_sizes.d[1], oh, ow}};
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int V = kVec<T>;
    const bool vec = V > 1 && channels_last &&
                     vectorizable(grad_in, in_sizes, dense_strides(in_sizes, true), V) &&
                     vectorizable(grad_out, os, g_strides, V) && (!is_max || vectorizable(idx, os, idx_strides, V));
    const auto* gp = static_cast<const T*>(grad_out);
    auto* ip = static_cast<T*>(grad_in);
    if constexpr (V > 1) {
      if (vec) {
        pool_bwd<T, V><<<grid_for(numel / V, 256), 256, 0, stream>>>(gp, idx, ip, in_sizes, g_strides, idx_strides,
                                                                     oh, ow, g, is_max, channels_last);
        return cudaGetLastError();
      }
    }
    pool_bwd<T, 1><<<grid_for(numel, 256), 256, 0, stream>>>(gp, idx, ip, in_sizes, g_strides, idx_strides, oh, ow,
                                                             g, is_max, channels_last);
    return cudaGetLastError();
  });
}

}  // namespace fastconv
