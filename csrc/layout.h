// Layout tag shared by the torch glue, the CPU kernels and (as an int) the CUDA launchers.
#pragma once

namespace attn_kernels {
enum class Layout : int { Planar = 0, ChannelsLast = 1 };
}  // namespace attn_kernels
