"""Evaluation during training (the eval section): when it runs, what it logs against an
independent computation, greedy decoding, its memory bound, and that it changes nothing
of the training run, resumed or not."""
import json
import math
import shutil
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fastrl.cli import main  # noqa: E402
from fastrl.trainer import task  # noqa: E402
from fastrl.trainer.config import ConfigError, TrainConfig  # noqa: E402
from fastrl.trainer.rollout import rollout  # noqa: E402
from fastrl.trainer.train import Trainer, sample_seed, train  # noqa: E402

TIMING = {"step_time", "rollout_time", "tokens_per_s", "peak_memory_mb", "eval_time", "eval_peak_memory_mb"}


def config(tmp_path, *overrides):
    values = {"run": {"output_dir": str(tmp_path / "run"), "progress": False, "steps": 3},
              "data": {"prompts_per_step": 4}, "rollout": {"group_size": 4},
              "eval": {"source": "task", "prompts": 6}}
    return TrainConfig.from_dict(values, list(overrides))


def parity(prompt, response, row):  # about half the responses of the tiny model are correct
    return float(len(response) % 2)


def evaluated_steps(result):
    return [m["step"] for m in result.metrics if "eval_accuracy" in m]


def without_timing(metrics, drop=()):
    return [{k: v for k, v in m.items() if k not in TIMING and not k.startswith(drop)} for m in metrics]


@pytest.mark.parametrize("overrides, steps", [
    (["eval.every=2"], [0, 2, 4, 5]),
    (["eval.every=2", "eval.before_training=false"], [2, 4, 5]),
    ([], [0, 5]),  # every 0: before the first step and after the last
    (["eval.every=5"], [0, 5]),  # the last step once
])
def test_evaluations_are_logged_at_their_steps(tmp_path, overrides, steps):
    result = train(config(tmp_path, "run.steps=5", *overrides))
    assert evaluated_steps(result) == steps
    assert [m["step"] for m in result.steps] == [1, 2, 3, 4, 5]
    assert result.metrics[0]["step"] == (0 if steps[0] == 0 else 1)
    for m in result.metrics:
        assert ("eval_time" in m) == (m["step"] in steps)
        assert set(m) >= {"eval_reward_mean", "eval_accuracy", "eval_response_length"} or m["step"] not in steps
        assert not any(key.startswith("eval_pass@") for key in m)  # one sample per prompt


def test_evaluation_metrics_against_an_independent_computation(tmp_path, device):
    """The held-out problems are the task's step -1; each response's seed is (run.seed, -1,
    prompt, sample); pass@k is the unbiased estimator 1 - C(n - c, k) / C(n, k). (On a GPU
    without bf16 autocast, which the rollout below does not run under.)"""
    n, P = 5, 7
    cfg = config(tmp_path, "reward.kind=test_eval:parity", f"eval.prompts={P}", f"eval.samples={n}",
                 "eval.temperature=0.8", "eval.top_p=0.9", "rollout.max_new_tokens=6", f"run.device={device.type}",
                 *(["model.autocast_bf16=false"] if device.type == "cuda" else []))
    trainer = Trainer(cfg)
    metrics = trainer.evaluate()
    lm = trainer.policy.causal_lm()
    rows = task.MaxTask(3).problems(0, -1, P)
    ro = rollout(lm, [trainer.tokenizer.encode(r["prompt"]) for r in rows for _ in range(n)], 6, trainer.eos,
                 trainer.pad, temperature=0.8, top_p=0.9, progress=False,
                 seeds=torch.tensor([sample_seed(0, -1, i, j) for i in range(P) for j in range(n)], device=device))
    lengths = ro.response_mask.sum(1).tolist()
    texts = trainer.tokenizer.batch_decode([ids[:k] for ids, k in zip(ro.response_ids.tolist(), lengths)],
                                           skip_special_tokens=True)
    rewards = [parity(None, t, None) for t in texts]
    solved = [sum(rewards[i * n:(i + 1) * n]) for i in range(P)]
    assert 0 < sum(solved) < n * P and len(set(solved)) > 1  # pass@k is not trivially 0 or 1
    expected = {"eval_reward_mean": sum(rewards) / (n * P), "eval_accuracy": sum(rewards) / (n * P),
                "eval_response_length": sum(lengths) / (n * P)}
    for k in (2, 4, 5):
        expected[f"eval_pass@{k}"] = sum(1 - math.comb(n - int(c), k) / math.comb(n, k) for c in solved) / P
    assert without_timing([metrics]) == [pytest.approx(expected, rel=1e-12)]
    again = trainer.evaluate()
    assert without_timing([again]) == without_timing([metrics]) and set(again) == set(metrics)  # same seeds
    assert trainer.module.training  # (rollouts run in eval mode: no dropout)
    trainer.proc.close()


