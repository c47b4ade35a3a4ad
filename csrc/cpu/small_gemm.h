// The excitation's matrix products on the CPU: a few rows (samples) against an FC weight matrix.
//
//   linear_rows:  out (nn, cols) = in (nn, k) W^T + b,  W (cols, k) row-major (nn.Linear's layout)
//                 -- the forward FCs: h = W1 pooled + b1 (k = C), z = W2 h + b2 (k = R)
//   matmul_rows:  out (nn, cols) = g (nn, rows) W,      W (rows, cols) row-major
//                 -- the backward's transposed products: dh = dz W2 (= W2^T dz per sample), dp = da W1
//   outer_rows:   out (rows, cols) = a^T b,             a (nb, rows), b (nb, cols)
//                 -- the weight gradients: grad_W2 = dz^T h, grad_W1 = da^T pooled (batch sums)
//
// Why not ATen's GEMM: for a batch of 1..~64 rows MKL packs the whole weight matrix on every call (a copy as
// large as the weights, `sgemm_scopy` in a profile), which at SE-ResNet-50's 2048x128 FCs costs more than the
// products. These register tiles of 4 rows x 4 weight rows (linear_rows; 2 below AVX512) or 4 rows x 4 vectors
// of columns (matmul_rows) read every weight element once per 4 rows, straight from the caller's matrix.
// Measured on the 2-core AMD EPYC VM (AVX512, fp32, torch.utils.benchmark medians, 16 rows, C = 2048,
// R = 128): W1 product 40 us vs MKL addmm 98-117 us, W2 57-65 vs 89-135 us, backward dz.W2 25-32 vs
// ~102 us, da.W1 35-55 vs ~110 us. MKL keeps its edge for linear_rows with a short k and many rows
// (measured: k = R = 16..64 with N >= 16..64); se_cpu.cpp's use_gemm still calls it, forward only, for W2 h
// when N > max(8, R/2) and N*C*R >= 2^20.
//
// Determinism: every output is summed by one task in a fixed order -- linear_rows: a vector accumulator over
// k (V::size() interleaved partial sums, the k % V::size() tail as a zero-filled partial vector), then its
// lanes; matmul_rows / outer_rows: sequentially over rows / samples -- whatever the thread count, the tiling
// (a tail tile computes each of its outputs exactly as a full tile would) and the buffers' alignment
// (unaligned loads): the backward's results are bitwise reproducible.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

#include "gate_driver.h"  // grain_for

