"""The configuration of ``fastrl train``: typed sections, every key documented, checked
before any model is loaded.

A YAML (or JSON) file holds the sections below as mappings, e.g.::

    algo: {name: grpo, clip_high: 0.28}
    data: {prompts_per_step: 16}

A key that is not listed here, a value of the wrong type or out of range raises
``ConfigError`` naming the key (``algo.clip_high``). ``TrainConfig.from_dict`` builds a
config from nested mappings; ``overrides`` (``key.sub=value`` strings, values parsed as
YAML, as ``fastrl train --set``; or ``(key, value)`` pairs taken as they are, as its
``--output-dir`` and other flags) apply on top.

A config that is valid but does not do what it says gets a ``UserWarning`` from
``from_dict`` / ``load`` (``TrainConfig.advisories`` lists them): a key set to other than
its default that this run never reads (``algo.rover_rho`` under grpo: a YAML shared by
several algorithms may hold such keys, so it is not an error), a warm-up as long as the
run, RiskPO bundles of unequal size.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
import numbers
import os
import re
import sys
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

ALGOS = ("grpo", "dr_grpo", "rloo", "gae", "pure", "riskpo", "rover")
DYNAMIC_SAMPLING_ALGOS = ("grpo", "dr_grpo", "rloo", "rover")  # equal rewards in a group: zero advantages
CLASSIFICATION_KINDS = ("classification", "classification_no_think")  # reward kinds scored against a label set
# keys a --resume may change: how long the run goes, where it runs, how it is kept and
# shown, how long later prompts may be; any other change would continue a run the
# checkpoint's state does not belong to
RESUME_SAFE = ("run.steps", "run.output_dir", "run.checkpoint_every", "run.keep_checkpoints", "run.plot",
               "run.tensorboard", "run.wandb", "run.wandb_project", "run.progress", "run.device", "run.distributed",
               "model.attn_implementation", "model.gradient_checkpointing", "rollout.max_rows",
               "data.max_prompt_tokens",  # (the way on past a step whose prompt is too long: see Trainer.collect)
               *(f"eval.{key}" for key in ("source", "split", "prompts", "every", "before_training", "samples",
                                           "temperature", "top_k", "top_p")))  # (evaluation changes no state)


class ConfigError(ValueError):
    pass


@dataclass
class ModelConfig:
    path: Optional[str] = None
    """A local Hugging Face causal LM (a folder with config.json). None: the built-in
    tiny Llama of the built-in task (``fastrl.trainer.task``)."""
    tokenizer: Optional[str] = None
    """Tokenizer folder for model.path; None: the one in ``path``. The built-in tiny model
    (path None) always uses the built-in task's tokenizer."""
    tiny_hidden_size: int = 64
    """Width of the built-in tiny model (only when path is None)."""
    tiny_layers: int = 2
    """Layers of the built-in tiny model (only when path is None)."""
    dtype: Literal["float32", "bfloat16", "float64"] = "float32"
    """Dtype of the weights, which AdamW updates in place (float16 is refused: its state and
    eps underflow to NaN weights). bfloat16 weights lose updates under 2^-8 of a weight (at
    lr 1e-6 most of them); float32 weights with ``autocast_bf16`` on a GPU do not."""
    autocast_bf16: bool = True
    """bf16 autocast for the forward passes on a GPU (ignored on CPU)."""
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"
    """auto: flash_attention_2 where flash_attn is importable and a GPU is used, else sdpa."""
    lora_rank: int = 0
    """LoRA rank through peft; 0 trains all weights."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_rank)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch (training forwards only: rollout and old-policy forwards run in eval mode)."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names (peft target_modules) that get LoRA adapters."""
    reference: Optional[str] = None
    """Frozen reference model for the k3 KL penalty: "initial" (a copy of the starting
    policy) or a local path. Needed when algo.kl_coef > 0."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about a third more compute)."""


@dataclass
class DataConfig:
    source: str = "task"
    """"task": the built-in task (``fastrl.trainer.task``); a ``.jsonl`` file; or a folder written by
    ``datasets.Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``, with ``split``)."""
    split: Optional[str] = None
    """A DatasetDict folder: the split to train on (e.g. "train")."""
    prompts_per_step: int = 16
    """Prompts per training step, over all processes (a multiple of the process count; under
    riskpo, a multiple of algo.riskpo_bundle_size gives equal bundles: 15 or 20 with its default 5)."""
    operands: int = 3
    """Built-in task: digits per problem (2 to 8)."""
    prompt_key: str = "prompt"
    """File datasets: the record field holding the prompt text."""
    answer_key: str = "answer"
    """File datasets: the record field holding the gold answer (for reward.kind task/math/classification)."""
    labels_key: str = "labels"
    """Classification rewards: the row's list of class names."""
    chat_template: bool = False
    """Wrap each prompt as a user message with the tokenizer's chat template."""
    max_prompt_tokens: int = 1024
    """Longer prompts are cut from the left, after the chat template, as verl's truncation='left'
    (a chat prompt cut so loses its template's opening, a plain one its BOS)."""
    shuffle: bool = True
    """File datasets: a new permutation every epoch, seeded by run.seed and the epoch."""