def test_cuda_bf16_training_evaluates_in_token_micro_batches_and_resumes(tmp_path):
    """On a GPU, at the trainer's defaults there (float32 weights, bf16 autocast): a run with
    evaluations and micro-batches by tokens, resumed halfway, logs what the uninterrupted run
    does, with finite losses and an evaluation at steps 0, 2 and 4."""
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    args = ("run.device=cuda", "eval.every=2", "eval.samples=2", "eval.temperature=1", "algo.micro_batch_tokens=48",
            "rollout.max_new_tokens=12")
    whole = train(config(tmp_path / "a", "run.steps=4", *args))
    assert evaluated_steps(whole) == [0, 2, 4]
    assert all(math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) for m in whole.steps)
    train(config(tmp_path / "b", "run.steps=2", *args))
    rest = train(config(tmp_path / "b", "run.steps=4", *args), resume=True)
    assert without_timing(rest.metrics) == without_timing(whole.metrics)


def test_greedy_evaluation_takes_the_most_likely_token(tmp_path):
    cfg = config(tmp_path, "model.dtype=float64", "rollout.max_new_tokens=5")
    trainer = Trainer(cfg)
    seen = []
    scored = trainer._scored

    def spy(ro, rows):
        out = scored(ro, rows)
        seen.extend(out[1])
        return out
    trainer._scored = spy
    trainer.evaluate()
    lm = trainer.policy.causal_lm().eval()
    expected = []
    for row in task.MaxTask(3).problems(0, -1, 6):
        ids = trainer.tokenizer.encode(row["prompt"])
        response = []
        with torch.no_grad():
            for _ in range(5):
                token = int(lm(torch.tensor([ids + response])).logits[0, -1].argmax())
                response.append(token)
                if token in trainer.eos:
                    break
        expected.append(trainer.tokenizer.decode(response, skip_special_tokens=True))
    assert seen == expected
    trainer.proc.close()


