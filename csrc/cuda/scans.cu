// Token scans on CUDA: one warp per row. The row is walked from its end in
// tiles of kItems consecutive tokens per lane; each tile is a warp-wide
// reverse scan (shuffles, no shared memory) seeded with the carry of the
// tiles to its right. One launch per call, no host sync, on the current stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "fastrl/scans.h"
#include "fastrl/tensors.h"

namespace fastrl {
namespace {

constexpr int kWarp = 32;
constexpr int kItems = 8;
constexpr int kTile = kWarp * kItems;
constexpr int kWarpsPerBlock = 4;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename T>
__device__ __forceinline__ T shfl_down(T v, int delta) {
  return __shfl_down_sync(kFullMask, v, delta);
}

template <typename T>
__device__ __forceinline__ T shfl_first(T v) {
  return __shfl_sync(kFullMask, v, 0);
}

// Exclusive reverse scan of lane aggregates: lane i gets the composition of
// lanes i+1..31 (the tokens to its right in the tile); lane 31 gets the identity.
template <typename acc_t>
__device__ Affine<acc_t> warp_suffix_exclusive(Affine<acc_t> f, int lane) {
#pragma unroll
  for (int d = 1; d < kWarp; d *= 2) {
    Affine<acc_t> right{shfl_down(f.a, d), shfl_down(f.b, d)};
    if (lane + d < kWarp) f = compose(f, right);
  }
  Affine<acc_t> next{shfl_down(f.a, 1), shfl_down(f.b, 1)};
  return lane == kWarp - 1 ? identity_affine<acc_t>() : next;
}

template <typename acc_t, typename Combine>
__device__ acc_t warp_suffix_exclusive(acc_t x, int lane, acc_t identity, Combine combine) {
#pragma unroll
  for (int d = 1; d < kWarp; d *= 2) {
    acc_t right = shfl_down(x, d);
    if (lane + d < kWarp) x = combine(x, right);
  }
  acc_t next = shfl_down(x, 1);
  return lane == kWarp - 1 ? identity : next;
}

struct RowCoords {
  int64_t row;
  int lane;
};

__device__ __forceinline__ RowCoords row_coords() {
  return {static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp,
          static_cast<int>(threadIdx.x % kWarp)};
}

int64_t num_blocks(int64_t rows) { return (rows + kWarpsPerBlock - 1) / kWarpsPerBlock; }

template <typename scalar_t, typename acc_t>
__global__ void discounted_returns_kernel(const scalar_t* __restrict__ rewards, const uint8_t* __restrict__ mask,
                                          acc_t* __restrict__ returns, int64_t B, int64_t T,
                                          acc_t gamma) {
  const RowCoords rc = row_coords();
  if (rc.row >= B) return;  // warp-uniform
  const int64_t off = rc.row * T;
  mask += off;
  rewards += off;
  returns += off;
  acc_t carry = 0;  // the return at the first valid token right of the tile
  for (int64_t tile = (T - 1) / kTile; tile >= 0; --tile) {
    const int64_t base = tile * kTile + rc.lane * kItems;
    bool valid[kItems];
    Affine<acc_t> step[kItems];
    Affine<acc_t> lane_map = identity_affine<acc_t>();
#pragma unroll
    for (int i = kItems - 1; i >= 0; --i) {
      const int64_t t = base + i;
      valid[i] = t < T && mask[t];
      step[i] = return_step<acc_t>(valid[i], valid[i] ? static_cast<acc_t>(rewards[t]) : acc_t(0), gamma);
      lane_map = compose(step[i], lane_map);
    }
    acc_t x = warp_suffix_exclusive(lane_map, rc.lane)(carry);
#pragma unroll
    for (int i = kItems - 1; i >= 0; --i) {
      const int64_t t = base + i;
      x = step[i](x);
      if (t < T) returns[t] = valid[i] ? x : acc_t(0);
    }
    carry = shfl_first(x);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void gae_kernel(const scalar_t* __restrict__ rewards, const scalar_t* __restrict__ values,
                           const uint8_t* __restrict__ mask, acc_t* __restrict__ advantages,
                           acc_t* __restrict__ returns,
                           int64_t B, int64_t T, acc_t gamma, acc_t lam) {
  const RowCoords rc = row_coords();
  if (rc.row >= B) return;
  const int64_t off = rc.row * T;
  mask += off;
  rewards += off;
  values += off;
  advantages += off;
  returns += off;
  acc_t next_value_carry = 0;  // value at the first valid token right of the tile
  acc_t carry = 0;             // advantage at that token
  for (int64_t tile = (T - 1) / kTile; tile >= 0; --tile) {
    const int64_t base = tile * kTile + rc.lane * kItems;
    bool valid[kItems];
    acc_t value[kItems], reward[kItems];
    int has_valid = 0;
    acc_t first_value = 0;  // value at this lane's first valid token
#pragma unroll
    for (int i = kItems - 1; i >= 0; --i) {
      const int64_t t = base + i;
      valid[i] = t < T && mask[t];
      value[i] = valid[i] ? static_cast<acc_t>(values[t]) : acc_t(0);
      reward[i] = valid[i] ? static_cast<acc_t>(rewards[t]) : acc_t(0);
      if (valid[i]) {
        first_value = value[i];
        has_valid = 1;
      }
    }
    // V_next of this lane's last token: the first lane to the right that has
    // a valid token (a suffix scan of "first one that has"), else the carry.
    acc_t next_value = next_value_carry;
#pragma unroll
    for (int d = 1; d < kWarp; d *= 2) {
      const int right_has = shfl_down(has_valid, d);
      const acc_t right_value = shfl_down(first_value, d);
      if (rc.lane + d < kWarp && !has_valid && right_has) {
        has_valid = 1;
        first_value = right_value;
      }
    }
    {
      const int right_has = shfl_down(has_valid, 1);
      const acc_t right_value = shfl_down(first_value, 1);
      if (rc.lane < kWarp - 1 && right_has) next_value = right_value;
    }

    Affine<acc_t> step[kItems];
    Affine<acc_t> lane_map = identity_affine<acc_t>();
#pragma unroll
    for (int i = kItems - 1; i >= 0; --i) {
      const acc_t delta = td_error<acc_t>(reward[i], value[i], next_value, gamma);
      step[i] = return_step<acc_t>(valid[i], delta, gamma * lam);
      lane_map = compose(step[i], lane_map);
      if (valid[i]) next_value = value[i];
    }
    acc_t x = warp_suffix_exclusive(lane_map, rc.lane)(carry);
#pragma unroll
    for (int i = kItems - 1; i >= 0; --i) {
      const int64_t t = base + i;
      x = step[i](x);
      if (t < T) {
        advantages[t] = valid[i] ? x : acc_t(0);
        returns[t] = valid[i] ? x + value[i] : acc_t(0);
      }
    }
    carry = shfl_first(x);
    next_value_carry = shfl_first(next_value);
  }
}

template <typename scalar_t, typename acc_t, MinFormMode mode>
__global__ void min_form_returns_kernel(const scalar_t* __restrict__ scores,
                                        const uint8_t* __restrict__ step_mask,
                                        const uint8_t* __restrict__ mask, acc_t* __restrict__ token_rewards,
                                        acc_t* __restrict__ returns, int64_t B, int64_t T,
                                        acc_t temperature) {
  const RowCoords rc = row_coords();
  if (rc.row >= B) return;
  const int64_t off = rc.row * T;
  mask += off;
  step_mask += off;
  scores += off;
  token_rewards += off;
  returns += off;

  // Pass 1 (soft only): the softmax normaliser over the row's step tokens.
  OnlineSoftmax<acc_t> softmax = OnlineSoftmax<acc_t>::empty(temperature);
  if (mode == MinFormMode::kSoft) {
    for (int64_t t = rc.lane; t < T; t += kWarp)
      if (mask[t] && step_mask[t])
        softmax.add(min_form_logit(static_cast<acc_t>(scores[t])));
#pragma unroll
    for (int d = kWarp / 2; d > 0; d /= 2) {
      OnlineSoftmax<acc_t> other{__shfl_xor_sync(kFullMask, softmax.max, d),
                                 __shfl_xor_sync(kFullMask, softmax.sum, d), temperature};
      softmax.merge(other);
    }
  }

  // Pass 2: token rewards and their reverse scan (sum, or min for strict).
  const acc_t identity = min_form_identity<acc_t, mode>();
  acc_t carry = identity;
  for (int64_t tile = (T - 1) / kTile; tile >= 0; --tile) {
    const int64_t base = tile * kTile + rc.lane * kItems;
    bool valid[kItems], step[kItems];
    acc_t reward[kItems];
    acc_t lane_total = identity;
#pragma unroll
    for (int i = kItems - 1; i >= 0; --i) {
      const int64_t t = base + i;
      valid[i] = t < T && mask[t];
      step[i] = valid[i] && step_mask[t];
      reward[i] = step[i] ? min_form_token_reward<acc_t, mode>(static_cast<acc_t>(scores[t]), softmax)
                          : acc_t(0);
      if (step[i]) lane_total = min_form_combine<acc_t, mode>(reward[i], lane_total);
    }
    acc_t right = warp_suffix_exclusive(lane_total, rc.lane, identity, [](acc_t a, acc_t b) {
      return min_form_combine<acc_t, mode>(a, b);
    });
    acc_t x = min_form_combine<acc_t, mode>(right, carry);
#pragma unroll
    for (int i = kItems - 1; i >= 0; --i) {
      const int64_t t = base + i;
      if (step[i]) x = min_form_combine<acc_t, mode>(reward[i], x);
      if (t < T) {
        token_rewards[t] = reward[i];
        returns[t] = valid[i] ? min_form_output<acc_t, mode>(x) : acc_t(0);
      }
    }
    carry = shfl_first(x);
  }
}

void check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }

at::Tensor discounted_returns_cuda(const at::Tensor& rewards_, const at::Tensor& mask_, double gamma) {
  check_tokens("mask", mask_, "rewards", rewards_);
  const c10::cuda::CUDAGuard guard(rewards_.device());
  auto rewards = rewards_.contiguous();
  auto mask = mask_as_bytes(mask_.contiguous());
  auto returns = empty_output(rewards);
  const int64_t B = rewards.size(0), T = rewards.size(1);
  if (returns.numel() == 0) return returns;
  auto stream = at::cuda::getCurrentCUDAStream();
  FASTRL_DISPATCH_FLOATING(rewards.scalar_type(), "discounted_returns_cuda", [&] {
    discounted_returns_kernel<scalar_t, acc_t><<<num_blocks(B), kWarpsPerBlock * kWarp, 0, stream>>>(
        rewards.data_ptr<scalar_t>(), mask_data(mask), returns.data_ptr<acc_t>(), B, T, acc_t(gamma));
  });
  check_launch();
  return returns;
}

std::tuple<at::Tensor, at::Tensor> gae_cuda(const at::Tensor& rewards_, const at::Tensor& values_,
                                            const at::Tensor& mask_, double gamma, double lam) {
  check_gae_inputs(rewards_, values_, mask_);
  const c10::cuda::CUDAGuard guard(rewards_.device());
  auto rewards = rewards_.contiguous();
  auto values = values_.contiguous();
  auto mask = mask_as_bytes(mask_.contiguous());
  auto advantages = empty_output(rewards);
  auto returns = empty_output(rewards);
  const int64_t B = rewards.size(0), T = rewards.size(1);
  if (returns.numel() == 0) return {advantages, returns};
  auto stream = at::cuda::getCurrentCUDAStream();
  FASTRL_DISPATCH_FLOATING(rewards.scalar_type(), "gae_cuda", [&] {
    gae_kernel<scalar_t, acc_t><<<num_blocks(B), kWarpsPerBlock * kWarp, 0, stream>>>(
        rewards.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(), mask_data(mask),
        advantages.data_ptr<acc_t>(), returns.data_ptr<acc_t>(), B, T, acc_t(gamma), acc_t(lam));
  });
  check_launch();
  return {advantages, returns};
}

std::tuple<at::Tensor, at::Tensor> min_form_returns_cuda(const at::Tensor& scores_,
                                                         const at::Tensor& step_mask_,
                                                         const at::Tensor& mask_, double temperature,
                                                         c10::string_view mode) {
  check_tokens("step_mask", step_mask_, "scores", scores_);
  check_tokens("mask", mask_, "scores", scores_);
  const c10::cuda::CUDAGuard guard(scores_.device());
  auto scores = scores_.contiguous();
  auto step_mask = mask_as_bytes(step_mask_.contiguous());
  auto mask = mask_as_bytes(mask_.contiguous());
  auto token_rewards = empty_output(scores);
  auto returns = empty_output(scores);
  const int64_t B = scores.size(0), T = scores.size(1);
  if (returns.numel() == 0) return {token_rewards, returns};
  auto stream = at::cuda::getCurrentCUDAStream();
  FASTRL_DISPATCH_MIN_FORM_MODE(std::string(mode), [&] {
    FASTRL_DISPATCH_FLOATING(scores.scalar_type(), "min_form_returns_cuda", [&] {
      min_form_returns_kernel<scalar_t, acc_t, kMode>
          <<<num_blocks(B), kWarpsPerBlock * kWarp, 0, stream>>>(
              scores.data_ptr<scalar_t>(), mask_data(step_mask), mask_data(mask),
              token_rewards.data_ptr<acc_t>(), returns.data_ptr<acc_t>(), B, T,
              acc_t(temperature));
    });
  });
  check_launch();
  return {token_rewards, returns};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrl, CUDA, m) {
  m.impl("discounted_returns", &discounted_returns_cuda);
  m.impl("gae", &gae_cuda);
  m.impl("min_form_returns", &min_form_returns_cuda);
}

}  // namespace fastrl
