// Arithmetic of the grouped advantages (DESIGN 3.2), shared by the CPU and
// CUDA kernels. Group statistics accumulate in double whatever the input
// dtype; stds are unbiased (Bessel), as torch.std.
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string>
#include <string_view>

#include "fastrl/common.h"

namespace fastrl {

enum class GroupMethod : int { kGrpo = 0, kDrGrpo = 1, kRloo = 2, kBatchStd = 3 };

inline GroupMethod group_method(c10::string_view name_) {
  const std::string_view name(name_.data(), name_.size());
  if (name == "grpo") return GroupMethod::kGrpo;
  if (name == "dr_grpo") return GroupMethod::kDrGrpo;
  if (name == "rloo") return GroupMethod::kRloo;
  TORCH_CHECK_VALUE(name == "batch_std", "fastrl: unknown group advantage method '", std::string(name), "'");
  return GroupMethod::kBatchStd;
}

// One group's statistics: its size, mean and sum of squared deviations.
struct GroupStats {
  double count, mean, m2;
};

FASTRL_HD double unbiased_std(double count, double m2) {
  return count > 1 ? sqrt(m2 / (count - 1)) : 0.0;
}

// A group's advantages are (s - shift) / divisor for each score s in it, computed once per
// group. A divisor, not its reciprocal: 1 / (0 + eps) overflows for a subnormal eps, and the
// equal scores of a group would read 0 * inf = NaN where they read 0.
struct GroupCoefficients {
  double shift, divisor;
  FASTRL_HD double operator()(double s) const { return (s - shift) / divisor; }
};

// Singletons follow verl's loop estimators: grpo takes mean 0 and std 1,
// dr_grpo and rloo give the score itself; batch_std takes mean 0.
FASTRL_HD GroupCoefficients group_coefficients(GroupMethod method, GroupStats g, double eps, double batch_std) {
  const bool single = g.count < 2;
  const double mean = single ? 0.0 : g.mean;
  switch (method) {
    case GroupMethod::kGrpo:
      return {mean, (single ? 1.0 : unbiased_std(g.count, g.m2)) + eps};
    case GroupMethod::kDrGrpo:
      return {mean, 1.0};
    case GroupMethod::kRloo:
      // s minus the mean of the other members: (s - mean) * n / (n - 1)
      return {mean, single ? 1.0 : (g.count - 1) / g.count};
    default:
      return {mean, batch_std + eps};
  }
}

// ---- RiskPO (mixed value-at-risk over bundles of questions) ----

struct RiskParams {
  double alpha, beta, omega;
  bool natural_baseline;
};

enum class RiskCredit : int { kStd = 0, kSumMean = 1 };

inline RiskCredit risk_credit(c10::string_view name_) {
  const std::string_view name(name_.data(), name_.size());
  if (name == "std") return RiskCredit::kStd;
  TORCH_CHECK_VALUE(name == "sum_mean", "fastrl: unknown credit '", std::string(name), "'");
  return RiskCredit::kSumMean;
}

// torch.lerp's two-sided form, so quantiles match torch.quantile's rounding.
FASTRL_HD double lerp(double low, double high, double weight) {
  return weight < 0.5 ? low + weight * (high - low) : high - (high - low) * (1 - weight);
}

// torch.quantile (linear interpolation) of n >= 1 sorted values.
FASTRL_HD double linear_quantile(const double* sorted, int64_t n, double q) {
  const double rank = q * static_cast<double>(n - 1);
  const int64_t below = static_cast<int64_t>(rank);
  const int64_t above = static_cast<int64_t>(ceil(rank));
  return lerp(sorted[below], sorted[above], rank - static_cast<double>(below));
}

// The advantage of a paper with total x, before the division by the std of
// the bundle's totals; a and b are the alpha- and beta-quantiles of the totals.
FASTRL_HD double risk_advantage(double x, double a, double b, RiskParams r) {
  double g = fmax(x - a, 0.0) - fmax(x - b, 0.0);
  if (r.natural_baseline) g += a - b;
  g /= r.beta - r.alpha;
  const double c = -fmax(a - x, 0.0) / r.alpha;
  return (r.omega * c + g) / (r.omega + 1);
}

// The std a question's credit divides by: unbiased, 1 for a singleton or when <= 1e-3.
FASTRL_HD double credit_std(GroupStats q) {
  const double std = unbiased_std(q.count, q.m2);
  return q.count < 2 || std <= 1e-3 ? 1.0 : std;
}

}  // namespace fastrl
