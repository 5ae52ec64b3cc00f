"""Micro-batches of rows of similar length, each computed over the columns its rows use:
the split itself, and a step's statistics and update against whole-width forwards."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fastrl.trainer.config import ConfigError, TrainConfig  # noqa: E402
from fastrl.trainer.scoring import micro_batches  # noqa: E402
from fastrl.trainer.train import Trainer  # noqa: E402


def padded_mask(prompt_lengths, response_lengths):
    """An attention mask in the layout of Rollout.sequences(): prompts left-padded to the
    longest, responses right-padded."""
    P, R = max(prompt_lengths), max(response_lengths)
    mask = torch.zeros(len(prompt_lengths), P + R, dtype=torch.long)
    for b, (p, r) in enumerate(zip(prompt_lengths, response_lengths)):
        mask[b, P - p:P + r] = 1
    return mask


def random_mask(g):
    """Up to 40 rows of prompts of 1 to 8 tokens and responses of 0 to 29."""
    B = int(torch.randint(1, 40, (1,), generator=g))
    return padded_mask(torch.randint(1, 9, (B,), generator=g).tolist(), torch.randint(0, 30, (B,), generator=g).tolist())


@pytest.mark.parametrize("seed", range(20))
def test_micro_batches_split_rows_by_length_and_cover_their_columns(seed):
    g = torch.Generator().manual_seed(seed)
    mask = random_mask(g)
    B = len(mask)
    rows = torch.randperm(B, generator=g)[:int(torch.randint(1, B + 1, (1,), generator=g))]
    parts = int(torch.randint(1, len(rows) + 1, (1,), generator=g))
    split = micro_batches(rows, mask, parts)
    assert [len(r) for r, _ in split] == [len(t) for t in torch.tensor_split(rows, parts)]
    assert sorted(torch.cat([r for r, _ in split]).tolist()) == sorted(rows.tolist())
    spans = [(mask[r] != 0).sum(1) for r, _ in split]  # a row's used columns are contiguous: its count is its span
    assert all(a.max() <= b.min() for a, b in zip(spans, spans[1:]))  # shorter rows first
    for r, cols in split:
        used = (mask[r] != 0).any(0).nonzero().flatten()
        assert (cols.start, cols.stop) == (int(used[0]), int(used[-1]) + 1)  # every used column, no other edge


def parity(prompt, response, row):  # about half the responses score: every algorithm has a gradient
    return float(len(response) % 2)


def varied_config(tmp_path, *overrides):
    """Prompts of 2 to 7 operands and responses of up to 12 tokens at temperature 2, so rows
    differ in length on both sides; float64, to compare with whole-width forwards to 1e-12."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "prompts.jsonl"
    problems = ["3,8=", "1,2,7=", "3,8,5,1,2,7,0=", "4,4,9,1=", "5,0,0,2,6=", "9,1,3,3,3,4="]
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in problems))
    return TrainConfig.from_dict({
        "run": {"output_dir": str(tmp_path / "run"), "progress": False, "steps": 1},
        "model": {"dtype": "float64"},
        "data": {"source": str(data), "prompts_per_step": 6, "shuffle": False},
        "rollout": {"group_size": 4, "max_new_tokens": 12, "temperature": 2.0},
        "reward": {"kind": "test_micro_batches:parity"},
    }, list(overrides))


BUDGET = 60  # tokens: 1 to 6 rows a micro-batch here


@pytest.mark.parametrize("split", ["algo.grad_accum=4", f"algo.micro_batch_tokens={BUDGET}"])
@pytest.mark.parametrize("algo", [["algo.name=grpo", "model.reference=initial", "algo.kl_coef=0.1",
                                   "algo.entropy_coef=0.01"],
                                  ["algo.name=gae"], ["algo.name=rover"]])
