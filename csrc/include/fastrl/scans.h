// Arithmetic of the token scans (DESIGN 3.1), shared by the CPU kernels
// (sequential passes over blocks of rows) and the CUDA kernels (one warp per
// row, a parallel scan over tiles). Every scan here is a reverse recursion over a
// row in which masked tokens pass the carried value through and read 0.
#pragma once

#include "fastrl/common.h"

namespace fastrl {

// x -> a * x + b: one token of a linear reverse recursion. Returns
// (G_t = r_t + gamma G_next) and GAE (A_t = delta_t + gamma lam A_next) are
// both compositions of such maps, which is what makes them parallel-scannable.
template <typename acc_t>
struct Affine {
  acc_t a, b;
  FASTRL_HD acc_t operator()(acc_t x) const { return a * x + b; }
};

template <typename acc_t>
FASTRL_HD Affine<acc_t> identity_affine() {
  return {acc_t(1), acc_t(0)};
}

// The map of the span [left, right] from the maps of its two halves:
// applying right first, then left (the recursion runs right to left).
template <typename acc_t>
FASTRL_HD Affine<acc_t> compose(Affine<acc_t> left, Affine<acc_t> right) {
  return {left.a * right.a, left.a * right.b + left.b};
}

template <typename acc_t>
FASTRL_HD Affine<acc_t> return_step(bool valid, acc_t reward, acc_t gamma) {
  return valid ? Affine<acc_t>{gamma, reward} : identity_affine<acc_t>();
}

template <typename acc_t>
FASTRL_HD acc_t td_error(acc_t reward, acc_t value, acc_t next_value, acc_t gamma) {
  return reward + gamma * next_value - value;
}

// Online max and sum of exp(x / temperature) over a stream, merged across lanes: the
// softmax normaliser of PURE's soft min-form weights in one read of the row. x stays
// unscaled and only differences are divided by the temperature: x / T may overflow (a
// score of 0.5 at T = 1e-39 in float32: every weight NaN) where (x - max) / T <= 0 cannot.
template <typename acc_t>
struct OnlineSoftmax {
  acc_t max, sum, temperature;

  FASTRL_HD static OnlineSoftmax empty(acc_t temperature) { return {-infinity<acc_t>(), acc_t(0), temperature}; }

  FASTRL_HD void add(acc_t x) {
    if (sum == acc_t(0)) {  // the first x: (-inf - x) / T is NaN where T is inf in acc_t
      max = x;
      sum = acc_t(1);
    } else if (x > max) {
      sum = sum * exp_((max - x) / temperature) + acc_t(1);
      max = x;
    } else {
      sum += exp_((x - max) / temperature);
    }
  }

  FASTRL_HD void merge(OnlineSoftmax other) {
    if (other.sum == acc_t(0)) return;
    if (sum == acc_t(0)) {
      *this = other;
      return;
    }
    acc_t m = max > other.max ? max : other.max;
    sum = sum * exp_((max - m) / temperature) + other.sum * exp_((other.max - m) / temperature);
    max = m;
  }

  FASTRL_HD acc_t weight(acc_t x) const { return exp_((x - max) / temperature) / sum; }
};

enum class MinFormMode : int { kSoft = 0, kStrict = 1, kSum = 2 };

// The softmax logit of a step score, before the temperature: lower scores weigh more.
template <typename acc_t>
FASTRL_HD acc_t min_form_logit(acc_t score) {
  return -score;
}

// Token reward at a step token, given the row's softmax state (soft mode).
template <typename acc_t, MinFormMode mode>
FASTRL_HD acc_t min_form_token_reward(acc_t score, const OnlineSoftmax<acc_t>& softmax) {
  if (mode == MinFormMode::kSoft) return softmax.weight(min_form_logit(score)) * score;
  return score;
}

// Reverse-scan operator of min-form returns: min for strict, sum otherwise.
template <typename acc_t, MinFormMode mode>
FASTRL_HD acc_t min_form_combine(acc_t x, acc_t y) {
  if (mode == MinFormMode::kStrict) return x < y ? x : y;
  return x + y;
}

template <typename acc_t, MinFormMode mode>
FASTRL_HD acc_t min_form_identity() {
  return mode == MinFormMode::kStrict ? infinity<acc_t>() : acc_t(0);
}

// A strict return with no step token at or after t is +inf in the scan; it reads 0.
template <typename acc_t, MinFormMode mode>
FASTRL_HD acc_t min_form_output(acc_t scanned) {
  if (mode == MinFormMode::kStrict && scanned == infinity<acc_t>()) return acc_t(0);
  return scanned;
}

}  // namespace fastrl