@dataclass
class RolloutConfig:
    group_size: int = 8
    """Responses sampled per prompt (G)."""
    max_new_tokens: int = 4
    """Largest response length in tokens (a response also stops at EOS)."""
    temperature: float = 1.0
    """Sampling temperature (> 0); the training log-probs use the same."""
    top_k: Optional[int] = None
    """Sample among the k most likely tokens (ties at the cutoff kept); None: all."""
    top_p: Optional[float] = None
    """Nucleus sampling: the smallest set of most likely tokens with mass >= top_p, in (0, 1]; None: all."""
    max_rows: Optional[int] = None
    """At most this many responses decode at once on a process (their KV cache), the rest after
    them, with the same tokens; None: the step's all at once."""
    dynamic_sampling: bool = False
    """DAPO: groups whose rewards are all equal take no part in the update (they are masked
    out of the loss rather than replaced by new samples). For grpo, dr_grpo, rloo and rover
    without a KL in the reward: elsewhere such groups still have non-zero advantages."""


@dataclass
class RewardConfig:
    kind: str = "task"
    """"task" (the built-in task's verifier), "math" (fastrl.rewards.math.score against the
    answer), "classification" (CLS-RL accuracy + format), "classification_no_think",
    "format" (the <think>/<answer> format alone), or "module:function" called as
    function(prompt, response, row) -> float, row being the data record."""
    process: Optional[str] = None
    """PURE's step scores: "task" (the built-in task's), a local Hugging Face
    token-classification model (the PRM: score = p(label 1) - p(label 0) at each step's
    last token), or "module:function" called as function(prompt, steps, row) -> list of
    floats, one per step. Needed by algo.name = pure; with the built-in task it defaults
    to "task"."""
    correct_threshold: float = 0.5
    """A response counts as correct (accuracy) when its outcome reward is at least this;
    with reward.kind classification or classification_no_think, when its answer is the gold
    label instead, whatever its format (this is not used)."""


@dataclass
class EvalConfig:
    source: Optional[str] = None
    """Held-out prompts the policy is evaluated on during training: "task" (problems of the
    built-in task drawn apart from the steps', not disjoint from them), a ``.jsonl`` file or
    a ``datasets`` folder, read with data's keys (prompt_key, answer_key, labels_key,
    chat_template, max_prompt_tokens), sampled up to rollout.max_new_tokens and scored with
    reward.kind; None: no evaluation."""
    split: Optional[str] = None
    """A DatasetDict folder: the split to evaluate on (e.g. "test")."""
    prompts: Optional[int] = None
    """Evaluate on the first this many records (None: all; the built-in task: 64 problems)."""
    every: int = 0
    """Steps between evaluations; 0: only after the last step (and before the first, with
    eval.before_training). The last step is always evaluated."""
    before_training: bool = True
    """Also evaluate the starting policy, logged as step 0 (verl's val_before_train)."""
    samples: int = 1
    """Responses per prompt (n): eval_accuracy is their mean, and eval_pass@k is logged for
    k = 2, 4, 8, ... and n."""
    temperature: float = 0.0
    """0: greedy (the most likely token; eval.samples must then be 1); > 0: sampled, with
    eval.top_k and eval.top_p. Every evaluation draws with the same seeds."""
    top_k: Optional[int] = None
    """As rollout.top_k, for eval.temperature > 0."""
    top_p: Optional[float] = None
    """As rollout.top_p, for eval.temperature > 0."""