def test_narrow_micro_batches_compute_what_whole_width_forwards_do(tmp_path, algo, split, device):
    algo = [*algo, f"run.device={device.type}"]
    trainer = Trainer(varied_config(tmp_path, split, "algo.mini_batches=2", *algo))
    widths = []
    trainer.policy.causal_lm().model.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape) if not kwargs.get("use_cache") else None,
        with_kwargs=True)
    batch = trainer.collect(0)
    B, L = batch.input_ids.shape
    lengths = batch.attention_mask.sum(1)
    assert lengths.min() < L - 4  # the rows do differ in length
    if "grad_accum" in split:
        assert len(widths) == 8 and all(w[0] == B // 8 for w in widths) and min(w[1] for w in widths) < L
    else:  # as few as fit the budget, a longer row alone
        assert all(rows * width <= BUDGET or rows == 1 for rows, width in widths) and len(widths) < B
        assert sum(rows for rows, _ in widths) == B
    with torch.no_grad():
        whole, values = trainer.module(batch.input_ids, batch.attention_mask, batch.response_mask,
                                       trainer.cfg.rollout.temperature, entropy=True,
                                       mean_logp=trainer.cfg.algo.name == "rover")
    for name in ("logprob", "entropy", "mean_logp"):
        if getattr(whole, name) is not None:
            torch.testing.assert_close(getattr(batch.old, name), getattr(whole, name), rtol=0, atol=1e-12, msg=name)
    if values is not None:
        torch.testing.assert_close(batch.old_values, values, rtol=0, atol=1e-12)
    if batch.ref_logp is not None:
        torch.testing.assert_close(batch.ref_logp, whole.logprob, rtol=0, atol=1e-12)  # (the reference is a copy)

    # the update over micro-batches of 3 rows equals one over whole mini-batches
    state = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    widths.clear()
    narrow = trainer.update(batch)
    assert min(w[1] for w in widths) < L
    if "grad_accum" not in split:
        assert all(rows * width <= BUDGET or rows == 1 for rows, width in widths)
    after = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    trainer.proc.close()
    wide_trainer = Trainer(varied_config(tmp_path / "wide", "algo.grad_accum=1", "algo.mini_batches=2", *algo))
    wide_trainer.module.load_state_dict(state)
    wide = wide_trainer.update(batch)
    assert narrow.keys() == wide.keys() and narrow["grad_norm"] > 1e-3
    for key in {"loss", "grad_norm", "clip_fraction"} & wide.keys():  # (rover has no clip fraction)
        assert narrow.get(key) == pytest.approx(wide.get(key), rel=1e-10, abs=1e-13), key
    for name, value in wide_trainer.module.state_dict().items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=1e-10, msg=name)  # (Adam: g / (|g| + eps))
    wide_trainer.proc.close()


@pytest.mark.parametrize("seed", range(20))
def test_a_token_budget_takes_as_few_micro_batches_as_fit(seed):
    g = torch.Generator().manual_seed(seed)
    mask = random_mask(g)
    B = len(mask)
    rows = torch.randperm(B, generator=g)
    budget = int(torch.randint(8, 400, (1,), generator=g))

    def tokens(r, cols):
        return len(r) * (cols.stop - cols.start)

    def span(r):  # the columns the rows r use
        used = (mask[r] != 0).any(0).nonzero().flatten()
        return slice(int(used[0]), int(used[-1]) + 1)
    split = micro_batches(rows, mask, max_tokens=budget)
    assert sorted(torch.cat([r for r, _ in split]).tolist()) == sorted(rows.tolist())
    assert all(cols == span(r) and (tokens(r, cols) <= budget or len(r) == 1) for r, cols in split)
    # greedy over rows sorted by length: a micro-batch ends only where the next row would not fit in it
    for (r, _), (r2, _) in zip(split, split[1:]):
        grown = torch.cat([r, r2[:1]])
        assert tokens(grown, span(grown)) > budget
    more = min(B, len(split) + 3)
    agreed = micro_batches(rows, mask, max_tokens=budget, agree=lambda count: more)  # another process needs more
    assert len(agreed) == more and sorted(torch.cat([r for r, _ in agreed]).tolist()) == sorted(rows.tolist())
    assert all(tokens(r, cols) <= budget or len(r) == 1 for r, cols in agreed)
    assert len(micro_batches(rows, mask, parts=min(B, 4), max_tokens=10**9)) == min(B, 4)  # at least parts


def test_a_token_budget_and_a_count_of_micro_batches_are_not_both_set():
    with pytest.raises(ConfigError, match=r"algo.grad_accum \(2\) and algo.micro_batch_tokens \(4096\) both size"):
        TrainConfig.from_dict({"algo": {"grad_accum": 2, "micro_batch_tokens": 4096}})
    with pytest.raises(ConfigError, match="algo.micro_batch_tokens must be >= 1, got 0"):
        TrainConfig.from_dict({"algo": {"micro_batch_tokens": 0}})


def test_a_count_the_rows_cannot_reach_is_named():
    mask = padded_mask([2, 3, 1], [4, 1, 2])
    with pytest.raises(ValueError, match="5 micro-batches agreed for 3 rows"):
        micro_batches(torch.arange(3), mask, max_tokens=1, agree=lambda count: 5)
