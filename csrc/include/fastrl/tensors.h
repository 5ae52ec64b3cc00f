// Host-side glue shared by the CPU and CUDA launchers: mask views, output
// allocation and the dtype dispatch every op uses. Argument checking lives in
// Python (fastrl/ops/_checks.py); these are only the invariants a kernel needs.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <limits>
#include <vector>

#include "fastrl/common.h"

namespace fastrl {

// A [B, T] mask of any dtype read in place by the CPU kernels: nonzero bits mean
// valid. Reading the raw bits avoids a conversion (verl passes float masks) and
// keeps one kernel instantiation per score dtype instead of one per (score, mask) pair.
struct MaskRef {
  const void* data;
  int elem_size;  // bytes per element: 1, 2, 4 or 8
  bool floating;  // floats with a -0.0 ignore the sign bit, so -0.0 reads as 0 (see mask_ref)

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

  MaskRef offset(int64_t i) const {
    return {static_cast<const char*>(data) + i * elem_size, elem_size, floating};
  }
};

// Whether a mask dtype's sign bit makes a -0.0, which must read as 0. Of the 1-byte floats
// only e4m3fn and e5m2 have one: in the fnuz float8s 0x80 is NaN and in e8m0 it is 2.0,
// nonzero as their raw bits are.
inline bool has_signed_zero(const at::Tensor& mask) {
  const auto type = mask.scalar_type();
  return at::isFloatingType(type) && (mask.element_size() > 1 || type == at::ScalarType::Float8_e4m3fn ||
                                      type == at::ScalarType::Float8_e5m2);
}

inline MaskRef mask_ref(const at::Tensor& mask) {
  TORCH_CHECK(mask.is_contiguous(), "fastrl: mask must be contiguous");
  return {mask.data_ptr(), static_cast<int>(mask.element_size()), has_signed_zero(mask)};
}

// A contiguous mask as the CUDA kernels read it, one byte per token, nonzero = valid, by
// the same bits as MaskRef: bool and 1-byte integer masks as they are (a uint8 2 is
// valid, no kernel), any other dtype converted here (one or two elementwise kernels).
// The kernels once read every width in place; the branch on the width inside their
// unrolled tiles made nvcc's device compiler take over eight minutes on scans.cu.
inline at::Tensor mask_as_bytes(const at::Tensor& mask) {
  TORCH_CHECK(mask.is_contiguous(), "fastrl: mask must be contiguous");
  const int64_t width = mask.element_size();
  if (width == 1 && !at::isFloatingType(mask.scalar_type())) return mask;
  TORCH_CHECK(width == 1 || width == 2 || width == 4 || width == 8, "fastrl: a mask element of ", width,
              " bytes is not supported");
  const auto bits_type = width == 1 ? at::kChar : width == 2 ? at::kShort : width == 4 ? at::kInt : at::kLong;
  auto bits = mask.view(bits_type);
  if (has_signed_zero(mask)) {  // all bits but the sign's
    bits = bits.bitwise_and(width == 1 ? int64_t{0x7f} : width == 2 ? int64_t{0x7fff}
                            : width == 4 ? int64_t{0x7fffffff} : std::numeric_limits<int64_t>::max());
  }
  return bits.ne(0);
}

inline const uint8_t* mask_data(const at::Tensor& bytes) { return static_cast<const uint8_t*>(bytes.data_ptr()); }

// The masks of rows [row, row + n) of a [B, T] mask as bytes, nonzero = valid
// (not necessarily 0/1: a uint8 mask may hold 2): the input itself when it is
// 1-byte and not a float, else a conversion to 0/1 into `buffer` (CPU).
inline const uint8_t* mask_bytes(MaskRef mask, int64_t row, int64_t n, int64_t T, std::vector<uint8_t>& buffer) {
  MaskRef rows = mask.offset(row * T);
  if (mask.elem_size == 1 && !mask.floating) return static_cast<const uint8_t*>(rows.data);
  buffer.resize(n * T);
  rows.to_bytes(n * T, buffer.data());
  return buffer.data();
}

// Outputs are float32 for bf16/fp16/fp32 inputs and float64 for float64.
inline at::Tensor empty_output(const at::Tensor& like) {
  auto dtype = like.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::empty(like.sizes(), like.options().dtype(dtype));
}

}  // namespace fastrl

// Float dtypes every op accepts; `acc_t` is the accumulation and output type.
#define FASTRL_DISPATCH_FLOATING(TYPE, NAME, ...)                          \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, [&] { \
    using acc_t = at::opmath_type<scalar_t>;                               \
    __VA_ARGS__();                                                         \
  })

// The min-form mode as a compile-time constant `kMode`.
#define FASTRL_DISPATCH_MIN_FORM_MODE(MODE_STR, ...)                        \
  [&] {                                                                     \
    if ((MODE_STR) == "soft") {                                             \
      constexpr auto kMode = ::fastrl::MinFormMode::kSoft;                  \
      __VA_ARGS__();                                                        \
    } else if ((MODE_STR) == "strict") {                                    \
      constexpr auto kMode = ::fastrl::MinFormMode::kStrict;                \
      __VA_ARGS__();                                                        \
    } else if ((MODE_STR) == "sum") {                                       \
      constexpr auto kMode = ::fastrl::MinFormMode::kSum;                   \
      __VA_ARGS__();                                                        \
    } else {                                                                \
      TORCH_CHECK_VALUE(false, "fastrl: mode must be 'soft', 'strict' or 'sum', got '", \
                        std::string(MODE_STR), "'");                        \
    }                                                                       \
  }()
