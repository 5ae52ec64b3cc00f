"""The trainer on the built-in task with its tiny model: every algorithm learns on a fixed
batch, resume equals an uninterrupted run, the default run learns, bad configs fail early."""
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")

from fastrl.cli import main  # noqa: E402
from fastrl.trainer import task  # noqa: E402
from fastrl.trainer.config import ALGOS, ConfigError, TrainConfig  # noqa: E402
from fastrl.trainer.train import Trainer, train  # noqa: E402

TIMING = {"step_time", "rollout_time", "tokens_per_s", "peak_memory_mb"}


def config(tmp_path, *overrides, **sections):
    values = {"run": {"output_dir": str(tmp_path / "run"), "progress": False, "steps": 3},
              "data": {"prompts_per_step": 8}, "rollout": {"group_size": 8}}
    for section, more in sections.items():
        values.setdefault(section, {}).update(more)
    return TrainConfig.from_dict(values, list(overrides))


@pytest.mark.parametrize("algo", ALGOS)
def test_each_algorithm_lowers_its_loss_on_a_fixed_batch(tmp_path, algo):
    trainer = Trainer(config(tmp_path, f"algo.name={algo}", "optim.lr=0.003"))
    batch = trainer.collect(0)
    assert batch.credit.advantages[batch.loss_mask != 0].abs().sum() > 0  # something to learn
    losses = [trainer.update(batch)["loss"] for _ in range(8)]
    assert losses[-1] < losses[0] - 1e-3, losses
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    # in the advantages' direction: log-probs rose where A > 0 and fell where A < 0 (a
    # sign slip anywhere, from credit to loss, lowers the loss just as well)
    with torch.no_grad():
        new, _ = trainer.module(batch.input_ids, batch.attention_mask, batch.loss_mask, trainer.cfg.rollout.temperature)
    valid = batch.loss_mask != 0
    gain = ((new.logprob - batch.old.logprob) * batch.credit.advantages)[valid]
    assert gain.sum() > 0.05 * gain.abs().sum(), (gain.sum(), gain.abs().sum())


def test_pure_with_a_process_reward_model(tmp_path):
    # a random token-classification Llama on the task's vocabulary stands in for a PRM
    tok = task.MaxTask().tokenizer()
    prm = transformers.LlamaForTokenClassification(transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_labels=2, pad_token_id=0))
    prm.save_pretrained(tmp_path / "prm")
    trainer = Trainer(config(tmp_path, "algo.name=pure", f"reward.process={tmp_path / 'prm'}", "optim.lr=0.003"))
    batch = trainer.collect(0)
    assert torch.isfinite(batch.credit.advantages).all()
    losses = [trainer.update(batch)["loss"] for _ in range(8)]
    assert losses[-1] < losses[0] - 1e-3, losses
    # it reads the policy's token ids: a PRM of another vocabulary is refused before any step
    small = transformers.LlamaForTokenClassification(transformers.LlamaConfig(
        vocab_size=len(tok) - 1, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_labels=2, pad_token_id=0))
    small.save_pretrained(tmp_path / "small")
    with pytest.raises(ConfigError, match=f"embeds {len(tok) - 1} token ids, the policy's tokenizer has {len(tok)}"):
        Trainer(config(tmp_path, "algo.name=pure", f"reward.process={tmp_path / 'small'}"))
    prm.save_pretrained(tmp_path / "other")
    word_tokenizer(["<pad>", "<eos>", *"0123456789"]).save_pretrained(tmp_path / "other")
    with pytest.raises(ConfigError, match="has its own tokenizer \\(12 tokens\\), not the policy's"):
        Trainer(config(tmp_path, "algo.name=pure", f"reward.process={tmp_path / 'other'}"))
    tok.save_pretrained(tmp_path / "prm")  # the policy's own tokenizer beside it is fine
    assert Trainer(config(tmp_path, "algo.name=pure", f"reward.process={tmp_path / 'prm'}")).process is not None


def test_a_model_folder_that_does_not_load_or_does_not_fit_is_named(tmp_path):
    """transformers' own errors were tracebacks naming no key, and a reference of a smaller
    vocabulary failed after the first rollout with an IndexError."""
    tok = task.MaxTask().tokenizer()

    def causal_lm(vocab_size, folder, tokenizer=None):
        transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2)).save_pretrained(tmp_path / folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp_path / folder)
        return tmp_path / folder

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"model.path: '.*empty' does not load \(.*\); model.tokenizer may name"):
        Trainer(config(tmp_path, f"model.path={tmp_path / 'empty'}"))
    no_tokenizer = causal_lm(len(tok), "bare")
    with pytest.raises(ConfigError, match=r"model.path: '.*bare' does not load .*model.tokenizer may name"):
        Trainer(config(tmp_path, f"model.path={no_tokenizer}"))
    tok.save_pretrained(tmp_path / "tokenizer")
    with pytest.raises(ConfigError, match=r"model.path: '.*empty' does not load"):
        Trainer(config(tmp_path, f"model.path={tmp_path / 'empty'}", f"model.tokenizer={tmp_path / 'tokenizer'}"))
    assert Trainer(config(tmp_path, f"model.path={no_tokenizer}", f"model.tokenizer={tmp_path / 'tokenizer'}"))
    with pytest.raises(ConfigError, match=r"model.reference: '.*empty' does not load"):
        Trainer(config(tmp_path, f"model.reference={tmp_path / 'empty'}", "algo.kl_coef=0.1"))
    with pytest.raises(ConfigError, match=f"model.reference: the model at .* embeds {len(tok) - 3} token ids, the "
                                          f"policy's tokenizer has {len(tok)}"):
        Trainer(config(tmp_path, f"model.reference={causal_lm(len(tok) - 3, 'small')}", "algo.kl_coef=0.1"))
    other = causal_lm(len(tok), "other", word_tokenizer(["<pad>", "<eos>", *"0123456789"]))
    with pytest.raises(ConfigError, match=r"model.reference: the model at .* has its own tokenizer \(12 tokens\)"):
        Trainer(config(tmp_path, f"model.reference={other}", "algo.kl_coef=0.1"))
    assert Trainer(config(tmp_path, f"model.reference={causal_lm(len(tok), 'same', tok)}", "algo.kl_coef=0.1"))
    with pytest.raises(ConfigError, match=r"model.reference: the model at .*embeds"):
        Trainer(config(tmp_path, f"model.reference={tmp_path / 'small'}", "algo.kl_coef=0.1"))
    with pytest.raises(ConfigError, match="reward.process: '.*empty' does not load"):
        Trainer(config(tmp_path, "algo.name=pure", f"reward.process={tmp_path / 'empty'}"))


def test_lora_on_the_output_head_is_refused(tmp_path):
    pytest.importorskip("peft")
    # (it was accepted, then the first rollout failed: "output head must be an nn.Linear, ... is Linear")
    with pytest.raises(ConfigError, match=r"model.lora_target_modules: lm_head is the output head \(lm_head\)"):
        Trainer(config(tmp_path, "model.lora_rank=4", "model.lora_target_modules=[lm_head, q_proj]"))


def test_flash_attention_without_flash_attn_or_a_gpu_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"model.attn_implementation flash_attention_2 needs the flash_attn package "
                                          r"and a CUDA device \(run.device is cpu\)"):
        Trainer(config(tmp_path, "model.attn_implementation=flash_attention_2", "run.device=cpu"))


def wrong_step_count(prompt, steps, row):
    return [1.0]


@pytest.mark.parametrize("setting, message", [
    ("reward.kind=test_train:no_reward", "reward.kind 'test_train:no_reward' returned None (NoneType); it must "
                                         "return a number"),
    ("reward.process=test_train:wrong_step_count", "reward.process 'test_train:wrong_step_count' returned 1 scores "
                                                   "for "),
])
def test_a_user_function_gone_wrong_is_one_line_from_the_cli(tmp_path, monkeypatch, capsys, setting, message):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    algo = ["--algo", "pure"] if "process" in setting else []
    code = main(["train", *algo, "--output-dir", str(tmp_path / "run"), "--steps", "1", "--set", setting,
                 "--set", "data.prompts_per_step=2", "--set", "rollout.group_size=2", "--set", "run.progress=false"])
    err = capsys.readouterr().err
    assert code == 2 and f"fastrl train: {message}" in err and "Traceback" not in err, err


def process_scores(prompt, steps, row):  # a user process reward: +1 per non-empty step
    return [1.0 if s else -1.0 for s in steps]


def test_user_reward_and_process_functions(tmp_path, monkeypatch):
    cfg = config(tmp_path, "algo.name=pure", "reward.process=test_train:process_scores",
                 "reward.kind=test_train:outcome")
    trainer, seen = Trainer(cfg), []
    scores = trainer.process.scores

    def spy(*args):  # (the run's length alone passed with the user's scores zeroed)
        seen.append((scores(*args), args[5]))
        return seen[-1][0]

    monkeypatch.setattr(trainer.process, "scores", spy)
    trainer.collect(0)
    (step_scores, step_mask), = seen
    assert step_mask.any() and (step_scores[~step_mask] == 0).all()
    assert set(step_scores[step_mask].tolist()) <= {1.0, -1.0} and 1.0 in step_scores[step_mask].tolist()
    trainer.proc.close()
    assert len(train(cfg).metrics) == 3


def test_pure_takes_the_tasks_step_scores(tmp_path, monkeypatch):
    """With reward.process=task the credit receives, at each step's last token, the task's
    score of that step's text (+1 right running maximum, -1 wrong, 0 empty), 0 elsewhere (the user
    process-reward test checks the same for a user function; the DDP test, one process against two)."""
    from fastrl.trainer import train as train_module

    trainer = Trainer(config(tmp_path, "algo.name=pure", "reward.process=task"))
    seen, assign = [], train_module.credit_lib.assign
    monkeypatch.setattr(trainer.process, "scores", lambda *args: seen.append(args) or type(trainer.process).scores(
        trainer.process, *args))
    monkeypatch.setattr(train_module.credit_lib, "assign", lambda algo, inputs, *rest: seen.append(inputs) or assign(
        algo, inputs, *rest))
    batch = trainer.collect(0)
    (rows, _, _, _, response_mask, steps, texts), inputs = seen
    P = batch.input_ids.shape[1] - response_mask.shape[1]
    want = torch.zeros(response_mask.shape)
    for b, (row, texts_b) in enumerate(zip(rows, texts)):
        want[b, steps[b]] = torch.tensor(trainer.task.step_scores(row, texts_b))
    assert (want != 0).any()
    assert torch.equal(inputs.step_mask[:, P:], steps) and not inputs.step_mask[:, :P].any()
    assert torch.equal(inputs.step_scores[:, P:].cpu().float(), want) and not inputs.step_scores[:, :P].any()
    trainer.proc.close()


def outcome(prompt, response, row):
    return float(response.endswith(row["answer"]))


def no_reward(prompt, response, row):
    return None


def nan_reward(prompt, response, row):
    return float("nan")


@pytest.mark.parametrize("kind, error, match", [
    ("test_train:no_reward", ConfigError, r"reward.kind 'test_train:no_reward' returned None \(NoneType\); it must"),
    ("test_train:nan_reward", ConfigError, r"reward.kind 'test_train:nan_reward' returned nan; rewards and step"),
])
def test_a_user_reward_that_is_no_finite_number_is_named(tmp_path, kind, error, match):
    """(float(None) was a bare TypeError; a NaN reward failed later in the advantages,
    naming neither the function nor its key)"""
    with pytest.raises(error, match=match):
        train(config(tmp_path, f"reward.kind={kind}", "run.steps=1", "data.prompts_per_step=2",
                     "rollout.group_size=2"))


