// Token scans on the CPU: rows in parallel, one sequential pass per row.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "fastrl/scans.h"
#include "fastrl/tensors.h"

namespace fastrl {
namespace {

// Rows per task, so that each task scans at least ~32k tokens.
int64_t row_grain(int64_t T) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(T, 1)); }

at::Tensor discounted_returns_cpu(const at::Tensor& rewards_, const at::Tensor& mask_, double gamma) {
  auto rewards = rewards_.contiguous();
  auto mask = mask_.contiguous();
  auto returns = empty_output(rewards);
  const int64_t B = rewards.size(0), T = rewards.size(1);
  MaskRef m = mask_ref(mask);
  FASTRL_DISPATCH_FLOATING(rewards.scalar_type(), "discounted_returns_cpu", [&] {
    const scalar_t* r = rewards.data_ptr<scalar_t>();
    acc_t* out = returns.data_ptr<acc_t>();
    at::parallel_for(0, B, row_grain(T), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        discounted_returns_row<scalar_t, acc_t>(r + b * T, m.offset(b * T), T, acc_t(gamma), out + b * T);
    });
  });
  return returns;
}

std::tuple<at::Tensor, at::Tensor> gae_cpu(const at::Tensor& rewards_, const at::Tensor& values_,
                                           const at::Tensor& mask_, double gamma, double lam) {
  auto rewards = rewards_.contiguous();
  auto values = values_.contiguous();
  auto mask = mask_.contiguous();
  auto advantages = empty_output(rewards);
  auto returns = empty_output(rewards);
  const int64_t B = rewards.size(0), T = rewards.size(1);
  MaskRef m = mask_ref(mask);
  FASTRL_DISPATCH_FLOATING(rewards.scalar_type(), "gae_cpu", [&] {
    const scalar_t* r = rewards.data_ptr<scalar_t>();
    const scalar_t* v = values.data_ptr<scalar_t>();
    acc_t* adv = advantages.data_ptr<acc_t>();
    acc_t* ret = returns.data_ptr<acc_t>();
    at::parallel_for(0, B, row_grain(T), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        gae_row<scalar_t, acc_t>(r + b * T, v + b * T, m.offset(b * T), T, acc_t(gamma), acc_t(lam),
                                 adv + b * T, ret + b * T);
    });
  });
  return {advantages, returns};
}

std::tuple<at::Tensor, at::Tensor> min_form_returns_cpu(const at::Tensor& scores_,
                                                        const at::Tensor& step_mask_,
                                                        const at::Tensor& mask_, double temperature,
                                                        c10::string_view mode) {
  auto scores = scores_.contiguous();
  auto step_mask = step_mask_.contiguous();
  auto mask = mask_.contiguous();
  auto token_rewards = empty_output(scores);
  auto returns = empty_output(scores);
  const int64_t B = scores.size(0), T = scores.size(1);
  MaskRef sm = mask_ref(step_mask), m = mask_ref(mask);
  FASTRL_DISPATCH_MIN_FORM_MODE(std::string(mode), [&] {
    FASTRL_DISPATCH_FLOATING(scores.scalar_type(), "min_form_returns_cpu", [&] {
      const scalar_t* s = scores.data_ptr<scalar_t>();
      acc_t* rew = token_rewards.data_ptr<acc_t>();
      acc_t* ret = returns.data_ptr<acc_t>();
      at::parallel_for(0, B, row_grain(T), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b)
          min_form_row<scalar_t, acc_t, kMode>(s + b * T, sm.offset(b * T), m.offset(b * T), T,
                                               acc_t(temperature), rew + b * T, ret + b * T);
      });
    });
  });
  return {token_rewards, returns};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrl, CPU, m) {
  m.impl("discounted_returns", &discounted_returns_cpu);
  m.impl("gae", &gae_cpu);
  m.impl("min_form_returns", &min_form_returns_cpu);
}

}  // namespace fastrl
