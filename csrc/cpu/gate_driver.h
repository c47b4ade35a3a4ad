// Shared CPU machinery for channel-gate blocks (SE, ECA): y = x * s(mean_spatial(x)).
//
// A feature map is seen as (N, C, HW) through three strides (sn, sc, shw) -- the spatial dims are
// flattened by the caller (ops.cpp) when they share one stride. Two layouts have a contiguous
// inner axis and get vectorised loops:
//   Planar (NCHW-like, shw == 1): channel c of sample n is a contiguous row of HW elements.
//   ChannelsLast (sc == 1):       spatial position p of sample n is a contiguous row of C elements.
// All loads are converted to the accumulation type A = at::opmath_type<S> (float for
// float/half/bfloat16, double for double) and every sum is accumulated in A.
//
// Schedule (forward; the backward is the same with ds = sum_hw gy*x in place of the pooled sum):
//   N >= threads (and N a multiple of them, or N >= 4x): at::parallel_for over samples; each task
//     pools its sample, runs the tiny excitation, then scales it while the sample is still in cache.
//   small N (batch 1): three phases, each parallel inside the sample: pool (planar: over channel
//     rows; channels_last: over channel blocks), excitation (parallel over its outputs), scale
//     (planar: over channel rows; channels_last: over spatial rows).
// Every reduction is done by one task in a fixed order: results do not depend on the thread count
// (except, in the forward only, SE's W2 product with many rows and a short R, which is ATen's GEMM: se_cpu.cpp).
// Outputs past a quarter of the last-level cache are written with non-temporal stores (stream_output).
// Built with -fopenmp (setup.py): without it at::parallel_for runs everything on one thread.
//
// Epilogues (the residual block tail, se_residual / eca_residual): every row function takes the row's
// epilogue, which may transform an input element before it is scaled or summed (pre) and the scaled
// value before it is stored (post):
//   NoEpilogue       y = x * s (+ d)
//   ResidualOut      forward:  y = out_act(x * s + r)                     (r: the shortcut)
//   ResidualGrad     backward: gy' = gy * out_act'(x * s + r), recomputed per element in both passes:
//                    pass 1 sums gy' * x, pass 2 writes grad_shortcut = gy' and grad_x = gy' * s + dp / HW.
// So the residual forward reads x twice (once from cache) and the shortcut once; the backward reads
// gy, x and the shortcut twice (the second time from cache on the per-sample schedule) and writes two
// outputs -- no full-size intermediate.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>
#include <cstdint>
#include <functional>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "../glue.h"
#include "../layout.h"
#include "../ops.h"


// Non-temporal stores write one Vectorized<S> chunk: 64 bytes under AVX512 (_mm512_stream_*), 32 under
// AVX2 (_mm256_stream_*), each needing that alignment (ATTN_KERNELS_STREAM_ALIGN); none in the portable build.
#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#define ATTN_KERNELS_STREAM_STORES 1
#define ATTN_KERNELS_STREAM_ALIGN 64
#elif defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#define ATTN_KERNELS_STREAM_STORES 1
#define ATTN_KERNELS_STREAM_ALIGN 32
#else
#define ATTN_KERNELS_STREAM_STORES 0
#define ATTN_KERNELS_STREAM_ALIGN 32
#endif