def test_metrics_log_plot_and_final_model(tmp_path):
    result = train(config(tmp_path, "run.plot=true", "model.reference=initial", "algo.kl_coef=0.05"))
    rows = [json.loads(line) for line in result.log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("reward_mean", "reward_std", "accuracy", "response_length", "kl", "clip_fraction", "entropy",
                "advantage_mean", "advantage_std", "step_time", "tokens_per_s", "peak_memory_mb", "loss", "grad_norm"):
        assert key in rows[0], key
    assert result.plot.exists() and result.plot.stat().st_size > 1000
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(result.final_model)
    assert transformers.AutoTokenizer.from_pretrained(result.final_model).encode("3,8=") == [5, 12, 10, 13]
    state = torch.load(next((result.output_dir / "checkpoints").glob("step_*")) / "state.pt", weights_only=False)
    for name, p in reloaded.state_dict().items():
        torch.testing.assert_close(p, state["model"]["model." + name])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU's peak is reset through Linux's clear_refs")
def test_peak_memory_is_each_steps_own(tmp_path, monkeypatch):
    """peak_memory_mb is the step's peak, not the process's: 512 MiB held during step 2's
    update shows in step 2 alone. (On the CPU: the resident set's high-water mark.)"""
    trainer = Trainer(config(tmp_path))
    update = trainer.update

    def update_holding_512_mib(batch):
        held = torch.ones(2**27)  # 512 MiB, every page touched
        metrics = update(batch)
        del held
        return metrics

    peaks = []
    for step in range(3):
        monkeypatch.setattr(trainer, "update", update_holding_512_mib if step == 1 else update)
        peaks.append(trainer.run_step(step)["peak_memory_mb"])
    assert peaks[1] > max(peaks[0], peaks[2]) + 400, peaks
    trainer.proc.close()


def test_loss_and_metrics_against_an_independent_forward(tmp_path):
    """After one update the policy has left the reference: the next step's loss is
    -mean(A) + kl_coef mean(k3) - entropy_coef mean(H) at ratio 1, and its kl and entropy
    metrics the means of k3 and H, all recomputed here from the models' full logits."""
    from fastrl.integrations.hf import count_positions

    kl_coef, entropy_coef = 0.3, 0.02
    trainer = Trainer(config(tmp_path, "model.reference=initial", f"algo.kl_coef={kl_coef}",
                             f"algo.entropy_coef={entropy_coef}", "optim.lr=0.01"))
    trainer.update(trainer.collect(0))
    batch = trainer.collect(1)  # run_step(1) collects the same batch: same weights, same seeds
    T = trainer.cfg.rollout.temperature

    def token_stats(model):
        with torch.no_grad():
            logits = model(batch.input_ids, attention_mask=batch.attention_mask,
                           position_ids=count_positions(batch.attention_mask)).logits[:, :-1].double() / T
        logp = logits.log_softmax(-1)
        taken = logp.gather(-1, batch.input_ids[:, 1:, None])[..., 0]
        return torch.nn.functional.pad(taken, (1, 0)), torch.nn.functional.pad(-(logp.exp() * logp).sum(-1), (1, 0))

    logp, entropy = token_stats(trainer.policy.causal_lm())
    ref_logp, _ = token_stats(trainer.reference)
    valid = batch.loss_mask != 0
    d = ref_logp - logp
    k3 = (d.exp() - d - 1)[valid].mean().item()
    H = entropy[batch.response_mask != 0].mean().item()
    assert k3 > 1e-4 and H > 0.1
    metrics = trainer.run_step(1)
    assert metrics["kl"] == pytest.approx(k3, rel=1e-4)
    assert metrics["entropy"] == pytest.approx(H, rel=1e-4)
    want_loss = -batch.credit.advantages[valid].double().mean().item() + kl_coef * k3 - entropy_coef * H
    assert metrics["loss"] == pytest.approx(want_loss, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("aggregation, grad_accum", [
    ("token_mean", 1), ("seq_mean_token_mean", 1), ("seq_mean_token_sum_norm", 1),
    ("token_mean", 2), ("seq_mean_token_mean", 2), ("seq_mean_token_sum_norm", 2),
])
def test_first_update_loss_is_the_aggregated_advantage(tmp_path, aggregation, grad_accum):
    """At a fresh batch's first update the ratio is 1, so the loss is the aggregation of -A
    over the loss mask (DESIGN 3.4): over all valid tokens (token_mean), the mean of the rows'
    token means (seq_mean_token_mean), or of the rows' token sums / rollout.max_new_tokens,
    the generation budget (seq_mean_token_sum_norm); split into grad_accum micro-batches, the
    parts sum to the loss of the whole. RiskPO's advantages do not sum to 0 per group, so
    each aggregation reads a different number."""
    trainer = Trainer(config(tmp_path, "algo.name=riskpo", f"algo.aggregation={aggregation}",
                             f"algo.grad_accum={grad_accum}", "model.dtype=float64"))
    batch = trainer.collect(0)
    valid = batch.loss_mask != 0
    A = torch.where(valid, batch.credit.advantages.double(), 0)
    rows = valid.any(-1)
    if aggregation == "token_mean":
        want = -A.sum() / valid.sum()
    elif aggregation == "seq_mean_token_mean":
        want = -(A.sum(-1)[rows] / valid.sum(-1)[rows]).mean()
    else:
        want = -(A.sum(-1)[rows] / trainer.cfg.rollout.max_new_tokens).mean()
    assert abs(want.item()) > 1e-3
    assert trainer.update(batch)["loss"] == pytest.approx(want.item(), rel=1e-6)


def test_gae_first_update_loss_weighs_the_value_loss(tmp_path):
    """gae's loss is the policy loss plus algo.value_coef times the token mean of the value
    loss; at a fresh batch's first update the ratio is 1 and the values are the old values
    (the zero-initialised head: 0), so it is -mean(A) + value_coef * mean(0.5 R^2)."""
    value_coef = 0.3
    trainer = Trainer(config(tmp_path, "algo.name=gae", f"algo.value_coef={value_coef}", "model.dtype=float64"))
    batch = trainer.collect(0)
    valid = batch.loss_mask != 0
    A, R = batch.credit.advantages.double()[valid], batch.credit.returns.double()[valid]
    assert batch.old_values[valid].abs().max() == 0 and R.abs().max() > 0.1
    want = -A.mean() + value_coef * (0.5 * R ** 2).mean()
    assert trainer.update(batch)["loss"] == pytest.approx(want.item(), rel=1e-6)


def test_the_value_of_a_token_is_read_from_the_state_that_predicts_it(tmp_path):
    """V at response token t comes from the last hidden state at t - 1 (the state before the
    token is chosen), not from the state at t, which has seen the token."""
    from fastrl.integrations.hf import count_positions

    trainer = Trainer(config(tmp_path, "algo.name=gae", "model.dtype=float64"))
    head = trainer.policy.value_head
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(0),
                                      dtype=head.weight.dtype))
        head.bias.fill_(0.25)
    batch = trainer.collect(0)
    lm = trainer.policy.causal_lm()
    with torch.no_grad():
        hidden = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          position_ids=count_positions(batch.attention_mask)).last_hidden_state
        want = torch.nn.functional.pad((hidden[:, :-1] @ head.weight[0] + 0.25), (1, 0))
    want = torch.where(batch.response_mask != 0, want, 0)
    torch.testing.assert_close(batch.old_values.double(), want.double())


def test_old_log_probs_are_at_the_rollout_temperature(tmp_path):
    """The old policy's log-probabilities are log_softmax(logits / rollout.temperature) of
    the sampled tokens, recomputed here from the model's full logits (at another temperature
    every first ratio would be off 1)."""
    from fastrl.integrations.hf import count_positions

    T = 0.7
    trainer = Trainer(config(tmp_path, f"rollout.temperature={T}", "model.dtype=float64"))
    batch = trainer.collect(0)
    with torch.no_grad():
        logits = trainer.policy.causal_lm()(batch.input_ids, attention_mask=batch.attention_mask,
                                            position_ids=count_positions(batch.attention_mask)).logits
    logp = (logits[:, :-1] / T).log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    want = torch.where(batch.response_mask != 0, torch.nn.functional.pad(logp, (1, 0)), 0)
    torch.testing.assert_close(batch.old.logprob.double(), want.double())


def test_rover_first_update_loss_is_the_mean_squared_advantage(tmp_path):
    """At a fresh batch's first update q = logp - logp_old = 0 and the look-ahead
    m_theta - m_old = 0, so ROVER's loss is the token mean of A^2 (A: the row's GRPO
    advantage, constant along the row)."""
    trainer = Trainer(config(tmp_path, "algo.name=rover", "model.dtype=float64"))
    batch = trainer.collect(0)
    valid = batch.loss_mask != 0
    A = batch.credit.advantages.double()[valid]
    assert A.abs().max() > 0.1
    assert trainer.update(batch)["loss"] == pytest.approx((A ** 2).mean().item(), rel=1e-6)


def test_the_kl_penalty_in_the_reward_lowers_the_score(tmp_path):
    """algo.kl_in=reward: the outcome credited is score - kl_coef * sum_t k3_t (DESIGN 3.4),
    here through GRPO's group normalisation, recomputed by hand."""
    kl_coef = 0.5
    trainer = Trainer(config(tmp_path, "model.reference=initial", f"algo.kl_coef={kl_coef}", "algo.kl_in=reward",
                             "optim.lr=0.01", "model.dtype=float64"))
    trainer.update(trainer.collect(0))  # the policy leaves the reference
    batch = trainer.collect(1)
    kl = batch.kl_old.double().sum(-1)
    assert kl.max() > 1e-3
    x = batch.scores.double() - kl_coef * kl
    G = trainer.cfg.rollout.group_size
    groups = x.view(-1, G)
    want = ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + trainer.cfg.algo.eps)).view(-1)
    valid = batch.loss_mask != 0
    torch.testing.assert_close(batch.credit.advantages.double(), torch.where(valid, want[:, None], 0))


def test_the_kl_penalty_in_the_reward_is_a_token_reward_for_gae(tmp_path):
    """gae with algo.kl_in=reward: each token's reward is -kl_coef * k3_t, the score comes at
    the last token; with gamma = lam = 1 the return at t is the sum of the rewards from t on."""
    kl_coef = 0.5
    trainer = Trainer(config(tmp_path, "algo.name=gae", "model.reference=initial", f"algo.kl_coef={kl_coef}",
                             "algo.kl_in=reward", "optim.lr=0.01", "model.dtype=float64"))
    trainer.update(trainer.collect(0))  # the policy leaves the reference
    batch = trainer.collect(1)
    valid = batch.loss_mask != 0
    k3 = torch.where(valid, batch.kl_old.double(), 0)
    assert k3.sum(-1).max() > 1e-3
    want = batch.scores.double()[:, None] - kl_coef * k3.flip(-1).cumsum(-1).flip(-1)
    torch.testing.assert_close(batch.credit.returns.double(), torch.where(valid, want, 0))


def test_logged_reward_statistics_are_the_batchs(tmp_path):
    """reward_mean, reward_std (unbiased, as torch.std), accuracy and response_length of a
    step are those of the batch it collected (collected again here: same weights, same seeds)."""
    trainer = Trainer(config(tmp_path))
    batch = trainer.collect(0)
    scores = batch.scores.double()
    assert scores.std() > 0
    metrics = trainer.run_step(0)
    assert metrics["reward_mean"] == pytest.approx(scores.mean().item(), rel=1e-9)
    assert metrics["reward_std"] == pytest.approx(scores.std().item(), rel=1e-9)
    assert metrics["accuracy"] == pytest.approx(batch.correct.double().mean().item(), rel=1e-9)
    assert metrics["response_length"] == pytest.approx(batch.lengths.double().mean().item(), rel=1e-9)


