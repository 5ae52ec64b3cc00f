// Host/device helpers shared by the CPU and CUDA kernels.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FASTRL_HD __host__ __device__ __forceinline__
#else
#define FASTRL_HD inline
#endif

namespace fastrl {

FASTRL_HD float exp_(float x) { return expf(x); }
FASTRL_HD double exp_(double x) { return exp(x); }

template <typename acc_t>
FASTRL_HD acc_t infinity() {
  return static_cast<acc_t>(INFINITY);
}

}  // namespace fastrl