namespace attn_kernels {
namespace cpu {

using attn_kernels::Layout;

template <typename T>
struct View {  // (N, C, HW) through strides, in elements
  T* ptr;
  int64_t sn, sc, shw;
};

// The (N, C, HW) view of a flattened tensor (glue.h); a null view for an absent (default) one.
template <typename S>
inline View<const S> const_view(const Flat& f) {
  return {f.t.defined() ? f.t.const_data_ptr<S>() : nullptr, f.st[0], f.st[1], f.st[2]};
}

template <typename S>
inline View<S> mutable_view(const Flat& f) {
  return {f.t.defined() ? f.t.mutable_data_ptr<S>() : nullptr, f.st[0], f.st[1], f.st[2]};
}

// Load / store one chunk of Vectorized<S>::size() elements as kVecs vectors of the accumulation type.
template <typename S>
struct Io {
  using A = at::opmath_type<S>;
  using V = at::vec::Vectorized<A>;
  static constexpr int64_t kWidth = at::vec::Vectorized<S>::size();
  static constexpr int kVecs = static_cast<int>(kWidth / V::size());
  static inline void load(const S* p, V* out) {
    if constexpr (std::is_same_v<S, A>) {
      out[0] = V::loadu(p);
    } else {
      auto both = at::vec::convert_to_float<S>(at::vec::Vectorized<S>::loadu(p));
      out[0] = std::get<0>(both);
      out[1] = std::get<1>(both);
    }
  }
  static inline void store(S* p, const V* in) {
    if constexpr (std::is_same_v<S, A>) {
      in[0].store(p);
    } else {
      at::vec::convert_from_float<S>(in[0], in[1]).store(p);
    }
  }
  // Non-temporal store of one chunk (p ATTN_KERNELS_STREAM_ALIGN-aligned): no read-for-ownership of the destination line
  // and no eviction of the input that is still to be read. Plain store where the ISA has none.
  static inline void stream(S* p, const V* in) {
#if defined(CPU_CAPABILITY_AVX512)
    static_assert(kWidth * sizeof(S) == ATTN_KERNELS_STREAM_ALIGN, "one chunk per streamed store");
    if constexpr (std::is_same_v<S, float>) {
      _mm512_stream_ps(p, in[0]);
    } else if constexpr (std::is_same_v<S, double>) {
      _mm512_stream_pd(p, in[0]);
    } else {
      _mm512_stream_si512(reinterpret_cast<__m512i*>(p), at::vec::convert_from_float<S>(in[0], in[1]));
    }
#elif ATTN_KERNELS_STREAM_STORES
    static_assert(kWidth * sizeof(S) == ATTN_KERNELS_STREAM_ALIGN, "one chunk per streamed store");
    if constexpr (std::is_same_v<S, float>) {
      _mm256_stream_ps(p, in[0]);
    } else if constexpr (std::is_same_v<S, double>) {
      _mm256_stream_pd(p, in[0]);
    } else {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(p), at::vec::convert_from_float<S>(in[0], in[1]));
    }
#else
    store(p, in);
#endif
  }
  static inline void load_acc(const A* p, V* out) {  // kWidth accumulators from an A array
    for (int i = 0; i < kVecs; ++i) out[i] = V::loadu(p + i * V::size());
  }
  static inline void store_acc(A* p, const V* in) {
    for (int i = 0; i < kVecs; ++i) in[i].store(p + i * V::size());
  }
  // The last, partial chunk of a row (m < kWidth elements; the rest of the lanes read as zero and are not
  // written): the row's tail in vector code instead of a scalar loop -- a 7x7 bf16 row is one full chunk of
  // 32 and a tail of 17. m >= kWidth: the full chunk (the calls with the default m inline to it).
  static inline void load(const S* p, V* out, int64_t m) {
    if (m >= kWidth) return load(p, out);
    if constexpr (std::is_same_v<S, A>) {
      out[0] = V::loadu(p, m);
    } else {
      auto both = at::vec::convert_to_float<S>(at::vec::Vectorized<S>::loadu(p, m));
      out[0] = std::get<0>(both);
      out[1] = std::get<1>(both);
    }
  }
  static inline void store(S* p, const V* in, int64_t m) {
    if (m >= kWidth) return store(p, in);
    if constexpr (std::is_same_v<S, A>) {
      in[0].store(p, static_cast<int>(m));
    } else {
      at::vec::convert_from_float<S>(in[0], in[1]).store(p, static_cast<int>(m));
    }
  }
  static inline void load_acc(const A* p, V* out, int64_t m) {
    if (m >= kWidth) return load_acc(p, out);
    for (int i = 0; i < kVecs; ++i) {
      const int64_t k = std::min<int64_t>(std::max<int64_t>(m - i * V::size(), 0), V::size());
      out[i] = k == V::size() ? V::loadu(p + i * V::size()) : (k ? V::loadu(p + i * V::size(), k) : V(A(0)));
    }
  }
  static inline void store_acc(A* p, const V* in, int64_t m) {
    if (m >= kWidth) return store_acc(p, in);
    for (int i = 0; i < kVecs; ++i) {
      const int64_t k = std::min<int64_t>(std::max<int64_t>(m - i * V::size(), 0), V::size());
      if (k) in[i].store(p + i * V::size(), static_cast<int>(k));
    }
  }
};

// ---- contiguous-row primitives -------------------------------------------------------------
// Row reductions keep kChains independent accumulator chains: one chain would bound the loop by the
// add latency (~3-4 cycles per vector, ~30 GB/s), below what L2/L3 deliver.
constexpr int kChains = 4;

template <typename S>
inline at::opmath_type<S> row_sum(const S* p, int64_t n) {
  using IO = Io<S>;
  using A = typename IO::A;
  using V = typename IO::V;
  V acc[kChains][IO::kVecs], v[IO::kVecs];
  for (auto& chain : acc) for (auto& a : chain) a = V(A(0));
  int64_t i = 0;
  for (; i + kChains * IO::kWidth <= n; i += kChains * IO::kWidth) {
    for (int k = 0; k < kChains; ++k) {
      IO::load(p + i + k * IO::kWidth, v);
      for (int j = 0; j < IO::kVecs; ++j) acc[k][j] = acc[k][j] + v[j];
    }
  }
  for (; i < n; i += IO::kWidth) {  // the last chunk may be partial
    IO::load(p + i, v, n - i);
    for (int j = 0; j < IO::kVecs; ++j) acc[0][j] = acc[0][j] + v[j];
  }
  V total = (acc[0][0] + acc[1][0]) + (acc[2][0] + acc[3][0]);
  for (int j = 1; j < IO::kVecs; ++j) total = total + ((acc[0][j] + acc[1][j]) + (acc[2][j] + acc[3][j]));
  return at::vec::vec_reduce_all<A>([](V& a, V& b) { return a + b; }, total);
}

// ---- coefficients and epilogues of a row ----------------------------------------------------------
// A planar row has one gate s (and offset d) for all its elements; a channels_last row one per element.
template <typename S>
struct RowCoef {
  using IO = Io<S>;
  using A = typename IO::A;
  using V = typename IO::V;
  A s, d;
  V vs, vd;
  RowCoef(A s_, A d_) : s(s_), d(d_), vs(s_), vd(d_) {}
  inline A scalar(int64_t, A v) const { return v * s + d; }
  inline void chunk(int64_t, V* v, int64_t = IO::kWidth) const {
    for (int j = 0; j < IO::kVecs; ++j) v[j] = at::vec::fmadd(v[j], vs, vd);
  }
};

template <typename S>
struct ColCoef {  // s[i] and d[i]; d may be null
  using IO = Io<S>;
  using A = typename IO::A;
  using V = typename IO::V;
  const A* s;
  const A* d;
  inline A scalar(int64_t i, A v) const { return v * s[i] + (d ? d[i] : A(0)); }
  inline void chunk(int64_t i, V* v, int64_t m = IO::kWidth) const {  // m: elements in a partial chunk
    V vs[IO::kVecs], vd[IO::kVecs];
    IO::load_acc(s + i, vs, m);
    if (d) {
      IO::load_acc(d + i, vd, m);
      for (int j = 0; j < IO::kVecs; ++j) v[j] = at::vec::fmadd(v[j], vs[j], vd[j]);
    } else {
      for (int j = 0; j < IO::kVecs; ++j) v[j] = v[j] * vs[j];
    }
  }
};

// The activations (codes: ops.h Act -- relu, silu, gelu, identity, hardswish), the same formulas as ATen's CPU
// kernels, for the SE hidden layer and the residual tail's out_act; act_grad_mul returns g * act'(z)
// (relu: 0 where z <= 0, as threshold_backward). Templates on the code (kAct), for a scalar or a vector.
template <typename T>  // T: a scalar or an at::vec::Vectorized
inline T exp_of(T v) {
  if constexpr (std::is_arithmetic_v<T>) {
    return std::exp(v);
  } else {
    return v.exp();
  }
}

template <typename T>
inline T erf_of(T v) {
  if constexpr (std::is_arithmetic_v<T>) {
    return std::erf(v);
  } else {
    return v.erf();
  }
}

template <int kAct, typename T>  // T: a scalar A or at::vec::Vectorized<A>
inline T out_act(T v) {
  if constexpr (kAct == kRelu) {
    if constexpr (std::is_arithmetic_v<T>) {
      return v < T(0) ? T(0) : v;
    } else {
      return at::vec::clamp_min(v, T(0));
    }
  } else if constexpr (kAct == kSilu) {
    return v / (T(1) + exp_of(T(0) - v));
  } else if constexpr (kAct == kGelu) {
    return v * T(0.5) * (T(1) + erf_of(v * T(M_SQRT1_2)));
  } else if constexpr (kAct == kHardswish) {  // the SE hidden layer only (act_scalar): scalars
    static_assert(std::is_arithmetic_v<T>, "hardswish is not an out_act: no vector form");
    return v * std::min(std::max(v + T(3), T(0)), T(6)) / T(6);
  } else {
    return v;
  }
}

template <int kAct, typename T>
inline T act_grad_mul(T g, T z) {
  if constexpr (kAct == kRelu) {
    if constexpr (std::is_arithmetic_v<T>) {
      return z <= T(0) ? T(0) : g;
    } else {
      return T::blendv(g, T(0), z <= T(0));
    }
  } else if constexpr (kAct == kSilu) {
    const T sg = T(1) / (T(1) + exp_of(T(0) - z));
    return g * (sg * (T(1) + z * (T(1) - sg)));
  } else if constexpr (kAct == kGelu) {
    const T cdf = T(0.5) * (T(1) + erf_of(z * T(M_SQRT1_2)));
    const T pdf = exp_of(T(-0.5) * z * z) * T(0.3989422804014327);  // 1 / sqrt(2 pi)
    return g * (cdf + z * pdf);
  } else if constexpr (kAct == kHardswish) {  // 0 below -3, z / 3 + 1/2 on [-3, 3], 1 above (hardswish_backward)
    static_assert(std::is_arithmetic_v<T>, "hardswish is not an out_act: no vector form");
    return z < T(-3) ? T(0) : (z <= T(3) ? g * (z / T(3) + T(0.5)) : g);
  } else {
    return g;
  }
}

// act(v) and act'(v) for a runtime code (the SE hidden layer: R values per sample).
template <typename A>
inline A act_scalar(A v, int64_t act) {
  switch (act) {
    case kRelu: return out_act<kRelu>(v);
    case kSilu: return out_act<kSilu>(v);
    case kGelu: return out_act<kGelu>(v);
    case kHardswish: return out_act<kHardswish>(v);
    default: return v;
  }
}

template <typename A>
inline A act_grad_scalar(A v, int64_t act) {
  switch (act) {
    case kRelu: return act_grad_mul<kRelu>(A(1), v);
    case kSilu: return act_grad_mul<kSilu>(A(1), v);
    case kGelu: return act_grad_mul<kGelu>(A(1), v);
    case kHardswish: return act_grad_mul<kHardswish>(A(1), v);
    default: return A(1);
  }
}

// Pointer to element (n, c, p) of a view, or null for an absent view.
template <typename T>
inline T* view_at(const View<T>& v, int64_t n, int64_t c, int64_t p) {
  return v.ptr ? v.ptr + n * v.sn + c * v.sc + p * v.shw : nullptr;
}

// Row epilogue hooks (i: the element's index in the row; v: one chunk, Io<S>::kVecs vectors):
//   pre<kStream>(i, v[, m]) / pre_s<kStream>(i, a)  transform the input element(s) (kStream: how to store a
//                                              side output, aligned like the row's output);
//   post(i, v[, m]) / post_s(i, a)             transform the scaled value before the store.
// m < kWidth: a row's partial last chunk of m elements (memory past them is neither read nor written).
template <typename S>
struct NoPre {
  template <bool kStream>
  inline void pre(int64_t, typename Io<S>::V*, int64_t = Io<S>::kWidth) const {}
  template <bool kStream>
  inline at::opmath_type<S> pre_s(int64_t, at::opmath_type<S> a) const { return a; }
};

template <typename S>
struct NoPost {
  inline void post(int64_t, typename Io<S>::V*, int64_t = Io<S>::kWidth) const {}
  inline at::opmath_type<S> post_s(int64_t, at::opmath_type<S> a) const { return a; }
};

// Epilogue of a driver call: planar(n, c) / cl(n, p, c0) give the row epilogue of planar row (n, c) or of
// the channels_last row of position p from channel c0; for_reduction() the one of the backward's
// reduction pass; stream_ok(y) whether the epilogue's own output may be streamed alongside y.
template <typename S>
struct NoEpilogue {
  struct Row : NoPre<S>, NoPost<S> {};
  Row planar(int64_t, int64_t) const { return {}; }
  Row cl(int64_t, int64_t, int64_t) const { return {}; }
  NoEpilogue for_reduction() const { return *this; }
  bool stream_ok(const View<S>&) const { return true; }
};

// Forward of the residual tail: y = out_act(x * s + r). (Forward only: no for_reduction / stream_ok.)
template <typename S, int kAct>
struct ResidualOut {
  using IO = Io<S>;
  using A = typename IO::A;
  using V = typename IO::V;
  View<const S> r;
  struct Row : NoPre<S> {
    const S* r;
    inline void post(int64_t i, V* v, int64_t m = IO::kWidth) const {
      V rv[IO::kVecs];
      IO::load(r + i, rv, m);
      for (int j = 0; j < IO::kVecs; ++j) v[j] = out_act<kAct>(v[j] + rv[j]);
    }
    inline A post_s(int64_t i, A v) const { return out_act<kAct>(v + static_cast<A>(r[i])); }
  };
  Row planar(int64_t n, int64_t c) const { return {{}, view_at(r, n, c, 0)}; }
  Row cl(int64_t n, int64_t p, int64_t c0) const { return {{}, view_at(r, n, c0, p)}; }
};

// Backward of the residual tail: gy' = gy * out_act'(x * s + r) in place of gy, written to gr (the
// shortcut's gradient) when gr is given (the scale pass; the reduction pass runs without it). s: the
// (N, C) gates. For identity nothing is recomputed (x and r are not read): gy' = gy.
template <typename S, int kAct>
struct ResidualGrad {
  using IO = Io<S>;
  using A = typename IO::A;
  using V = typename IO::V;
  View<const S> x, r;
  View<S> gr;
  const A* s;
  int64_t c;
  template <class Coef>
  struct Row : NoPost<S> {
    const S* x;
    const S* r;
    S* gr;
    Coef k;  // x * s, as the forward computed it
    template <bool kStream>
    inline void pre(int64_t i, V* g, int64_t m = IO::kWidth) const {  // kStream only for full chunks
      if constexpr (kAct != kIdentity) {
        V z[IO::kVecs], rv[IO::kVecs];
        IO::load(x + i, z, m);
        k.chunk(i, z, m);
        IO::load(r + i, rv, m);
        for (int j = 0; j < IO::kVecs; ++j) g[j] = act_grad_mul<kAct>(g[j], z[j] + rv[j]);
      }
      if (gr) {
        if constexpr (kStream) {
          IO::stream(gr + i, g);
        } else {
          IO::store(gr + i, g, m);
        }
      }
    }
    template <bool kStream>
    inline A pre_s(int64_t i, A g) const {
      if constexpr (kAct != kIdentity) {
        g = act_grad_mul<kAct>(g, k.scalar(i, static_cast<A>(x[i])) + static_cast<A>(r[i]));
      }
      if (gr) gr[i] = static_cast<S>(g);
      return g;
    }
  };
  Row<RowCoef<S>> planar(int64_t n, int64_t ch) const {
    return {{}, view_at(x, n, ch, 0), view_at(r, n, ch, 0), view_at(gr, n, ch, 0), RowCoef<S>(s[n * c + ch], A(0))};
  }
  Row<ColCoef<S>> cl(int64_t n, int64_t p, int64_t c0) const {
    return {{}, view_at(x, n, c0, p), view_at(r, n, c0, p), view_at(gr, n, c0, p), ColCoef<S>{s + n * c + c0, nullptr}};
  }
  ResidualGrad for_reduction() const {
    ResidualGrad e = *this;
    e.gr.ptr = nullptr;
    return e;
  }
  // Streamed rows start with scalar stores up to y's stream boundary: gr's rows must be aligned alike.
  bool stream_ok(const View<S>& y) const {
    const auto gap = reinterpret_cast<uintptr_t>(gr.ptr) - reinterpret_cast<uintptr_t>(y.ptr);
    return !gr.ptr || (gr.sn == y.sn && gr.sc == y.sc && gr.shw == y.shw && gap % ATTN_KERNELS_STREAM_ALIGN == 0);
  }
};

// fn(std::integral_constant<int, kAct>) for a runtime out_act code; run(epilogue) with the forward or
// backward epilogue of that code, or NoEpilogue (the plain gate) when there is no shortcut (r null).
template <class Fn>
void with_out_act(int64_t code, Fn&& fn) {
  switch (code) {
    case kRelu: return fn(std::integral_constant<int, kRelu>{});
    case kSilu: return fn(std::integral_constant<int, kSilu>{});
    case kGelu: return fn(std::integral_constant<int, kGelu>{});
    default: return fn(std::integral_constant<int, kIdentity>{});
  }
}

template <typename S, class Fn>
void with_forward_epilogue(const View<const S>* r, int64_t out_act_code, Fn&& run) {
  if (!r) return run(NoEpilogue<S>{});
  with_out_act(out_act_code, [&](auto act) { run(ResidualOut<S, decltype(act)::value>{*r}); });
}

template <typename S, class Fn>
void with_backward_epilogue(const View<const S>& x, const View<const S>* r, const View<S>& gr,
                            const at::opmath_type<S>* s, int64_t c, int64_t out_act_code, Fn&& run) {
  if (!r) return run(NoEpilogue<S>{});
  with_out_act(out_act_code, [&](auto act) { run(ResidualGrad<S, decltype(act)::value>{x, *r, gr, s, c}); });
}

// ---- contiguous-row primitives, epilogue-aware ------------------------------------------------------
// sum_i pre(a[i]) * b[i]
template <typename S, class Ep>
inline at::opmath_type<S> row_dot(const S* a, const S* b, int64_t n, const Ep& ep) {
  using IO = Io<S>;
  using A = typename IO::A;
  using V = typename IO::V;
  V acc[kChains][IO::kVecs], va[IO::kVecs], vb[IO::kVecs];
  for (auto& chain : acc) for (auto& x : chain) x = V(A(0));
  int64_t i = 0;
  for (; i + kChains * IO::kWidth <= n; i += kChains * IO::kWidth) {
    for (int k = 0; k < kChains; ++k) {
      IO::load(a + i + k * IO::kWidth, va);
      ep.template pre<false>(i + k * IO::kWidth, va);
      IO::load(b + i + k * IO::kWidth, vb);
      for (int j = 0; j < IO::kVecs; ++j) acc[k][j] = at::vec::fmadd(va[j], vb[j], acc[k][j]);
    }
  }
  for (; i < n; i += IO::kWidth) {  // the last chunk may be partial (zero lanes: pre keeps them finite)
    IO::load(a + i, va, n - i);
    ep.template pre<false>(i, va, n - i);
    IO::load(b + i, vb, n - i);
    for (int j = 0; j < IO::kVecs; ++j) acc[0][j] = at::vec::fmadd(va[j], vb[j], acc[0][j]);
  }
  V total = (acc[0][0] + acc[1][0]) + (acc[2][0] + acc[3][0]);
  for (int j = 1; j < IO::kVecs; ++j) total = total + ((acc[0][j] + acc[1][j]) + (acc[2][j] + acc[3][j]));
  return at::vec::vec_reduce_all<A>([](V& x, V& y) { return x + y; }, total);
}

// Elements of y before its first stream boundary: written scalar so the streamed chunks are aligned.
template <typename S>
inline int64_t stream_head(const S* y, int64_t n) {
  constexpr uintptr_t kAlign = ATTN_KERNELS_STREAM_ALIGN;
  const auto misalign = reinterpret_cast<uintptr_t>(y) & (kAlign - 1);
  return std::min<int64_t>(n, misalign ? static_cast<int64_t>((kAlign - misalign) / sizeof(S)) : 0);
}

// y[i] = post(coef(pre(x[i]))), coef(v) = v * s + d (RowCoef or ColCoef): the scale step of every schedule.
// kStream: non-temporal stores for y (and the epilogue's side output).
template <typename S, bool kStream, class Coef, class Ep>
inline void row_scale(const S* x, S* y, int64_t n, const Coef& coef, const Ep& ep) {
  using IO = Io<S>;
  using A = at::opmath_type<S>;
  using V = typename IO::V;
  auto one = [&](int64_t i) {
    y[i] = static_cast<S>(ep.post_s(i, coef.scalar(i, ep.template pre_s<kStream>(i, static_cast<A>(x[i])))));
  };
  V v[IO::kVecs];
  int64_t i = 0;
  if constexpr (kStream) {
    for (const int64_t head = stream_head(y, n); i < head; ++i) one(i);
  }
  for (; i + IO::kWidth <= n; i += IO::kWidth) {
    IO::load(x + i, v);
    ep.template pre<kStream>(i, v);
    coef.chunk(i, v);
    ep.post(i, v);
    if constexpr (kStream) {
      IO::stream(y + i, v);
    } else {
      IO::store(y + i, v);
    }
  }
  if (i < n) {  // the partial last chunk, plain (not streamed) stores
    const int64_t m = n - i;
    IO::load(x + i, v, m);
    ep.template pre<false>(i, v, m);
    coef.chunk(i, v, m);
    ep.post(i, v, m);
    IO::store(y + i, v, m);
  }
}

// acc[c] += row[c] (c in [0, n))
template <typename S>
inline void col_accum(at::opmath_type<S>* acc, const S* row, int64_t n) {
  using IO = Io<S>;
  using V = typename IO::V;
  V v[IO::kVecs], a[IO::kVecs];
  int64_t i = 0;
  for (; i < n; i += IO::kWidth) {  // the last chunk may be partial
    IO::load(row + i, v, n - i);
    IO::load_acc(acc + i, a, n - i);
    for (int j = 0; j < IO::kVecs; ++j) a[j] = a[j] + v[j];
    IO::store_acc(acc + i, a, n - i);
  }
}

// acc[c] += pre(a[c]) * b[c]
template <typename S, class Ep>
inline void col_accum_prod(at::opmath_type<S>* acc, const S* a, const S* b, int64_t n, const Ep& ep) {
  using IO = Io<S>;
  using V = typename IO::V;
  V va[IO::kVecs], vb[IO::kVecs], t[IO::kVecs];
  int64_t i = 0;
  for (; i < n; i += IO::kWidth) {  // the last chunk may be partial
    IO::load(a + i, va, n - i);
    ep.template pre<false>(i, va, n - i);
    IO::load(b + i, vb, n - i);
    IO::load_acc(acc + i, t, n - i);
    for (int j = 0; j < IO::kVecs; ++j) t[j] = at::vec::fmadd(va[j], vb[j], t[j]);
    IO::store_acc(acc + i, t, n - i);
  }
}

// Streamed stores are weakly ordered: fence them before the task ends (the join then publishes them).
inline void stream_fence() {
#if ATTN_KERNELS_STREAM_STORES
  _mm_sfence();
#endif
}

// Number of CPUs in a sysfs CPU list such as "0-3,8-11" (0 when it does not parse).
inline int64_t cpu_list_count(const std::string& list) {
  int64_t count = 0;
  std::stringstream ss(list);
  std::string part;
  while (std::getline(ss, part, ',')) {
    if (part.empty()) return 0;
    const auto dash = part.find('-');
    const int64_t lo = std::atoll(part.c_str());
    const int64_t hi = dash == std::string::npos ? lo : std::atoll(part.c_str() + dash + 1);
    if (hi < lo) return 0;
    count += hi - lo + 1;
  }
  return count;
}

// Size of CPU 0's data/unified cache of `level` (2: L2, 3: L3), from Linux sysfs; `fallback` elsewhere.
// per_cpu: divided by the CPUs that share it (shared_cpu_list: an L2 shared by a module of cores, or by a
// core's two hyperthreads, serves that many tasks at once). sysfs, not sysconf: in VMs glibc's
// _SC_LEVEL3_CACHE_SIZE reports the whole host's L3 (seen here: 384 MB on a 32 MB-L3 guest).
inline int64_t cache_bytes(int level, int64_t fallback, bool per_cpu = false) {
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    std::ifstream level_file(dir + "level"), type_file(dir + "type"), size_file(dir + "size");
    int lv = 0;
    std::string type, size;
    if (!(level_file >> lv) || !(type_file >> type) || !(size_file >> size)) continue;
    if (lv != level || type == "Instruction" || size.empty()) continue;
    int64_t bytes = std::atoll(size.c_str());
    const char unit = size.back();
    if (unit == 'K') bytes <<= 10;
    if (unit == 'M') bytes <<= 20;
    if (bytes <= 0) continue;
    if (per_cpu) {
      std::ifstream shared_file(dir + "shared_cpu_list");
      std::string shared;
      const int64_t sharers = (shared_file >> shared) ? cpu_list_count(shared) : 0;
      if (sharers > 1) bytes /= sharers;
    }
    return bytes;
  }
  return fallback;
}