def test_a_checkpoint_restores_the_rng_states(tmp_path):
    """checkpoint.load puts back the Python, NumPy and torch generators as save found them:
    a resumed run with dropout (or any other randomness) draws what the uninterrupted one would."""
    import random

    import numpy as np

    from fastrl.trainer import checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    processes = SimpleNamespace(world=1, main=True, rank=0, barrier=lambda: None)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = checkpoint.save(tmp_path, 5, model, optimizer, scheduler, {"run": {}}, processes, keep=1)

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    first = draws()
    assert draws() != first
    assert checkpoint.load(path, model, optimizer, scheduler, processes)["step"] == 5
    assert draws() == first


def test_the_gradient_applied_is_clipped_to_max_grad_norm(tmp_path):
    """optim.max_grad_norm bounds the norm of the gradient each optimizer step applies (the
    logged grad_norm is the norm before clipping)."""
    trainer = Trainer(config(tmp_path, "optim.max_grad_norm=0.01", "algo.mini_batches=2"))
    applied = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        grads = [p.grad.double() for p in trainer.params if p.grad is not None]
        applied.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    metrics = trainer.update(trainer.collect(0))
    assert len(applied) == 2 and metrics["grad_norm"] > 0.02
    assert max(applied) == pytest.approx(0.01, rel=1e-4)


def test_lora_run_saves_the_adapter(tmp_path):
    pytest.importorskip("peft")
    result = train(config(tmp_path, "model.lora_rank=4"))
    assert (result.final_model / "adapter_config.json").exists()


def test_jsonl_prompts_with_the_math_verifier(tmp_path):
    """Prompts come from data.prompt_key of a JSONL file, and each response's reward is the
    math verifier's against its own record's answer."""
    from fastrl.rewards.math import score

    data = tmp_path / "prompts.jsonl"
    # (a "prompt" field that is not the prompt: the records reach the rewards as the file holds them)
    records = [{"question": f"{a},{b}=", "answer": str(max(a, b)), "prompt": "not this"}
               for a in range(3) for b in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = config(tmp_path, f"data.source={data}", "data.prompt_key=question", "reward.kind=math",
                 "data.prompts_per_step=4", "rollout.group_size=2")
    trainer = Trainer(cfg)
    batch = trainer.collect(0)
    prompts = [trainer.tokenizer.decode(ids[(mask != 0) & (resp == 0)], skip_special_tokens=True)
               for ids, mask, resp in zip(batch.input_ids, batch.attention_mask, batch.response_mask)]
    assert prompts == [r["question"] for r in batch.rows]
    assert all(r["prompt"] == "not this" for r in batch.rows)
    assert batch.scores.tolist() == [score(r["answer"], t) for r, t in zip(batch.rows, batch.texts)]
    row = batch.rows[0]
    assert trainer.rewards([row, row], [f"so \\boxed{{{row['answer']}}}", f"so \\boxed{{{int(row['answer']) + 1}}}"]) \
        == [1.0, 0.0]
    trainer.proc.close()
    result = train(cfg)
    assert len(result.metrics) == 3


def strip_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_resume_equals_an_uninterrupted_run(tmp_path):
    whole = train(config(tmp_path / "a", "run.steps=4", "algo.mini_batches=2", "algo.epochs=2"))
    first = train(config(tmp_path / "b", "run.steps=2", "algo.mini_batches=2", "algo.epochs=2"))
    assert len(first.metrics) == 2
    rest = train(config(tmp_path / "b", "run.steps=4", "algo.mini_batches=2", "algo.epochs=2"), resume=True)
    assert strip_timing(rest.metrics) == strip_timing(whole.metrics)
    a = torch.load(next((whole.output_dir / "checkpoints").glob("step_*4")) / "state.pt", weights_only=False)
    b = torch.load(next((rest.output_dir / "checkpoints").glob("step_*4")) / "state.pt", weights_only=False)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_a_longer_resumed_run_takes_its_schedule_from_the_first_update(tmp_path):
    """The optimizer's saved lr followed the old schedule (cosine over 4 steps): resumed to 8,
    step 5 took that lr (0.001) and only later steps the new schedule's (step 5: 0.0055)."""
    from fastrl.trainer.train import _lr_factor

    args = ["optim.schedule=cosine", "optim.min_lr_ratio=0.1", "optim.lr=0.01", "run.checkpoint_every=2"]
    train(config(tmp_path, "run.steps=4", *args))
    rest = train(config(tmp_path, "run.steps=8", *args), resume=True)
    optim = config(tmp_path, *args).optim
    assert [m["lr"] for m in rest.metrics[4:]] == pytest.approx([0.01 * _lr_factor(i, 8, optim) for i in range(4, 8)])


def test_a_resumed_run_replaces_the_replayed_steps_in_tensorboard(tmp_path):
    """A run that stopped after step 3 with its last checkpoint at step 2 resumes from 2:
    metrics.jsonl drops step 3 and so must TensorBoard (step 3 was shown twice)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["run.tensorboard=true", "run.checkpoint_every=2", "data.prompts_per_step=4"]
    first = train(config(tmp_path, "run.steps=3", *args))
    shutil.rmtree(first.output_dir / "checkpoints" / "step_00000003")  # as if it had died before saving step 3
    train(config(tmp_path, "run.steps=4", *args), resume=True)
    events = EventAccumulator(str(first.output_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("reward_mean")] == [1, 2, 3, 4]


def test_interrupt_saves_then_resumes(tmp_path):
    cfg = config(tmp_path, "run.steps=3")
    trainer = Trainer(cfg)
    run_step = trainer.run_step

    def interrupted_after_one(step):
        metrics = run_step(step)
        trainer._stop = True  # what Ctrl-C sets
        return metrics
    trainer.run_step = interrupted_after_one
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert (tmp_path / "run" / "checkpoints" / "step_00000001" / "state.pt").exists()
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(cfg)
    resumed = train(cfg, resume=True)
    whole = train(config(tmp_path / "w", "run.steps=3"))
    assert strip_timing(resumed.metrics) == strip_timing(whole.metrics)


def test_default_run_learns(tmp_path, capsys):
    """The README's main command: the built-in task, its defaults, to the end."""
    out = tmp_path / "default"
    assert main(["train", "--output-dir", str(out), "--plot"]) == 0
    printed = capsys.readouterr().out
    assert "reward:" in printed and str(out / "metrics.jsonl") in printed and str(out / "metrics.png") in printed
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward_mean"] for r in rows]
    fifth = len(rewards) // 5
    first, last = sum(rewards[:fifth]) / fifth, sum(rewards[-fifth:]) / fifth
    assert 0.05 <= rewards[0] <= 0.25  # a random policy scores about 0.1
    assert last - first >= 0.2, (first, last)


@pytest.mark.parametrize("overrides, match", [
    (["algo.nme=grpo"], "unknown key 'algo.nme'"),
    (["algo.name=ppo"], "algo.name must be one of"),
    (["algo.clip_low=1.5"], r"algo.clip_low must be in \[0, 1\)"),
    (["run.steps=ten"], "run.steps must be an integer"),
    (["run.steps=0"], "run.steps must be >= 1"),
    (["run.output_dir=' '"], "run.output_dir must name a folder"),  # (--overwrite would clear the working directory's)
    (["algo.aggregation=mean"], "algo.aggregation must be one of"),
    (["algo.rover_kappa=-1"], "algo.rover_kappa must be >= 0, got -1"),
    (["algo.kl_coef=0.1"], "needs model.reference"),
    (["model.path=/nonexistent"], "model.path"),
    (["data.source=/nonexistent.jsonl"], "data.source"),
    (["reward.kind=task", "data.source=README.md"], "data.source"),
    (["rollout.top_p=1.5"], "rollout.top_p"),
    (["rollout.max_rows=0"], "rollout.max_rows must be >= 1, got 0"),
    (["optim.betas=[0.9]"], "optim.betas"),
    (["algo"], "section.key=value"),
    (["model.dtype=int8"], "model.dtype must be one of"),
    (["run.plot=maybe"], "run.plot must be true or false"),
    (["optim.lr=1e-6x"], "optim.lr must be a finite number"),
    (["optim.lr=.inf"], "optim.lr must be a finite number"),
    (["rollout.temperature=.inf"], "rollout.temperature must be a finite number"),
    (["optim.max_grad_norm=.nan"], "optim.max_grad_norm must be a finite number"),
    (["reward.kind=nosuchmodule:fn"], "reward.kind: cannot load 'nosuchmodule:fn'"),
    (["reward.kind=test_train:nosuchfn"], "reward.kind: cannot load"),
    (["algo.name=pure", "reward.process=nosuchmodule:fn"], "reward.process: cannot load"),
    (["run.device=cuda:x"], "run.device must be"),
    (["rollout.temperature=1e-300"], r"rollout.temperature must be in \[4.24e-39, 1.227e\+38\] for a float32 model"),
    (["rollout.temperature=1e-300", "model.dtype=float64"], None),  # a float64 model samples in float64
    (["reward.kind=classification"], "the built-in task has none"),
    (["run.device=cuda:99"], "run.device 'cuda:99'"),
    (["data.split=train"], "data.split selects a split of a DatasetDict"),
    (["model.tokenizer=."], "model.tokenizer goes with model.path"),
    (["model.dtype=float16"], "model.dtype must be one of"),  # AdamW in float16 made every weight NaN
    (["algo.name=gae", "rollout.group_size=1", "rollout.dynamic_sampling=true"],
     "rollout.dynamic_sampling needs rollout.group_size >= 2"),  # (every group dropped: no update, silently)
    # groups of equal rewards still have advantages there: dropping them lost about 3/4 of the signal, silently
    (["algo.name=riskpo", "rollout.dynamic_sampling=true"], "with algo.name 'riskpo' .* would drop real training"),
    (["algo.name=gae", "rollout.dynamic_sampling=true"], "with algo.name 'gae'"),
    (["algo.name=pure", "reward.process=task", "rollout.dynamic_sampling=true"], "with algo.name 'pure'"),
    (["algo.kl_coef=0.1", "algo.kl_in=reward", "model.reference=initial", "rollout.dynamic_sampling=true"],
     "with algo.kl_in 'reward'"),
    (["run.seed=4294967296"], r"run.seed must be < 2\*\*32, got 4294967296"),  # numpy's seed raised mid-start
    (["optim.lr=1" + "0" * 400], "optim.lr must be a finite number"),  # an OverflowError traceback
    (["model.lora_rank=2", "model.lora_target_modules=[]"], "model.lora_target_modules must name at least one"),
] + [(["rollout.group_size=1", f"algo.name={a}"], "rollout.group_size must be >= 2") for a in ALGOS if a != "gae"])
def test_bad_configs(overrides, match):
    if match is None:
        TrainConfig.from_dict({}, overrides)
        return
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict({}, overrides)


def test_an_empty_yaml_section_takes_overrides(tmp_path):
    """A section whose keys are all commented out loads as None: accepted alone, it was
    refused ('model must be a mapping') as soon as --set touched it."""
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  # lora_rank: 4\nrun:\n  steps: 2\n")
    cfg = TrainConfig.load(path, ["model.lora_rank=4"])
    assert cfg.model.lora_rank == 4 and cfg.run.steps == 2


@pytest.mark.parametrize("key", ["model.path", "model.reference", "data.source", "reward.process"])
def test_an_empty_path_is_refused_by_name(tmp_path, key):
    """Path("") is the working folder: it passed the 'exists' checks, then failed after the
    policy loaded, naming no key (data.source "" read the working folder as a dataset)."""
    with pytest.raises(ConfigError, match=f"{key} must not be empty"):
        config(tmp_path, f'{key}=""')


def test_a_folder_that_holds_no_dataset_is_refused_by_name(tmp_path):
    from fastrl.trainer.data import Prompts

    with pytest.raises(ConfigError, match=f"data.source {tmp_path}: .*neither a `Dataset` directory"):
        Prompts(config(tmp_path / "out", f"data.source={tmp_path}", "reward.kind=math").data, 0)


def test_unknown_yaml_keys_of_mixed_types_are_one_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("algo: {1: 2, foo: 3}\n")
    with pytest.raises(ConfigError, match="unknown key 'algo.1'"):
        TrainConfig.load(path, [])


def test_bad_layout_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="share of every group"):
        Trainer(config(tmp_path, "algo.mini_batches=16"))
    # 3 mini-batches of a group of 8 took shares 3, 3, 2: the smaller one's responses weighed 1.5x
    with pytest.raises(ConfigError, match=r"algo.mini_batches \(3\) must divide rollout.group_size \(8\)"):
        config(tmp_path, "rollout.group_size=8", "algo.mini_batches=3")
    with pytest.raises(ConfigError, match="fewer than algo.grad_accum"):
        Trainer(config(tmp_path, "algo.mini_batches=8", "algo.grad_accum=9"))
    with pytest.raises(ConfigError, match="kl_in 'reward'"):
        Trainer(config(tmp_path, "algo.name=rover", "model.reference=initial", "algo.kl_coef=0.1",
                       "algo.kl_in=reward"))


