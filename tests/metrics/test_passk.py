import math
import time
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrl.metrics import cot_pass_at_k, judge_chains, majority, pass_at_k


def exact(n, c, k):
    return 1.0 if n - c < k else 1 - math.comb(n - c, k) / math.comb(n, k)


@st.composite
def nck(draw, max_n=200):
    n = draw(st.integers(1, max_n))
    return n, draw(st.integers(0, n)), draw(st.integers(1, n))


def test_equals_combinatorial_formula_exhaustively():
    for n in range(1, 25):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(exact(n, c, k), abs=1e-12), (n, c, k)


@given(nck())
def test_k1_is_c_over_n(args):
    n, c, _ = args
    assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)


@given(nck())
def test_one_when_fewer_wrong_than_k(args):
    n, c, k = args
    if n - c < k:
        assert pass_at_k(n, c, k) == 1.0


@given(nck())
def test_monotone_in_k_and_c(args):
    n, c, k = args
    p = pass_at_k(n, c, k)
    if k < n:
        assert pass_at_k(n, c, k + 1) >= p - 1e-12
    if c < n:
        assert pass_at_k(n, c + 1, k) >= p - 1e-12


@settings(max_examples=50)
@given(nck(max_n=5000))
def test_finite_in_unit_interval_for_large_n(args):
    n, c, k = args
    p = pass_at_k(n, c, k)
    assert isinstance(p, float) and math.isfinite(p) and 0.0 <= p <= 1.0


def test_large_n_matches_exact_fraction():
    # math.comb stays exact where float binomials overflow
    for n, c, k in [(3000, 7, 100), (4000, 1, 1000), (5000, 2500, 3), (10**6, 1000, 1000),
                    (10**6, 999_000, 2), (10**6, 2, 999_000)]:
        ref = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(ref, rel=1e-9)


def test_cost_follows_the_smaller_of_c_and_k():
    # a factor per correct sample took 5 s at c = 999,000; the mirror form takes min(c, k) = 1
    t = time.monotonic()
    assert pass_at_k(10**6, 999_000, 1) == pytest.approx(0.999, rel=1e-12)
    assert pass_at_k(np.full(3, 10**6), [0, 500_000, 999_999], 1) == pytest.approx([0, 0.5, 0.999999])
    assert time.monotonic() - t < 0.5


@given(nck(), st.integers(0, 200))
def test_cot_never_above_pass(args, d):
    n, c, k = args
    d = min(d, c)
    assert cot_pass_at_k(n, d, k) <= pass_at_k(n, c, k) + 1e-12


def test_vectorised_shapes_and_values():
    n = np.array([8, 8, 16, 5])
    c = np.array([0, 3, 16, 2])
    out = pass_at_k(n, c, 2)
    assert out.shape == (4,)
    np.testing.assert_allclose(out, [exact(*a, 2) for a in zip(n, c)])
    ks = np.array([1, 2, 4])[:, None]  # problems x k grid by broadcasting
    grid = pass_at_k(n, c, ks)
    assert grid.shape == (3, 4)
    for i, k in enumerate([1, 2, 4]):
        np.testing.assert_allclose(grid[i], [exact(a, b, k) for a, b in zip(n, c)])
    assert isinstance(pass_at_k(8, 3, 2), float)
    assert isinstance(pass_at_k(np.int64(8), 3.0, 2), float)