// Non-temporal stores for outputs: -1 auto (see stream_output), 0 never, 1 always. Initialised from
// ATTN_KERNELS_CPU_STREAM; attn_kernels._C.set_cpu_stream() changes it (tests, benchmarks).
inline std::atomic<int>& stream_mode() {
  static std::atomic<int> mode{[] {
    const char* env = std::getenv("ATTN_KERNELS_CPU_STREAM");
    return env && *env ? std::atoi(env) : -1;
  }()};
  return mode;
}

// Whether an output of `bytes` is written with non-temporal stores. Auto mode: when input and output
// together exceed half the last-level cache (output > LLC / 4), i.e. when y would not survive in cache for
// its consumer anyway. A plain store first reads every destination line (read-for-ownership: y costs
// twice its bytes) and evicts the input rows that are still to be scaled; a streamed one does neither.
inline bool stream_output(int64_t bytes) {
  static const int64_t llc = cache_bytes(3, int64_t(32) << 20);
  const int mode = stream_mode().load(std::memory_order_relaxed);
  if (!ATTN_KERNELS_STREAM_STORES || mode == 0) return false;
  return mode > 0 || bytes > llc / 4;
}

inline int64_t grain_for(int64_t work_per_item) {  // ~32K elements of work per task
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_item));
}

