// Efficient channel attention (ECA / CECA) on the CPU: forward and backward (gate_driver.h).
//
//   pooled = mean_hw(x);  z[c] = sum_j t[j] * pooled[c + j - k/2];  s = sigmoid(z);  y = x * s
// with zero padding (ECA) or indices modulo C (CECA, circular; defined for any k, also k > C).
// Backward: dz = ds * s (1 - s) with ds = sum_hw gy * x;
//   dp[c] = sum_j t[j] * dz[c - j + k/2]  (the transposed conv, gathered: each dp by one task)
//   grad_t[j] = sum_n sum_c dz[n, c] * pooled[n, c + j - k/2]  (per-sample partials in a fixed order,
//               samples summed in order)
//   grad_x = gy * s + dp / HW
// eca_residual (the ECA-ResNet block tail): y = out_act(x * s + shortcut); its backward runs the above with
// gy' = gy * out_act'(x * s + shortcut) in place of gy and returns grad_shortcut = gy' (gate_driver.h epilogues).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "../glue.h"
#include "../ops.h"
#include "gate_driver.h"

namespace attn_kernels {
namespace {

using cpu::const_view;
using cpu::grain_for;
using cpu::mutable_view;
using cpu::View;

constexpr int64_t kStreamMinHW = 256;  // measured (2 threads): at 14x14 both paths tie, at 7x7 the two-pass path is ~1.5x faster

// pooled index for output channel c and tap j, or -1 for a zero-padded position.
inline int64_t tap_index(int64_t c, int64_t j, int64_t half, int64_t channels, bool circular) {
  int64_t i = c + j - half;
  if (circular) return ((i % channels) + channels) % channels;
  return (i >= 0 && i < channels) ? i : -1;
}

// [lo, hi): the channels whose k taps all land inside [0, c) (empty when c < k).
inline std::pair<int64_t, int64_t> interior_channels(int64_t half, int64_t c) {
  const int64_t lo = std::min(half, c);
  return {lo, std::max(lo, c - half)};
}

// dst[ch] = sum_j taps[j] * src[ch + sign * (j - half)] over ch in [0, c), zero-padded or circular: the conv
// across channels (sign +1) or its transpose (sign -1, the backward's gather). The interior channels, whose
// taps all land inside [0, c) -- identical for both paddings -- run V::size() channels per step; the others
// (k/2 at each edge; all of them when c < k) go through tap_index. Each output is summed over j in order.
template <typename A>
void conv_channels(const A* taps, int64_t k, bool circular, int64_t c, int64_t sign, const A* src, A* dst) {
  using V = at::vec::Vectorized<A>;
  constexpr int64_t W = V::size();
  const int64_t half = k / 2;
  const auto interior = interior_channels(half, c);
  const int64_t lo = interior.first, hi = interior.second;
  auto edge = [&](int64_t ch) {
    A acc = 0;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t src_ch = tap_index(ch, sign * (j - half) + half, half, c, circular);
      if (src_ch >= 0) acc += taps[j] * src[src_ch];
    }
    dst[ch] = acc;
  };
  for (int64_t ch = 0; ch < lo; ++ch) edge(ch);
  int64_t ch = lo;
  for (; ch + W <= hi; ch += W) {
    V acc(A(0));
    for (int64_t j = 0; j < k; ++j) acc = at::vec::fmadd(V(taps[j]), V::loadu(src + ch + sign * (j - half)), acc);
    acc.store(dst + ch);
  }
  for (; ch < hi; ++ch) {
    A acc = 0;
    for (int64_t j = 0; j < k; ++j) acc += taps[j] * src[ch + sign * (j - half)];
    dst[ch] = acc;
  }
  for (ch = hi; ch < c; ++ch) edge(ch);
}

template <typename A>
void eca_excite(const A* taps, int64_t k, bool circular, int64_t c, const A* pooled, A* s, int64_t n0, int64_t n1) {
  at::parallel_for(n0, n1, 1, [&](int64_t na, int64_t nb) {
    for (int64_t n = na; n < nb; ++n) {
      conv_channels<A>(taps, k, circular, c, 1, pooled + n * c, s + n * c);  // logits into s
      cpu::sigmoid_inplace<A>(s + n * c, c);
    }
  });
}

template <typename A>
void eca_excite_bwd(const A* taps, int64_t k, bool circular, int64_t c, const A* pooled, const A* s, const A* ds,
                    A* dz, A* dp, A* dtap, int64_t n0, int64_t n1) {
  const int64_t half = k / 2;
  at::parallel_for(n0 * c, n1 * c, grain_for(1), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dz[i] = ds[i] * s[i] * (A(1) - s[i]);
  });
  at::parallel_for(n0, n1, 1, [&](int64_t na, int64_t nb) {
    for (int64_t n = na; n < nb; ++n) conv_channels<A>(taps, k, circular, c, -1, dz + n * c, dp + n * c);
  });
  // dtap[n, j] = sum_ch dz[n, ch] * pooled[n, ch + j - half]: the edge channels through tap_index, the interior
  // (every tap inside [0, c)) as a vector dot product; a fixed order per output.
  using V = at::vec::Vectorized<A>;
  constexpr int64_t W = V::size();
  const auto interior = interior_channels(half, c);
  const int64_t lo = interior.first, hi = interior.second;
  at::parallel_for(n0 * k, n1 * k, grain_for(c), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / k, j = i % k;
      const A* d = dz + n * c;
      const A* p = pooled + n * c;
      A edges = 0;
      auto edge = [&](int64_t ch) {
        const int64_t src = tap_index(ch, j, half, c, circular);
        if (src >= 0) edges += d[ch] * p[src];
      };
      for (int64_t ch = 0; ch < lo; ++ch) edge(ch);
      for (int64_t ch = hi; ch < c; ++ch) edge(ch);
      V vacc(A(0));
      int64_t ch = lo;
      for (; ch + W <= hi; ch += W) vacc = at::vec::fmadd(V::loadu(d + ch), V::loadu(p + ch + j - half), vacc);
      A acc = at::vec::vec_reduce_all<A>([](V& a, V& b) { return a + b; }, vacc);
      for (; ch < hi; ++ch) acc += d[ch] * p[ch + j - half];
      dtap[i] = acc + edges;
    }
  });
}

