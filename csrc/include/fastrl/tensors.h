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
  return {mask.data_ptr(), static_cast<int>(mask.element_size()),
          at::isFloatingType(mask.scalar_type())};
}

// The masks of rows [row, row + n) of a [B, T] mask as 0/1 bytes: the input
// itself when it is already bool/uint8, else a conversion into `buffer` (CPU).
inline const uint8_t* mask_bytes(MaskRef mask, int64_t row, int64_t n, int64_t T, std::vector<uint8_t>& buffer) {
  MaskRef rows = mask.offset(row * T);
  if (mask.elem_size == 1) return static_cast<const uint8_t*>(rows.data);
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