def test_an_output_dir_that_is_a_file_is_a_config_error(tmp_path, capsys):
    (tmp_path / "afile").touch()  # (a FileExistsError traceback at the first write, after the model loaded)
    assert main(["train", "--output-dir", str(tmp_path / "afile"), "--steps", "1"]) == 2
    assert "run.output_dir" in (err := capsys.readouterr().err) and "is a file, not a folder" in err, err


def test_the_readme_lists_every_key_a_resume_may_change():
    from pathlib import Path

    from fastrl.trainer.config import RESUME_SAFE

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert [k for k in RESUME_SAFE if f"`{k}`" not in readme] == []


def test_cli_reports_config_errors(tmp_path, capsys):
    bad = tmp_path / "run.yaml"
    bad.write_text("algo:\n  name: grpo\n  clip: 0.2\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown key 'algo.clip'" in capsys.readouterr().err
    assert main(["train", "--help-config"]) == 0
    assert "clip_high" in capsys.readouterr().out
    bad.write_text("algo: {name: grpo\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err and len(err.strip().splitlines()) == 1, err  # (PyYAML's took 5 to 8 lines)
    # YAML forbids a key twice; PyYAML kept the last, so a second section replaced the first whole
    bad.write_text("run: {steps: 5}\nrun: {seed: 3}\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "duplicate key 'run' (line 2)" in capsys.readouterr().err
    bad.write_text("run:\n  <<: {steps: 5, seed: 2}\n  seed: 3\n")  # a merge key may be overridden
    loaded = TrainConfig.load(bad)
    assert (loaded.run.steps, loaded.run.seed) == (5, 3)
    for text in ("[]", "false", "0", '""'):  # were taken for an empty config
        bad.write_text(text + "\n")
        with pytest.raises(ConfigError, match="the config must be a mapping of sections"):
            TrainConfig.load(bad)
    bad.write_text("# nothing yet\n")
    assert TrainConfig.load(bad).run.steps == TrainConfig().run.steps
    bad.write_bytes(b"\xff\xfe")
    assert main(["train", "--config", str(bad)]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err
    assert main(["train", "--set", "model.lora_target_modules=[q_proj"]) == 2
    assert "--set 'model.lora_target_modules=[q_proj': the value is not valid YAML" in capsys.readouterr().err


def test_help_config_documents_every_key(capsys):
    assert main(["train", "--help-config"]) == 0
    keys = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert len(keys) > 70 and [k for k in keys if "  # " not in k] == []
    assert any("One of: constant, cosine." in k for k in keys if k.startswith("  schedule:"))
    # pasted into a config it reads back as the defaults (it printed Python reprs: None read as "None")
    printed = main(["train", "--help-config"]), capsys.readouterr().out
    assert TrainConfig.from_dict(yaml.safe_load(printed[1])).to_dict() == TrainConfig.from_dict({}).to_dict()


def test_a_user_function_beside_the_config_imports_from_the_working_directory(tmp_path, monkeypatch):
    """module:function resolves from the working directory under the fastrl console script too
    (only `python -m fastrl.cli` put it on sys.path: 'No module named ...')."""
    from fastrl.trainer.config import user_function

    (tmp_path / "userfns_beside.py").write_text("def reward(prompt, response, row):\n    return 1.0\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert user_function("userfns_beside:reward", "reward.kind")("p", "r", {}) == 1.0


@pytest.mark.parametrize("folder", ["exp #2", "001", "2024-01-01", "on", "~", "@runs"])
def test_cli_flags_are_values_not_yaml(folder, monkeypatch):
    """--output-dir is a folder name as typed: read as YAML, "exp #2" was "exp" (and
    --overwrite then removed that other run's checkpoints), "001" the int 1, "on" True."""
    import fastrl.trainer.train as train_module

    seen = {}

    def capture(config, **kwargs):
        seen["output_dir"], seen["algo"] = config.run.output_dir, config.algo.name
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", capture)
    assert main(["train", "--output-dir", folder, "--algo", "rloo"]) == 130
    assert seen == {"output_dir": folder, "algo": "rloo"}


def test_cli_names_the_missing_train_extra(tmp_path, monkeypatch, capsys):
    import fastrl.trainer.train as train_module

    def without_transformers(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'transformers'", name="transformers")

    monkeypatch.setattr(train_module, "train", without_transformers)
    assert main(["train", "--output-dir", str(tmp_path / "run")]) == 2
    assert "pip install --no-build-isolation -e '.[train]'" in capsys.readouterr().err


def test_datasets_folder_and_tensorboard(tmp_path):
    """Prompts come from a saved ``datasets`` folder; TensorBoard gets every logged metric at
    every step, with the value of metrics.jsonl."""
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = [{"prompt": f"{a},{b}=", "answer": str(max(a, b))} for a in range(4) for b in range(4)]
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "ds"))
    cfg = config(tmp_path, f"data.source={tmp_path / 'ds'}", "reward.kind=test_train:outcome",
                 "run.tensorboard=true", "data.prompts_per_step=4")
    trainer = Trainer(cfg)
    assert all(r in records for r in trainer.collect(0).rows)
    trainer.proc.close()
    result = train(cfg)
    assert len(result.metrics) == 3
    events = EventAccumulator(str(result.output_dir / "tensorboard"))
    events.Reload()
    for name in result.metrics[0]:
        if name != "step":
            logged = [(e.step, e.value) for e in events.Scalars(name)]
            assert logged == [(m["step"], pytest.approx(m[name], rel=1e-6)) for m in result.metrics], name


def test_file_prompts_cycle_in_a_new_order_each_epoch(tmp_path):
    from fastrl.trainer.data import Prompts

    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": str(i)}) + "\n" for i in range(6)))
    cfg = config(tmp_path, f"data.source={data}", "reward.kind=test_train:outcome", "data.prompts_per_step=4").data
    prompts = Prompts(cfg, seed=0)
    seen = [r["prompt"] for step in range(3) for r in prompts.batch(step)]
    assert sorted(seen[:6]) == sorted(seen[6:12]) == [str(i) for i in range(6)]
    assert seen[:6] != seen[6:12]
    assert [r["prompt"] for r in Prompts(cfg, seed=0).batch(2)] == seen[8:]


def test_dynamic_sampling_drops_groups_with_equal_rewards(tmp_path):
    trainer = Trainer(config(tmp_path, "rollout.dynamic_sampling=true"))
    batch = trainer.collect(0)
    groups = batch.scores.view(8, 8)
    varied = groups.max(1).values > groups.min(1).values
    assert 0 < int(varied.sum()) < 8
    assert torch.equal(batch.keep.view(8, 8), varied[:, None].expand(8, 8))
    assert torch.equal(batch.loss_mask != 0, (batch.response_mask != 0) & batch.keep[:, None])


def test_reward_kinds(tmp_path):
    from fastrl.trainer.scoring import outcome_rewards

    row = {"prompt": "?", "answer": "cat", "labels": ["cat", "dog"]}
    good = "<think>whiskers</think><answer>cat</answer>"
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(row) + "\n")
    cfg = config(tmp_path, f"data.source={data}", "reward.kind=classification")
    assert outcome_rewards(cfg)([row, row], [good, "dog"]) == [2.0, 0.0]
    cfg.reward.kind = "classification_no_think"
    assert outcome_rewards(cfg)([row], ["cat"]) == [1.0]
    cfg.reward.kind = "format"
    assert outcome_rewards(cfg)([row, row], [good, "cat"]) == [1.0, 0.0]
    cfg.reward.kind = "math"
    rows = [{"answer": "1/2"}, {"answer": 7}, {"answer": "... #### 12"}, {"answer": "3"}]
    assert outcome_rewards(cfg)(rows, ["so \\boxed{0.5}", "7", "The answer is 12.", "4"]) == [1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("kind", ["math", "classification"])
@pytest.mark.parametrize("gold", [["3"], float("nan")])  # (json writes NaN, and reads it back)
def test_gold_that_is_no_answer_refused_at_load(tmp_path, kind, gold):
    from fastrl.trainer.config import ConfigError

    rows = [{"prompt": "?", "answer": "3", "labels": ["3", "4"]}, {"prompt": "?", "answer": gold, "labels": ["3", "4"]}]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match=rf"rows.jsonl.*2.*'answer'.*must be a string or a finite number, got "
                                          rf"{type(gold).__name__}"):
        Trainer(config(tmp_path, f"data.source={data}", f"reward.kind={kind}"))


def test_a_well_formed_wrong_label_is_not_correct(tmp_path):
    """The classification reward is format + accuracy (0..2): a threshold on it (0.5 by
    default) counted a well-formed wrong answer as correct, so the logged accuracy was the
    format rate; correct is now the accuracy, whatever the format."""
    from fastrl.trainer.scoring import outcome_correct, outcome_rewards

    row = {"prompt": "?", "answer": "cat", "labels": ["cat", "dog"]}
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(row) + "\n")
    cfg = config(tmp_path, f"data.source={data}", "reward.kind=classification")
    for response, correct in [("<think>fur</think><answer>dog</answer>", False),
                              ("<think>fur</think><answer>cat</answer>", True), ("<answer>cat</answer>", True),
                              ("dog", False)]:
        assert outcome_correct(cfg)(row, response, outcome_rewards(cfg)([row], [response])[0]) is correct, response
    cfg.reward.kind = "math"
    assert outcome_correct(cfg)({"answer": "2"}, "\\boxed{2}", 1.0) and not outcome_correct(cfg)({}, "", 0.4)


def test_learning_rate_schedule():
    from fastrl.trainer.config import OptimConfig
    from fastrl.trainer.train import _lr_factor

    o = OptimConfig(warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    factors = [_lr_factor(i, 20, o) for i in range(20)]  # 20 updates: the last is min_lr_ratio (was at 21st)
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(1.0) and factors[19] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))
    assert _lr_factor(7, 20, OptimConfig()) == 1.0


def test_numbers_in_exponent_form(tmp_path):
    # YAML 1.1 reads 1e-6 (no dot) as a string, in files and in --set
    cfg = TrainConfig.from_dict({}, ["optim.lr=1e-6", "optim.betas=[0.9, 1e-3]", "algo.dual_clip=3E0"])
    assert (cfg.optim.lr, cfg.optim.betas, cfg.algo.dual_clip) == (1e-6, [0.9, 1e-3], 3.0)
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 1e-6\n  weight_decay: 5e-2\nrollout:\n  top_p: .95\n")
    cfg = TrainConfig.load(path)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.rollout.top_p) == (1e-6, 0.05, 0.95)
    with pytest.raises(ConfigError, match="run.steps must be an integer"):
        TrainConfig.from_dict({}, ["run.steps=1e3"])


