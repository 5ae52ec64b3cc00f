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
  // The group's coefficients replace its stats: shift in `mean`, divisor in `m2`.
  for (int64_t g = threadIdx.x; g < B; g += blockDim.x)
    if (count[g] > 0) {
      const GroupCoefficients c = group_coefficients(method, GroupStats{count[g], mean[g], m2[g]}, eps, batch_std);
      mean[g] = c.shift;
      m2[g] = c.divisor;
    }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x)
    out[i] = static_cast<acc_t>(GroupCoefficients{mean[ids[i]], m2[ids[i]]}(static_cast<double>(scores[i])));
}

at::Tensor group_advantages_cuda(const at::Tensor& scores_, const at::Tensor& group_ids_, c10::string_view method_,
                                 double eps) {
  check_groups(scores_, group_ids_);
  const GroupMethod method = group_method(method_);
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
__global__ void broadcast_to_tokens_kernel(const scalar_t* __restrict__ advantages, const uint8_t* __restrict__ mask,
                                           int64_t n,
                                           int64_t T, acc_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = mask[i] ? static_cast<acc_t>(advantages[i / T]) : acc_t(0);
}

at::Tensor broadcast_to_tokens_cuda(const at::Tensor& advantages_, const at::Tensor& mask_) {
  check_broadcast_inputs(advantages_, mask_);
  const c10::cuda::CUDAGuard guard(advantages_.device());
  auto advantages = advantages_.contiguous();
  auto mask = mask_as_bytes(mask_.contiguous());
  const int64_t B = mask.size(0), T = mask.size(1), n = B * T;
  auto out = at::empty({B, T}, advantages.options().dtype(empty_output(advantages).scalar_type()));
  if (n == 0) return out;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 65536);
  auto stream = at::cuda::getCurrentCUDAStream();
  FASTRL_DISPATCH_FLOATING(advantages.scalar_type(), "broadcast_to_tokens_cuda", [&] {
    broadcast_to_tokens_kernel<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
        advantages.data_ptr<scalar_t>(), mask_data(mask), n, T, out.data_ptr<acc_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ---- RiskPO: one block too. The bookkeeping the CPU does in one sequential
// pass (first appearances, each row's index within its question) must keep
// batch order here: question numbers come from a block-wide scan over the
// rows that open a group, and indices within a question from chunks of
// blockDim rows whose warps take turns, ranking lanes of the same group with
// __match_any_sync. Quantiles: one warp per bundle, ranks by counting.

using ll = long long;

// Exclusive prefix sum of values[0, n) in place; every thread gets the total.
__device__ int64_t block_exclusive_scan(int64_t* values, int64_t n, int64_t* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int64_t chunk = (n + blockDim.x - 1) / blockDim.x;
  const int64_t begin = min(n, static_cast<int64_t>(threadIdx.x) * chunk), end = min(n, begin + chunk);
  int64_t local = 0;
  for (int64_t i = begin; i < end; ++i) local += values[i];
  int64_t x = local;
  for (int d = 1; d < 32; d *= 2) {
    const int64_t y = __shfl_up_sync(0xffffffffu, x, d);
    if (lane >= d) x += y;
  }
  if (lane == 31) shared[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int64_t w = lane < warps ? shared[lane] : 0;
    for (int d = 1; d < 32; d *= 2) {
      const int64_t y = __shfl_up_sync(0xffffffffu, w, d);
      if (lane >= d) w += y;
    }
    if (lane < warps) shared[lane] = w;
  }
  __syncthreads();
  int64_t offset = x - local + (warp > 0 ? shared[warp - 1] : 0);
  const int64_t total = shared[warps - 1];
  for (int64_t i = begin; i < end; ++i) {
    const int64_t v = values[i];
    values[i] = offset;
    offset += v;
  }
  __syncthreads();
  return total;
}

__device__ double warp_sum(double x) {
  for (int d = 16; d > 0; d /= 2) x += __shfl_xor_sync(0xffffffffu, x, d);
  return x;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    risk_advantages_kernel(const scalar_t* __restrict__ scores, const int64_t* __restrict__ ids, int64_t B,
                           int64_t bundle_size, RiskParams params, RiskCredit credit, int64_t* iscratch,
                           double* dscratch, acc_t* __restrict__ out) {
  __shared__ int64_t shared[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  // Per group id g: first row, question number, size; per row: index in question;
  // per bundle: papers P and its first paper; per paper: total, centred sum, advantage.
  int64_t *first = iscratch, *question = iscratch + B, *size = iscratch + 2 * B, *index = iscratch + 3 * B,
          *papers = iscratch + 4 * B, *first_paper = iscratch + 5 * B;
  double *mean = dscratch, *m2 = dscratch + B, *total = dscratch + 2 * B, *centred = dscratch + 3 * B,
         *advantage = dscratch + 4 * B;
  for (int64_t g = threadIdx.x; g < B; g += blockDim.x) {
    first[g] = B;
    size[g] = 0;
    papers[g] = INT64_MAX;
    mean[g] = m2[g] = total[g] = centred[g] = 0.0;
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x) atomicMin(reinterpret_cast<ll*>(&first[ids[i]]), ll(i));
  __syncthreads();
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x) index[i] = first[ids[i]] == i;  // opens its question
  __syncthreads();
  const int64_t n_questions = block_exclusive_scan(index, B, shared);
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x)
    if (first[ids[i]] == i) question[ids[i]] = index[i];
  __syncthreads();

  // Index within the question, in batch order.
  for (int64_t start = 0; start < B; start += blockDim.x) {
    const int64_t i = start + threadIdx.x;
    const bool active = i < B;
    const int64_t g = active ? ids[i] : -1 - lane;  // inactive lanes match nobody
    const unsigned peers = __match_any_sync(0xffffffffu, static_cast<ll>(g));
    const int leader = __ffs(peers) - 1;
    const int rank = __popc(peers & ((1u << lane) - 1));
    for (int turn = 0; turn < warps; ++turn) {
      if (warp == turn) {
        int64_t base = 0;
        if (active && lane == leader) {
          base = size[g];
          size[g] = base + __popc(peers);
        }
        base = __shfl_sync(0xffffffffu, base, leader);
        if (active) index[i] = base + rank;
      }
      __syncthreads();
    }
  }

  for (int64_t i = threadIdx.x; i < B; i += blockDim.x) atomicAdd(&mean[ids[i]], static_cast<double>(scores[i]));
  __syncthreads();
  for (int64_t g = threadIdx.x; g < B; g += blockDim.x)
    if (size[g] > 0) {
      mean[g] /= static_cast<double>(size[g]);
      atomicMin(reinterpret_cast<ll*>(&papers[question[g] / bundle_size]), ll(size[g]));
    }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
    const double d = static_cast<double>(scores[i]) - mean[ids[i]];
    atomicAdd(&m2[ids[i]], d * d);
  }
  const int64_t n_bundles = n_questions > 0 ? (n_questions - 1) / bundle_size + 1 : 0;  // no overflow near INT64_MAX
  for (int64_t k = threadIdx.x; k < n_bundles; k += blockDim.x) first_paper[k] = papers[k];
  __syncthreads();
  block_exclusive_scan(first_paper, n_bundles, shared);
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
    const int64_t g = ids[i], k = question[g] / bundle_size, p = index[i];
    if (p >= papers[k]) continue;
    const double s = static_cast<double>(scores[i]);
    atomicAdd(&total[first_paper[k] + p], s);
    atomicAdd(&centred[first_paper[k] + p], s - mean[g]);
  }
  __syncthreads();

  // One warp per bundle: the quantiles of its P totals by rank counting (ties
  // ranked by position, so each rank has exactly one holder), their mean and std.
  for (int64_t k = warp; k < n_bundles; k += warps) {
    const int64_t P = papers[k];
    const double* x = total + first_paper[k];
    const double rank_a = params.alpha * static_cast<double>(P - 1), rank_b = params.beta * static_cast<double>(P - 1);
    const int64_t wanted[4] = {static_cast<int64_t>(rank_a), static_cast<int64_t>(ceil(rank_a)),
                               static_cast<int64_t>(rank_b), static_cast<int64_t>(ceil(rank_b))};
    double at_rank[4] = {0.0, 0.0, 0.0, 0.0}, sum = 0.0;
    for (int64_t j = lane; j < P; j += 32) {
      int64_t rank = 0;
      for (int64_t m = 0; m < P; ++m) rank += x[m] < x[j] || (x[m] == x[j] && m < j);
      for (int r = 0; r < 4; ++r)
        if (rank == wanted[r]) at_rank[r] = x[j];
      sum += x[j];
    }
    for (int r = 0; r < 4; ++r) at_rank[r] = warp_sum(at_rank[r]);
    const double bundle_mean = warp_sum(sum) / static_cast<double>(P);
    double squares = 0.0;
    for (int64_t j = lane; j < P; j += 32) squares += (x[j] - bundle_mean) * (x[j] - bundle_mean);
    squares = warp_sum(squares);
    const double a = lerp(at_rank[0], at_rank[1], rank_a - static_cast<double>(wanted[0]));
    const double b = lerp(at_rank[2], at_rank[3], rank_b - static_cast<double>(wanted[2]));
    const double scale = (P > 1 ? unbiased_std(static_cast<double>(P), squares) : 1.0) + 1e-6;
    for (int64_t j = lane; j < P; j += 32) advantage[first_paper[k] + j] = risk_advantage(x[j], a, b, params) / scale;
  }
  __syncthreads();

  for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
    const int64_t g = ids[i], k = question[g] / bundle_size, p = index[i];
    double value = 0.0;
    if (p < papers[k]) {
      const double A = advantage[first_paper[k] + p];
      if (credit == RiskCredit::kStd) {
        value = A / credit_std(GroupStats{static_cast<double>(size[g]), mean[g], m2[g]});
      } else {
        const double sum = centred[first_paper[k] + p];
        const int64_t in_bundle = min(bundle_size, n_questions - k * bundle_size);
        value = fabs(sum) <= 1e-6 ? A / static_cast<double>(in_bundle)
                                  : A * (static_cast<double>(scores[i]) - mean[g]) / sum;
      }
    }
    out[i] = static_cast<acc_t>(value);
  }
}