// Streaming forward (planar layout, k <= C): the gate of channel d needs only pooled[d - h .. d + h]
// (h = k / 2), so channel d is scaled h channels after it was pooled, while its row is still in L1/L2:
// x is read once from memory instead of twice. A task owns channels [c0, c1) of sample n and pools the
// h-channel halos on both sides itself (indices modulo C when circular); halo rows are read twice.
// ep: the scale's epilogue (eca_residual: + shortcut, out_act).
template <typename S, class Ep>
void eca_stream(const View<const S>& x, const View<S>& y, int64_t n, int64_t c0, int64_t c1, int64_t c, int64_t hw,
                const at::opmath_type<S>* taps, int64_t k, bool circular, at::opmath_type<S>* pooled,
                at::opmath_type<S>* s, bool stream, const Ep& ep) {
  using A = at::opmath_type<S>;
  const int64_t half = k / 2, base = c0 - half, width = (c1 - c0) + 2 * half;
  const A inv = A(1) / static_cast<A>(hw);
  std::vector<A> loc(static_cast<size_t>(width), A(0));
  const S* px = x.ptr + n * x.sn;
  S* py = y.ptr + n * y.sn;
  auto pool = [&](int64_t ch) {  // ch in [c0 - h, c1 + h): absolute, may be out of [0, C)
    int64_t src = ch;
    if (circular) {
      src = ((ch % c) + c) % c;
    } else if (ch < 0 || ch >= c) {
      return;  // zero padding: loc stays 0
    }
    loc[ch - base] = cpu::row_sum<S>(px + src * x.sc, hw) * inv;
  };
  for (int64_t ch = c0 - half; ch < c0 + half && ch < c1 + half; ++ch) pool(ch);
  for (int64_t ch = c0 + half; ch < c1 + half; ++ch) {
    pool(ch);
    const int64_t d = ch - half;  // every pooled value of d's window is now known
    A z = 0;
    for (int64_t j = 0; j < k; ++j) z += taps[j] * loc[d + j - half - base];
    const A g = A(1) / (A(1) + std::exp(-z));
    s[n * c + d] = g;
    pooled[n * c + d] = loc[d - base];
    const cpu::RowCoef<S> coef(g, A(0));
    if (stream) {
      cpu::row_scale<S, true>(px + d * x.sc, py + d * y.sc, hw, coef, ep.planar(n, d));
    } else {
      cpu::row_scale<S, false>(px + d * x.sc, py + d * y.sc, hw, coef, ep.planar(n, d));
    }
  }
  if (stream) cpu::stream_fence();
}

}  // namespace

