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

// A [B, T] mask of any dtype read in place: nonzero means valid. Reading the
// raw bits avoids a conversion kernel (verl passes float masks) and keeps one
// kernel instantiation per score dtype instead of one per (score, mask) pair.
struct MaskRef {
  const void* data;
  int elem_size;  // bytes per element: 1, 2, 4 or 8
  bool floating;  // floats with a -0.0 ignore the sign bit, so -0.0 reads as 0 (see mask_ref)

  FASTRL_HD bool operator[](int64_t i) const {
    switch (elem_size) {
      case 1: {
        uint8_t v = static_cast<const uint8_t*>(data)[i];
        return (floating ? (v & 0x7fu) : v) != 0;
      }
      case 2: {
        uint16_t v = static_cast<const uint16_t*>(data)[i];
        return (floating ? (v & 0x7fffu) : v) != 0;
      }
      case 4: {
        uint32_t v = static_cast<const uint32_t*>(data)[i];
        return (floating ? (v & 0x7fffffffu) : v) != 0;
      }
      default: {
        uint64_t v = static_cast<const uint64_t*>(data)[i];
        return (floating ? (v & 0x7fffffffffffffffull) : v) != 0;
      }
    }
  }

  // Elements [0, n) as 0/1 bytes: one tight (vectorisable) loop per dtype width.
  inline void to_bytes(int64_t n, uint8_t* out) const {
    switch (elem_size) {
      case 1:
        return nonzero_bytes(static_cast<const uint8_t*>(data), uint8_t(floating ? 0x7fu : 0xffu), n, out);
      case 2:
        return nonzero_bytes(static_cast<const uint16_t*>(data), uint16_t(floating ? 0x7fffu : 0xffffu), n, out);
      case 4:
        return nonzero_bytes(static_cast<const uint32_t*>(data), uint32_t(floating ? 0x7fffffffu : 0xffffffffu), n, out);
      default:
        return nonzero_bytes(static_cast<const uint64_t*>(data),
                             uint64_t(floating ? 0x7fffffffffffffffull : 0xffffffffffffffffull), n, out);
    }
  }

  template <typename bits_t>
  static void nonzero_bytes(const bits_t* __restrict__ in, bits_t keep, int64_t n, uint8_t* __restrict__ out) {
    for (int64_t i = 0; i < n; ++i) out[i] = (in[i] & keep) != 0;
  }

  FASTRL_HD MaskRef offset(int64_t i) const {
    return {static_cast<const char*>(data) + i * elem_size, elem_size, floating};
  }
};

FASTRL_HD float exp_(float x) { return expf(x); }
FASTRL_HD double exp_(double x) { return exp(x); }

template <typename acc_t>
FASTRL_HD acc_t infinity() {
  return static_cast<acc_t>(INFINITY);
}

}  // namespace fastrl