// Schedule of the last gate_forward / gate_backward: 1 one sample per task, 0 phased (-1 none yet). For
// tests (attn_kernels._C.last_cpu_schedule()); relaxed: a test reads it after its own call returns.
inline std::atomic<int>& last_schedule() {
  static std::atomic<int> schedule{-1};
  return schedule;
}

// per_sample_ok = false when re-reading the excitation's weights for every sample costs more than the second
// read of x it saves (se_cpu.cpp's per_sample_ok; SE at 2048x7x7): then the phased schedule runs one batched
// excitation that reads the weights once instead of once per sample.
inline bool per_sample_schedule(int64_t n, bool per_sample_ok) {
  const int64_t t = at::get_num_threads();
  if (!per_sample_ok && n > 1) return false;
  return t <= 1 || (n >= t && (n % t == 0 || n >= 4 * t));
}

// The drivers' choice: per_sample_schedule, recorded for last_schedule().
inline bool run_per_sample(int64_t n, bool per_sample_ok) {
  const bool per_sample = per_sample_schedule(n, per_sample_ok);
  last_schedule().store(per_sample ? 1 : 0, std::memory_order_relaxed);
  return per_sample;
}

// v[i] = sigmoid(v[i]) for i in [0, n): vectorised for float (exp_u20), scalar otherwise.
template <typename A>
inline void sigmoid_inplace(A* v, int64_t n) {
  int64_t i = 0;
  if constexpr (std::is_same_v<A, float>) {
    using V = at::vec::Vectorized<float>;
    const V one(1.f);
    for (; i + V::size() <= n; i += V::size()) {
      const V z = V::loadu(v + i);
      (one / (one + z.neg().exp_u20())).store(v + i);
    }
  }
  for (; i < n; ++i) v[i] = A(1) / (A(1) + std::exp(-v[i]));
}

