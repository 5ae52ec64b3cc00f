"""Verifiable rewards: ``fastrl.rewards.classification`` (CLS-RL) and ``fastrl.rewards.math``.

Deliberately empty: import the submodule you need, so that using the classification
rewards never pays for sympy and the math verifier's worker pool.
"""