def test_group_size_one_is_for_gae_only():
    assert TrainConfig.from_dict({}, ["rollout.group_size=1", "algo.name=gae"]).rollout.group_size == 1


def test_cuda_device_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=f"run.device '{device}': this machine has no CUDA"):
            TrainConfig.from_dict({}, [f"run.device={device}"])


def no_model(self):
    pytest.fail("a model was loaded")


def test_datasets_dict_folder_needs_a_split(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    from fastrl.trainer.data import Prompts

    rows = [{"prompt": f"{a},{b}=", "answer": str(max(a, b))} for a in range(3) for b in range(3)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:2])}
                         ).save_to_disk(str(tmp_path / "dd"))
    cfg = config(tmp_path, f"data.source={tmp_path / 'dd'}", "reward.kind=test_train:outcome")
    monkeypatch.setattr(Trainer, "_load_model", no_model)
    with pytest.raises(ConfigError, match="is a DatasetDict with splits train, test: set data.split"):
        Trainer(cfg)
    cfg.data.split = "validation"
    with pytest.raises(ConfigError, match="got 'validation'"):
        Prompts(cfg.data, 0)
    cfg.data.split = "test"
    assert sorted(r["prompt"] for r in Prompts(cfg.data, 0).batch(0)[:2]) == ["0,0=", "0,1="]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    cfg.data.source = str(tmp_path / "single")
    with pytest.raises(ConfigError, match="data.split: .* is a single Dataset"):
        Prompts(cfg.data, 0)


def test_an_empty_prompt_is_refused_when_the_data_loads(tmp_path):
    """"" passed the check and stopped the run at the step that drew it, with a TypeError
    from the rollout naming neither the file nor the record."""
    from fastrl.trainer.data import Prompts

    data = tmp_path / "rows.jsonl"
    data.write_text("\n\n".join(json.dumps({"prompt": p, "answer": "1"}) for p in ["1+0=", "0+1=", ""]) + "\n")
    with pytest.raises(ConfigError, match=f"{data}:5 has an empty 'prompt'"):  # the line (blank lines between)
        Prompts(config(tmp_path, f"data.source={data}", "reward.kind=math").data, 0)


@pytest.mark.parametrize("content,message", [
    ("café".encode("latin-1"), ":1: not UTF-8 text"),
    ('{"prompt": "1+0="}\n\n{"prompt": 3}\n'.encode(), ":3 has no string field 'prompt'"),
    ('{"prompt": "1+0="}\n{"prompt": "2+0=", "answer": "2", "answer": "3"}\n'.encode(), ":2: key 'answer' given twice"),
    (b'{"prompt": "1+0=", "answer": "1"}\n{bad\n', r":2: not JSON \(Expecting property name"),
])
def test_a_bad_jsonl_record_is_named_by_its_line(tmp_path, content, message):
    from fastrl.trainer.data import Prompts

    data = tmp_path / "rows.jsonl"
    data.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        Prompts(config(tmp_path, f"data.source={data}", "reward.kind=math").data, 0)


def test_jsonl_prompts_are_utf8_whatever_the_locale_and_hold_line_separators(tmp_path):
    """The file was opened in the locale's encoding (ASCII under LC_ALL=POSIX: a UTF-8 prompt
    failed); a U+2028 inside a string stays in it."""
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "é\u2028x", "answer": "1"}, ensure_ascii=False) + "\n", encoding="utf-8")
    code = (f"from fastrl.trainer.config import TrainConfig; from fastrl.trainer.data import Prompts; "
            f"print(ascii(Prompts(TrainConfig.from_dict({{}}, ['data.source={data}', 'reward.kind=math']).data, 0).rows[0]['prompt']))")
    env = {**os.environ, "LC_ALL": "POSIX", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == ascii("é\u2028x"), done.stderr[-2000:]


def test_jsonl_prompts_may_start_with_a_byte_order_mark(tmp_path):
    from fastrl.trainer.data import Prompts

    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "1+0=", "answer": "1"}) + "\n", encoding="utf-8-sig")
    assert Prompts(config(tmp_path, f"data.source={data}", "reward.kind=math").data, 0).rows[0]["prompt"] == "1+0="


def test_file_prompts_shuffle_once_per_epoch(tmp_path, monkeypatch):
    import random
    import types

    from fastrl.trainer import data as data_lib

    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": str(i)}) + "\n" for i in range(7)))
    cfg = config(tmp_path, f"data.source={data}", "reward.kind=test_train:outcome", "data.prompts_per_step=4").data
    expected = []  # the order of the per-prompt shuffle this replaced: results and resumes unchanged
    for i in range(6 * 4):
        epoch, j = divmod(i, 7)
        order = list(range(7))
        random.Random(f"fastrl-data:3:{epoch}").shuffle(order)
        expected.append(str(order[j]))
    made = []

    class Counted(random.Random):
        def __init__(self, seed):
            made.append(seed)
            super().__init__(seed)
    monkeypatch.setattr(data_lib, "random", types.SimpleNamespace(Random=Counted))
    prompts = data_lib.Prompts(cfg, seed=3)
    assert [r["prompt"] for step in range(6) for r in prompts.batch(step)] == expected
    assert made == [f"fastrl-data:3:{epoch}" for epoch in range(4)]
    assert [r["prompt"] for r in data_lib.Prompts(cfg, seed=3).batch(4)] == expected[16:20]


def chat_task():
    class ChatTask(task.MaxTask):
        def tokenizer(self):
            tok = super().tokenizer()
            tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                                 "{% if add_generation_prompt %}={% endif %}")
            return tok
    return ChatTask()


def test_chat_template(tmp_path):
    trainer = Trainer(config(tmp_path, "data.chat_template=true"), task=chat_task())
    assert trainer._encode("3,8,5") == trainer.tokenizer.encode("3,8,5=")
    batch = trainer.collect(0)  # the task's prompts "a,b,c=", then the template's "="
    assert (batch.input_ids[:, 5:7] == trainer.tokenizer.convert_tokens_to_ids("=")).all()


def gpt2_folder(path, dropout=0.0, positions=64):
    """A tiny GPT-2 (absolute position embeddings, dropout) with the task's tokenizer."""
    tok = task.MaxTask().tokenizer()
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(tok), n_embd=32, n_layer=1, n_head=4, n_positions=positions, resid_pdrop=dropout,
        attn_pdrop=dropout, embd_pdrop=dropout, bos_token_id=1, eos_token_id=1, pad_token_id=0))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_training_forward_numbers_positions_as_the_rollout(tmp_path):
    from fastrl.trainer.rollout import rollout
    from fastrl.trainer.train import Policy

    tok = task.MaxTask().tokenizer()
    model = transformers.AutoModelForCausalLM.from_pretrained(gpt2_folder(tmp_path / "gpt2"), dtype=torch.float64)
    ro = rollout(model, [tok.encode("3,8="), tok.encode("1,2,3,4,5,6,7,8,9=")], 6, 1, 0, seeds=torch.tensor([1, 2]),
                 progress=False)
    assert ro.prompt_mask[0, 0] == 0  # the short prompt is left-padded
    with torch.no_grad():
        stats, _ = Policy(model)(*ro.sequences(), 1.0)
    torch.testing.assert_close(stats.logprob[:, ro.prompt_ids.shape[1]:], ro.policy_logprob, rtol=0, atol=1e-9)


def test_old_and_reference_statistics_come_without_dropout(tmp_path):
    """The old policy and the reference see what the sampler saw: no dropout (GPT-2's 0.1)
    and positions past the left padding, so the first ratio is exactly 1 and the KL 0."""
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": "9"}) + "\n"
                            for p in ("1=", "3,8,5=", "1,2,3,4,5,6=", "7,9=")))
    trainer = Trainer(config(tmp_path, f"model.path={gpt2_folder(tmp_path / 'gpt2', dropout=0.1)}",
                             f"data.source={data}", "reward.kind=test_train:outcome", "data.prompts_per_step=4",
                             "rollout.group_size=2", "model.reference=initial", "algo.kl_coef=0.1"))
    batch = trainer.collect(0)
    assert trainer.policy.training  # the update's forwards keep dropout
    assert (batch.attention_mask == 0).any() and bool((batch.kl_old == 0).all())
    trainer.module.eval()
    with torch.no_grad():
        now, _ = trainer.module(batch.input_ids, batch.attention_mask, batch.response_mask, 1.0)
    assert torch.equal(now.logprob, batch.old.logprob)


def test_position_limit(tmp_path):
    folder = gpt2_folder(tmp_path / "gpt2", positions=64)
    with pytest.raises(ConfigError, match=r"rollout.max_new_tokens \(80\) leaves no room .* 64 positions"):
        Trainer(config(tmp_path, f"model.path={folder}", "rollout.max_new_tokens=80"))
    trainer = Trainer(config(tmp_path, f"model.path={folder}", "rollout.max_new_tokens=60"))
    with pytest.raises(ConfigError, match=r"prompt of 6 tokens, and with rollout.max_new_tokens \(60\)"):
        trainer.collect(0)  # "a,b,c=" + 60 > 64


def test_logged_lr_is_the_one_the_step_used(tmp_path):
    result = train(config(tmp_path, "optim.lr=0.001", "optim.warmup_steps=4", "data.prompts_per_step=2",
                          "rollout.group_size=4"))
    assert [m["lr"] for m in result.metrics] == [0.00025, 0.0005, 0.00075]


def constant(prompt, response, row):
    return 1.0


def test_no_update_when_dynamic_sampling_drops_every_group(tmp_path):
    trainer = Trainer(config(tmp_path, "rollout.dynamic_sampling=true", "reward.kind=test_train:constant",
                             "optim.weight_decay=0.1"))
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    metrics = trainer.run_step(0)
    assert metrics["update_skipped"] == 1 and metrics["kept_fraction"] == 0
    assert not {"loss", "grad_norm", "clip_fraction"} & metrics.keys()  # no update: nothing to report as 0.0
    assert trainer.scheduler.last_epoch == 0 and not trainer.optimizer.state
    for name, value in trainer.policy.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_resume_is_exact_across_skipped_updates(tmp_path):
    # one prompt of 4 responses a step: a random policy often scores 0 on all 4 (dropped)
    args = ("rollout.dynamic_sampling=true", "data.prompts_per_step=1", "rollout.group_size=4",
            "optim.warmup_steps=3", "optim.weight_decay=0.1")
    whole = train(config(tmp_path / "a", "run.steps=4", *args))
    assert {m["update_skipped"] for m in whole.metrics} == {0, 1}
    train(config(tmp_path / "b", "run.steps=2", *args))
    rest = train(config(tmp_path / "b", "run.steps=4", *args), resume=True)
    assert strip_timing(rest.metrics) == strip_timing(whole.metrics)
    a = torch.load(next((whole.output_dir / "checkpoints").glob("step_*4")) / "state.pt", weights_only=False)
    b = torch.load(next((rest.output_dir / "checkpoints").glob("step_*4")) / "state.pt", weights_only=False)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_overwrite_removes_the_old_run(tmp_path):
    old = train(config(tmp_path, "run.checkpoint_every=1", "data.prompts_per_step=2", "rollout.group_size=4"))
    (old.final_model / "from_the_old_run").write_text("")
    with pytest.raises(ConfigError, match="pass one"):
        Trainer(config(tmp_path), resume=True, overwrite=True)
    new = train(config(tmp_path, "run.steps=2", "run.checkpoint_every=1", "data.prompts_per_step=2",
                       "rollout.group_size=4"), overwrite=True)
    assert sorted(p.name for p in (new.output_dir / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]
    assert not (new.final_model / "from_the_old_run").exists()
    assert [m["step"] for m in new.metrics] == [1, 2]


def test_resume_refuses_a_changed_config_before_loading(tmp_path, monkeypatch):
    args = ("run.steps=1", "data.prompts_per_step=2", "rollout.group_size=4")
    train(config(tmp_path, *args))
    saved = (tmp_path / "run" / "config.json").read_text()
    monkeypatch.setattr(Trainer, "_load_model", no_model)
    for change in ("optim.lr=0.01", "optim.betas=[0.8, 0.99]", "algo.name=rloo", "model.tiny_hidden_size=32"):
        key = change.partition("=")[0]
        with pytest.raises(ConfigError, match=rf"--resume: the config differs .* in {key} \("):
            train(config(tmp_path, *args, change), resume=True)
        assert (tmp_path / "run" / "config.json").read_text() == saved
    monkeypatch.undo()
    # how long it runs and how it is logged may change
    assert len(train(config(tmp_path, *args[1:], "run.steps=2", "run.checkpoint_every=7"), resume=True).metrics) == 2


def test_a_run_that_stopped_before_its_first_checkpoint(tmp_path):
    cfg = config(tmp_path, "run.checkpoint_every=0", "data.prompts_per_step=2", "rollout.group_size=4")

    def crash(trainer, metrics, batch):
        if metrics["step"] == 3:
            raise RuntimeError("simulated crash")
        return {}
    with pytest.raises(RuntimeError, match="simulated"):
        train(cfg, on_step=crash)
    log = tmp_path / "run" / "metrics.jsonl"
    assert len(log.read_text().splitlines()) == 2
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg)
    assert len(log.read_text().splitlines()) == 2
    assert [m["step"] for m in train(cfg, resume=True).metrics] == [1, 2, 3]  # from step 0, the old log dropped