namespace {

// ECA forward; with a shortcut (eca_residual) y = out_act(x * s + shortcut).
T3 eca_forward(const char* op, const Tensor& x, const Tensor* shortcut, const Tensor& weight, bool circular,
               int64_t out_act) {
  Tensor taps_in = check_eca(x, weight);
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": x must be a CPU tensor, got ", x.device());
  if (shortcut) check_residual(x, *shortcut, out_act, op);
  const int64_t nb = x.size(0), c = x.size(1), hw = spatial_numel(x), k = taps_in.size(0);
  const auto acc = acc_type(x);
  const auto opt = x.options().dtype(acc);
  auto [xf, layout] = flatten_input(x);
  auto [y, yf] = output_like(x, layout);
  Tensor pooled = alloc({nb, c}, opt), s = alloc({nb, c}, opt);
  if (nb == 0) return {y, pooled, s};
  const Flat rf = shortcut ? match_input(*shortcut, layout) : Flat{};
  Tensor taps = param_acc(taps_in, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "eca_fwd_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    const A* tp = taps.const_data_ptr<A>();
    A* pp = pooled.mutable_data_ptr<A>();
    A* sp = s.mutable_data_ptr<A>();
    const auto xv = const_view<scalar_t>(xf), rv = const_view<scalar_t>(rf);
    const auto yv = mutable_view<scalar_t>(yf);
    cpu::with_forward_epilogue<scalar_t>(shortcut ? &rv : nullptr, out_act, [&](const auto& ep) {
      if (layout == Layout::Planar && k <= c && hw >= kStreamMinHW) {
        // tasks: whole samples when there are enough of them, else channel chunks of a sample
        const int64_t threads = at::get_num_threads();
        const int64_t chunks =
            cpu::per_sample_schedule(nb, true) ? 1 : std::max<int64_t>(1, std::min<int64_t>(threads, c / 16));
        const int64_t chunk = (c + chunks - 1) / chunks;
        const bool stream = cpu::stream_output(nb * c * hw * static_cast<int64_t>(sizeof(scalar_t)));
        at::parallel_for(0, nb * chunks, 1, [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) {
            const int64_t n = i / chunks, c0 = (i % chunks) * chunk, c1 = std::min(c, c0 + chunk);
            if (c0 < c1) eca_stream<scalar_t>(xv, yv, n, c0, c1, c, hw, tp, k, circular, pp, sp, stream, ep);
          }
        });
      } else {
        cpu::gate_forward<scalar_t>(
            xv, yv, layout, nb, c, hw, pp, sp,
            [&](int64_t n0, int64_t n1) { eca_excite<A>(tp, k, circular, c, pp, sp, n0, n1); }, true, ep);
      }
    });
  });
  finish_output(y, yf);
  return {y, pooled, s};
}

