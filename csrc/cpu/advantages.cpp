// Grouped advantages on the CPU: a few O(B) passes over the batch (B is the
// number of responses, thousands at most), so one thread suffices; and their
// broadcast to the tokens, the one pass here that is [B, T].
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "fastrl/advantages.h"
#include "fastrl/tensors.h"

namespace fastrl {
namespace {

// The value checks of the CPU kernels, one vectorisable pass (so the Python
// layer need not read the data again); an id out of range would also write
// out of bounds.
template <typename scalar_t>
void check_values(const scalar_t* scores, const int64_t* ids, int64_t B) {
  bool ok = true;
  for (int64_t i = 0; i < B; ++i) {
    const double v = static_cast<double>(scores[i]);
    ok &= (ids[i] >= 0) & (ids[i] < B) & (v - v == 0.0);  // v - v is NaN for NaN and Inf
  }
  if (ok) return;
  for (int64_t i = 0; i < B; ++i) {
    TORCH_CHECK_VALUE(ids[i] >= 0 && ids[i] < B, "group_ids must be in [0, ", B, "), got ", ids[i], " at ", i);
    TORCH_CHECK_VALUE(std::isfinite(static_cast<double>(scores[i])), "scores contains NaN or Inf (at ", i, ")");
  }
}

// Calls f(begin, end) for each run of equal consecutive ids: verl lays a
// group's responses out together, and accumulating a run in registers avoids
// a store-to-load chain through the group's slot at every row.
template <typename F>
void for_each_run(const int64_t* ids, int64_t B, const F& f) {
  for (int64_t begin = 0, end = 0; begin < B; begin = end) {
    for (end = begin + 1; end < B && ids[end] == ids[begin];) ++end;
    f(begin, end);
  }
}

at::Tensor group_advantages_cpu(const at::Tensor& scores_, const at::Tensor& group_ids_, c10::string_view method_,
                                double eps) {
  check_groups(scores_, group_ids_);
  const GroupMethod method = group_method(method_);
  auto scores = scores_.contiguous();
  auto group_ids = group_ids_.contiguous();
  auto advantages = empty_output(scores);
  const int64_t B = scores.size(0);
  const int64_t* ids = group_ids.data_ptr<int64_t>();
  FASTRL_DISPATCH_FLOATING(scores.scalar_type(), "group_advantages_cpu", [&] {
    const scalar_t* s = scores.data_ptr<scalar_t>();
    check_values(s, ids, B);
    std::vector<GroupStats> stats(B, GroupStats{0.0, 0.0, 0.0});
    for_each_run(ids, B, [&](int64_t begin, int64_t end) {
      double sum = 0.0;
      for (int64_t i = begin; i < end; ++i) sum += static_cast<double>(s[i]);
      stats[ids[begin]].count += static_cast<double>(end - begin);
      stats[ids[begin]].mean += sum;  // the sum, until divided below
    });
    for (auto& g : stats)
      if (g.count > 0) g.mean /= g.count;
    for_each_run(ids, B, [&](int64_t begin, int64_t end) {
      const double mean = stats[ids[begin]].mean;
      double m2 = 0.0;
      for (int64_t i = begin; i < end; ++i) m2 += (static_cast<double>(s[i]) - mean) * (static_cast<double>(s[i]) - mean);
      stats[ids[begin]].m2 += m2;
    });
    double batch_std = 1.0;
    if (method == GroupMethod::kBatchStd && B > 1) {
      GroupStats all{static_cast<double>(B), 0.0, 0.0};
      for (int64_t i = 0; i < B; ++i) all.mean += static_cast<double>(s[i]) / B;
      for (int64_t i = 0; i < B; ++i) all.m2 += (static_cast<double>(s[i]) - all.mean) * (static_cast<double>(s[i]) - all.mean);
      batch_std = unbiased_std(all.count, all.m2);
    }
    for (auto& g : stats) {  // the group's coefficients replace its stats: shift in mean, divisor in m2
      if (g.count == 0) continue;
      const GroupCoefficients c = group_coefficients(method, g, eps, batch_std);
      g.mean = c.shift;
      g.m2 = c.divisor;
    }
    acc_t* out = advantages.data_ptr<acc_t>();
    for (int64_t i = 0; i < B; ++i) {
      const GroupStats& g = stats[ids[i]];
      out[i] = static_cast<acc_t>(GroupCoefficients{g.mean, g.m2}(static_cast<double>(s[i])));
    }
  });
  return advantages;
}

// RiskPO: index bookkeeping (first appearance, bundles, papers) in one pass
// over the batch, then per bundle its papers' totals, quantiles and credit.
at::Tensor risk_advantages_cpu(const at::Tensor& scores_, const at::Tensor& group_ids_, int64_t bundle_size,
                               double alpha, double beta, double omega, bool natural_baseline,
                               c10::string_view credit_) {
  check_risk_inputs(scores_, group_ids_, bundle_size);
  const RiskCredit credit = risk_credit(credit_);
  auto scores = scores_.contiguous();
  auto group_ids = group_ids_.contiguous();
  auto advantages = empty_output(scores);
  const int64_t B = scores.size(0);
  const int64_t* ids = group_ids.data_ptr<int64_t>();
  const RiskParams params{alpha, beta, omega, natural_baseline};
  FASTRL_DISPATCH_FLOATING(scores.scalar_type(), "risk_advantages_cpu", [&] {
    const scalar_t* s = scores.data_ptr<scalar_t>();
    check_values(s, ids, B);
    // Questions in order of first appearance; each row's index within its question.
    std::vector<int64_t> question_of_group(B, -1), index_in_question(B);
    std::vector<GroupStats> question;  // count, mean, m2 per question
    for (int64_t i = 0; i < B; ++i) {
      int64_t& q = question_of_group[ids[i]];
      if (q < 0) {
        q = static_cast<int64_t>(question.size());
        question.push_back({0.0, 0.0, 0.0});
      }
      index_in_question[i] = static_cast<int64_t>(question[q].count);
      question[q].count += 1;
      question[q].mean += static_cast<double>(s[i]);
    }
    for (auto& q : question) q.mean /= q.count;
    for (int64_t i = 0; i < B; ++i) {
      GroupStats& q = question[question_of_group[ids[i]]];
      q.m2 += (static_cast<double>(s[i]) - q.mean) * (static_cast<double>(s[i]) - q.mean);
    }
    const int64_t n_questions = static_cast<int64_t>(question.size());
    const int64_t n_bundles = n_questions > 0 ? (n_questions - 1) / bundle_size + 1 : 0;  // no overflow near INT64_MAX
    // Papers: bundle k holds papers [first_paper[k], first_paper[k] + P_k).
    std::vector<int64_t> papers(n_bundles, INT64_MAX), first_paper(n_bundles + 1, 0);
    for (int64_t q = 0; q < n_questions; ++q)
      papers[q / bundle_size] = std::min<int64_t>(papers[q / bundle_size], static_cast<int64_t>(question[q].count));
    for (int64_t k = 0; k < n_bundles; ++k) first_paper[k + 1] = first_paper[k] + papers[k];
    std::vector<double> total(first_paper[n_bundles], 0.0), centred(first_paper[n_bundles], 0.0);
    for (int64_t i = 0; i < B; ++i) {
      const int64_t q = question_of_group[ids[i]], k = q / bundle_size, p = index_in_question[i];
      if (p >= papers[k]) continue;
      total[first_paper[k] + p] += static_cast<double>(s[i]);
      centred[first_paper[k] + p] += static_cast<double>(s[i]) - question[q].mean;
    }
    std::vector<double> advantage(first_paper[n_bundles]), sorted;
    for (int64_t k = 0; k < n_bundles; ++k) {
      const double* x = total.data() + first_paper[k];
      const int64_t P = papers[k];
      sorted.assign(x, x + P);
      std::sort(sorted.begin(), sorted.end());
      const double a = linear_quantile(sorted.data(), P, alpha), b = linear_quantile(sorted.data(), P, beta);
      GroupStats bundle{static_cast<double>(P), 0.0, 0.0};
      for (int64_t p = 0; p < P; ++p) bundle.mean += x[p] / P;
      for (int64_t p = 0; p < P; ++p) bundle.m2 += (x[p] - bundle.mean) * (x[p] - bundle.mean);
      const double scale = (P > 1 ? unbiased_std(bundle.count, bundle.m2) : 1.0) + 1e-6;
      for (int64_t p = 0; p < P; ++p) advantage[first_paper[k] + p] = risk_advantage(x[p], a, b, params) / scale;
    }
    acc_t* out = advantages.data_ptr<acc_t>();
    for (int64_t i = 0; i < B; ++i) {
      const int64_t q = question_of_group[ids[i]], k = q / bundle_size, p = index_in_question[i];
      if (p >= papers[k]) {
        out[i] = acc_t(0);
        continue;
      }
      const double A = advantage[first_paper[k] + p];
      double value;
      if (credit == RiskCredit::kStd) {
        value = A / credit_std(question[q]);
      } else {
        const double sum = centred[first_paper[k] + p];
        const int64_t in_bundle = std::min(bundle_size, n_questions - k * bundle_size);
        value = fabs(sum) <= 1e-6 ? A / in_bundle : A * (static_cast<double>(s[i]) - question[q].mean) / sum;
      }
      out[i] = static_cast<acc_t>(value);
    }
  });
  return advantages;
}

at::Tensor broadcast_to_tokens_cpu(const at::Tensor& advantages_, const at::Tensor& mask_) {
  check_broadcast_inputs(advantages_, mask_);
  auto advantages = advantages_.contiguous();
  auto mask = mask_as_bytes(mask_.contiguous());
  const int64_t B = mask.size(0), T = mask.size(1);
  auto out = at::empty({B, T}, advantages.options().dtype(empty_output(advantages).scalar_type()));
  FASTRL_DISPATCH_FLOATING(advantages.scalar_type(), "broadcast_to_tokens_cpu", [&] {
    const scalar_t* adv = advantages.data_ptr<scalar_t>();
    acc_t* o = out.data_ptr<acc_t>();
    at::parallel_for(0, B, std::max<int64_t>(1, 32768 / std::max<int64_t>(T, 1)), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const acc_t a = static_cast<acc_t>(adv[b]);
        const uint8_t* __restrict__ valid = mask_data(mask) + b * T;
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
  m.impl("risk_advantages", &risk_advantages_cpu);
}

}  // namespace fastrl