// Channel block width for channels_last column reductions when splitting a sample across threads.
inline int64_t cl_block(int64_t c) {
  const int64_t t = std::max<int64_t>(1, at::get_num_threads());
  int64_t b = (c + t - 1) / t;
  b = ((b + 63) / 64) * 64;  // whole cache lines of fp32 accumulators
  return std::max<int64_t>(64, b);
}

// ---- pooling and scaling of channel range [c0, c1) of sample n ---------------------------------
// out[c] = sum_hw a[n,c,hw] (* b[n,c,hw] when b is given; a through the epilogue's pre), for c in [c0, c1).
// out is indexed from c0.
template <typename S, class Ep = NoEpilogue<S>>
void reduce_channels(const View<const S>& a, const View<const S>* b, Layout layout, int64_t n, int64_t c0,
                     int64_t c1, int64_t hw, at::opmath_type<S>* out, const Ep& ep = Ep{}) {
  using A = at::opmath_type<S>;
  const S* pa = a.ptr + n * a.sn;
  const S* pb = b ? b->ptr + n * b->sn : nullptr;
  if (layout == Layout::Planar) {
    for (int64_t c = c0; c < c1; ++c) {
      if (!pb) {
        out[c - c0] = hw == 1 ? static_cast<A>(pa[c * a.sc]) : row_sum<S>(pa + c * a.sc, hw);
      } else if (hw == 1) {
        out[c - c0] = ep.planar(n, c).template pre_s<false>(0, static_cast<A>(pa[c * a.sc])) *
                      static_cast<A>(pb[c * b->sc]);
      } else {
        out[c - c0] = row_dot<S>(pa + c * a.sc, pb + c * b->sc, hw, ep.planar(n, c));
      }
    }
  } else {
    std::fill(out, out + (c1 - c0), A(0));
    for (int64_t p = 0; p < hw; ++p) {
      if (pb) {
        col_accum_prod<S>(out, pa + p * a.shw + c0, pb + p * b->shw + c0, c1 - c0, ep.cl(n, p, c0));
      } else {
        col_accum<S>(out, pa + p * a.shw + c0, c1 - c0);
      }
    }
  }
}