// ECA backward: (grad_x, grad_shortcut (undefined without a shortcut), grad_weight).
T3 eca_backward(const char* op, const Tensor& grad_y, const Tensor& x, const Tensor* shortcut, const Tensor& weight,
                const Tensor& pooled_in, const Tensor& s_in, bool circular, int64_t out_act) {
  Tensor taps_in = check_eca(x, weight);
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": x must be a CPU tensor, got ", x.device());
  if (shortcut) check_residual(x, *shortcut, out_act, op);
  check_bwd_inputs(grad_y, x, pooled_in, s_in, op);
  const int64_t nb = x.size(0), c = x.size(1), hw = spatial_numel(x), k = taps_in.size(0);
  const auto acc = acc_type(x);
  const auto opt = x.options().dtype(acc);
  Tensor pooled = pooled_in.to(acc).contiguous(), s = s_in.to(acc).contiguous();
  auto [xf, layout] = flatten_input(x);
  Flat gyf = match_input(grad_y, layout);
  auto [gx, gxf] = output_like(x, layout);
  Tensor gsc;
  Flat gscf{}, rf{};
  if (shortcut) {
    std::tie(gsc, gscf) = output_like(x, layout);
    if (out_act != kIdentity && nb > 0) rf = match_input(*shortcut, layout);  // identity: never read
  }
  Tensor gt = at::zeros({k}, opt);
  if (nb > 0) {
    Tensor taps = param_acc(taps_in, acc);
    Tensor ds = alloc({nb, c}, opt), dp = alloc({nb, c}, opt), dz = alloc({nb, c}, opt);
    Tensor dtap = alloc({nb, k}, opt);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "eca_bwd_cpu", [&] {
      using A = at::opmath_type<scalar_t>;
      const A* tp = taps.const_data_ptr<A>();
      const A* pp = pooled.const_data_ptr<A>();
      const A* sp = s.const_data_ptr<A>();
      A* dsp = ds.mutable_data_ptr<A>();
      A* dpp = dp.mutable_data_ptr<A>();
      A* dzp = dz.mutable_data_ptr<A>();
      A* dtp = dtap.mutable_data_ptr<A>();
      const auto gyv = const_view<scalar_t>(gyf), xv = const_view<scalar_t>(xf), rv = const_view<scalar_t>(rf);
      const auto gxv = mutable_view<scalar_t>(gxf), gscv = mutable_view<scalar_t>(gscf);
      cpu::with_backward_epilogue<scalar_t>(xv, shortcut ? &rv : nullptr, gscv, sp, c, out_act, [&](const auto& ep) {
        cpu::gate_backward<scalar_t>(
            gyv, xv, gxv, layout, nb, c, hw, sp, dsp, dpp,
            [&](int64_t n0, int64_t n1) { eca_excite_bwd<A>(tp, k, circular, c, pp, sp, dsp, dzp, dpp, dtp, n0, n1); },
            true, ep);
      });
      A* g = gt.mutable_data_ptr<A>();
      for (int64_t n = 0; n < nb; ++n) {  // batch sum in sample order: deterministic
        for (int64_t j = 0; j < k; ++j) g[j] += dtp[n * k + j];
      }
    });
  }
  finish_output(gx, gxf);
  if (shortcut) finish_output(gsc, gscf);
  return {gx, gsc, gt.to(weight.scalar_type()).reshape(weight.sizes())};
}

}  // namespace

T3 eca_fwd_cpu(const Tensor& x, const Tensor& weight, bool circular) {
  return eca_forward("eca_fwd_cpu", x, nullptr, weight, circular, kIdentity);
}

std::tuple<Tensor, Tensor> eca_bwd_cpu(const Tensor& grad_y, const Tensor& x, const Tensor& weight,
                                       const Tensor& pooled, const Tensor& s, bool circular) {
  auto [gx, gsc, gw] = eca_backward("eca_bwd", grad_y, x, nullptr, weight, pooled, s, circular, kIdentity);
  return {gx, gw};
}

T3 eca_residual_fwd_cpu(const Tensor& x, const Tensor& shortcut, const Tensor& weight, bool circular, int64_t out_act) {
  return eca_forward("eca_residual_fwd_cpu", x, &shortcut, weight, circular, out_act);
}

T3 eca_residual_bwd_cpu(const Tensor& grad_y, const Tensor& x, const Tensor& shortcut, const Tensor& weight,
                        const Tensor& pooled, const Tensor& s, bool circular, int64_t out_act) {
  return eca_backward("eca_residual_bwd", grad_y, x, &shortcut, weight, pooled, s, circular, out_act);
}

}  // namespace attn_kernels
