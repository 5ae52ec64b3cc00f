// Grouped advantages on CUDA: one launch of a single block. A batch holds
// thousands of responses, so one block sweeping it a few times beats the
// launches and host syncs of a multi-kernel reduction. Group statistics live
// in a global scratch buffer indexed by group id (ids are in [0, B)),
// accumulated with double atomics; __syncthreads orders the passes.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "fastrl/advantages.h"
#include "fastrl/tensors.h"

namespace fastrl {
namespace {

constexpr int kThreads = 1024;

// Sum over the block; every thread gets the result.
__device__ double block_sum(double x, double* shared) {
  for (int d = 16; d > 0; d /= 2) x += __shfl_xor_sync(0xffffffffu, x, d);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  x = lane < blockDim.x / 32 ? shared[lane] : 0.0;
  for (int d = 16; d > 0; d /= 2) x += __shfl_xor_sync(0xffffffffu, x, d);
  __syncthreads();  // `shared` may be reused right after
  return x;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    group_advantages_kernel(const scalar_t* __restrict__ scores, const int64_t* __restrict__ ids, int64_t B,
                            GroupMethod method, double eps, double* __restrict__ scratch,
                            acc_t* __restrict__ out) {
  __shared__ double shared[32];
  double* count = scratch;
  double* mean = scratch + B;  // holds sums until the second pass
  double* m2 = scratch + 2 * B;
  for (int64_t i = threadIdx.x; i < 3 * B; i += blockDim.x) scratch[i] = 0.0;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
    atomicAdd(&count[ids[i]], 1.0);
    atomicAdd(&mean[ids[i]], static_cast<double>(scores[i]));
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x)
    if (count[i] > 0) mean[i] /= count[i];
  __syncthreads();
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
    const double d = static_cast<double>(scores[i]) - mean[ids[i]];
    atomicAdd(&m2[ids[i]], d * d);
  }
  double batch_std = 1.0;
  if (method == GroupMethod::kBatchStd && B > 1) {
    double local = 0.0;
    for (int64_t i = threadIdx.x; i < B; i += blockDim.x) local += static_cast<double>(scores[i]);
    const double batch_mean = block_sum(local, shared) / B;
    local = 0.0;
    for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
      const double d = static_cast<double>(scores[i]) - batch_mean;
      local += d * d;
    }
    batch_std = unbiased_std(static_cast<double>(B), block_sum(local, shared));
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
    const int64_t g = ids[i];
    out[i] = static_cast<acc_t>(
        group_advantage(method, static_cast<double>(scores[i]), GroupStats{count[g], mean[g], m2[g]}, eps, batch_std));
  }
}

at::Tensor group_advantages_cuda(const at::Tensor& scores_, const at::Tensor& group_ids_, c10::string_view method_,
                                 double eps) {
  const GroupMethod method = group_method(std::string_view(method_.data(), method_.size()));
  TORCH_CHECK_VALUE(method != GroupMethod::kUnknown, "fastrl: unknown group advantage method '",
                    std::string(method_), "'");
  const c10::cuda::CUDAGuard guard(scores_.device());
  auto scores = scores_.contiguous();
  auto group_ids = group_ids_.contiguous();
  auto advantages = empty_output(scores);
  const int64_t B = scores.size(0);
  if (B == 0) return advantages;
  auto scratch = at::empty({3 * B}, scores.options().dtype(at::kDouble));
  auto stream = at::cuda::getCurrentCUDAStream();
  FASTRL_DISPATCH_FLOATING(scores.scalar_type(), "group_advantages_cuda", [&] {
    group_advantages_kernel<scalar_t, acc_t><<<1, kThreads, 0, stream>>>(
        scores.data_ptr<scalar_t>(), group_ids.data_ptr<int64_t>(), B, method, eps, scratch.data_ptr<double>(),
        advantages.data_ptr<acc_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return advantages;
}

template <typename scalar_t, typename acc_t>
__global__ void broadcast_to_tokens_kernel(const scalar_t* __restrict__ advantages, MaskRef mask, int64_t n,
                                           int64_t T, acc_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = mask[i] ? static_cast<acc_t>(advantages[i / T]) : acc_t(0);
}

at::Tensor broadcast_to_tokens_cuda(const at::Tensor& advantages_, const at::Tensor& mask_) {
  const c10::cuda::CUDAGuard guard(advantages_.device());
  auto advantages = advantages_.contiguous();
  auto mask = mask_.contiguous();
  const int64_t B = mask.size(0), T = mask.size(1), n = B * T;
  auto out = at::empty({B, T}, advantages.options().dtype(empty_output(advantages).scalar_type()));
  if (n == 0) return out;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 65536);
  auto stream = at::cuda::getCurrentCUDAStream();
  FASTRL_DISPATCH_FLOATING(advantages.scalar_type(), "broadcast_to_tokens_cuda", [&] {
    broadcast_to_tokens_kernel<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
        advantages.data_ptr<scalar_t>(), mask_ref(mask), n, T, out.data_ptr<acc_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrl, CUDA, m) {
  m.impl("group_advantages", &group_advantages_cuda);
  m.impl("broadcast_to_tokens", &broadcast_to_tokens_cuda);
}

}  // namespace fastrl
