// Grouped advantages on the CPU: a few O(B) passes over the batch (B is the
// number of responses, thousands at most), so one thread suffices; and their
// broadcast to the tokens, the one pass here that is [B, T].
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "fastrl/advantages.h"
#include "fastrl/tensors.h"

namespace fastrl {
namespace {

at::Tensor group_advantages_cpu(const at::Tensor& scores_, const at::Tensor& group_ids_, c10::string_view method_,
                                double eps) {
  const GroupMethod method = group_method(std::string_view(method_.data(), method_.size()));
  TORCH_CHECK_VALUE(method != GroupMethod::kUnknown, "fastrl: unknown group advantage method '",
                    std::string(method_), "'");
  auto scores = scores_.contiguous();
  auto group_ids = group_ids_.contiguous();
  auto advantages = empty_output(scores);
  const int64_t B = scores.size(0);
  const int64_t* ids = group_ids.data_ptr<int64_t>();
  FASTRL_DISPATCH_FLOATING(scores.scalar_type(), "group_advantages_cpu", [&] {
    const scalar_t* s = scores.data_ptr<scalar_t>();
    std::vector<GroupStats> stats(B, GroupStats{0.0, 0.0, 0.0});
    for (int64_t i = 0; i < B; ++i) {
      stats[ids[i]].count += 1;
      stats[ids[i]].mean += static_cast<double>(s[i]);  // the sum, until divided below
    }
    for (auto& g : stats)
      if (g.count > 0) g.mean /= g.count;
    for (int64_t i = 0; i < B; ++i) {
      const double d = static_cast<double>(s[i]) - stats[ids[i]].mean;
      stats[ids[i]].m2 += d * d;
    }
    double batch_std = 1.0;
    if (method == GroupMethod::kBatchStd && B > 1) {
      GroupStats all{static_cast<double>(B), 0.0, 0.0};
      for (int64_t i = 0; i < B; ++i) all.mean += static_cast<double>(s[i]) / B;
      for (int64_t i = 0; i < B; ++i) all.m2 += (s[i] - all.mean) * (s[i] - all.mean);
      batch_std = unbiased_std(all.count, all.m2);
    }
    acc_t* out = advantages.data_ptr<acc_t>();
    for (int64_t i = 0; i < B; ++i)
      out[i] = static_cast<acc_t>(group_advantage(method, static_cast<double>(s[i]), stats[ids[i]], eps, batch_std));
  });
  return advantages;
}

at::Tensor broadcast_to_tokens_cpu(const at::Tensor& advantages_, const at::Tensor& mask_) {
  auto advantages = advantages_.contiguous();
  auto mask = mask_.contiguous();
  const int64_t B = mask.size(0), T = mask.size(1);
  auto out = at::empty({B, T}, advantages.options().dtype(empty_output(advantages).scalar_type()));
  const MaskRef m = mask_ref(mask);
  FASTRL_DISPATCH_FLOATING(advantages.scalar_type(), "broadcast_to_tokens_cpu", [&] {
    const scalar_t* adv = advantages.data_ptr<scalar_t>();
    acc_t* o = out.data_ptr<acc_t>();
    at::parallel_for(0, B, std::max<int64_t>(1, 32768 / std::max<int64_t>(T, 1)), [&](int64_t b0, int64_t b1) {
      std::vector<uint8_t> buffer;
      for (int64_t b = b0; b < b1; ++b) {
        const acc_t a = static_cast<acc_t>(adv[b]);
        const uint8_t* __restrict__ valid = mask_bytes(m, b, 1, T, buffer);
        acc_t* __restrict__ row = o + b * T;
        for (int64_t t = 0; t < T; ++t) row[t] = valid[t] ? a : acc_t(0);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrl, CPU, m) {
  m.impl("group_advantages", &group_advantages_cpu);
  m.impl("broadcast_to_tokens", &broadcast_to_tokens_cpu);
}

}  // namespace fastrl