// Planar: y[n,c,:] = x[n,c,:] * s[c] + d[c] through the epilogue, c in [c0, c1). s, d indexed by absolute
// channel.
template <typename S, class Ep>
void scale_channels(const View<const S>& x, const View<S>& y, int64_t n, int64_t c0, int64_t c1, int64_t hw,
                    const at::opmath_type<S>* s, const at::opmath_type<S>* d, bool stream, const Ep& ep) {
  using A = at::opmath_type<S>;
  const S* px = x.ptr + n * x.sn;
  S* py = y.ptr + n * y.sn;
  for (int64_t c = c0; c < c1; ++c) {
    const RowCoef<S> coef(s[c], d ? d[c] : A(0));
    if (stream) {
      row_scale<S, true>(px + c * x.sc, py + c * y.sc, hw, coef, ep.planar(n, c));
    } else {
      row_scale<S, false>(px + c * x.sc, py + c * y.sc, hw, coef, ep.planar(n, c));
    }
  }
  if (stream) stream_fence();
}

// Channels_last: rows p in [p0, p1) of sample n: y[n,:,p] = x[n,:,p] * s + d through the epilogue.
template <typename S, class Ep>
void scale_rows(const View<const S>& x, const View<S>& y, int64_t n, int64_t p0, int64_t p1, int64_t c,
                const at::opmath_type<S>* s, const at::opmath_type<S>* d, bool stream, const Ep& ep) {
  const S* px = x.ptr + n * x.sn;
  S* py = y.ptr + n * y.sn;
  const ColCoef<S> coef{s, d};
  for (int64_t p = p0; p < p1; ++p) {
    if (stream) {
      row_scale<S, true>(px + p * x.shw, py + p * y.shw, c, coef, ep.cl(n, p, 0));
    } else {
      row_scale<S, false>(px + p * x.shw, py + p * y.shw, c, coef, ep.cl(n, p, 0));
    }
  }
  if (stream) stream_fence();
}