@dataclass
class AlgoConfig:
    name: str = "grpo"
    """Credit assignment: grpo, dr_grpo, rloo, gae, pure, riskpo or rover."""
    epochs: int = 1
    """PPO epochs over each batch."""
    mini_batches: int = 1
    """Optimizer steps per epoch (the batch is split into this many mini-batches, each an equal
    share of every group: it must divide rollout.group_size)."""
    grad_accum: int = 1
    """Micro-batches per mini-batch (gradient accumulation); a step's no-grad forwards (old policy,
    reference, PRM) run in mini_batches x grad_accum micro-batches too."""
    micro_batch_tokens: Optional[int] = None
    """Instead of algo.grad_accum's count: micro-batches of at most this many tokens, rows x the
    columns they span (verl's ppo_max_token_len_per_gpu counts no padding: its values make
    smaller micro-batches here), as few as fit (a longer row goes alone), the same count on
    every process; the no-grad forwards' too. None: grad_accum."""
    clip_low: float = 0.2
    """Lower PPO clip: the ratio is clipped at 1 - clip_low (in [0, 1))."""
    clip_high: float = 0.2
    """PPO ratio clip range [1 - clip_low, 1 + clip_high] (DAPO's clip-higher: 0.28)."""
    dual_clip: Optional[float] = None
    """Dual-clip constant c > 1: for negative advantages the loss is at most -c * A."""
    aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    """How token losses become the loss (DESIGN 3.4)."""
    kl_coef: float = 0.0
    """k3 KL penalty to model.reference (0: none)."""
    kl_in: Literal["loss", "reward"] = "loss"
    """loss: coef * k3 in the loss (GRPO); reward: -coef * k3 per token in the reward (PPO)."""
    entropy_coef: float = 0.0
    """Entropy bonus: coef * entropy (aggregated like the loss) is subtracted from the loss."""
    eps: float = 1e-6
    """Added to a group's std before dividing (grpo, rover)."""
    gamma: float = 1.0
    """gae: discount per token."""
    lam: float = 1.0
    """gae: GAE lambda."""
    value_coef: float = 0.5
    """gae: weight of the value loss in the loss."""
    value_clip: Optional[float] = 0.2
    """gae: clipped value loss range (None: unclipped)."""
    pure_min_form: Literal["soft", "strict", "sum"] = "soft"
    """PURE's credit: soft (the authors' code), strict (the paper's min), or sum (the
    canonical sum-form, for comparison)."""
    pure_temperature: float = 0.1
    """PURE soft min-form: the temperature of the softmax weights over all of a row's steps."""
    pure_baseline: Literal["token", "step", "none"] = "token"
    """PURE: the leave-one-out baseline per token, per step, or none."""
    pure_verifiable_coef: float = 1.0
    """Weight of the leave-one-out centred verifiable reward added at the final token (0: PRM only)."""
    pure_zero_reward_tokens: bool = True
    """Advantage 0 at the reward-carrying tokens (step ends and final token), as PURE."""
    riskpo_bundle_size: int = 5
    """RiskPO: questions per bundle (1: the per-group form; a last, shorter bundle is a bundle:
    the default 16 prompts form bundles of 5, 5, 5 and 1)."""
    riskpo_alpha: float = 0.2
    """RiskPO: the lower quantile a of the bundle scores."""
    riskpo_beta: float = 0.8
    """RiskPO: the upper quantile b (alpha < beta)."""
    riskpo_omega: float = 1.5
    """RiskPO: the weight of the lower-tail (CVaR) term against the range term."""
    riskpo_natural_baseline: bool = True
    """RiskPO: add the baseline a - b (every advantage then <= 0: the exact gradient of the risk measure)."""
    riskpo_credit: Literal["std", "sum_mean"] = "std"
    """RiskPO: how a paper's advantage is shared among its responses (fastrl.ops.risk_advantages)."""
    rover_rho: float = 1.0
    """ROVER: rho, the scale of Q = rho (log pi - log pi_old) (> 0)."""
    rover_kappa: float = 1.0
    """ROVER: kappa, the weight of the look-ahead mean log-prob in the target (>= 0; 0: no look-ahead)."""
    rover_centred: bool = False
    """ROVER: advantages s - mean of the group (Dr.GRPO) instead of GRPO-normalised."""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    """AdamW learning rate (> 0)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    warmup_steps: int = 0
    """Linear warm-up over this many optimizer steps (a run makes run.steps x algo.epochs x
    algo.mini_batches of them)."""
    schedule: Literal["constant", "cosine"] = "constant"
    """After the warm-up: constant, or cosine decay to min_lr_ratio * lr at the last step."""
    min_lr_ratio: float = 0.1
    """cosine: the final learning rate as a fraction of lr."""
    max_grad_norm: Optional[float] = 1.0
    """Gradient clipping by global norm (None: no clipping)."""


@dataclass
class RunConfig:
    steps: int = 600
    """Training steps (one rollout batch each)."""
    seed: int = 0
    """Seeds the model initialisation, the data order and every sample (never the rank)."""
    output_dir: str = "runs/fastrl"
    """Where metrics.jsonl, checkpoints/, final/ and the plot go."""
    device: str = "auto"
    """auto: cuda (this process's local rank) when available, else cpu."""
    checkpoint_every: int = 50
    """Steps between checkpoints (0: only at the end and on Ctrl-C)."""
    keep_checkpoints: int = 2
    """The newest checkpoints kept; older ones are removed."""
    plot: bool = False
    """Write PNG curves of the metrics log at the end (needs matplotlib)."""
    tensorboard: bool = False
    """Also log the metrics to TensorBoard (output_dir/tensorboard)."""
    wandb: bool = False
    """Also log the metrics to Weights & Biases (project wandb_project). A --resume continues
    the same W&B run, but W&B ignores a step below its last one (with a warning): the steps
    a stopped run logged after its last checkpoint keep their first values there, whereas
    metrics.jsonl and TensorBoard hold the resumed run's."""
    wandb_project: str = "fastrl"
    """The Weights & Biases project."""
    progress: bool = True
    """A progress bar over the steps."""
    distributed: Literal["ddp", "fsdp2"] = "ddp"
    """Under torchrun: DDP (a full copy per process) or FSDP2 (parameters sharded)."""


def _unique_key_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """yaml.SafeLoader refusing a key twice in one mapping (YAML forbids it; PyYAML keeps the
        last: a second "run:" section replaced the first whole)."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *anchor": merged below, may be overridden
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise ConfigError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return Loader


def _yaml_error(e) -> str:
    """A YAML error on one line: its problem and where."""
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(e, 'problem', None) or e}{where}".replace("\n", " ")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def from_dict(cls, values: dict | None, overrides: list[str] = ()) -> "TrainConfig":
        return cls._checked(values, overrides)

    @classmethod
    def _checked(cls, values, overrides, stacklevel=3) -> "TrainConfig":
        """The config of values and overrides, validated; its advisories as UserWarnings
        attributed to the caller of from_dict or load (stacklevel 3: here, from_dict/load,
        their caller)."""
        values = _merge_overrides({} if values is None else values, overrides)
        config = _build(cls, values, "")
        config.validate()
        # only the keys the config names count as set (a saved config.json names them all: those
        # at their defaults are left out again by advisories)
        set_keys = {f"{section}.{key}" for section, keys in values.items() if isinstance(keys, dict) for key in keys}
        for message in config.advisories(set_keys):
            warnings.warn(message, UserWarning, stacklevel=stacklevel)
        return config

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] = ()) -> "TrainConfig":
        values = {}
        if path is not None:
            import yaml

            try:
                text = Path(path).read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            try:
                values = yaml.load(text, Loader=_unique_key_loader())
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not valid YAML: {_yaml_error(e)}") from None
            except ConfigError as e:  # a duplicate key
                raise ConfigError(f"{path}: {e}") from None
            values = {} if values is None else values  # an empty file, or one of comments
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: the config must be a mapping of sections, got {type(values).__name__}")
        return cls._checked(values, overrides)  # (not through from_dict: the warnings name load's caller)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def advisories(self, set_keys=None) -> list[str]:
        """Warnings for a valid config that does not do what it says (``from_dict`` and ``load``
        issue them): keys of ``set_keys`` (dotted names; None: every key) whose value is not
        their default and which this run never reads, one message naming them all; a warm-up
        as long as the run; RiskPO bundles of unequal size. Call it after ``validate``."""
        messages = []
        unread, judged = [], set()
        for keys, read, why in _read_rules(self):
            for key in keys:
                if key in judged or read or (set_keys is not None and key not in set_keys):
                    continue
                judged.add(key)
                section, name = key.split(".")
                value = getattr(getattr(self, section), name)
                if value != getattr(type(getattr(self, section))(), name):  # (its default)
                    unread.append(f"{key} ({json.dumps(value)}) is read only {why}")
        if unread:
            messages.append(f"this run ignores {'a key' if len(unread) == 1 else f'{len(unread)} keys'} set in its "
                            f"config: {'; '.join(unread)}")
        o, a = self.optim, self.algo
        updates = self.run.steps * a.epochs * a.mini_batches
        if o.warmup_steps >= updates:
            count = (f"run.steps {self.run.steps} x algo.epochs {a.epochs} x algo.mini_batches {a.mini_batches}"
                     if a.epochs * a.mini_batches > 1 else f"run.steps {self.run.steps}")
            reach = ("reaches optim.lr {lr} only at the last update" if o.warmup_steps == updates else
                     f"never reaches optim.lr {{lr}} (at most {updates}/{o.warmup_steps} of it)").format(lr=o.lr)
            messages.append(f"optim.warmup_steps {o.warmup_steps} {'is' if o.warmup_steps == updates else 'exceeds'} "
                            f"the run's {updates} optimizer updates ({count}): the learning rate {reach}"
                            f"{', and the cosine decay never starts' if o.schedule == 'cosine' else ''}. Fine if a "
                            "--resume will raise run.steps")
        n, size = self.data.prompts_per_step, a.riskpo_bundle_size
        # (the defaults' last bundle of one is DESIGN's: named only where the config chose the sizes)
        chosen = set_keys is None or {"data.prompts_per_step", "algo.riskpo_bundle_size"} & set(set_keys)
        if a.name == "riskpo" and n % size and chosen:
            full, rest = divmod(n, size)
            bundles = (f"{full} bundle{'s' if full > 1 else ''} of {size} and a last one of {rest}" if full else
                       f"a single bundle of {rest}")
            nearest = " or ".join(str(k) for k in (full * size, (full + 1) * size) if k)
            messages.append(f"algo.name riskpo: data.prompts_per_step {n} is not a multiple of algo.riskpo_bundle_size "
                            f"{size}, so each step's {n} questions form {bundles}"
                            f"{' (a bundle of one question gets the per-group form)' if rest == 1 else ''}; "
                            f"data.prompts_per_step {nearest} gives equal bundles")
        return messages

    def validate(self):
        """Types and ranges of every key, for a config built or edited in Python too (the
        trainer calls it); fills in what depends on other keys."""
        hints = typing.get_type_hints(type(self))
        for name, hint in hints.items():
            section = getattr(self, name)
            if not isinstance(section, hint):
                raise ConfigError(f"{name} must be of type {hint.__name__}, got {type(section).__name__}")
            checked = _build(hint, dataclasses.asdict(section), name + ".")
            for key in (f.name for f in dataclasses.fields(hint)):
                setattr(section, key, getattr(checked, key))
        m, d, r, rw, a, o, run = self.model, self.data, self.rollout, self.reward, self.algo, self.optim, self.run
        e = self.eval
        for key, value in (("model.path", m.path), ("model.tokenizer", m.tokenizer), ("model.reference", m.reference),
                           ("data.source", d.source), ("reward.process", rw.process), ("eval.source", e.source)):
            if isinstance(value, str) and not value.strip():  # (Path("") is the working folder: it "exists")
                raise ConfigError(f"{key} must not be empty (leave it out for its default)")
        _at_least("model.tiny_hidden_size", m.tiny_hidden_size, 4)
        if m.tiny_hidden_size % 4:
            raise ConfigError(f"model.tiny_hidden_size must be a multiple of 4 (4 heads), got {m.tiny_hidden_size}")
        _at_least("model.tiny_layers", m.tiny_layers, 1)
        _at_least("model.lora_rank", m.lora_rank, 0)
        if m.lora_rank and not m.lora_target_modules:
            raise ConfigError("model.lora_target_modules must name at least one module when model.lora_rank > 0")
        if m.tokenizer is not None and m.path is None:
            raise ConfigError("model.tokenizer goes with model.path; the built-in tiny model (model.path unset) "
                              "uses the built-in task's tokenizer")
        _positive("model.lora_alpha", m.lora_alpha)
        _in_unit("model.lora_dropout", m.lora_dropout, closed=False)
        for key in ("path", "tokenizer"):
            value = getattr(m, key)
            if value is not None and not Path(value).exists():
                raise ConfigError(f"model.{key}: {value!r} does not exist (a local folder is expected; nothing is "
                                  "downloaded)")
        if m.reference not in (None, "initial") and not Path(m.reference).exists():
            raise ConfigError(f"model.reference must be 'initial' or an existing local folder, got {m.reference!r}")
        _check_source("data", d.source, d.split)
        if e.source is not None:
            _check_source("eval", e.source, e.split)
        elif e.split is not None:
            raise ConfigError("eval.split selects a split of eval.source, which is not set")
        _at_least("data.prompts_per_step", d.prompts_per_step, 1)
        if not 2 <= d.operands <= 8:
            raise ConfigError(f"data.operands must be in 2..8, got {d.operands}")
        _at_least("data.max_prompt_tokens", d.max_prompt_tokens, 1)
        _at_least("rollout.group_size", r.group_size, 1)
        _at_least("rollout.max_new_tokens", r.max_new_tokens, 1)
        _check_sampling("rollout", r.temperature, r.top_k, r.top_p, m.dtype)
        if r.max_rows is not None:
            _at_least("rollout.max_rows", r.max_rows, 1)
        kinds = ("task", "math", *CLASSIFICATION_KINDS, "format")
        if rw.kind not in kinds and ":" not in rw.kind:
            raise ConfigError(f"reward.kind must be one of {', '.join(kinds)} or 'module:function', got {rw.kind!r}")
        if ":" in rw.kind:
            user_function(rw.kind, "reward.kind")
        for key, source in (("data.source", d.source), ("eval.source", e.source)):
            if rw.kind == "task" and source not in ("task", None):
                raise ConfigError(f"reward.kind 'task' scores the built-in task: it needs {key} 'task', got "
                                  f"{source!r}")
            if rw.kind in CLASSIFICATION_KINDS and source == "task":
                raise ConfigError(f"reward.kind {rw.kind!r} reads each record's label set (data.labels_key); the "
                                  f"built-in task has none: set {key} to a file or folder of labelled records")
        if e.prompts is not None:
            _at_least("eval.prompts", e.prompts, 1)
        _at_least("eval.every", e.every, 0)
        _at_least("eval.samples", e.samples, 1)
        if e.temperature < 0:
            raise ConfigError(f"eval.temperature must be >= 0 (0: greedy), got {e.temperature}")
        if e.temperature == 0:
            if e.samples > 1:
                raise ConfigError(f"eval.samples is {e.samples} with eval.temperature 0: greedy responses are all "
                                  "the same; set eval.temperature > 0 to sample them")
        else:
            _check_sampling("eval", e.temperature, e.top_k, e.top_p, m.dtype)
        if rw.process is not None and rw.process != "task" and ":" not in rw.process \
                and not Path(rw.process).exists():
            raise ConfigError(f"reward.process must be 'task', an existing PRM folder or 'module:function', "
                              f"got {rw.process!r}")
        if rw.process == "task" and d.source != "task":
            raise ConfigError("reward.process 'task' needs data.source 'task'")
        if rw.process is not None and ":" in rw.process:
            user_function(rw.process, "reward.process")
        if a.name not in ALGOS:
            raise ConfigError(f"algo.name must be one of {', '.join(ALGOS)}, got {a.name!r}")
        if r.dynamic_sampling and r.group_size < 2:
            raise ConfigError(f"rollout.dynamic_sampling needs rollout.group_size >= 2 (it drops groups whose rewards "
                              f"are all equal, which every group of {r.group_size} is)")
        if a.name != "gae" and r.group_size < 2:
            raise ConfigError(f"rollout.group_size must be >= 2 for {a.name}, whose advantages compare the responses "
                              f"of a group, got {r.group_size}")
        # a group of equal rewards has zero advantages only where the advantage compares rewards within the group
        if r.dynamic_sampling and (a.name not in DYNAMIC_SAMPLING_ALGOS or (a.kl_coef > 0 and a.kl_in == "reward")):
            why = (f"algo.name {a.name!r} (its advantages are not zero there: bundles, process rewards or a value "
                   "baseline)" if a.name not in DYNAMIC_SAMPLING_ALGOS else "algo.kl_in 'reward' (the KL penalty "
                   "makes the group's scores differ)")
            raise ConfigError(f"rollout.dynamic_sampling drops groups whose rewards are all equal, which carry no "
                              f"signal only under {', '.join(DYNAMIC_SAMPLING_ALGOS)} without a KL in the reward; "
                              f"with {why} it would drop real training signal")
        if a.name == "pure" and rw.process is None and d.source == "task":
            rw.process = "task"  # the built-in task brings its own step scores
        if a.name == "pure" and rw.process is None:
            raise ConfigError("algo.name pure needs step scores: set reward.process ('task' for the built-in task, "
                              "a PRM folder, or 'module:function')")
        for key in ("epochs", "mini_batches", "grad_accum"):
            _at_least(f"algo.{key}", getattr(a, key), 1)
        if a.micro_batch_tokens is not None:
            _at_least("algo.micro_batch_tokens", a.micro_batch_tokens, 1)
            if a.grad_accum != 1:
                raise ConfigError(f"algo.grad_accum ({a.grad_accum}) and algo.micro_batch_tokens "
                                  f"({a.micro_batch_tokens}) both size the micro-batches: set one")
        _in_unit("algo.clip_low", a.clip_low, closed=False)
        _positive("algo.clip_high", a.clip_high)
        if a.dual_clip is not None and a.dual_clip <= 1:
            raise ConfigError(f"algo.dual_clip must be > 1 (or null), got {a.dual_clip}")
        if a.mini_batches > r.group_size or r.group_size % a.mini_batches:
            raise ConfigError(f"algo.mini_batches ({a.mini_batches}) must divide rollout.group_size "
                              f"({r.group_size}): each mini-batch takes an equal share of every group (unequal "
                              "shares would weigh the responses of the smaller ones more)")
        _at_least("algo.kl_coef", a.kl_coef, 0)
        if a.kl_coef > 0 and a.kl_in == "reward" and a.name in ("pure", "rover"):
            raise ConfigError(f"algo.kl_in 'reward' works with grpo, dr_grpo, rloo, riskpo and gae; for {a.name} "
                              "put the KL in the loss")
        if a.kl_coef > 0 and m.reference is None:
            raise ConfigError("algo.kl_coef > 0 needs model.reference ('initial' or a folder)")
        _at_least("algo.entropy_coef", a.entropy_coef, 0)
        _positive("algo.eps", a.eps)
        _in_unit("algo.gamma", a.gamma)
        _in_unit("algo.lam", a.lam)
        _at_least("algo.value_coef", a.value_coef, 0)
        if a.value_clip is not None:
            _positive("algo.value_clip", a.value_clip)
        _positive("algo.pure_temperature", a.pure_temperature)
        _at_least("algo.pure_verifiable_coef", a.pure_verifiable_coef, 0)
        _at_least("algo.riskpo_bundle_size", a.riskpo_bundle_size, 1)
        if not 0 < a.riskpo_alpha < a.riskpo_beta < 1:
            raise ConfigError(f"algo.riskpo_alpha and riskpo_beta must satisfy 0 < alpha < beta < 1, "
                              f"got {a.riskpo_alpha}, {a.riskpo_beta}")
        _at_least("algo.riskpo_omega", a.riskpo_omega, 0)
        _positive("algo.rover_rho", a.rover_rho)
        _at_least("algo.rover_kappa", a.rover_kappa, 0)  # (a negative weight would push the target away from the look-ahead)
        _positive("optim.lr", o.lr)
        _at_least("optim.weight_decay", o.weight_decay, 0)
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {o.betas}")
        _at_least("optim.warmup_steps", o.warmup_steps, 0)
        _in_unit("optim.min_lr_ratio", o.min_lr_ratio)
        if o.max_grad_norm is not None:
            _positive("optim.max_grad_norm", o.max_grad_norm)
        _at_least("run.steps", run.steps, 1)
        _at_least("run.seed", run.seed, 0)
        if run.seed >= 2**32:  # numpy's seed range
            raise ConfigError(f"run.seed must be < 2**32, got {run.seed}")
        _at_least("run.checkpoint_every", run.checkpoint_every, 0)
        _at_least("run.keep_checkpoints", run.keep_checkpoints, 1)
        if not run.output_dir.strip():
            # Path("") is the working directory, whose checkpoints/ and final/ --overwrite would remove
            raise ConfigError("run.output_dir must name a folder, got an empty string")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", run.device):
            raise ConfigError(f"run.device must be auto, cpu, cuda or cuda:N, got {run.device!r}")
        if run.device.startswith("cuda"):
            import torch

            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            index = int(run.device.partition(":")[2] or 0)
            if index >= count:
                raise ConfigError(f"run.device {run.device!r}: this machine has "
                                  f"{f'{count} CUDA device(s)' if count else 'no CUDA'}")


def _read_rules(c: TrainConfig):
    """(keys, whether this run reads them, where they are read) for the keys that some runs
    do not read (the others are read by every run), from fastrl.trainer.train and
    fastrl.algos.credit. A key goes by the first rule naming it that it fails."""
    m, d, rw, a, o, run = c.model, c.data, c.reward, c.algo, c.optim, c.run
    name = f"(this run: {a.name})"
    return [
        (("algo.clip_low", "algo.clip_high", "algo.dual_clip"), a.name != "rover",
         "by the PPO loss, which algo.name rover replaces with its own (this run: rover)"),
        (("algo.aggregation",), a.name != "rover" or a.kl_coef > 0 or a.entropy_coef > 0,
         "by the PPO loss and the KL and entropy terms; rover has its own loss, and this run has neither term "
         "(algo.kl_coef and algo.entropy_coef 0)"),
        (("algo.kl_in",), a.kl_coef > 0, "when algo.kl_coef > 0 (this run: 0)"),
        (("algo.gamma", "algo.lam", "algo.value_coef", "algo.value_clip"), a.name == "gae",
         f"by algo.name gae, the only one with a value head {name}"),
        (tuple(f"algo.{f.name}" for f in dataclasses.fields(AlgoConfig) if f.name.startswith("pure_")),
         a.name == "pure", f"by algo.name pure {name}"),
        (("algo.pure_temperature",), a.pure_min_form == "soft",
         f"with algo.pure_min_form soft (this run: {a.pure_min_form})"),
        (tuple(f"algo.{f.name}" for f in dataclasses.fields(AlgoConfig) if f.name.startswith("riskpo_")),
         a.name == "riskpo", f"by algo.name riskpo {name}"),
        (tuple(f"algo.{f.name}" for f in dataclasses.fields(AlgoConfig) if f.name.startswith("rover_")),
         a.name == "rover", f"by algo.name rover {name}"),
        (("algo.eps",), a.name == "grpo" or (a.name == "rover" and not a.rover_centred),
         "by algo.name grpo and rover without algo.rover_centred, to guard the group std "
         f"{'(this run: rover, centred)' if a.name == 'rover' else name}"),
        (("optim.min_lr_ratio",), o.schedule == "cosine", f"with optim.schedule cosine (this run: {o.schedule})"),
        (("reward.process",), a.name == "pure", f"by algo.name pure, for its step scores {name}"),
        (("reward.correct_threshold",), rw.kind not in CLASSIFICATION_KINDS,
         f"for reward.kind other than {' and '.join(CLASSIFICATION_KINDS)}, whose accuracy is the gold label "
         f"(this run: {rw.kind})"),
        (("model.tiny_hidden_size", "model.tiny_layers"), m.path is None,
         "by the built-in tiny model, when model.path is unset (this run loads model.path)"),
        (("model.lora_alpha", "model.lora_dropout", "model.lora_target_modules"), m.lora_rank > 0,
         "when model.lora_rank > 0 (this run: 0, every weight trained)"),
        (("model.autocast_bf16",), m.dtype == "float32" and run.device != "cpu",
         "for float32 weights on a GPU (this run: "
         f"{f'model.dtype {m.dtype}' if m.dtype != 'float32' else 'run.device cpu'})"),
        (("data.operands",), "task" in (d.source, c.eval.source),
         f"by the built-in task, data.source or eval.source task (this run: data.source {d.source}, eval.source "
         f"{c.eval.source})"),
        (("data.prompt_key",), d.source != "task" or c.eval.source not in (None, "task"),
         "for a file or datasets folder (this run: data.source task, whose prompts are drawn per step)"),
        (("data.shuffle",), d.source != "task",
         "for a file or datasets folder (this run: data.source task, whose prompts are drawn per step)"),
        (("data.answer_key",), rw.kind in ("math", *CLASSIFICATION_KINDS),
         f"by reward.kind math, {' and '.join(CLASSIFICATION_KINDS)} (this run: {rw.kind})"),
        (("data.labels_key",), rw.kind in CLASSIFICATION_KINDS,
         f"by reward.kind {' and '.join(CLASSIFICATION_KINDS)} (this run: {rw.kind})"),
        (("run.wandb_project",), run.wandb, "when run.wandb is true (this run: false)"),
        (tuple(f"eval.{f.name}" for f in dataclasses.fields(EvalConfig) if f.name != "source"),
         c.eval.source is not None, "when eval.source is set (this run evaluates nothing)"),
        (("eval.top_k", "eval.top_p"), c.eval.temperature > 0, "when eval.temperature > 0 (this run: greedy)"),
    ]


def user_function(spec: str, key: str):
    """The function named by a ``module:function`` config value (ConfigError naming key if
    it does not import)."""
    module, _, name = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:  # a module beside the config, as `python -m` finds it
        sys.path.append(os.getcwd())
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"{key}: cannot load {spec!r} ({e})") from None
    if not callable(fn):
        raise ConfigError(f"{key}: {spec!r} is not callable")
    return fn


def _check_source(section: str, source: str, split: Optional[str]):
    if source != "task":
        if not Path(source).exists():
            raise ConfigError(f"{section}.source: {source!r} does not exist (use 'task', a .jsonl file or a "
                              "datasets folder)")
        if Path(source).is_file() and not source.endswith(".jsonl"):
            raise ConfigError(f"{section}.source: a file must be .jsonl, got {source!r}")
    if split is not None and (source == "task" or Path(source).is_file()):
        raise ConfigError(f"{section}.split selects a split of a DatasetDict folder; {section}.source is {source!r}")


def _check_sampling(section: str, temperature: float, top_k: Optional[int], top_p: Optional[float], dtype: str):
    _positive(f"{section}.temperature", temperature)
    # the sampler scales by log2(e) / temperature in float32 (float64 for a float64 model): a normal number
    tiny, huge = ((sys.float_info.min, sys.float_info.max) if dtype == "float64"
                  else (2.0**-126, 3.4028234663852886e38))  # float32's smallest normal and largest
    if not tiny <= math.log2(math.e) / temperature < huge:
        raise ConfigError(f"{section}.temperature must be in [{math.log2(math.e) / huge:.4g}, "
                          f"{math.log2(math.e) / tiny:.4g}] for a {dtype} model, got {temperature}")
    if top_k is not None:
        _at_least(f"{section}.top_k", top_k, 1)
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"{section}.top_p must be in (0, 1], got {top_p}")


def _at_least(key, value, low):
    if value < low:
        raise ConfigError(f"{key} must be >= {low}, got {value}")


def _positive(key, value):
    if not value > 0:
        raise ConfigError(f"{key} must be > 0, got {value}")


def _in_unit(key, value, closed=True):
    if not (0 <= value <= 1 if closed else 0 <= value < 1):
        raise ConfigError(f"{key} must be in [0, 1{']' if closed else ')'}, got {value}")


def _merge_overrides(values: dict, overrides) -> dict:
    import copy

    import yaml

    values = copy.deepcopy(values)
    for item in overrides:
        if isinstance(item, tuple):  # (key, value): the value as given (a CLI flag's folder name is not YAML)
            key, value = item
        else:
            key, sep, raw = item.partition("=")
            if not sep or "." not in key:
                raise ConfigError(f"an override must read section.key=value, got {item!r}")
            try:
                value = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError as e:
                raise ConfigError(f"--set {item!r}: the value is not valid YAML: {_yaml_error(e)}") from None
        section, name = key.split(".", 1)
        if values.get(section) is None:  # absent, or a YAML section whose keys are all commented out
            values[section] = {}
        target = values[section]
        if not isinstance(target, dict):
            raise ConfigError(f"{section} must be a mapping, got {type(target).__name__}")
        target[name] = value
    return values


def _build(cls, values, prefix):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields, key=str)  # (YAML keys may be numbers)
    if unknown:
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}'; the keys of {prefix.rstrip('.') or 'the config'} "
                          f"are: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value if value is not None else {}, key + ".")
        else:
            kwargs[name] = _coerce(key, hint, value)
    return cls(**kwargs)


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _finite(number) -> bool:
    try:
        return math.isfinite(float(number))
    except OverflowError:  # an int beyond float's range (YAML reads 1 and 400 zeros as one)
        return False


def _coerce(key, hint, value):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, inner, value)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, tuple):  # (a config built in Python: betas=(0.9, 0.99))
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", args[0], v) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:  # numbers.Integral: numpy's integers too
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-6 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not _finite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r:.60}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"no rule for {hint} ({key})")  # a config field of a type this module does not handle


def describe() -> str:
    """Every key with its default and documentation, for ``fastrl train --help-config``."""
    import ast
    import inspect

    lines = []
    tree = ast.parse(inspect.getsource(inspect.getmodule(TrainConfig)))
    docs = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            body = node.body
            for i, stmt in enumerate(body):
                if isinstance(stmt, ast.AnnAssign) and i + 1 < len(body) and isinstance(body[i + 1], ast.Expr) \
                        and isinstance(getattr(body[i + 1], "value", None), ast.Constant):
                    docs[(node.name, stmt.target.id)] = " ".join(body[i + 1].value.value.split())
    for section in dataclasses.fields(TrainConfig):
        cls = typing.get_type_hints(TrainConfig)[section.name]
        lines.append(f"{section.name}:")
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            doc = docs.get((cls.__name__, f.name), "")
            hint = typing.get_type_hints(cls)[f.name]
            if typing.get_origin(hint) is typing.Literal:
                doc += f" One of: {', '.join(map(str, typing.get_args(hint)))}."
            # as YAML reads it back (JSON is YAML: null, true, "float32"; a Python repr's None is the string "None")
            lines.append(f"  {f.name}: {json.dumps(default)}" + (f"  # {doc}" if doc else ""))
    return "\n".join(lines)
