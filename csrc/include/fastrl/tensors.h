// Host-side glue shared by the CPU and CUDA launchers: mask views, output
// allocation, the dtype dispatch every op uses and the shape checks of the raw ops.
// Argument checking lives in Python (fastrl/ops/_checks.py); these are only the
// invariants a kernel needs.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <limits>

#include "fastrl/common.h"

namespace fastrl {

// A contiguous [B, T] mask of any dtype as the kernels (CPU and CUDA) read it, one byte per
// token, nonzero = valid (verl passes float masks; any nonzero bits but a float's sign bit
// count): bool and 1-byte integer masks as they are (a uint8 2 is valid; no copy), any
// other dtype converted by its bits (one or two elementwise ops). The kernels once read
// every width in place; on CUDA the branch on the width inside their unrolled tiles made
// nvcc's device compiler take over eight minutes on scans.cu.
inline at::Tensor mask_as_bytes(const at::Tensor& mask) {
  TORCH_CHECK(mask.is_contiguous(), "fastrl: mask must be contiguous");
  const int64_t width = mask.element_size();
  if (width == 1 && !at::isFloatingType(mask.scalar_type())) return mask;
  TORCH_CHECK(width == 1 || width == 2 || width == 4 || width == 8, "fastrl: a mask element of ", width,
              " bytes is not supported");
  const auto bits_type = width == 1 ? at::kChar : width == 2 ? at::kShort : width == 4 ? at::kInt : at::kLong;
  auto bits = mask.view(bits_type);
  // floats whose sign bit makes a -0.0, which reads as 0: of the 1-byte floats only e4m3fn and
  // e5m2 have one (in the fnuz float8s 0x80 is NaN and in e8m0 it is 2.0, nonzero as their bits)
  const auto type = mask.scalar_type();
  if (at::isFloatingType(type) &&
      (width > 1 || type == at::ScalarType::Float8_e4m3fn || type == at::ScalarType::Float8_e5m2)) {
    bits = bits.bitwise_and(width == 1 ? int64_t{0x7f} : width == 2 ? int64_t{0x7fff}
                            : width == 4 ? int64_t{0x7fffffff} : std::numeric_limits<int64_t>::max());
  }
  return bits.ne(0);
}

inline const uint8_t* mask_data(const at::Tensor& bytes) { return static_cast<const uint8_t*>(bytes.data_ptr()); }

// The raw ops (torch.ops.fastrl.*) skip the Python wrappers and their checks: the shapes and
// sizes the kernels index by are checked here too, so a wrong call is an error, not an
// out-of-bounds read (or, for a bundle size of 0, a division by zero).
inline void check_tokens(const char* name, const at::Tensor& x, const char* like_name, const at::Tensor& like) {
  TORCH_CHECK_VALUE(like.dim() == 2, "fastrl: ", like_name, " must be [B, T], got shape ", like.sizes());
  TORCH_CHECK_VALUE(x.sizes() == like.sizes(), "fastrl: ", name, " must have the shape of ", like_name, " ",
                    like.sizes(), ", got ", x.sizes());
}

inline void check_groups(const at::Tensor& scores, const at::Tensor& group_ids) {
  TORCH_CHECK_VALUE(scores.dim() == 1 && group_ids.dim() == 1 && group_ids.size(0) == scores.size(0),
                    "fastrl: scores and group_ids must both be [B], got shapes ", scores.sizes(), " and ",
                    group_ids.sizes());
  TORCH_CHECK_TYPE(group_ids.scalar_type() == at::kLong, "fastrl: group_ids must be int64, got ",
                   group_ids.scalar_type());
}

inline void check_gae_inputs(const at::Tensor& rewards, const at::Tensor& values, const at::Tensor& mask) {
  check_tokens("values", values, "rewards", rewards);
  check_tokens("mask", mask, "rewards", rewards);
  TORCH_CHECK_TYPE(values.scalar_type() == rewards.scalar_type(), "fastrl: values must have the dtype of rewards");
}

inline void check_risk_inputs(const at::Tensor& scores, const at::Tensor& group_ids, int64_t bundle_size) {
  check_groups(scores, group_ids);
  TORCH_CHECK_VALUE(bundle_size >= 1, "fastrl: bundle_size must be >= 1, got ", bundle_size);
}

inline void check_broadcast_inputs(const at::Tensor& advantages, const at::Tensor& mask) {
  TORCH_CHECK_VALUE(mask.dim() == 2 && advantages.dim() == 1 && advantages.size(0) == mask.size(0),
                    "fastrl: advantages must be [B] for a [B, T] mask, got shapes ", advantages.sizes(), " and ",
                    mask.sizes());
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