def test_what_a_run_would_overwrite_is_refused(tmp_path):
    """A model folder as run.output_dir lost its config.json to the run's; a run whose
    checkpoints and log were cleared lost its final policy; two runs in one folder mixed
    their files (the second unlinked the first's open log)."""
    args = ("run.steps=1", "data.prompts_per_step=2", "rollout.group_size=4")
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "llama"}')
    for flags in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(ConfigError, match="holds a config.json that is not a fastrl run's"):
            Trainer(config(tmp_path, *args), **flags)
    assert (model_dir / "config.json").read_text() == '{"model_type": "llama"}'
    (model_dir / "config.json").write_text('{"run": {}, "alg')  # a run's own, cut short: no model's
    Trainer(config(tmp_path, *args)).proc.close()
    (model_dir / "config.json").unlink()

    done = train(config(tmp_path, *args))
    shutil.rmtree(done.output_dir / "checkpoints")
    done.log.unlink()
    with pytest.raises(ConfigError, match=r"already holds a run \(.*final\)"):
        Trainer(config(tmp_path, *args))

    # another process holds the lock: refused at the start of train(), the folder as it was
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                               "from fastrl.trainer.train import _lock; lock = _lock(Path(sys.argv[1])); "
                               "print(lock is not None, flush=True); sys.stdin.read()", str(done.output_dir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        before = sorted(p.name for p in done.output_dir.rglob("*"))
        with pytest.raises(ConfigError, match="is in use by another fastrl train"):
            train(config(tmp_path, *args), overwrite=True)
        assert sorted(p.name for p in done.output_dir.rglob("*")) == before
    finally:
        holder.communicate("")
    assert train(config(tmp_path, *args), overwrite=True).metrics  # released with its process


def test_a_file_system_without_locks_warns_and_runs_unlocked(tmp_path, monkeypatch):
    import fcntl

    from fastrl.trainer.train import _lock

    def no_locks(*args):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(fcntl, "lockf", no_locks)
    with pytest.warns(UserWarning, match="cannot lock .lock"):
        handle = _lock(tmp_path)
    assert handle is not None
    handle.close()


def test_resume_refuses_a_damaged_checkpoint_and_changed_records(tmp_path):
    data = tmp_path / "prompts.jsonl"
    records = [{"prompt": f"{a},{b}=", "answer": str(max(a, b))} for a in range(3) for b in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = (f"data.source={data}", "reward.kind=math", "data.prompts_per_step=2", "rollout.group_size=4",
            "run.checkpoint_every=1")
    train(config(tmp_path, *args, "run.steps=2"))
    checkpoints = tmp_path / "run" / "checkpoints"
    state = checkpoints / "step_00000002" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])  # cut short
    with pytest.raises(ConfigError, match=r"checkpoint .*step_00000002 cannot be read .*: delete it to resume "
                                          r"from .*step_00000001"):
        train(config(tmp_path, *args, "run.steps=3"), resume=True)
    shutil.rmtree(state.parent)
    data.write_text("".join(json.dumps(r) + "\n" for r in records[::-1]))  # the same name, other records
    with pytest.raises(ConfigError, match=f"the records of data.source {data} are not those the checkpoint"):
        train(config(tmp_path, *args, "run.steps=3"), resume=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    fingerprint = checkpoints / "step_00000001" / "data.sha256"
    kept = fingerprint.read_text()
    fingerprint.write_text("")  # a crash before it reached the disk: damaged, not "other records"
    with pytest.raises(ConfigError, match="step_00000001 cannot be read .*data.sha256 holds no sha256"):
        train(config(tmp_path, *args, "run.steps=3"), resume=True)
    fingerprint.write_text(kept)
    assert [m["step"] for m in train(config(tmp_path, *args, "run.steps=3"), resume=True).metrics] == [1, 2, 3]


def test_cli_names_the_output_dir_of_a_write_error_without_a_file(tmp_path, monkeypatch, capsys):
    """A full disk's error from a write carries no file name: the CLI printed only
    "No space left on device"."""
    from fastrl.trainer import train as train_module

    raised = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fail(*args, **kwargs):
        raise raised
    monkeypatch.setattr(train_module.Trainer, "train", fail)
    out = tmp_path / "full"
    argv = ["train", "--output-dir", str(out), "--steps", "1", "--set", "data.prompts_per_step=2",
            "--set", "rollout.group_size=2"]
    assert main(argv) == 1
    assert capsys.readouterr().err.strip() == f"fastrl train: No space left on device (writing in run.output_dir {out})"
    raised = OSError(errno.ENOENT, "Directory x is neither a dataset nor a dataset dict")  # no write's
    assert main(argv) == 1
    assert capsys.readouterr().err.strip() == "fastrl train: Directory x is neither a dataset nor a dataset dict"


def test_resume_drops_a_log_line_cut_short(tmp_path, capsys):
    args = ("data.prompts_per_step=2", "rollout.group_size=4")
    train(config(tmp_path, "run.steps=2", *args))
    log = tmp_path / "run" / "metrics.jsonl"
    with log.open("a") as f:
        f.write('{"step": 3, "reward_me')
    assert [m["step"] for m in train(config(tmp_path, *args), resume=True).metrics] == [1, 2, 3]
    assert "cut short" in capsys.readouterr().out


def word_tokenizer(symbols):
    """A word-level tokenizer over symbols (0 padding, 1 EOS), longest symbol first."""
    import re

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({s: i for i, s in enumerate(symbols)}, unk_token=symbols[0]))
    pattern = "|".join(re.escape(s) for s in sorted(symbols[2:], key=len, reverse=True))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=symbols[0], eos_token=symbols[1])


def prm_scorer(model, tokenizer):
    from fastrl.trainer.scoring import ProcessReward

    prm = object.__new__(ProcessReward)  # the model path of scores() alone
    prm.model, prm.fn, prm.device, prm.tokenizer = model.eval(), None, torch.device("cpu"), tokenizer
    prm.config = TrainConfig.from_dict({})
    prm.newline = tokenizer.encode("\n")[0]
    return prm


def test_process_reward_scores_do_not_depend_on_left_padding():
    """The PRM reads prompt and response at their own positions: a prompt left-padded
    beside a longer one scores the same (a GPT-2 PRM, absolute positions, scored
    [0.0172, -0.0079] alone and [-0.0249, 0.0183] padded by 4 before)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    tok = word_tokenizer(["<pad>", "<eos>", *"abcdefgh", "\n\n", "\n"])
    config = transformers.GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     num_labels=2)
    prm = prm_scorer(transformers.GPT2ForTokenClassification(config), tok)
    response = torch.tensor([tok.encode("ab\n\ncde")])
    steps = torch.tensor([[False, False, True, False, False, True]])
    alone = prm.scores(None, torch.tensor([tok.encode("fgh")]), torch.ones(1, 3, dtype=torch.long), response,
                       torch.ones_like(response), steps, None)
    padded = prm.scores(None, torch.tensor([[0, 0, 0, 0, *tok.encode("fgh")]]), torch.tensor([[0, 0, 0, 0, 1, 1, 1]]),
                        response, torch.ones_like(response), steps, None)
    assert alone[steps].abs().min() > 0
    torch.testing.assert_close(padded, alone)


@pytest.mark.parametrize("symbols, text", [
    (["<pad>", "<eos>", "x", "=", "1", "2", "q", ".\n\n", "\n\n", "\n", "."], "x=1.\n\nx=2"),  # "." and blank line one token
    (["<pad>", "<eos>", "x", "=", "1", "2", "q", "\n", "."], "x=1.\n\nx=2"),  # a blank line of two tokens
    (["<pad>", "<eos>", "x", "=", "1", "2", "q", "\n\n", "\n", "."], "x=1.\n\n\nx=2"),  # three newlines
    (["<pad>", "<eos>", "x", "=", "1", "2", "q", "\n\n", "\n", "."], "x=1.\n\nx=2\n\n"),  # a blank line at the end
])
@pytest.mark.parametrize("eos", [True, False])
def test_the_prm_reads_each_steps_separator_as_one_newline(symbols, text, eos):
    """The PRM reads "x=1.\nx=2\n" whatever tokens the blank line came in: replacing the
    step's last token lost the "." of a ".\n\n" token, and left "\n\n" where the blank line
    was two tokens. Each step's score is read at its newline, the last step's too (as PURE
    feeds it: it was read at the EOS, where a PRM trained on newline-ended steps never
    looked), with or without an EOS, and lands at the step's last token in the response."""
    pytest.importorskip("transformers")
    from fastrl.algos.pure import step_ends

    tok = word_tokenizer(symbols)
    seen = {}

    class Stub(torch.nn.Module):  # label-1 logit = the token id: the score says which token was read
        def forward(self, input_ids, attention_mask, position_ids):
            seen["ids"] = input_ids
            return SimpleNamespace(logits=torch.stack([torch.zeros_like(input_ids), input_ids], -1).double())

    prm = prm_scorer(Stub(), tok)
    response = torch.tensor([tok.encode(text) + [1] * eos])
    mask = torch.ones_like(response)
    steps = step_ends(response, mask, [tok.decode([i], skip_special_tokens=True) for i in range(len(tok))])  # as the trainer
    assert steps.sum() == 2 and steps[0, -1]
    prompt = torch.tensor([tok.encode("q")])
    scores = prm.scores(None, prompt, torch.ones_like(prompt), response, mask, steps, None)
    assert tok.decode(seen["ids"][0].tolist()) == "qx=1.\nx=2\n"
    score = lambda token: torch.tensor([0.0, float(token)]).softmax(0).diff().item()  # noqa: E731
    want = torch.zeros(response.shape)
    want[steps] = score(prm.newline)
    torch.testing.assert_close(scores, want)