namespace attn_kernels {
namespace cpu {
namespace small_gemm {

constexpr int kRows = 4;  // rows (samples) per tile
constexpr int kCols = 4;  // column vectors per matmul_rows tile
// Weight rows per linear_rows tile: its 4 x kLinearCols accumulators + kLinearCols weight vectors + 1 input vector
// fit AVX512's 32 vector registers at 4; AVX2 has 16 (measured, AVX2 build on the EPYC VM, 16 rows, C 2048,
// R 128: W2 product 69 us at 2 vs 86 us at 4; W1 60 vs 61).
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kLinearCols = 4;
#else
constexpr int kLinearCols = 2;
#endif

// out[i * ldo + j] = in[i, :] . w[j, :] + b[j] for i < NB, j < JB (in, w with row stride k).
template <typename A, int NB, int JB>
inline void linear_tile(const A* in, const A* w, const A* b, int64_t k, A* out, int64_t ldo) {
  using V = at::vec::Vectorized<A>;
  constexpr int64_t W = V::size();
  V acc[NB][JB];
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < JB; ++j) acc[i][j] = V(A(0));
  int64_t kk = 0;
  for (; kk + W <= k; kk += W) {
    V wv[JB];
    for (int j = 0; j < JB; ++j) wv[j] = V::loadu(w + j * k + kk);
    for (int i = 0; i < NB; ++i) {
      const V xv = V::loadu(in + i * k + kk);
      for (int j = 0; j < JB; ++j) acc[i][j] = at::vec::fmadd(xv, wv[j], acc[i][j]);
    }
  }
  if (kk < k) {  // partial vectors, zero-filled past the count: 0 * 0 adds nothing
    const int64_t m = k - kk;
    V wv[JB];
    for (int j = 0; j < JB; ++j) wv[j] = V::loadu(w + j * k + kk, m);
    for (int i = 0; i < NB; ++i) {
      const V xv = V::loadu(in + i * k + kk, m);
      for (int j = 0; j < JB; ++j) acc[i][j] = at::vec::fmadd(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < JB; ++j)
      out[i * ldo + j] = at::vec::vec_reduce_all<A>([](const V& x, const V& y) { return x + y; }, acc[i][j]) +
                         (b ? b[j] : A(0));
}

// out[i * cols + c] = sum_{r < k} g[i * g_row + r * g_k] * w[r * cols + c] for i < NB and the JB vectors of
// columns at out / w, the last of which holds `last` (1 .. V::size()) columns.
template <typename A, int NB, int JB>
inline void matmul_tile(const A* g, int64_t g_row, int64_t g_k, const A* w, int64_t k, int64_t cols, int64_t last,
                        A* out) {
  using V = at::vec::Vectorized<A>;
  constexpr int64_t W = V::size();
  const bool full = last == W;
  V acc[NB][JB];
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < JB; ++j) acc[i][j] = V(A(0));
  for (int64_t r = 0; r < k; ++r) {
    const A* wr = w + r * cols;
    V wv[JB];
    for (int j = 0; j + 1 < JB; ++j) wv[j] = V::loadu(wr + j * W);
    wv[JB - 1] = full ? V::loadu(wr + (JB - 1) * W) : V::loadu(wr + (JB - 1) * W, last);
    for (int i = 0; i < NB; ++i) {
      const V gv(g[i * g_row + r * g_k]);
      for (int j = 0; j < JB; ++j) acc[i][j] = at::vec::fmadd(gv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < NB; ++i) {
    for (int j = 0; j + 1 < JB; ++j) acc[i][j].store(out + i * cols + j * W);
    if (full) {
      acc[i][JB - 1].store(out + i * cols + (JB - 1) * W);
    } else {
      acc[i][JB - 1].store(out + i * cols + (JB - 1) * W, static_cast<int>(last));
    }
  }
}

// A tail tile's shape (nb, jb <= 4) to its instantiation: F<NB, JB>::run(args...).
template <template <int, int> class F, int NB, typename... Args>
inline void with_jb(int jb, Args&&... args) {
  switch (jb) {
    case 1: F<NB, 1>::run(args...); break;
    case 2: F<NB, 2>::run(args...); break;
    case 3: F<NB, 3>::run(args...); break;
    default: F<NB, 4>::run(args...); break;
  }
}

template <template <int, int> class F, typename... Args>
inline void with_tile(int nb, int jb, Args&&... args) {
  static_assert(kRows == 4 && kCols <= 4 && kLinearCols <= 4, "with_tile dispatches tiles of up to 4 x 4");
  switch (nb) {
    case 1: with_jb<F, 1>(jb, args...); break;
    case 2: with_jb<F, 2>(jb, args...); break;
    case 3: with_jb<F, 3>(jb, args...); break;
    default: with_jb<F, 4>(jb, args...); break;
  }
}

template <typename A>
struct Linear {
  template <int NB, int JB>
  struct Tile {
    static void run(const A* in, const A* w, const A* b, int64_t k, A* out, int64_t ldo) {
      linear_tile<A, NB, JB>(in, w, b, k, out, ldo);
    }
  };
};

template <typename A>
struct Matmul {
  template <int NB, int JB>
  struct Tile {
    static void run(const A* g, int64_t g_row, int64_t g_k, const A* w, int64_t k, int64_t cols, int64_t last,
                    A* out) {
      matmul_tile<A, NB, JB>(g, g_row, g_k, w, k, cols, last, out);
    }
  };
};

}  // namespace small_gemm

// out (nn, cols) = in (nn, k) w^T + b (b may be null); w (cols, k) row-major. Parallel over tiles, the row
// tiles of one weight tile consecutive (its rows stay in L1 across them).
template <typename A>
void linear_rows(const A* in, int64_t nn, int64_t k, const A* w, const A* b, int64_t cols, A* out) {
  using namespace small_gemm;
  const int64_t row_tiles = (nn + kRows - 1) / kRows, col_tiles = (cols + kLinearCols - 1) / kLinearCols;
  at::parallel_for(0, row_tiles * col_tiles, grain_for(kRows * kLinearCols * k), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = (t % row_tiles) * kRows, j0 = (t / row_tiles) * kLinearCols;
      const int nb = static_cast<int>(std::min<int64_t>(kRows, nn - n0));
      const int jb = static_cast<int>(std::min<int64_t>(kLinearCols, cols - j0));
      with_tile<Linear<A>::template Tile>(nb, jb, in + n0 * k, w + j0 * k, b ? b + j0 : nullptr, k,
                                          out + n0 * cols + j0, cols);
    }
  });
}

// out (nn, cols) = G w with G[i, r] = g[i * g_row + r * g_k] (nn, k); w (k, cols) row-major. Parallel over tiles
// of 4 rows x 4 column vectors.
template <typename A>
void matmul_strided(const A* g, int64_t g_row, int64_t g_k, int64_t nn, int64_t k, const A* w, int64_t cols,
                    A* out) {
  using namespace small_gemm;
  constexpr int64_t W = at::vec::Vectorized<A>::size();
  const int64_t row_tiles = (nn + kRows - 1) / kRows, span = kCols * W, col_tiles = (cols + span - 1) / span;
  at::parallel_for(0, row_tiles * col_tiles, grain_for(kRows * span * k), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = (t % row_tiles) * kRows, c0 = (t / row_tiles) * span;
      const int nb = static_cast<int>(std::min<int64_t>(kRows, nn - n0));
      const int64_t width = std::min<int64_t>(span, cols - c0);
      const int jb = static_cast<int>((width + W - 1) / W);
      with_tile<Matmul<A>::template Tile>(nb, jb, g + n0 * g_row, g_row, g_k, w + c0, k, cols, width - (jb - 1) * W,
                                          out + n0 * cols + c0);
    }
  });
}

// out (nn, cols) = g (nn, rows) w; w (rows, cols) row-major.
template <typename A>
void matmul_rows(const A* g, int64_t nn, int64_t rows, const A* w, int64_t cols, A* out) {
  matmul_strided<A>(g, rows, 1, nn, rows, w, cols, out);
}

// out (rows, cols) = a^T b = sum_n a[n, :]^T b[n, :], a (nb, rows), b (nb, cols) row-major: a batch sum of
// outer products (the FC weight gradients), each output summed over n in order.
template <typename A>
void outer_rows(const A* a, int64_t nb, int64_t rows, const A* b, int64_t cols, A* out) {
  matmul_strided<A>(a, 1, rows, rows, nb, b, cols, out);
}

}  // namespace cpu
}  // namespace attn_kernels
