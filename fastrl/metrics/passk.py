"""pass@k and CoT-pass@k (DESIGN 3.5).

pass@k = 1 - C(n-c, k) / C(n, k): the chance that k of n samples drawn without
replacement contain at least one of the c correct ones. The ratio is computed as the
product prod_{i=n-c+1}^{n} (1 - k/i) (Chen et al., 2021), or its mirror image with c and
k swapped, whichever has fewer factors: binomials of n in the thousands overflow floats,
a product of factors in (0, 1] does not. It is 1 when
n - c < k (every draw of k holds a correct sample).

CoT-pass@k is the same formula with d = samples whose final answer *and* chain of
thought are judged correct, so cot_pass_at_k(n, d, k) <= pass_at_k(n, c, k) when d <= c.
"""
from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Sequence

import numpy as np


def _as_int_array(name: str, x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == object and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in a.flat):
        a = np.array([int(v) for v in a.flat], dtype=object).reshape(a.shape)  # Python ints past int64
    elif a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"{name} must be integers, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ValueError(f"{name} must hold whole numbers, got {x!r}")
    # before a silent wrap; 2**63 exactly: float(int64 max) rounds up to it
    if a.size and (a.max() >= 2**63 or a.min() < -2**63):
        raise ValueError(f"{name} must fit in int64, got {x!r}")
    return a.astype(np.int64)


def reported_ks(n: int) -> list[int]:
    """The k pass@k is reported at for n samples a problem: 1, 2, 4, ... up to n, and n."""
    return sorted({1 << i for i in range(n.bit_length()) if 1 << i <= n} | {n})


def pass_at_k(n, c, k):
    """Unbiased pass@k, broadcast over n, c, k (numpy rules); scalars give a float.

    Raises ValueError unless k >= 1 and 0 <= c <= n; and when k > n, because pass@k is
    undefined with fewer than k samples (naming the offending k).
    """
    return _pass_at_k(n, c, k, "c")


def _pass_at_k(n, c, k, correct: str):
    """pass_at_k, its errors naming the count of correct samples ``correct`` (CoT-pass@k's is d)."""
    n, c, k = (_as_int_array(name, v) for name, v in (("n", n), (correct, c), ("k", k)))
    try:
        n, c, k = np.broadcast_arrays(n, c, k)
    except ValueError:
        raise ValueError(f"n, {correct} and k must broadcast together, got shapes {n.shape}, {c.shape} and "
                         f"{k.shape}") from None
    if np.any(k < 1):
        raise ValueError(f"k must be >= 1, got k={k[k < 1].min()}")
    if np.any(n < 0):
        raise ValueError(f"n must be >= 0, got n={n[n < 0].min()}")
    if np.any(c < 0) or np.any(c > n):
        bad = tuple(np.argwhere((c < 0) | (c > n))[0])
        raise ValueError(f"{correct} must satisfy 0 <= {correct} <= n, got {correct}={c[bad]} with n={n[bad]}")
    if np.any(k > n):
        bad = np.argwhere(k > n)[0]
        raise ValueError(f"k={k[tuple(bad)]} exceeds the number of samples n={n[tuple(bad)]}; "
                         "pass@k needs k <= n")
    trivial = n - c < k  # a factor would be <= 0; the answer is exactly 1
    log_ratio = np.zeros(n.shape, dtype=np.float64)
    live = np.flatnonzero(~trivial)
    # C(n-c, k)/C(n, k) = C(n-k, c)/C(n, c): the product over min(c, k) factors
    # 1 - max(c, k)/(n - j), so c near n (or k near n) costs no more than a small c; summed as
    # logs and taken as -expm1(sum), for the digits of a ratio near 1 (pass@1 = 1/n at n = 1e9)
    n, few, many = (a.ravel()[live] for a in (n, np.minimum(c, k), np.maximum(c, k)))
    todo = int(few.max(initial=0))
    block = max(1, min(todo, (1 << 20) // max(live.size, 1)))  # at most ~1M factors at once
    flat = log_ratio.reshape(-1)
    for start in range(0, todo, block):
        rows = np.flatnonzero(few > start)
        j = start + np.arange(block)
        inside = j < few[rows, None]
        # (past a row's own factors n - j may be 0 or less: those read log1p(0))
        fraction = np.where(inside, many[rows, None] / np.where(inside, n[rows, None] - j, 1), 0.0)
        flat[live[rows]] += np.log1p(-fraction).sum(axis=1)
    out = np.where(trivial, 1.0, 0.0 - np.expm1(log_ratio))  # (not -expm1: c = 0 would read -0.0)
    return float(out) if out.ndim == 0 else out


def cot_pass_at_k(n, d, k):
    """CoT-pass@k: pass@k where a sample counts only if its answer and chain of thought are
    both judged correct (d of n)."""
    return _pass_at_k(n, d, k, "d")


def _verdict(v) -> bool:
    """A bool, or "yes"/"no" in any case with whitespace, quotes, emphasis and a closing
    mark around it ("Yes.", "**no**"), as LLM judges answer."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    word = v.strip().strip("\"'*_`.!").strip().lower() if isinstance(v, str) else None
    if word in ("yes", "no"):
        return word == "yes"
    raise ValueError(f"a judge verdict must be a bool or 'yes'/'no', got {v!r}")


def majority(verdicts: Iterable) -> bool:
    """True iff strictly more than half of the verdicts say yes; a tie (or no verdict)
    is not correct, so an undecided judge never inflates CoT-pass@k."""
    if isinstance(verdicts, (str, bytes)):  # "yes" would otherwise be the verdicts y, e, s
        raise TypeError("verdicts must be a collection of verdicts, not a single str")
    if not isinstance(verdicts, Iterable):
        raise TypeError(f"verdicts must be a collection of verdicts, got {type(verdicts).__name__}")
    votes = [_verdict(v) for v in verdicts]
    return 2 * sum(votes) > len(votes)


def judge_chains(chains: Sequence, judge: Callable[[object], object], m: int = 3) -> list[bool]:
    """Verify each chain m times with ``judge(chain)`` (bool or "yes"/"no"; a sampled LLM
    judge can disagree with itself, hence the repeats) and keep the majority."""
    if isinstance(chains, (str, bytes)):  # the judge would read each character as a chain
        raise TypeError("chains must be a collection of chains, not a single str")
    if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 1:
        raise ValueError(f"m must be a positive int, got {m!r}")
    return [majority(judge(chain) for _ in range(int(m))) for chain in chains]
