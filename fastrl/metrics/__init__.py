"""Evaluation metrics: unbiased pass@k, CoT-pass@k and a chain-of-thought judge interface."""
from fastrl.metrics.passk import cot_pass_at_k, judge_chains, majority, pass_at_k, reported_ks

__all__ = ["pass_at_k", "cot_pass_at_k", "judge_chains", "majority", "reported_ks"]