def test_a_resume_from_step_0_drops_the_stopped_runs_tensorboard_steps(tmp_path):
    """A run that stops before its first checkpoint resumes from step 0: its TensorBoard
    log is cut back like metrics.jsonl (the stopped run's steps 1, 2 stayed: 1, 2, 1, 2, 3)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config(tmp_path, "run.tensorboard=true", "run.checkpoint_every=10", "data.prompts_per_step=2",
                 "rollout.group_size=2")
    trainer = Trainer(cfg)
    run_step = trainer.run_step

    def stop_in_step_3(step):
        if step == 2:
            raise RuntimeError("stopped")
        return run_step(step)

    trainer.run_step = stop_in_step_3
    with pytest.raises(RuntimeError, match="stopped"):
        trainer.train()
    train(cfg, resume=True)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("reward_mean")] == [1, 2, 3]


def test_a_prompt_too_long_midway_is_passed_by_resuming_with_shorter_prompts(tmp_path):
    """The error a step with a too-long prompt raises says to lower data.max_prompt_tokens,
    and --resume takes that change (it refused it: the steps done could not be continued)."""
    rows = [{"prompt": f"{i},{(i * 3) % 10},1=", "answer": str(max(i, (i * 3) % 10, 1))} for i in range(4)]
    rows += [{"prompt": "1," * 200 + "2=", "answer": "2"}, {"prompt": "3,1,2=", "answer": "3"}]  # step 3: 402 tokens
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [f"data.source={data}", "reward.kind=math", "data.prompts_per_step=2", "rollout.group_size=2",
                 "data.shuffle=false", "run.checkpoint_every=1"]
    with pytest.raises(ConfigError, match="step 3 has a prompt of .* lower data.max_prompt_tokens .* --resume"):
        train(config(tmp_path, *overrides))
    result = train(config(tmp_path, *overrides, "data.max_prompt_tokens=100"), resume=True)
    assert [m["step"] for m in result.metrics][-1] == 3


def test_an_interrupt_in_the_last_step_finishes_the_run(tmp_path):
    """Ctrl-C during the last step: the run ends as if uninterrupted, final/ written (it
    raised KeyboardInterrupt before final/, leaving it to a --resume)."""
    trainer = Trainer(config(tmp_path, "run.steps=2", "data.prompts_per_step=2", "rollout.group_size=2"))
    run_step = trainer.run_step

    def interrupted_in_step_2(step):
        if step == 1:
            trainer._stop = True  # what Ctrl-C sets
        return run_step(step)

    trainer.run_step = interrupted_in_step_2
    try:
        result = trainer.train()
    except KeyboardInterrupt:  # (pytest would stop the whole session on it)
        pytest.fail("an interrupt in the last step stopped the run before final/")
    assert [m["step"] for m in result.metrics] == [1, 2]
    assert result.final_model.exists() and any(result.final_model.iterdir())


STOPPED_BY_SIGTERM = """
import os, signal, sys
from fastrl.stopping import Stopped
from fastrl.trainer.config import TrainConfig
from fastrl.trainer.train import train
config = TrainConfig.from_dict({"run": {"output_dir": sys.argv[1], "progress": False, "steps": 3},
                                "data": {"prompts_per_step": 2}, "rollout": {"group_size": 2}})
def stop_in_step_1(trainer, metrics, batch):
    if metrics["step"] == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    return {}
try:
    train(config, on_step=stop_in_step_1)
