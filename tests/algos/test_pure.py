"""PURE's credit assignment against a direct per-row implementation of DESIGN 3.4."""
import math

import pytest
import torch

from fastrl.algos.pure import loo_mean, masked_whiten, pure_advantages, step_ends


def direct(scores, steps, mask, groups, solved, min_form, temperature, baseline, coef, zero):
    """Rows as Python lists: the spelled-out recipe."""
    B, T = scores.shape
    rewards, totals, lengths, nsteps = [], [], [], []
    for b in range(B):
        idx = [t for t in range(T) if mask[b, t]]
        ks = [t for t in idx if steps[b, t]]
        s = {t: float(scores[b, t]) for t in ks}
        r = {t: 0.0 for t in idx}
        if ks:
            if min_form == "soft":
                z = [math.exp(-s[t] / temperature) for t in ks]
                for t, w in zip(ks, z):
                    r[t] = w / sum(z) * s[t]
            elif min_form == "strict":
                # rewards whose reverse sum is min over step tokens at or after t
                mins = [min(s[u] for u in ks[i:]) for i in range(len(ks))]
                for i, t in enumerate(ks):
                    r[t] = mins[i] - (mins[i + 1] if i + 1 < len(ks) else 0.0)
            else:
                r.update(s)
        rewards.append(r)
        totals.append(sum(r.values()))
        lengths.append(len(idx))
        nsteps.append(len(ks))
    for b in range(B):
        others = [j for j in range(B) if groups[j] == groups[b] and j != b]
        idx = sorted(rewards[b])
        ks = [t for t in idx if steps[b, t]]
        if baseline == "token" and others and sum(lengths[j] for j in others):
            per_token = sum(totals[j] for j in others) / sum(lengths[j] for j in others)
            prev = -1
            for t in ks:
                count = sum(1 for u in idx if prev < u < t)  # (the step-end token is not counted, as in PURE's code)
                rewards[b][t] -= per_token * count
                prev = t
        elif baseline == "step" and others:
            per_step = sum(totals[j] / max(nsteps[j], 1) for j in others) / len(others)
            for t in ks:
                rewards[b][t] -= per_step
        if solved is not None and idx:
            v = float(solved[b]) - 1
            v_others = [float(solved[j]) - 1 for j in others]
            rewards[b][idx[-1]] += coef * (v - (sum(v_others) / len(v_others) if v_others else 0.0))
    returns = torch.zeros(B, T, dtype=torch.float64)
    carries = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        idx = sorted(rewards[b])
        acc = 0.0
        for t in reversed(idx):
            acc += rewards[b][t]
            returns[b, t] = acc
            carries[b, t] = not (zero and (steps[b, t] or t == idx[-1]))
    vals = returns[carries]
    mean = vals.mean() if len(vals) else 0.0
    var = vals.var() if len(vals) > 1 else torch.tensor(0.0, dtype=torch.float64)
    adv = torch.where(carries, (returns - mean) / torch.sqrt(var + 1e-8), 0)
    return adv, returns


def inputs(rng, B=7, T=9):
    scores = torch.rand(B, T, generator=rng, dtype=torch.float64) * 2 - 1
    mask = torch.rand(B, T, generator=rng) > 0.15
    mask[2] = False  # an empty response
    mask[3, 1:] = False  # a one-token response
    steps = (torch.rand(B, T, generator=rng) > 0.6) & mask
    last = torch.stack([torch.tensor([t == max((u for u in range(T) if mask[b, u]), default=-1) for t in range(T)])
                        for b in range(B)])
    steps |= last  # the final token always carries a score
    steps[4] = last[4]  # a response with only its final step
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 0])  # group 2 is a singleton
    solved = (torch.rand(B, generator=rng) > 0.5).double()
    return scores, steps, mask, groups, solved


@pytest.mark.parametrize("min_form", ["soft", "strict", "sum"])
@pytest.mark.parametrize("baseline", ["token", "step", "none"])
@pytest.mark.parametrize("verifiable", [True, False])
def test_pure_matches_direct(rng, min_form, baseline, verifiable):
    scores, steps, mask, groups, solved = inputs(rng)
    solved = solved if verifiable else None
    adv, returns = pure_advantages(scores, steps, mask, groups, solved, min_form, 0.3, baseline, 0.7, True)
    e_adv, e_returns = direct(scores, steps, mask, groups, solved, min_form, 0.3, baseline, 0.7, True)
    torch.testing.assert_close(returns, e_returns)
    torch.testing.assert_close(adv, e_adv)


def test_token_baseline_counts_steps_as_the_authors_code():
    """PURE's experience maker counts a step's tokens without its separator (or final) token
    (num_tokens_per_step), while the rate's lengths are whole responses; fastrl counted the
    step-end token too. Expected values worked by hand from the authors' code."""
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=torch.bool)
    steps = torch.tensor([[0, 0, 1, 0, 1], [0, 1, 0, 1, 0]], dtype=torch.bool)
    scores = torch.tensor([[0, 0, 0.4, 0, -0.2], [0, 0.6, 0, 0.8, 0]], dtype=torch.float64)
    _, returns = pure_advantages(scores, steps, mask, torch.tensor([0, 0]), None, "soft", 0.1, "token", 1.0)
    soft = [torch.softmax(-torch.tensor(s, dtype=torch.float64) / 0.1, 0) * torch.tensor(s, dtype=torch.float64)
            for s in ([0.4, -0.2], [0.6, 0.8])]
    totals = [float(r.sum()) for r in soft]
    rate = [totals[1] / 4, totals[0] / 5]  # the other response's total over its length
    r0 = [float(soft[0][0]) - rate[0] * 2, float(soft[0][1]) - rate[0] * 1]  # steps of 3 and 2 tokens
    r1 = [float(soft[1][0]) - rate[1] * 1, float(soft[1][1]) - rate[1] * 1]  # 2 and 2
    want = torch.tensor([[r0[0] + r0[1]] * 3 + [r0[1]] * 2, [r1[0] + r1[1]] * 2 + [r1[1]] * 2 + [0.0]],
                        dtype=torch.float64)
    torch.testing.assert_close(returns, want)


