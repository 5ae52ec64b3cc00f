// Token scans on the CPU. Each task walks a block of kRows rows backwards
// together: the rows' recursions are independent, so interleaving them hides
// the latency of each row's dependent multiply-add chain.
#include <ATen/Parallel.h>
#include <torch/library.h>


#include "fastrl/scans.h"
#include "fastrl/tensors.h"

namespace fastrl {
namespace {

constexpr int64_t kRows = 4;

// Runs body(first_row, rows) over the rows in parallel, `rows` a compile-time
// count (std::integral_constant): kRows for full blocks, 1 for the remainder,
// so that each row's carry lives in a register.
template <typename Body>
void for_row_blocks(int64_t B, int64_t T, const Body& body) {
  const int64_t full = B / kRows;
  const int64_t tasks = full + B % kRows;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(kRows * T, 1));
  at::parallel_for(0, tasks, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      if (b < full)
        body(b * kRows, std::integral_constant<int64_t, kRows>{});
      else
        body(full * kRows + (b - full), std::integral_constant<int64_t, 1>{});
    }
  });
}

at::Tensor discounted_returns_cpu(const at::Tensor& rewards_, const at::Tensor& mask_, double gamma) {
  check_tokens("mask", mask_, "rewards", rewards_);
  auto rewards = rewards_.contiguous();
  auto mask = mask_as_bytes(mask_.contiguous());
  auto returns = empty_output(rewards);
  const int64_t B = rewards.size(0), T = rewards.size(1);
  FASTRL_DISPATCH_FLOATING(rewards.scalar_type(), "discounted_returns_cpu", [&] {
    for_row_blocks(B, T, [&](int64_t row, auto rows) {
      constexpr int64_t n = decltype(rows)::value;
      const uint8_t* valid = mask_data(mask) + row * T;
      const scalar_t* r = rewards.data_ptr<scalar_t>() + row * T;
      acc_t* out = returns.data_ptr<acc_t>() + row * T;
      acc_t carry[n] = {};
      for (int64_t t = T - 1; t >= 0; --t) {
        for (int64_t i = 0; i < n; ++i) {
          const int64_t k = i * T + t;
          carry[i] = return_step<acc_t>(valid[k], static_cast<acc_t>(r[k]), acc_t(gamma))(carry[i]);
          out[k] = valid[k] ? carry[i] : acc_t(0);
        }
      }
    });
  });
  return returns;
}

std::tuple<at::Tensor, at::Tensor> gae_cpu(const at::Tensor& rewards_, const at::Tensor& values_,
                                           const at::Tensor& mask_, double gamma, double lam) {
  check_gae_inputs(rewards_, values_, mask_);
  auto rewards = rewards_.contiguous();
  auto values = values_.contiguous();
  auto mask = mask_as_bytes(mask_.contiguous());
  auto advantages = empty_output(rewards);
  auto returns = empty_output(rewards);
  const int64_t B = rewards.size(0), T = rewards.size(1);
  FASTRL_DISPATCH_FLOATING(rewards.scalar_type(), "gae_cpu", [&] {
    for_row_blocks(B, T, [&](int64_t row, auto rows) {
      constexpr int64_t n = decltype(rows)::value;
      const uint8_t* valid = mask_data(mask) + row * T;
      const scalar_t* r = rewards.data_ptr<scalar_t>() + row * T;
      const scalar_t* v = values.data_ptr<scalar_t>() + row * T;
      acc_t* adv = advantages.data_ptr<acc_t>() + row * T;
      acc_t* ret = returns.data_ptr<acc_t>() + row * T;
      acc_t next_value[n] = {}, carry[n] = {};
      for (int64_t t = T - 1; t >= 0; --t) {
        for (int64_t i = 0; i < n; ++i) {
          const int64_t k = i * T + t;
          const bool here = valid[k];
          const acc_t value = static_cast<acc_t>(v[k]);
          const acc_t delta = td_error<acc_t>(static_cast<acc_t>(r[k]), value, next_value[i], acc_t(gamma));
          carry[i] = return_step<acc_t>(here, delta, acc_t(gamma * lam))(carry[i]);
          next_value[i] = here ? value : next_value[i];
          adv[k] = here ? carry[i] : acc_t(0);
          ret[k] = here ? carry[i] + value : acc_t(0);
        }
      }
    });
  });
  return {advantages, returns};
}

template <typename scalar_t, typename acc_t, MinFormMode mode, int64_t n>
void min_form_block(const scalar_t* s, const uint8_t* step_mask, const uint8_t* valid, int64_t T,
                    acc_t temperature, acc_t* rew, acc_t* ret) {
  OnlineSoftmax<acc_t> softmax[n];
  for (int64_t i = 0; i < n; ++i) {
    softmax[i] = OnlineSoftmax<acc_t>::empty(temperature);
    if (mode != MinFormMode::kSoft) continue;
    for (int64_t k = i * T; k < (i + 1) * T; ++k)
      if (valid[k] && step_mask[k]) softmax[i].add(min_form_logit(static_cast<acc_t>(s[k])));
  }
  acc_t carry[n];
  for (int64_t i = 0; i < n; ++i) carry[i] = min_form_identity<acc_t, mode>();
  for (int64_t t = T - 1; t >= 0; --t) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t k = i * T + t;
      const bool step = (valid[k] != 0) & (step_mask[k] != 0);  // mask bytes: any nonzero is valid, 2 & 1 is 0
      acc_t reward = 0;
      if (mode == MinFormMode::kSoft) {
        if (step) reward = min_form_token_reward<acc_t, mode>(static_cast<acc_t>(s[k]), softmax[i]);
      } else {
        reward = step ? static_cast<acc_t>(s[k]) : acc_t(0);
      }
      const acc_t combined = min_form_combine<acc_t, mode>(reward, carry[i]);
      carry[i] = step ? combined : carry[i];
      rew[k] = reward;
      ret[k] = valid[k] ? min_form_output<acc_t, mode>(carry[i]) : acc_t(0);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> min_form_returns_cpu(const at::Tensor& scores_,
                                                        const at::Tensor& step_mask_,
                                                        const at::Tensor& mask_, double temperature,
                                                        c10::string_view mode) {
  check_tokens("step_mask", step_mask_, "scores", scores_);
  check_tokens("mask", mask_, "scores", scores_);
  auto scores = scores_.contiguous();
  auto step_mask = mask_as_bytes(step_mask_.contiguous());
  auto mask = mask_as_bytes(mask_.contiguous());
  auto token_rewards = empty_output(scores);
  auto returns = empty_output(scores);
  const int64_t B = scores.size(0), T = scores.size(1);
  FASTRL_DISPATCH_MIN_FORM_MODE(std::string(mode), [&] {
    FASTRL_DISPATCH_FLOATING(scores.scalar_type(), "min_form_returns_cpu", [&] {
      for_row_blocks(B, T, [&](int64_t row, auto rows) {
      constexpr int64_t n = decltype(rows)::value;
        min_form_block<scalar_t, acc_t, kMode, n>(
            scores.data_ptr<scalar_t>() + row * T, mask_data(step_mask) + row * T,
            mask_data(mask) + row * T, T, acc_t(temperature),
            token_rewards.data_ptr<acc_t>() + row * T, returns.data_ptr<acc_t>() + row * T);
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