def test_rows_of_unequal_factor_counts_raise_no_warning():
    """Computed as one block, the row with 5 factors took n - j for j up to 4 in the row with 1
    (n = 2): a divide-by-zero warning, an error under -W error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(pass_at_k([2, 10], [1, 5], [1, 5]), [exact(2, 1, 1), exact(10, 5, 5)])


def test_no_correct_sample_gives_positive_zero():
    """c = 0 read -0.0 (-expm1(0)): printed as "-0.0" in a log of pass rates."""
    assert math.copysign(1, pass_at_k(10, 0, 3)) == 1 and math.copysign(1, cot_pass_at_k(10, 0, 3)) == 1
    assert not np.signbit(pass_at_k([10, 5], [0, 0], [3, 2])).any()


@pytest.mark.parametrize("n", [10**6, 10**9, 10**12])
def test_small_values_at_large_n_keep_their_digits(n):
    """pass@1 with one correct sample is 1/n: 1 - a ratio near 1 lost 2.8e-8 of it at n = 1e9."""
    # abs=0: approx's default abs tolerance (1e-12) alone passed 1 - (1 - 1/n) at these n (2.8e-8 off at 1e9)
    assert pass_at_k(n, 1, 1) == pytest.approx(1 / n, rel=1e-14, abs=0)
    assert pass_at_k(n, 2, 3) == pytest.approx(float(1 - Fraction(math.comb(n - 2, 3), math.comb(n, 3))), rel=1e-12,
                                               abs=0)


@pytest.mark.parametrize("n,c,k,match", [
    (8, 3, 0, "k must be >= 1"),
    (8, 9, 1, "c must"),
    (8, -1, 1, "c must"),
    (4, 1, 5, "k=5"),
    (8, 2.5, 1, "whole numbers"),
    (np.array([8, 2]), np.array([1, 1]), 4, "k=4"),
    (-1, 0, 1, "n must be >= 0, got n=-1"),
    ([8, 8], [1, 9], 1, "got c=9 with n=8"),
    (1e20, 1, 1, "n must fit in int64"),
    (np.uint64(2**63 + 5), 1, 1, "n must fit in int64"),
    (2.0**63, 1, 1, "n must fit in int64"),  # == float(int64 max): it wrapped to -2**63
    (2**70, 1, 1, "n must fit in int64"),  # a Python int numpy holds as an object
    ([8, 8], [1, 2, 3], 1, r"n, c and k must broadcast together, got shapes \(2,\), \(3,\)"),
])
def test_bad_arguments(n, c, k, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


def test_errors_name_the_arguments_as_called():
    """(cot_pass_at_k's d was named c; majority(True) and judge_chains("good", ...) read a bool
    as verdicts and a str as chains, one per character)"""
    with pytest.raises(ValueError, match=r"d must satisfy 0 <= d <= n, got d=5 with n=4"):
        cot_pass_at_k(4, 5, 2)
    with pytest.raises(TypeError, match="verdicts must be a collection of verdicts, got bool"):
        majority(True)
    with pytest.raises(TypeError, match="chains must be a collection of chains, not a single str"):
        judge_chains("good", lambda chain: True)
    assert judge_chains(["a", "b"], lambda chain: chain == "a", m=np.int64(3)) == [True, False]
    with pytest.raises(ValueError, match="m must be a positive int, got True"):
        judge_chains(["a"], lambda chain: True, m=True)


def test_bool_counts_rejected():
    with pytest.raises(TypeError):
        pass_at_k(8, True, 1)


@pytest.mark.parametrize("verdicts,expected", [
    ([True, True, False], True),
    (["yes", "no", "no"], False),
    (["YES ", "yes"], True),
    ([True, False], False),  # tie: not correct
    (["yes", "no", "yes", "no"], False),
    ([], False),
    (["Yes.", "**no**", " 'yes'\n"], True),  # LLM judges close with a mark or add emphasis
    (["No!", "yes", "NO"], False),
])
def test_majority_and_tie_rule(verdicts, expected):
    assert majority(verdicts) is expected


def test_majority_rejects_unknown_verdict():
    with pytest.raises(ValueError, match="maybe"):
        majority(["yes", "maybe"])
    with pytest.raises(ValueError, match="yes, really"):
        majority(["yes, really"])
    with pytest.raises(TypeError, match="single str"):
        majority("yes")  # the letters y, e, s are not three verdicts


def test_judge_chains_calls_judge_m_times_per_chain():
    calls = []
    script = {"good": ["yes", "yes", "no"], "bad": [False, True, False], "tie": [True, False]}

    def judge(chain):
        calls.append(chain)
        return script[chain][calls.count(chain) - 1]

    assert judge_chains(["good", "bad"], judge, m=3) == [True, False]
    assert calls.count("good") == 3 and calls.count("bad") == 3
    assert judge_chains(["tie"], judge, m=2) == [False]
    with pytest.raises(ValueError, match="m must"):
        judge_chains(["good"], judge, m=0)


def test_the_product_has_min_c_k_factors(monkeypatch):
    """The ratio is a product of min(c, k) factors, whichever of c and k is smaller (counted, not timed:
    a factor per correct sample is fast enough at c = 999,000 for a timing to miss it)."""
    import fastrl.metrics.passk as passk

    counted = []

    class CountingNumpy:
        def __getattr__(self, name):
            return getattr(np, name)

        def log1p(self, x):
            counted.append(int(np.count_nonzero(x)))
            return np.log1p(x)

    monkeypatch.setattr(passk, "np", CountingNumpy())
    assert pass_at_k(10**6, 999_000, 1) == pytest.approx(0.999, rel=1e-12)
    assert sum(counted) == 1
    counted.clear()
    assert pass_at_k([10**6, 10**6], [3, 999_000], [500_000, 2]) == pytest.approx(
        [1 - math.comb(10**6 - 500_000, 3) / math.comb(10**6, 3), 1 - math.comb(10**6 - 2, 999_000) / math.comb(10**6, 999_000)],
        rel=1e-9)
    assert sum(counted) == 3 + 2
