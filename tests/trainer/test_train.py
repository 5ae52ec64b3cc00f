"""The trainer on the built-in task with its tiny model: every algorithm learns on a fixed
batch, resume equals an uninterrupted run, the default run learns, bad configs fail early."""
import json

import pytest
import torch

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


def process_scores(prompt, steps, row):  # a user process reward: +1 per non-empty step
    return [1.0 if s else -1.0 for s in steps]


def test_user_reward_and_process_functions(tmp_path):
    result = train(config(tmp_path, "algo.name=pure", "reward.process=test_train:process_scores",
                          "reward.kind=test_train:outcome"))
    assert len(result.metrics) == 3


def outcome(prompt, response, row):
    return float(response.endswith(row["answer"]))


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


def test_lora_run_saves_the_adapter(tmp_path):
    pytest.importorskip("peft")
    result = train(config(tmp_path, "model.lora_rank=4"))
    assert (result.final_model / "adapter_config.json").exists()


def test_jsonl_prompts_with_the_math_verifier(tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"question": f"{a},{b}=", "answer": str(max(a, b))}) + "\n"
                            for a in range(3) for b in range(4)))
    result = train(config(tmp_path, f"data.source={data}", "data.prompt_key=question", "reward.kind=math",
                          "data.prompts_per_step=4", "rollout.group_size=2"))
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
    (["algo.aggregation=mean"], "algo.aggregation must be one of"),
    (["algo.kl_coef=0.1"], "needs model.reference"),
    (["model.path=/nonexistent"], "model.path"),
    (["data.source=/nonexistent.jsonl"], "data.source"),
    (["reward.kind=task", "data.source=README.md"], "data.source"),
    (["rollout.top_p=1.5"], "rollout.top_p"),
    (["optim.betas=[0.9]"], "optim.betas"),
    (["algo"], "section.key=value"),
    (["model.dtype=int8"], "model.dtype must be one of"),
    (["run.plot=maybe"], "run.plot must be true or false"),
])
def test_bad_configs(overrides, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict({}, overrides)


def test_bad_layout_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="share of every group"):
        Trainer(config(tmp_path, "algo.mini_batches=16"))
    with pytest.raises(ConfigError, match="fewer than algo.grad_accum"):
        Trainer(config(tmp_path, "algo.mini_batches=8", "algo.grad_accum=9"))
    with pytest.raises(ConfigError, match="kl_in 'reward'"):
        Trainer(config(tmp_path, "algo.name=rover", "model.reference=initial", "algo.kl_coef=0.1",
                       "algo.kl_in=reward"))


def test_cli_reports_config_errors(tmp_path, capsys):
    bad = tmp_path / "run.yaml"
    bad.write_text("algo:\n  name: grpo\n  clip: 0.2\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown key 'algo.clip'" in capsys.readouterr().err
    assert main(["train", "--help-config"]) == 0
    assert "clip_high" in capsys.readouterr().out


def test_datasets_folder_and_tensorboard(tmp_path):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("tensorboard")
    datasets.Dataset.from_list([{"prompt": f"{a},{b}=", "answer": str(max(a, b))} for a in range(4) for b in range(4)]
                               ).save_to_disk(str(tmp_path / "ds"))
    result = train(config(tmp_path, f"data.source={tmp_path / 'ds'}", "reward.kind=test_train:outcome",
                          "run.tensorboard=true", "data.prompts_per_step=4"))
    assert len(result.metrics) == 3
    assert list((result.output_dir / "tensorboard").glob("events.*"))


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
    from fastrl.trainer.scoring import outcome_reward

    row = {"prompt": "?", "answer": "cat", "labels": ["cat", "dog"]}
    good = "<think>whiskers</think><answer>cat</answer>"
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(row) + "\n")
    cfg = config(tmp_path, f"data.source={data}", "reward.kind=classification")
    assert outcome_reward(cfg)(row, good) == 2.0
    cfg.reward.kind = "classification_no_think"
    assert outcome_reward(cfg)(row, "cat") == 1.0
    cfg.reward.kind = "format"
    assert outcome_reward(cfg)(row, good) == 1.0 and outcome_reward(cfg)(row, "cat") == 0.0
    cfg.reward.kind = "math"
    assert outcome_reward(cfg)({"answer": "1/2"}, "so \\boxed{0.5}") == 1.0


def test_learning_rate_schedule():
    from fastrl.trainer.config import OptimConfig
    from fastrl.trainer.train import _lr_factor

    o = OptimConfig(warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    factors = [_lr_factor(i, 20, o) for i in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(1.0) and factors[20] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))
    assert _lr_factor(7, 20, OptimConfig()) == 1.0
