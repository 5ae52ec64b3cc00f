"""The config's warnings (``TrainConfig.advisories``): a key set in the config that the run
never reads, a warm-up as long as the run, RiskPO bundles of unequal size. Each is a
UserWarning naming the key, issued by ``from_dict`` / ``load`` at their caller; none for
the defaults, for keys the run reads, or for a config read back from its to_dict() or the
config.json a run writes."""
import json
import os
import re
import subprocess
import sys
import warnings

import pytest
import yaml

from fastrl.trainer.config import ALGOS, TrainConfig


def issued(make):
    """The messages of the UserWarnings make() issues, each checked to point at this file
    (the caller of from_dict / load)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
    mine = [w for w in caught if issubclass(w.category, UserWarning)]
    assert all(w.filename == __file__ for w in mine), [(w.filename, w.lineno) for w in mine]
    return [str(w.message) for w in mine]


def build(*overrides):
    return lambda: TrainConfig.from_dict({}, list(overrides))


# (key, the overrides that set it where the run ignores it, the overrides under which the run reads it)
UNREAD = [
    ("algo.rover_rho", ["algo.name=grpo", "algo.rover_rho=2.0"], ["algo.name=rover", "algo.rover_rho=2.0"]),
    ("algo.rover_kappa", ["algo.name=riskpo", "data.prompts_per_step=20", "algo.rover_kappa=0.5"],
     ["algo.name=rover", "algo.rover_kappa=0.5"]),
    ("algo.rover_centred", ["algo.name=dr_grpo", "algo.rover_centred=true"], ["algo.name=rover", "algo.rover_centred=true"]),
    ("algo.clip_high", ["algo.name=rover", "algo.clip_high=0.28"], ["algo.name=grpo", "algo.clip_high=0.28"]),
    ("algo.clip_low", ["algo.name=rover", "algo.clip_low=0.1"], ["algo.name=riskpo", "data.prompts_per_step=20",
                                                                  "algo.clip_low=0.1"]),
    ("algo.dual_clip", ["algo.name=rover", "algo.dual_clip=3"], ["algo.name=gae", "algo.dual_clip=3"]),
    ("algo.aggregation", ["algo.name=rover", "algo.aggregation=seq_mean_token_mean"],
     ["algo.name=rover", "algo.aggregation=seq_mean_token_mean", "algo.entropy_coef=0.01"]),
    ("algo.riskpo_alpha", ["algo.name=grpo", "algo.riskpo_alpha=0.1"],
     ["algo.name=riskpo", "data.prompts_per_step=20", "algo.riskpo_alpha=0.1"]),
    ("algo.riskpo_bundle_size", ["algo.name=rloo", "algo.riskpo_bundle_size=4"],
     ["algo.name=riskpo", "algo.riskpo_bundle_size=4"]),
    ("algo.value_coef", ["algo.name=rloo", "algo.value_coef=1.0"], ["algo.name=gae", "algo.value_coef=1.0"]),
    ("algo.gamma", ["algo.name=grpo", "algo.gamma=0.99"], ["algo.name=gae", "algo.gamma=0.99"]),
    ("algo.lam", ["algo.name=pure", "algo.lam=0.95"], ["algo.name=gae", "algo.lam=0.95"]),
    ("algo.value_clip", ["algo.name=dr_grpo", "algo.value_clip=null"], ["algo.name=gae", "algo.value_clip=null"]),
    ("algo.pure_min_form", ["algo.name=grpo", "algo.pure_min_form=strict"],
     ["algo.name=pure", "algo.pure_min_form=strict"]),
    ("algo.pure_temperature", ["algo.name=pure", "algo.pure_min_form=strict", "algo.pure_temperature=0.5"],
     ["algo.name=pure", "algo.pure_temperature=0.5"]),
    ("algo.eps", ["algo.name=dr_grpo", "algo.eps=1e-4"], ["algo.name=grpo", "algo.eps=1e-4"]),
    ("algo.eps", ["algo.name=rover", "algo.rover_centred=true", "algo.eps=1e-4"], ["algo.name=rover", "algo.eps=1e-4"]),
    ("algo.kl_in", ["algo.kl_in=reward"], ["algo.kl_in=reward", "algo.kl_coef=0.01", "model.reference=initial"]),
    ("optim.min_lr_ratio", ["optim.schedule=constant", "optim.min_lr_ratio=0.05"],
     ["optim.schedule=cosine", "optim.min_lr_ratio=0.05"]),
    ("reward.process", ["algo.name=rloo", "reward.process=task"], ["algo.name=pure", "reward.process=task"]),
    ("model.lora_alpha", ["model.lora_alpha=32"], ["model.lora_rank=8", "model.lora_alpha=32"]),
    ("model.lora_target_modules", ["model.lora_target_modules=[q_proj]"],
     ["model.lora_rank=8", "model.lora_target_modules=[q_proj]"]),
    ("model.autocast_bf16", ["model.dtype=bfloat16", "model.autocast_bf16=false"], ["model.autocast_bf16=false"]),
    ("model.autocast_bf16", ["run.device=cpu", "model.autocast_bf16=false"], ["model.autocast_bf16=false"]),
    ("data.shuffle", ["data.shuffle=false"], None),  # (data.source task; a file needs one on disk: below)
    ("data.labels_key", ["data.labels_key=classes"], None),
    ("data.answer_key", ["data.answer_key=gold"], None),
    ("run.wandb_project", ["run.wandb_project=mine"], None),  # (run.wandb=true reads it: needs no wandb to build)
]


@pytest.mark.parametrize("key, ignored, read", UNREAD, ids=[f"{k}-{i}" for i, (k, *_) in enumerate(UNREAD)])
def test_a_set_key_the_run_never_reads_is_named_once(key, ignored, read):
    with pytest.warns(UserWarning, match=rf"this run ignores a key set in its config: {re.escape(key)} \(.*\) is read "
                                         "only"):
        TrainConfig.from_dict({}, ignored)
    assert len(issued(build(*ignored))) == 1  # one warning
    if read is not None:  # the same key where the run reads it: nothing
        assert issued(build(*read)) == []


def test_the_message_says_why_and_what_this_run_is():
    (message,) = issued(build("algo.name=grpo", "algo.rover_rho=2"))
    assert message == "this run ignores a key set in its config: algo.rover_rho (2.0) is read only by algo.name rover " \
                      "(this run: grpo)"
    (message,) = issued(build("optim.min_lr_ratio=0.05"))
    assert "optim.min_lr_ratio (0.05) is read only with optim.schedule cosine (this run: constant)" in message
    (message,) = issued(build("algo.name=rover", "algo.clip_high=0.28", "algo.clip_low=0.1", "algo.riskpo_omega=2"))
    assert message.startswith("this run ignores 3 keys set in its config: ")
    assert all(k in message for k in ("algo.clip_high (0.28)", "algo.clip_low (0.1)", "algo.riskpo_omega (2.0)"))


def test_file_dataset_keys(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "answer": "1"}\n')
    source = [f"data.source={data}", "reward.kind=math"]
    assert issued(build(*source, "data.shuffle=false", "data.prompt_key=prompt", "data.answer_key=answer")) == []
    (message,) = issued(build(*source, "data.operands=5", "data.labels_key=classes"))
    assert "data.operands (5)" in message and "data.labels_key (\"classes\")" in message


def test_a_key_set_to_its_default_is_not_reported():
    # the output of --help-config is a YAML of every key at its default
    assert issued(build("algo.name=rover", "algo.clip_high=0.2", "optim.min_lr_ratio=0.1", "algo.gamma=1")) == []
    assert len(issued(build("algo.name=rover", "algo.clip_high=0.3", "optim.min_lr_ratio=0.1", "algo.gamma=1"))) == 1


@pytest.mark.parametrize("algo", ALGOS)
def test_no_warning_for_the_defaults(algo):
    assert issued(build()) == [] and TrainConfig().advisories() == []
    assert issued(build(f"algo.name={algo}")) == []
    # every key counted as set: still only those off their defaults, and the bundle sizes (16 in
    # bundles of 5 is the defaults' own choice: see the bundle tests)
    got = TrainConfig.from_dict({}, [f"algo.name={algo}"]).advisories(set_keys=None)
    if algo == "riskpo":
        assert len(got) == 1 and got[0].startswith("algo.name riskpo: data.prompts_per_step 16"), got
    else:
        assert got == []


@pytest.mark.parametrize("algo", ALGOS)
def test_a_config_read_back_from_to_dict_is_not_reported(algo, tmp_path):
    overrides = [f"algo.name={algo}", "data.prompts_per_step=20", "optim.schedule=cosine", "optim.min_lr_ratio=0.05"]
    saved = TrainConfig.from_dict({}, overrides).to_dict()  # every key, most of them unread by this run
    assert issued(lambda: TrainConfig.from_dict(saved)) == []
    # as the trainer writes it, loaded with a --resume's longer run
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved, indent=2))
    assert issued(lambda: TrainConfig.load(path, ["run.steps=900"])) == []
    # yet the keys of a saved config are checked: one this run does not read, changed from its default
    other = "algo.rover_rho" if algo != "rover" else "algo.clip_high"
    section, key = other.split(".")
    saved[section][key] = 0.5
    (message,) = issued(lambda: TrainConfig.from_dict(saved))
    assert f"{other} (0.5)" in message


def test_the_help_config_template_loads_without_warnings(capsys, tmp_path):
    from fastrl.cli import main

    assert main(["train", "--help-config"]) == 0
    template = tmp_path / "run.yaml"
    template.write_text(capsys.readouterr().out)
    assert issued(lambda: TrainConfig.load(template)) == []
    # with the algorithm changed: the keys of the others are still at their defaults
    assert issued(lambda: TrainConfig.load(template, ["algo.name=rover"])) == []
    (message,) = issued(lambda: TrainConfig.load(template, ["algo.name=rover", "algo.clip_high=0.3"]))
    assert "algo.clip_high (0.3)" in message


def test_a_saved_config_json_of_a_run_reads_back_without_warnings(tmp_path):
    pytest.importorskip("transformers")
    from fastrl.trainer.train import train

    out = tmp_path / "run"
    overrides = ["algo.name=riskpo", "data.prompts_per_step=5", "rollout.group_size=2", "run.steps=1",
                 "run.progress=false", f"run.output_dir={out}", "optim.warmup_steps=1"]
    with pytest.warns(UserWarning, match=r"optim.warmup_steps 1 is the run's 1 optimizer updates \(run.steps 1\)"):
        config = TrainConfig.from_dict({}, overrides)
    train(config)
    # a --resume that raises run.steps: the warm-up now ends before the run does
    assert issued(lambda: TrainConfig.load(out / "config.json", ["run.steps=3"])) == []


def test_warnings_point_at_the_caller(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"algo": {"name": "grpo", "rover_rho": 2.0}}))
    for make in (lambda: TrainConfig.load(path), lambda: TrainConfig.from_dict({"algo": {"rover_rho": 2.0}}),
                 lambda: TrainConfig.from_dict({}, ["algo.rover_rho=2"])):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make()
        assert [(w.filename, w.category) for w in caught] == [(__file__, UserWarning)]


# ---- the warm-up -------------------------------------------------------------------

@pytest.mark.parametrize("overrides, text", [
    (["run.steps=10", "optim.warmup_steps=10"], "optim.warmup_steps 10 is the run's 10 optimizer updates (run.steps 10): "
     "the learning rate reaches optim.lr 0.001 only at the last update. Fine if a --resume will raise run.steps"),
    (["run.steps=10", "optim.warmup_steps=40", "optim.schedule=cosine"], "optim.warmup_steps 40 exceeds the run's 10 "
     "optimizer updates (run.steps 10): the learning rate never reaches optim.lr 0.001 (at most 10/40 of it), and the "
     "cosine decay never starts. Fine if a --resume will raise run.steps"),
    (["run.steps=10", "algo.epochs=2", "algo.mini_batches=2", "optim.warmup_steps=50"],
     "optim.warmup_steps 50 exceeds the run's 40 optimizer updates (run.steps 10 x algo.epochs 2 x algo.mini_batches 2)"),
])
def test_a_warmup_as_long_as_the_run_is_reported(overrides, text):
    with pytest.warns(UserWarning, match=r"optim\.warmup_steps .* run\.steps"):
        TrainConfig.from_dict({}, overrides)
    (message,) = issued(build(*overrides))
    assert message.startswith(text), message


@pytest.mark.parametrize("overrides", [
    ["run.steps=10", "optim.warmup_steps=9"],
    ["run.steps=10", "algo.epochs=2", "optim.warmup_steps=15"],  # 20 optimizer updates
    ["run.steps=10", "algo.mini_batches=4", "optim.warmup_steps=39"],
])
def test_a_warmup_shorter_than_the_run_is_not(overrides):
    assert issued(build(*overrides)) == []
    more = [o if not o.startswith("optim.warmup_steps") else "optim.warmup_steps=1000" for o in overrides]
    assert len(issued(build(*more))) == 1


# ---- RiskPO's bundles --------------------------------------------------------------

@pytest.mark.parametrize("prompts, size, text", [
    (16, 5, "data.prompts_per_step 16 is not a multiple of algo.riskpo_bundle_size 5, so each step's 16 questions form "
            "3 bundles of 5 and a last one of 1 (a bundle of one question gets the per-group form); "
            "data.prompts_per_step 15 or 20 gives equal bundles"),
    (64, 5, "each step's 64 questions form 12 bundles of 5 and a last one of 4; data.prompts_per_step 60 or 65"),
    (8, 3, "each step's 8 questions form 2 bundles of 3 and a last one of 2;"),
    (3, 5, "each step's 3 questions form a single bundle of 3; data.prompts_per_step 5 gives equal bundles"),
])
def test_riskpo_bundles_of_unequal_size_are_reported(prompts, size, text):
    overrides = ["algo.name=riskpo", f"data.prompts_per_step={prompts}", f"algo.riskpo_bundle_size={size}"]
    with pytest.warns(UserWarning, match=rf"data\.prompts_per_step {prompts} is not a multiple of "
                                         rf"algo\.riskpo_bundle_size {size}"):
        TrainConfig.from_dict({}, overrides)
    (message,) = issued(build(*overrides))
    assert text in message, message


@pytest.mark.parametrize("prompts, size", [(15, 5), (20, 5), (16, 1), (16, 4), (5, 5), (60, 6)])
def test_riskpo_equal_bundles_are_not(prompts, size):
    overrides = ["algo.name=riskpo", f"data.prompts_per_step={prompts}", f"algo.riskpo_bundle_size={size}"]
    assert issued(build(*overrides)) == [] and TrainConfig.from_dict({}, overrides).advisories() == []
    # one prompt more: a ragged last bundle (with bundles of one question, none is)
    more = issued(build("algo.name=riskpo", f"data.prompts_per_step={prompts + 1}", f"algo.riskpo_bundle_size={size}"))
    assert len(more) == (size > 1)


def test_other_algorithms_have_no_bundles():
    assert len(issued(build("algo.name=riskpo", "data.prompts_per_step=7"))) == 1
    for algo in ALGOS:
        if algo != "riskpo":
            assert issued(build(f"algo.name={algo}", "data.prompts_per_step=7")) == []


# ---- the command line ----------------------------------------------------------------

@pytest.mark.parametrize("rank", ["0", "1"])
def test_the_cli_prints_each_warning_once_as_a_line_of_its_own(tmp_path, rank):
    """(Python's form was two lines, the second the source line in cli.py; under torchrun every
    process printed them)"""
    (tmp_path / "afile").write_text("")  # run.output_dir a file: the run stops after the config is read
    (tmp_path / "run.yaml").write_text("algo: {name: grpo, rover_rho: 2.0}\noptim: {warmup_steps: 5}\n"
                                       "run: {steps: 3, output_dir: afile}\n")
    done = subprocess.run([sys.executable, "-m", "fastrl.cli", "train", "--config", "run.yaml", "--set",
                           "algo.riskpo_alpha=0.1"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RANK": rank})
    assert done.returncode == 2, done.stderr
    err = done.stderr
    assert "is a file, not a folder" in err and "UserWarning" not in err, err
    if rank != "0":
        assert "warning" not in err, err
        return
    assert err.count("fastrl train: warning: ") == 2, err
    assert err.count("algo.rover_rho (2.0)") == 1 and err.count("algo.riskpo_alpha (0.1)") == 1, err
    assert err.count("optim.warmup_steps 5 exceeds the run's 3 optimizer updates (run.steps 3)") == 1, err