// Sum over channels (or channel products) of every sample, into red (N, C), phase-parallel.
template <typename S, class Ep = NoEpilogue<S>>
void reduce_all(const View<const S>& a, const View<const S>* b, Layout layout, int64_t nb, int64_t c,
                int64_t hw, at::opmath_type<S>* red, const Ep& ep = Ep{}) {
  if (layout == Layout::Planar) {
    at::parallel_for(0, nb * c, grain_for(hw), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1;) {
        const int64_t n = i / c, c0 = i % c, c1 = std::min(c, c0 + (i1 - i));
        reduce_channels<S>(a, b, layout, n, c0, c1, hw, red + n * c + c0, ep);
        i += c1 - c0;
      }
    });
  } else {
    const int64_t blk = cl_block(c), nblk = (c + blk - 1) / blk;
    at::parallel_for(0, nb * nblk, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t n = i / nblk, c0 = (i % nblk) * blk, c1 = std::min(c, c0 + blk);
        reduce_channels<S>(a, b, layout, n, c0, c1, hw, red + n * c + c0, ep);
      }
    });
  }
}

// The scale step of sample n (all of it) or, phase-parallel, of every sample.
template <typename S, class Ep>
void scale_sample(const View<const S>& x, const View<S>& y, Layout layout, int64_t n, int64_t c, int64_t hw,
                  const at::opmath_type<S>* s, const at::opmath_type<S>* d, bool stream, const Ep& ep) {
  if (layout == Layout::Planar) {
    scale_channels<S>(x, y, n, 0, c, hw, s + n * c, d ? d + n * c : nullptr, stream, ep);
  } else {
    scale_rows<S>(x, y, n, 0, hw, c, s + n * c, d ? d + n * c : nullptr, stream, ep);
  }
}