except Stopped as e:
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    sys.exit(e.signum)
"""


def test_sigterm_saves_a_checkpoint_and_a_resume_finishes_the_run(tmp_path):
    """A scheduler's SIGTERM (a time limit, scancel) killed the run where it stood, losing every
    step since its last checkpoint; it now stops as Ctrl-C does: the step finishes, a
    checkpoint is saved, and ``Stopped`` says which signal it was."""
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", STOPPED_BY_SIGTERM, str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == signal.SIGTERM, done.stdout[-2000:] + done.stderr[-3000:]
    assert "SIGTERM received: finishing this step, then saving a checkpoint" in done.stdout
    assert "stopped at step 1; continue with: fastrl train ... --resume" in done.stdout
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000001"]
    result = train(config(tmp_path, "data.prompts_per_step=2", "rollout.group_size=2"), resume=True)
    assert [m["step"] for m in result.metrics] == [1, 2, 3]


def test_a_second_stop_signal_stops_at_once_and_the_handlers_are_put_back(tmp_path):
    """Under the CLI (its SIGTERM handler raises Stopped), the trainer's handlers are its own
    only while it runs; a second signal in the same step stops there, saving nothing."""
    from fastrl.stopping import Stopped, exit_status, sigterm_stops

    first_noted = []

    def stop_twice(trainer, metrics, batch):
        os.kill(os.getpid(), signal.SIGTERM)
        first_noted.append(trainer._stop)  # (the step goes on)
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the second SIGTERM did not stop the run")

    cfg = config(tmp_path, "data.prompts_per_step=2", "rollout.group_size=2")
    with sigterm_stops():
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        with pytest.raises(Stopped) as stopped:
            train(cfg, on_step=stop_twice)
        assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert exit_status(stopped.value) == 143 and first_noted == [True]
    assert not (Path(cfg.run.output_dir) / "checkpoints").exists() or \
        not any((Path(cfg.run.output_dir) / "checkpoints").iterdir())


def test_a_record_without_the_answer_a_reward_reads_is_refused_at_load(tmp_path):
    """(a KeyError at the step that first drew the record, after the model loaded)"""
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "1,2=", "answer": "2"}) + "\n" + json.dumps({"prompt": "3,1="}) + "\n")
    with pytest.raises(ConfigError, match=r"data.jsonl:2 has no field 'answer' \(data.answer_key\), which reward.kind "
                                          r"'math' reads"):
        Trainer(config(tmp_path, f"data.source={data}", "reward.kind=math"))
    data.write_text(json.dumps({"prompt": "1,2=", "answer": "2", "labels": ["1", "2"]}) + "\n"
                    + json.dumps({"prompt": "3,1=", "answer": "3"}) + "\n")
    with pytest.raises(ConfigError, match=r"data.jsonl:2 has no field 'labels' \(data.labels_key\), which reward.kind "
                                          r"'classification' reads"):
        Trainer(config(tmp_path, f"data.source={data}", "reward.kind=classification"))


def test_a_chat_template_the_tokenizer_lacks_is_refused_before_the_first_step(tmp_path, monkeypatch):
    """(a ValueError from apply_chat_template at step 1, a traceback from the CLI); before any
    weights load (it came after the policy's and the reference's)"""
    with pytest.raises(ConfigError, match="data.chat_template: the tokenizer has no chat template"):
        Trainer(config(tmp_path, "data.chat_template=true"))
    task.MaxTask().tokenizer().save_pretrained(tmp_path / "tokenizer")
    monkeypatch.setattr(task, "tiny_model", lambda *args: pytest.fail("a model was loaded"))
    monkeypatch.setattr(Trainer, "_from_pretrained", lambda *args: pytest.fail("a model was loaded"))
    with pytest.raises(ConfigError, match="data.chat_template: the tokenizer has no chat template"):
        Trainer(config(tmp_path, "data.chat_template=true", f"model.path={tmp_path / 'tokenizer'}",
                       f"model.reference={tmp_path / 'tokenizer'}"))


def test_a_crash_while_a_checkpoint_is_saved_again_keeps_it(tmp_path, monkeypatch, capsys):
    """--resume of a finished run saves its last step again: the old folder was deleted before
    the new one was renamed in, so a crash in between left no checkpoint (and the run redone)."""
    from fastrl.trainer import checkpoint

    args = ("run.keep_checkpoints=1", "run.checkpoint_every=0", "data.prompts_per_step=4", "run.steps=2")
    first = train(config(tmp_path, *args))
    replace = os.replace

    def crash_on_the_new_one(src, dst):
        if Path(src).name.startswith(".tmp_"):
            raise KeyboardInterrupt("a crash between setting the old checkpoint aside and renaming the new one in")
        return replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", crash_on_the_new_one)
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path, *args), resume=True)
    monkeypatch.undo()
    assert checkpoint.latest(first.output_dir / "checkpoints").name == ".old_step_00000002"
    capsys.readouterr()
    again = train(config(tmp_path, *args), resume=True)
    assert [m["step"] for m in again.metrics] == [1, 2]
    assert ".old_step_00000002 at step 2" in capsys.readouterr().out  # (not from step 0: nothing redone)
    assert [p.name for p in (first.output_dir / "checkpoints").iterdir()] == ["step_00000002"]
    train(config(tmp_path, *args[:-1], "run.steps=3"), resume=True)  # the set-aside one goes once a step is saved
    assert [p.name for p in (first.output_dir / "checkpoints").iterdir()] == ["step_00000003"]


def test_a_crash_while_resume_trims_the_log_keeps_it(tmp_path, monkeypatch):
    """--resume rewrote metrics.jsonl in place: a crash while writing lost the steps before the
    checkpoint (and the next --resume dropped what was left as 'a line cut short')."""
    args = ("run.checkpoint_every=2", "data.prompts_per_step=4")
    first = train(config(tmp_path, "run.steps=3", *args))
    shutil.rmtree(first.output_dir / "checkpoints" / "step_00000003")  # as if it had died before saving step 3
    write_text = Path.write_text

    def cut_short(self, data, *a, **kw):
        if self.name.startswith("metrics.jsonl"):
            with open(self, "w") as f:
                f.write(data[: len(data) // 3])
            raise KeyboardInterrupt("a crash while the log is written")
        return write_text(self, data, *a, **kw)

    monkeypatch.setattr(Path, "write_text", cut_short)
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path, "run.steps=4", *args), resume=True)
    monkeypatch.undo()
    assert [m["step"] for m in train(config(tmp_path, "run.steps=4", *args), resume=True).metrics] == [1, 2, 3, 4]


def test_a_numbered_gpu_under_torchrun_is_refused(monkeypatch):
    """run.device cuda:1 under torchrun put every process on that one GPU (only "cuda" was
    mapped to cuda:<LOCAL_RANK>)."""
    from fastrl.trainer import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError, match="run.device 'cuda:1' under torchrun: every process would use that GPU"):
        distributed.setup("cuda:1")


def test_a_save_clears_temporary_checkpoints_a_stopped_save_left(tmp_path):
    stale = tmp_path / "run" / "checkpoints" / ".tmp_step_00000007"  # (another step than the one saved)
    stale.mkdir(parents=True)
    (stale / "state.pt").write_bytes(b"half")
    result = train(config(tmp_path, "run.steps=1", "data.prompts_per_step=4"))  # (no run there: no --overwrite)
    assert [p.name for p in (result.output_dir / "checkpoints").iterdir()] == ["step_00000001"]


def test_a_nonfinite_gradient_drops_its_update(tmp_path, capsys):
    """A NaN gradient made every weight NaN (and the next checkpoint kept them): the update
    is dropped, as verl does, and counted; the other updates of the step go on."""
    trainer = Trainer(config(tmp_path, "algo.mini_batches=2", "optim.lr=0.003"))
    batch = trainer.collect(0)
    before = {name: p.detach().clone() for name, p in trainer.module.named_parameters()}
    calls = []

    def poison_the_first(grad):
        calls.append(1)
        return grad * float("nan") if len(calls) == 1 else grad

    hook = trainer.params[0].register_hook(poison_the_first)
    metrics = trainer.update(batch)
    hook.remove()
    assert metrics["updates_nonfinite"] == 1 and len(calls) == 2
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0
    after = dict(trainer.module.named_parameters())
    assert all(torch.isfinite(p).all() for p in after.values())
    assert any(not torch.equal(before[name], p) for name, p in after.items())  # the second update was made
    assert "step 1: the gradient norm is nan; that update is dropped" in capsys.readouterr().out
    assert trainer.update(batch)["updates_nonfinite"] == 0

    # every update dropped: loss and grad_norm are absent, not a 0.0 that plots as a real value
    hook = trainer.params[0].register_hook(lambda grad: grad * float("nan"))
    metrics = trainer.update(batch)
    hook.remove()
    assert metrics["updates_nonfinite"] == 2 and not {"loss", "grad_norm", "clip_fraction"} & metrics.keys()


def test_clip_fraction_counts_the_updates_made(tmp_path, monkeypatch):
    """A dropped update's clipped tokens counted in clip_fraction, where loss and grad_norm
    count only the updates made."""
    from fastrl.trainer import train as train_module

    trainer = Trainer(config(tmp_path, "algo.mini_batches=2", "algo.epochs=2", "optim.lr=0.03"))
    batch = trainer.collect(0)
    seen, policy_loss = [], train_module.policy_loss

    def recorded(logprob, old, advantages, mask, *args):
        out = policy_loss(logprob, old, advantages, mask, *args)
        seen.append((out.clipped.sum().item(), mask.ne(0).sum().item()))
        return out
    monkeypatch.setattr(train_module, "policy_loss", recorded)
    calls = []

    def poison_the_fourth(grad):
        calls.append(1)
        return grad * float("nan") if len(calls) == 4 else grad
    trainer.params[0].register_hook(poison_the_fourth)
    metrics = trainer.update(batch)
    assert metrics["updates_nonfinite"] == 1 and len(seen) == 4
    made = seen[:3]
    assert seen[3][0] > 0 and sum(c for c, _ in made) > 0  # (the dropped one clipped tokens too)
    assert metrics["clip_fraction"] == pytest.approx(sum(c for c, _ in made) / sum(t for _, t in made), rel=1e-12)


def test_a_config_built_or_edited_in_python_is_checked(tmp_path):
    """Trainer trained configs that validate() never saw: an algo.name 'pure' without its
    filled-in reward.process, run.steps 0, a str learning rate each failed deep inside."""
    from fastrl.trainer.config import AlgoConfig, RunConfig

    with pytest.raises(ConfigError, match="run.steps must be >= 1, got 0"):
        Trainer(TrainConfig(run=RunConfig(steps=0, output_dir=str(tmp_path / "a"))))
    cfg = config(tmp_path)
    cfg.optim.lr = "fast"
    with pytest.raises(ConfigError, match="optim.lr must be a finite number, got 'fast'"):
        Trainer(cfg)
    cfg.optim.lr = "3e-3"  # (read as YAML reads it)
    cfg.algo = {"name": "grpo"}
    with pytest.raises(ConfigError, match="algo must be of type AlgoConfig, got dict"):
        Trainer(cfg)
    cfg.algo = AlgoConfig(name="pure")
    trainer = Trainer(cfg)
    assert trainer.cfg.optim.lr == 3e-3 and trainer.cfg.reward.process == "task"


def test_classification_labels_are_checked_at_load(tmp_path):
    rows = [{"prompt": "?", "answer": "cat", "labels": ["cat", "dog"]}, {"prompt": "?", "answer": "cat", "labels": "cat"},
            {"prompt": "?", "answer": "cow", "labels": ["cat", "dog"]}]
    data = tmp_path / "rows.jsonl"
    for bad, says in ((1, "labels must be a collection of class names, not a single str"),
                      (2, "gold 'cow' is not in the label set")):
        data.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[bad]) + "\n")
        with pytest.raises(ConfigError, match=rf"rows.jsonl:2: field 'labels' \(data.labels_key\): {says}"):
            Trainer(config(tmp_path, f"data.source={data}", "reward.kind=classification"))


def test_lora_targets_that_match_nothing_are_named(tmp_path):
    pytest.importorskip("peft")
    with pytest.raises(ConfigError, match=r"model.lora_target_modules: no module of the model is named qproj; its "
                                          r"linear layers are named .*q_proj"):
        Trainer(config(tmp_path, "model.lora_rank=2", "model.lora_target_modules=[q_proj, qproj]"))


def test_resume_past_run_steps_is_refused(tmp_path):
    train(config(tmp_path, "run.steps=2", "run.checkpoint_every=1", "data.prompts_per_step=2", "rollout.group_size=4"))
    with pytest.raises(ConfigError, match=r"at step 2, past run.steps 1: nothing is left to train"):
        Trainer(config(tmp_path, "run.steps=1", "data.prompts_per_step=2", "rollout.group_size=4"), resume=True)


def test_an_output_dir_that_cannot_be_made_is_refused_first(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match=r"run.output_dir '.*afile/run': cannot create or write in '.*afile'"):
        Trainer(config(tmp_path, f"run.output_dir={tmp_path / 'afile' / 'run'}"))


@pytest.mark.parametrize("resume, overwrite", [(False, False), (True, False), (False, True)])
def test_cli_train_flags_reach_the_config_and_the_run(tmp_path, monkeypatch, resume, overwrite):
    """--steps, --seed, --plot, --resume and --overwrite each reach what train() is given."""
    import fastrl.trainer.train as train_module

    seen = {}

    def capture(config, **kwargs):
        seen.update(steps=config.run.steps, seed=config.run.seed, plot=config.run.plot, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", capture)
    argv = ["train", "--output-dir", str(tmp_path / "run"), "--steps", "7", "--seed", "123", "--plot"]
    assert main(argv + ["--resume"] * resume + ["--overwrite"] * overwrite) == 130
    assert seen == {"steps": 7, "seed": 123, "plot": True, "resume": resume, "overwrite": overwrite}
    seen.clear()
    assert main(["train", "--output-dir", str(tmp_path / "run")]) == 130
    default = TrainConfig.load(None, []).run
    assert seen == {"steps": default.steps, "seed": default.seed, "plot": False, "resume": False, "overwrite": False}
    assert (default.steps, default.seed) != (7, 123)


def test_cli_help_config_prints_the_keys_without_training(monkeypatch, capsys):
    import fastrl.trainer.train as train_module
    from fastrl.trainer.config import describe

    monkeypatch.setattr(train_module, "train", lambda *args, **kwargs: pytest.fail("it trained"))
    assert main(["train", "--help-config"]) == 0
    assert capsys.readouterr().out.strip() == describe().strip()


def test_step_texts_drop_the_blank_line_separators():
    """The steps a user's or the task's process-reward function reads: each step's text
    without its blank line (or the special tokens), the padding after EOS not read."""
    pytest.importorskip("transformers")
    from fastrl.trainer.scoring import step_texts

    tok = word_tokenizer(["<pad>", "<eos>", "a", "b", "c", "\n\n", "\n"])
    ids = torch.tensor([tok.encode("ab\n\nc") + [1, 0], tok.encode("a\n\n\nb\n\n") + [1]])
    valid = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]) != 0
    steps = torch.zeros_like(valid)
    steps[0, [2, 4]] = True
    steps[1, [2, 5]] = True
    assert step_texts(tok, ids, steps, valid) == [["ab", "c"], ["a", "b"]]


def test_a_reward_at_the_threshold_counts_as_correct(tmp_path):
    """reward.correct_threshold is inclusive: reward >= threshold is correct (the logged
    accuracy, PURE's solved rows)."""
    from fastrl.trainer.scoring import outcome_correct

    correct = outcome_correct(config(tmp_path, "reward.correct_threshold=0.75"))
    assert correct({}, "", 0.75) and correct({}, "", 1.0) and not correct({}, "", 0.7499)


@pytest.mark.parametrize("kind, want", [("classification", [2.0, 1.0, 1.0]),
                                        ("classification_no_think", [1.0, 1.0, 0.0])])
def test_classification_rewards_with_and_without_thinking(tmp_path, kind, want):
    """CLS-RL (DESIGN 3.5): "classification" is format + accuracy, "classification_no_think"
    the accuracy alone, whether or not the completion is in the thinking format."""
    from fastrl.trainer.scoring import outcome_rewards

    data = tmp_path / "labels.jsonl"
    data.write_text(json.dumps({"prompt": "which?", "answer": "cat", "labels": ["cat", "dog"]}) + "\n")
    rewards = outcome_rewards(config(tmp_path, f"data.source={data}", f"reward.kind={kind}"))
    row = {"prompt": "which?", "answer": "cat", "labels": ["cat", "dog"]}
    got = rewards([row] * 3, ["<think>fur</think><answer>cat</answer>", "cat",
                              "<think>fur</think><answer>dog</answer>"])
    assert got == want


def test_each_epoch_draws_its_own_mini_batches(tmp_path):
    """With algo.epochs > 1 the mini-batches are drawn per (step, epoch, prompt): the
    second epoch does not replay the first one's split of each group."""
    trainer = Trainer(config(tmp_path, "algo.mini_batches=2", "algo.epochs=2"))
    batch = trainer.collect(0)
    # which rows each mini-batch's forward holds, a row named by the first row of the batch
    # equal to it (equal rows are interchangeable)
    seen = []
    handle = trainer.module.register_forward_pre_hook(lambda module, args: seen.append(
        sorted((args[0][:, None] == batch.input_ids[None]).all(-1).int().argmax(1).tolist())))
    try:
        trainer.update(batch)
    finally:
        handle.remove()
    assert len(seen) == 4  # 2 epochs x 2 mini-batches
    assert {tuple(seen[0]), tuple(seen[1])} != {tuple(seen[2]), tuple(seen[3])}


def test_the_no_grad_forwards_run_in_the_updates_micro_batches(tmp_path):
    """The old policy's, the reference's and the PRM's forwards ran on the whole step at once
    (prompts_per_step x group_size rows), however small algo.mini_batches and algo.grad_accum
    made the update's micro-batches: a step whose update fit ran out of memory before it. Each
    now runs in as many micro-batches (contiguous rows), with the whole batch's results."""
    tok = task.MaxTask().tokenizer()
    transformers.LlamaForTokenClassification(transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_labels=2, pad_token_id=0)).save_pretrained(tmp_path / "prm")
    trainer = Trainer(config(tmp_path, "algo.name=pure", f"reward.process={tmp_path / 'prm'}", "model.dtype=float64",
                             "model.reference=initial", "algo.kl_coef=0.1", "algo.mini_batches=2",
                             "algo.grad_accum=2"))
    rows = {}
    for name, model in (("policy", trainer.policy.causal_lm().model), ("reference", trainer.reference.model),
                        ("prm", trainer.process.model)):  # (the log-probs run the bodies, the rollout the whole)
        def record(module, args, kwargs, name=name):
            if not kwargs.get("use_cache"):  # (not the rollout's)
                rows.setdefault(name, []).append(kwargs["input_ids"].shape[0])
        model.register_forward_pre_hook(record, with_kwargs=True)
    batch = trainer.collect(0)
    assert rows == {name: [16] * 4 for name in ("policy", "reference", "prm")}  # 8 prompts x 8, in 4
    with torch.no_grad():
        whole, _ = trainer.module(batch.input_ids, batch.attention_mask, batch.response_mask,
                                  trainer.cfg.rollout.temperature, entropy=True)
    torch.testing.assert_close(batch.old.logprob, whole.logprob, rtol=0, atol=1e-12)
    torch.testing.assert_close(batch.old.entropy, whole.entropy, rtol=0, atol=1e-12)


def test_rollout_max_rows_caps_the_rows_that_decode_at_once(tmp_path):
    """With 8 prompts x 8 responses and rollout.max_rows 24, the rollout decodes 24, 24 and 16
    rows in turn (each sampled row a function of its seed: the same responses as at once)."""
    trainer = Trainer(config(tmp_path, "model.dtype=float64", "rollout.max_rows=24"))
    widths = []
    trainer.policy.causal_lm().register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[0]) if kwargs.get("use_cache") else None,
        with_kwargs=True)
    turns = trainer.collect(0)
    assert max(widths) == 24 and widths.count(16) >= 1
    whole = Trainer(config(tmp_path / "whole", "model.dtype=float64")).collect(0)
    assert torch.equal(turns.input_ids, whole.input_ids) and torch.equal(turns.response_mask, whole.response_mask)

