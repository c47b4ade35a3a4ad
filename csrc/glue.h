// Torch-side glue shared by the CPU kernels and the CUDA launch wrappers: argument checks, the
// (N, C, HW) view of a feature map, layout choice, and output allocation.
//
// Layout rules (documented contract of the extension):
//  * The spatial dims are flattened to one axis when they share one stride (contiguous NCHW,
//    channels_last, x[::2], crops of the outer spatial dims, expanded grads with stride 0 are fine).
//    Otherwise x is copied to a contiguous tensor first (e.g. transposed spatial dims, W cropped).
//  * Layout: Planar when the spatial axis has stride 1, ChannelsLast when the channel axis has
//    stride 1 (HW == 1 with sc == 1 counts as ChannelsLast). grad_y that does not match x's layout
//    is copied into it.
//  * Outputs (y, grad_x) are allocated with empty_like(x) (same memory format as eager x * s). In the
//    rare case that layout does not flatten, the kernel writes a compatible buffer that is copied in.
//  * With ATTN_KERNELS_NAN_FILL=1 (the test suite) every output and scratch buffer starts as NaN, so
//    an element a kernel forgets to write fails the comparisons (same contract as attn_kernels/_alloc.py).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <utility>

#include "layout.h"

namespace attn_kernels {

inline bool nan_fill() {
  static const bool on = [] {
    const char* v = std::getenv("ATTN_KERNELS_NAN_FILL");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return on;
}

inline at::Tensor prefill(at::Tensor t) {
  if (nan_fill() && t.is_floating_point()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

inline at::Tensor alloc(at::IntArrayRef shape, const at::TensorOptions& opt) {
  return prefill(at::empty(shape, opt));
}

inline at::Tensor alloc_like(const at::Tensor& t) { return prefill(at::empty_like(t)); }

inline int64_t spatial_numel(const at::Tensor& x) {
  int64_t hw = 1;
  for (int64_t d = 2; d < x.dim(); ++d) hw *= x.size(d);
  return hw;
}

// (sn, sc, shw) when the spatial dims of t flatten to one stride.
inline std::optional<std::array<int64_t, 3>> flat_strides(const at::Tensor& t) {
  int64_t inner_stride = 1, prev_stride = -1, prev_size = 0;
  bool have = false;
  for (int64_t d = t.dim() - 1; d >= 2; --d) {
    if (t.size(d) == 1) continue;
    if (have && t.stride(d) != prev_stride * prev_size) return std::nullopt;
    if (!have) inner_stride = t.stride(d);
    have = true;
    prev_stride = t.stride(d);
    prev_size = t.size(d);
  }
  return std::array<int64_t, 3>{t.stride(0), t.stride(1), have ? inner_stride : 1};
}

inline bool compatible(const std::array<int64_t, 3>& st, Layout layout, int64_t c, int64_t hw) {
  if (layout == Layout::Planar) return st[2] == 1 || hw == 1;
  return st[1] == 1 || c == 1;
}

struct Flat {
  at::Tensor t;  // the tensor the kernel reads / writes (t itself or a compatible copy / buffer)
  std::array<int64_t, 3> st;
};

// A dense tensor shaped like x whose strides have the requested layout.
inline at::Tensor empty_with_layout(const at::Tensor& like, Layout layout) {
  if (layout == Layout::Planar) return alloc(like.sizes(), like.options());
  // (N, *spatial, C) contiguous, permuted back to (N, C, *spatial): channels_last for any rank.
  std::vector<int64_t> shape{like.size(0)}, perm{0, like.dim() - 1};
  for (int64_t d = 2; d < like.dim(); ++d) shape.push_back(like.size(d));
  shape.push_back(like.size(1));
  for (int64_t d = 1; d < like.dim() - 1; ++d) perm.push_back(d);
  return alloc(shape, like.options()).permute(perm);
}

// Choose the layout from x, copying x to contiguous only when its spatial dims do not flatten.
inline std::pair<Flat, Layout> flatten_input(const at::Tensor& x) {
  const int64_t c = x.size(1), hw = spatial_numel(x);
  at::Tensor t = x;
  auto st = flat_strides(t);
  if (!st) {
    t = x.contiguous();
    st = flat_strides(t);
    TORCH_INTERNAL_ASSERT(st.has_value());
  }
  Layout layout;
  if (hw == 1) {
    layout = ((*st)[1] == 1 && c > 1) ? Layout::ChannelsLast : Layout::Planar;
  } else if ((*st)[2] == 1) {
    layout = Layout::Planar;
  } else if ((*st)[1] == 1) {
    layout = Layout::ChannelsLast;
  } else {
    t = x.contiguous();
    st = flat_strides(t);
    layout = Layout::Planar;
  }
  return {Flat{t, *st}, layout};
}

// t as a tensor the kernel can read in `layout` (a copy only when it is not already).
inline Flat match_input(const at::Tensor& t, Layout layout) {
  const int64_t c = t.size(1), hw = spatial_numel(t);
  auto st = flat_strides(t);
  if (st && compatible(*st, layout, c, hw)) return Flat{t, *st};
  at::Tensor buf = empty_with_layout(t, layout);
  buf.copy_(t);
  return Flat{buf, *flat_strides(buf)};
}

// (result, what the kernel writes): result = empty_like(x); the buffer is result when compatible.
inline std::pair<at::Tensor, Flat> output_like(const at::Tensor& x, Layout layout) {
  at::Tensor out = alloc_like(x);
  const int64_t c = x.size(1), hw = spatial_numel(x);
  auto st = flat_strides(out);
  if (st && compatible(*st, layout, c, hw)) return {out, Flat{out, *st}};
  at::Tensor buf = empty_with_layout(x, layout);
  return {out, Flat{buf, *flat_strides(buf)}};
}

inline void finish_output(at::Tensor& out, const Flat& buf) {
  if (!buf.t.is_same(out)) out.copy_(buf.t);
}

inline at::ScalarType acc_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_x(const at::Tensor& x, const char* op) {
  TORCH_CHECK_VALUE(x.defined(), op, ": x is undefined");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf ||
                       x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kDouble,
                   op, ": x must be float32/float16/bfloat16/float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 3, op, ": x must have shape (N, C, *spatial) with at least one spatial dim, got ",
                    x.dim(), "-D shape ", x.sizes());
  for (int64_t d = 2; d < x.dim(); ++d) {
    TORCH_CHECK_VALUE(x.size(d) > 0, op, ": x has an empty spatial dim (shape ", x.sizes(),
                      "): global pooling is undefined");
  }
}

inline void check_param(const at::Tensor& t, const char* name, at::IntArrayRef shape, const at::Tensor& x,
                        const char* op) {
  TORCH_CHECK_TYPE(t.is_floating_point(), op, ": ", name, " must be floating point, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == shape, op, ": ", name, " has shape ", t.sizes(), ", expected ", shape);
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
}

// Parameters converted once per call to the accumulation dtype, contiguous.
inline at::Tensor param_acc(const at::Tensor& t, at::ScalarType acc) { return t.to(acc).contiguous(); }

}  // namespace attn_kernels