template <typename S, class Ep>
void scale_all(const View<const S>& x, const View<S>& y, Layout layout, int64_t nb, int64_t c, int64_t hw,
               const at::opmath_type<S>* s, const at::opmath_type<S>* d, bool stream, const Ep& ep) {
  if (layout == Layout::Planar) {
    at::parallel_for(0, nb * c, grain_for(hw), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1;) {
        const int64_t n = i / c, c0 = i % c, c1 = std::min(c, c0 + (i1 - i));
        scale_channels<S>(x, y, n, c0, c1, hw, s + n * c, d ? d + n * c : nullptr, stream, ep);
        i += c1 - c0;
      }
    });
  } else {
    at::parallel_for(0, nb * hw, grain_for(c), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1;) {
        const int64_t n = i / hw, p0 = i % hw, p1 = std::min(hw, p0 + (i1 - i));
        scale_rows<S>(x, y, n, p0, p1, c, s + n * c, d ? d + n * c : nullptr, stream, ep);
        i += p1 - p0;
      }
    });
  }
}

// excite(n0, n1): pooled rows [n0, n1) -> gate rows [n0, n1). Runs inside a parallel task on the
// per-sample schedule (where nested at::parallel_for runs inline) or alone on the phased one.
using RangeFn = std::function<void(int64_t, int64_t)>;

// Forward: pooled[n,c] = mean_hw x; excite fills s; y = x * s (ResidualOut: out_act(x * s + r)).
template <typename S, class Ep = NoEpilogue<S>>
void gate_forward(const View<const S>& x, const View<S>& y, Layout layout, int64_t nb, int64_t c, int64_t hw,
                  at::opmath_type<S>* pooled, const at::opmath_type<S>* s, const RangeFn& excite,
                  bool per_sample_ok = true, const Ep& ep = Ep{}) {
  using A = at::opmath_type<S>;
  const A inv = A(1) / static_cast<A>(hw);
  const bool stream = stream_output(nb * c * hw * static_cast<int64_t>(sizeof(S)));
  if (run_per_sample(nb, per_sample_ok)) {
    at::parallel_for(0, nb, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        A* p = pooled + n * c;
        reduce_channels<S>(x, nullptr, layout, n, 0, c, hw, p);
        for (int64_t i = 0; i < c; ++i) p[i] *= inv;
        excite(n, n + 1);
        scale_sample<S>(x, y, layout, n, c, hw, s, nullptr, stream, ep);
      }
    });
  } else {
    reduce_all<S>(x, nullptr, layout, nb, c, hw, pooled);
    for (int64_t i = 0; i < nb * c; ++i) pooled[i] *= inv;
    excite(0, nb);
    scale_all<S>(x, y, layout, nb, c, hw, s, nullptr, stream, ep);
  }
}

// Backward: ds[n,c] = sum_hw gy*x; excite_bwd(n0, n1) turns ds rows into dp rows (the gradient
// w.r.t. the pooled mean); gx = gy * s + dp / HW. ResidualGrad: gy' = gy * out_act'(x * s + r) in place of gy
// in both passes, and grad_shortcut = gy' written by the scale pass.
template <typename S, class Ep = NoEpilogue<S>>
void gate_backward(const View<const S>& gy, const View<const S>& x, const View<S>& gx, Layout layout,
                   int64_t nb, int64_t c, int64_t hw, const at::opmath_type<S>* s, at::opmath_type<S>* ds,
                   at::opmath_type<S>* dp, const RangeFn& excite_bwd, bool per_sample_ok = true,
                   const Ep& ep = Ep{}) {
  using A = at::opmath_type<S>;
  const A inv = A(1) / static_cast<A>(hw);
  const bool stream = stream_output(nb * c * hw * static_cast<int64_t>(sizeof(S))) && ep.stream_ok(gx);
  const auto red = ep.for_reduction();
  if (run_per_sample(nb, per_sample_ok)) {
    at::parallel_for(0, nb, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        reduce_channels<S>(gy, &x, layout, n, 0, c, hw, ds + n * c, red);
        excite_bwd(n, n + 1);
        A* d = dp + n * c;
        for (int64_t i = 0; i < c; ++i) d[i] *= inv;
        scale_sample<S>(gy, gx, layout, n, c, hw, s, dp, stream, ep);
      }
    });
  } else {
    reduce_all<S>(gy, &x, layout, nb, c, hw, ds, red);
    excite_bwd(0, nb);
    for (int64_t i = 0; i < nb * c; ++i) dp[i] *= inv;
    scale_all<S>(gy, gx, layout, nb, c, hw, s, dp, stream, ep);
  }
}

}  // namespace cpu
}  // namespace attn_kernels