at::Tensor risk_advantages_cuda(const at::Tensor& scores_, const at::Tensor& group_ids_, int64_t bundle_size,
                                double alpha, double beta, double omega, bool natural_baseline,
                                c10::string_view credit_) {
  check_risk_inputs(scores_, group_ids_, bundle_size);
  const RiskCredit credit = risk_credit(credit_);
  const c10::cuda::CUDAGuard guard(scores_.device());
  auto scores = scores_.contiguous();
  auto group_ids = group_ids_.contiguous();
  auto advantages = empty_output(scores);
  const int64_t B = scores.size(0);
  if (B == 0) return advantages;
  auto iscratch = at::empty({6 * B + 1}, group_ids.options());
  auto dscratch = at::empty({5 * B}, scores.options().dtype(at::kDouble));
  auto stream = at::cuda::getCurrentCUDAStream();
  FASTRL_DISPATCH_FLOATING(scores.scalar_type(), "risk_advantages_cuda", [&] {
    risk_advantages_kernel<scalar_t, acc_t><<<1, kThreads, 0, stream>>>(
        scores.data_ptr<scalar_t>(), group_ids.data_ptr<int64_t>(), B, bundle_size,
        RiskParams{alpha, beta, omega, natural_baseline}, credit, iscratch.data_ptr<int64_t>(),
        dscratch.data_ptr<double>(), advantages.data_ptr<acc_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return advantages;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrl, CUDA, m) {
  m.impl("group_advantages", &group_advantages_cuda);
  m.impl("broadcast_to_tokens", &broadcast_to_tokens_cuda);
  m.impl("risk_advantages", &risk_advantages_cuda);
}

}  // namespace fastrl