def test_evaluation_decodes_no_more_rows_at_once_than_a_training_step(tmp_path):
    for overrides, at_once in ((["data.prompts_per_step=2", "rollout.group_size=2"], 4), (["rollout.max_rows=3"], 3)):
        trainer = Trainer(config(tmp_path, "eval.prompts=10", *overrides))
        widths = []
        hook = trainer.policy.causal_lm().register_forward_pre_hook(
            lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
        trainer.evaluate()
        hook.remove()
        assert widths[0] == max(widths) == at_once
        trainer.proc.close()


def test_evaluation_changes_nothing_of_the_training_run(tmp_path):
    """Same metrics and weights as the run without it: the evaluation draws from no generator
    the run uses and leaves the model in training mode (model.lora_dropout would show it)."""
    args = ["model.lora_rank=4", "model.lora_dropout=0.3", "run.steps=4"]
    plain = train(config(tmp_path / "a", "eval.source=null", "eval.prompts=null", *args))
    evaluated = train(config(tmp_path / "b", "eval.every=1", "eval.samples=2", "eval.temperature=1", *args))
    assert evaluated_steps(evaluated) == [0, 1, 2, 3, 4]
    assert without_timing(evaluated.steps, drop="eval_") == without_timing(plain.metrics)
    a = torch.load(next((plain.output_dir / "checkpoints").glob("step_*4")) / "state.pt", weights_only=False)
    b = torch.load(next((evaluated.output_dir / "checkpoints").glob("step_*4")) / "state.pt", weights_only=False)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_a_resumed_run_evaluates_as_an_uninterrupted_one(tmp_path):
    whole = train(config(tmp_path / "a", "run.steps=4", "eval.every=2", "eval.samples=2", "eval.temperature=1"))
    train(config(tmp_path / "b", "run.steps=2", "eval.every=2", "eval.samples=2", "eval.temperature=1"))
    rest = train(config(tmp_path / "b", "run.steps=4", "eval.every=2", "eval.samples=2", "eval.temperature=1"),
                 resume=True)
    assert evaluated_steps(rest) == [0, 2, 4]
    assert without_timing(rest.metrics) == without_timing(whole.metrics)


def test_a_run_resumed_from_no_checkpoint_evaluates_before_training_once(tmp_path):
    """The log's and TensorBoard's step-0 evaluation of the first attempt is replaced."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config(tmp_path, "run.steps=2", "run.tensorboard=true")
    first = train(cfg)
    shutil.rmtree(first.output_dir / "checkpoints")
    shutil.rmtree(first.output_dir / "final")
    again = train(cfg, resume=True)
    assert [m["step"] for m in again.metrics] == [0, 1, 2]
    events = EventAccumulator(str(first.output_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval_accuracy")] == [0, 2]
    assert [e.step for e in events.Scalars("reward_mean")] == [1, 2]


def test_held_out_records_are_read_with_datas_keys(tmp_path):
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"question": f"{a},{b}=", "answer": str(max(a, b))}) + "\n"
                                for a, b in ((3, 8), (1, 2), (9, 4))))
    train_file = tmp_path / "train.jsonl"
    train_file.write_text(json.dumps({"question": "5,6=", "answer": "6"}) + "\n")
    cfg = config(tmp_path, f"data.source={train_file}", "data.prompt_key=question", "reward.kind=math",
                 f"eval.source={held_out}", "eval.prompts=null", "run.steps=1")
    trainer = Trainer(cfg)
    assert [trainer.tokenizer.decode(ids) for ids in trainer.eval_prompts] == ["3,8=", "1,2=", "9,4="]
    trainer.proc.close()
    held_out.write_text(held_out.read_text() + json.dumps({"question": "1,1="}) + "\n")
    with pytest.raises(ConfigError, match=r"held_out.jsonl:4 has no field 'answer' \(data.answer_key\)"):
        Trainer(cfg)
    with pytest.warns(UserWarning, match="eval.prompts is 9, but eval.source holds 4 records"):
        Trainer(config(tmp_path, f"data.source={train_file}", "data.prompt_key=question",
                       "reward.kind=test_eval:parity", f"eval.source={held_out}", "eval.prompts=9")).proc.close()


def test_the_cli_prints_the_first_and_last_evaluation(tmp_path, capsys):
    assert main(["train", "--output-dir", str(tmp_path / "run"), "--set", "run.steps=2", "--set", "eval.source=task",
                 "--set", "eval.prompts=4", "--set", "run.progress=false"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0]["eval_accuracy"], rows[-1]["eval_accuracy"]
    assert f"eval accuracy: {first:.3f} (step 0) -> {last:.3f} (step 2)" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, match", [
    (["eval.samples=4"], "eval.samples is 4 with eval.temperature 0: greedy responses are all the same"),
    (["eval.temperature=-1"], r"eval.temperature must be >= 0 \(0: greedy\), got -1.0"),
    (["eval.temperature=1", "eval.top_p=0"], r"eval.top_p must be in \(0, 1\]"),
    (["eval.temperature=1", "eval.top_k=0"], "eval.top_k must be >= 1"),
    (["eval.temperature=1e-300"], r"eval.temperature must be in \[4.24e-39"),
    (["eval.source=/nonexistent.jsonl"], "eval.source: '/nonexistent.jsonl' does not exist"),
    (["eval.source=README.md"], "eval.source: a file must be .jsonl"),
    (["eval.source=' '"], "eval.source must not be empty"),
    (["eval.split=test"], "eval.split selects a split of a DatasetDict folder; eval.source is 'task'"),
    (["eval.source=null", "eval.split=test"], "eval.split selects a split of eval.source, which is not set"),
    (["eval.prompts=0"], "eval.prompts must be >= 1"),
    (["eval.every=-1"], "eval.every must be >= 0"),
    (["eval.samples=0"], "eval.samples must be >= 1"),
])
def test_bad_eval_configs(overrides, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict({"eval": {"source": "task"}}, overrides)


def test_task_rewards_and_labelled_records_are_checked_against_the_eval_source(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "1,2=", "answer": "2", "labels": ["1", "2"]}) + "\n")
    with pytest.raises(ConfigError, match="reward.kind 'task' scores the built-in task: it needs eval.source 'task'"):
        TrainConfig.from_dict({"eval": {"source": str(data)}})
    with pytest.raises(ConfigError, match="built-in task has none: set eval.source to a file"):
        TrainConfig.from_dict({"data": {"source": str(data)}, "reward": {"kind": "classification"},
                               "eval": {"source": "task"}})


def test_eval_keys_without_an_eval_source_are_named():
    with pytest.warns(UserWarning, match=r"eval.every \(5\) is read only when eval.source is set"):
        TrainConfig.from_dict({"eval": {"every": 5}})
    with pytest.warns(UserWarning, match=r"eval.top_p \(0.9\) is read only when eval.temperature > 0"):
        TrainConfig.from_dict({"eval": {"source": "task", "top_p": 0.9}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainConfig.from_dict({"eval": {"source": "task", "every": 5, "samples": 4, "temperature": 0.7,
                                        "top_p": 0.9}})


def test_a_checkpoint_from_before_the_eval_section_resumes(tmp_path):
    """A checkpoint's config holds the keys of its fastrl version: a section added since did
    what its defaults do, and is no change (it was refused: "eval (None -> {...})")."""
    cfg = config(tmp_path, "run.steps=1", "eval.source=null", "eval.prompts=null")
    train(cfg)
    saved = next((tmp_path / "run" / "checkpoints").glob("step_*")) / "config.json"
    old = json.loads(saved.read_text())
    del old["eval"], old["rollout"]["max_rows"]
    saved.write_text(json.dumps(old))
    resumed = train(config(tmp_path, "run.steps=2", "eval.source=null", "eval.prompts=null"), resume=True)
    assert [m["step"] for m in resumed.metrics] == [1, 2]
    with pytest.raises(ConfigError, match=r"differs from the checkpoint's .* in data.prompts_per_step \(4 -> 8\)"):
        Trainer(config(tmp_path, "run.steps=3", "eval.source=null", "eval.prompts=null", "data.prompts_per_step=8"),
                resume=True)


def test_a_task_eval_source_is_checked_against_data_answer_key(tmp_path):
    """The task's problems hold their answer in "answer": a reward reading another
    data.answer_key failed at the first evaluation (a KeyError, maybe hours into the run)."""
    train_file = tmp_path / "train.jsonl"
    train_file.write_text(json.dumps({"prompt": "5,6=", "solution": "6"}) + "\n")
    with pytest.raises(ConfigError, match="eval.source task: record 0 has no field 'solution' \\(data.answer_key\\)"):
        Trainer(config(tmp_path, f"data.source={train_file}", "data.answer_key=solution", "reward.kind=math"))


def test_ctrl_c_during_the_evaluation_before_training_stops_before_the_first_step(tmp_path):
    cfg = config(tmp_path, "run.steps=2")
    trainer = Trainer(cfg)
    evaluate = trainer.evaluate

    def interrupted():
        trainer._stop = True  # what Ctrl-C sets
        return evaluate()
    trainer.evaluate = interrupted
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [0]
    resumed = train(cfg, resume=True)
    whole = train(config(tmp_path / "w", "run.steps=2"))
    assert without_timing(resumed.metrics) == without_timing(whole.metrics)


def test_eval_only_evaluates_the_starting_policy_or_a_checkpoint_and_writes_nothing(tmp_path, capsys):
    args = ["--set", "eval.source=task", "--set", "eval.prompts=6", "--set", "eval.samples=2",
            "--set", "eval.temperature=1", "--set", "run.progress=false", "--output-dir", str(tmp_path / "run")]
    assert main(["train", "--eval-only", *args]) == 0
    before = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not (tmp_path / "run").exists()
    assert main(["train", "--set", "run.steps=2", *args]) == 0
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    log = (tmp_path / "run" / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(["train", "--set", "run.steps=2", "--eval-only", "--resume", *args]) == 0
    after = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert without_timing([before, after]) == without_timing([logged[0], {k: v for k, v in logged[-1].items()
                                                                          if k == "step" or k.startswith("eval_")}])
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == log  # the run's folder as it was


@pytest.mark.parametrize("args, message", [
    (["--eval-only"], "--eval-only evaluates on eval.source, which is not set"),
    (["--eval-only", "--resume", "--set", "eval.source=task"], "--resume --eval-only: no checkpoint under"),
    (["--eval-only", "--overwrite", "--set", "eval.source=task"], "--overwrite does not go with it"),
])
def test_eval_only_errors_are_named(tmp_path, capsys, args, message):
    assert main(["train", "--output-dir", str(tmp_path / "run"), *args]) == 2
    assert message in capsys.readouterr().err
