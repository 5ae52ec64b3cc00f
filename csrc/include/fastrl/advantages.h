// Arithmetic of the grouped advantages (DESIGN 3.2), shared by the CPU and
// CUDA kernels. Group statistics accumulate in double whatever the input
// dtype; stds are unbiased (Bessel), as torch.std.
#pragma once

#include <string_view>

#include "fastrl/common.h"

namespace fastrl {

enum class GroupMethod : int { kGrpo = 0, kDrGrpo = 1, kRloo = 2, kBatchStd = 3, kUnknown = -1 };

inline GroupMethod group_method(std::string_view name) {
  if (name == "grpo") return GroupMethod::kGrpo;
  if (name == "dr_grpo") return GroupMethod::kDrGrpo;
  if (name == "rloo") return GroupMethod::kRloo;
  if (name == "batch_std") return GroupMethod::kBatchStd;
  return GroupMethod::kUnknown;
}

// One group's statistics: its size, mean and sum of squared deviations.
struct GroupStats {
  double count, mean, m2;
};

FASTRL_HD double unbiased_std(double count, double m2) {
  return count > 1 ? sqrt(m2 / (count - 1)) : 0.0;
}

// The advantage of a response with score s in a group with stats g.
// Singletons follow verl's loop estimators: grpo takes mean 0 and std 1,
// dr_grpo and rloo give the score itself; batch_std takes mean 0.
FASTRL_HD double group_advantage(GroupMethod method, double s, GroupStats g, double eps, double batch_std) {
  const bool single = g.count < 2;
  const double mean = single ? 0.0 : g.mean;
  switch (method) {
    case GroupMethod::kGrpo:
      return (s - mean) / ((single ? 1.0 : unbiased_std(g.count, g.m2)) + eps);
    case GroupMethod::kDrGrpo:
      return s - mean;
    case GroupMethod::kRloo:
      // s minus the mean of the other members: n / (n - 1) * (s - mean)
      return single ? s : g.count / (g.count - 1) * (s - mean);
    default:
      return (s - mean) / (batch_std + eps);
  }
}

}  // namespace fastrl
