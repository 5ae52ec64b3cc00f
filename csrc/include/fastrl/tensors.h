// Host-side glue shared by the CPU and CUDA launchers: mask views, output
// allocation and the dtype dispatch every op uses. Argument checking lives in
// Python (fastrl/ops/_checks.py); these are only the invariants a kernel needs.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <vector>

#include "fastrl/common.h"

namespace fastrl {

inline MaskRef mask_ref(const at::Tensor& mask) {
  TORCH_CHECK(mask.is_contiguous(), "fastrl: mask must be contiguous");
  const auto type = mask.scalar_type();
  // Floats whose sign bit makes a -0.0. Of the 1-byte floats only e4m3fn and e5m2 have one:
  // in the fnuz float8s 0x80 is NaN and in e8m0 it is 2.0, nonzero as their raw bits are.
  const bool signed_zero =
      at::isFloatingType(type) && (mask.element_size() > 1 || type == at::ScalarType::Float8_e4m3fn ||
                                   type == at::ScalarType::Float8_e5m2);
  return {mask.data_ptr(), static_cast<int>(mask.element_size()), signed_zero};
}

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