def test_pure_keeps_reward_tokens_when_asked(rng):
    scores, steps, mask, groups, solved = inputs(rng)
    adv, _ = pure_advantages(scores, steps, mask, groups, solved, zero_reward_tokens=False)
    e_adv, _ = direct(scores, steps, mask, groups, solved, "soft", 0.1, "token", 1.0, False)
    torch.testing.assert_close(adv, e_adv)
    assert adv[steps & mask].abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.uint8])
def test_solved_as_verdicts(rng, dtype):
    """solved as 0/1 verdicts (bool or integer) is the float 0/1 reward (a TypeError before)."""
    scores, steps, mask, groups, solved = inputs(rng)
    want = pure_advantages(scores, steps, mask, groups, solved)
    got = pure_advantages(scores, steps, mask, groups, solved.to(dtype))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_loo_mean():
    v = torch.tensor([1.0, 2.0, 4.0, 5.0])
    torch.testing.assert_close(loo_mean(v, torch.tensor([0, 0, 0, 1])), torch.tensor([3.0, 2.5, 1.5, 0.0]))


def test_masked_whiten_single_entry_is_zero_variance():
    x, m = torch.tensor([[3.0, 7.0]]), torch.tensor([[1, 0]])
    torch.testing.assert_close(masked_whiten(x, m), torch.zeros(1, 2))


def test_step_ends_at_blank_lines():
    texts = ["a", "b\n\n", "\n", "c\n", "\n", "d", "\n\n\n", "e"]
    ids = torch.tensor([[0, 1, 3, 4, 5, 6, 7, 0], [0, 2, 1, 2, 5, 0, 0, 0]])
    # row 0: a | b\n\n | c\n + \n (a blank line over two tokens) | d \n\n\n | e (the last token)
    # row 1: a \n b\n\n \n | d (the last token): a run of newlines ends a step once, at its end
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    got = step_ends(ids, mask, texts)
    assert got[0].tolist() == [False, True, False, True, False, True, False, True]
    assert got[1].tolist() == [False, False, False, True, True, False, False, False]


@pytest.mark.parametrize("tokens, ends", [
    (["x", "\n\n", "y", "\n\n", ""], [0, 1, 0, 0, 1]),  # a blank line then EOS ("") is no last step
    (["\n\n", "x", "\n\n", "y"], [0, 0, 1, 1]),  # nor an opening blank line a first one
    (["x", "\n\n", " ", "\n\n", "y", ""], [0, 1, 0, 0, 0, 1]),  # a blank step in the middle joins the next
    (["x", "\n\n", " ", "\n\n", ""], [0, 0, 0, 0, 1]),  # blank steps at the end join the one before
    (["\n\n", " ", ""], [0, 0, 1]),  # all blank: one step
    (["x", "\n\n", "y", "\n\n", "z"], [0, 1, 0, 1, 1]),
])
def test_blank_steps_join_a_neighbour(tokens, ends):
    texts = sorted(set(tokens))
    ids = torch.tensor([[texts.index(t) for t in tokens] + [0]])  # and a padded position
    mask = torch.tensor([[1] * len(tokens) + [0]])
    assert step_ends(ids, mask, texts)[0].tolist() == [bool(e) for e in ends] + [False]


def test_bad_inputs():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="min_form"):
        pure_advantages(x, x, x, torch.zeros(2, dtype=torch.long), min_form="max")
    with pytest.raises(ValueError, match="group_ids"):
        pure_advantages(x, x, x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="baseline"):
        pure_advantages(x, x, x, torch.zeros(2, dtype=torch.long), baseline="mean")
    ids = torch.zeros(2, dtype=torch.long)
    for solved, error in ((torch.ones(1), ValueError), (torch.ones(3), ValueError), (torch.ones(2, 1), ValueError),
                          (torch.tensor([1.0, float("nan")]), ValueError), (torch.ones(2, dtype=torch.complex64), TypeError)):
        with pytest.raises(error, match="solved"):
            pure_advantages(x, x, x, ids, solved)
    for group_ids, error in ((torch.zeros(2), TypeError), (torch.tensor([0, 7]), ValueError),
                             (torch.tensor([-1, 0]), ValueError)):
        with pytest.raises(error, match="group_ids"):
            pure_advantages(x, x, x, group_ids)


def test_the_final_token_carries_no_advantage_without_a_step_there(rng):
    """DESIGN 3.4: the advantage is 0 at the reward-carrying tokens, the separators and the
    final token (which carries the verifiable reward) even where step_mask leaves the final
    token out; the whitening is over the other tokens only."""
    B, T = 4, 7
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 5:] = False
    steps = torch.zeros(B, T, dtype=torch.bool)
    steps[:, 2] = True  # one separator per row; no step at the final token
    scores = torch.rand(B, T, generator=rng, dtype=torch.float64)
    solved = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 1, 1])
    adv, returns = pure_advantages(scores, steps, mask, groups, solved)
    final = torch.zeros_like(mask)
    final[torch.arange(B), mask.cumsum(-1).argmax(-1)] = True
    carries = mask & ~steps & ~final
    x = returns[carries]
    want = torch.zeros_like(adv)
    want[carries] = (x - x.mean()) / (x.var(unbiased=True) + 1e-8).sqrt()
    torch.testing.assert_close(adv, want)
    assert (adv[final] == 0).all()
