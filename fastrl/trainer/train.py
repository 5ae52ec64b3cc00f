"""``fastrl train``: rollout -> reward -> credit -> loss -> update, for Hugging Face causal
LMs, on one process or many (torchrun: DDP or FSDP2).

Each step takes ``data.prompts_per_step`` prompts (shared out over the processes),
samples ``rollout.group_size`` responses per prompt with ``fastrl.trainer.rollout``,
scores them, computes the old policy's log-probabilities with a training-side forward
(``linear_logprobs``: no [tokens x vocabulary] logits), assigns credit by name
(``fastrl.algos.credit``) and runs ``algo.epochs`` PPO epochs over ``algo.mini_batches``
mini-batches. Every sample's seed is a function of (run.seed, step, prompt, sample):
results do not depend on the process count, and a resumed run replays the same data.

Losses are normalised by counts over all processes (tokens or sequences of the
mini-batch), so a run on N processes computes the gradient of the single-process loss.
"""
from __future__ import annotations

import copy
import dataclasses
import errno
import hashlib
import importlib.util
import json
import math
import os
import random
import shutil
import signal
import threading
import uuid
import time
import warnings
from collections.abc import Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fastrl import memory, stopping
from fastrl.algos import credit as credit_lib
from fastrl.algos.ppo import aggregate, aggregation_units, kl_k3, policy_loss, value_loss
from fastrl.algos.pure import step_ends
from fastrl.algos.rover import rover_targets
from fastrl.integrations.hf import response_logprobs
from fastrl.metrics import pass_at_k, reported_ks
from fastrl.ops.logprobs import TokenStats
from fastrl.plotting import pyplot
from fastrl.trainer import checkpoint, distributed, scoring
from fastrl.trainer import task as task_lib
from fastrl.trainer.config import RESUME_SAFE, ConfigError, TrainConfig
from fastrl.trainer.data import Prompts, prompt_text
from fastrl.trainer.rollout import position_limit, rollout

# locked by the main process of the run training in run.output_dir
LOCK = ".lock"


def _lock(folder: Path):
    """The open LOCK file of folder, locked for this process until closed; None where another
    process holds it (a POSIX record lock, not flock(): the reward workers forked meanwhile
    would inherit a flock() and hold it past the run; it does not exclude this process). On
    a file system without locks, a warning and the file unlocked."""
    import fcntl

    handle = open(folder / LOCK, "a")
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):  # held
            handle.close()
            return None
        warnings.warn(f"run.output_dir {str(folder)!r}: cannot lock {LOCK} ({e.strerror}); a second run into "
                      "this folder would not be stopped")
    return handle


# what a run writes in run.output_dir (--overwrite removes them)
RUN_FILES = ("checkpoints", "final", "metrics.jsonl", "metrics.png", "config.json", "tensorboard", "wandb",
             "wandb_id")


class Policy(nn.Module):
    """The trained module: a causal LM (possibly a PEFT model) and, for gae, a value head on
    its last hidden states. Its forward gives the response tokens' statistics through
    ``response_logprobs``, so DDP and FSDP2 wrap this module and see every forward."""

    def __init__(self, model: nn.Module, value_head: Optional[nn.Linear] = None):
        super().__init__()
        self.model = model
        self.value_head = value_head

    def causal_lm(self) -> nn.Module:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(self, input_ids, attention_mask, response_mask, temperature, entropy=False, mean_logp=False):
        stats, hidden = response_logprobs(self.causal_lm(), input_ids, attention_mask, response_mask, temperature,
                                          entropy, mean_logp, return_hidden=True)
        if self.value_head is None:
            return stats, None
        # V(s) at token t is read from the state that predicts t
        values = self.value_head(hidden[:, :-1].to(self.value_head.weight.dtype)).squeeze(-1)
        values = values.to(stats.logprob.dtype)  # float32, float64 for a float64 model
        return stats, torch.where(response_mask != 0, F.pad(values, (1, 0)), 0)


@dataclass
class Batch:
    """One step's rollout on this process, scored and credited: [B, L] tensors in the layout
    of ``Rollout.sequences()`` ([B] for scores, correct, lengths, keep)."""

    step: int
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    loss_mask: torch.Tensor  # response_mask without the groups dynamic sampling dropped
    old: TokenStats
    old_values: Optional[torch.Tensor]
    ref_logp: Optional[torch.Tensor]
    credit: credit_lib.Credit
    scores: torch.Tensor
    correct: torch.Tensor
    lengths: torch.Tensor
    keep: torch.Tensor
    kl_old: Optional[torch.Tensor]
    collect_time: float
    rows: list[dict]  # the data record each response answers
    texts: list[str]  # the responses, special tokens dropped
    ended: torch.Tensor  # [B] bool: the response ended with EOS (else at rollout.max_new_tokens)


@dataclass
class TrainResult:
    metrics: list[dict]
    output_dir: Path
    log: Path
    plot: Optional[Path]
    final_model: Path

    @property
    def steps(self) -> list[dict]:
        """The training steps' metrics (those of the log but the evaluation before training)."""
        return [m for m in self.metrics if m["step"] > 0]

    def reward_gain(self) -> tuple[float, float]:
        """Mean reward over the first and the last fifth of the run's steps."""
        rewards = [m["reward_mean"] for m in self.steps]
        fifth = max(1, len(rewards) // 5)
        return float(np.mean(rewards[:fifth])), float(np.mean(rewards[-fifth:]))


def sample_seed(run_seed: int, step: int, prompt: int, sample: int) -> int:
    digest = hashlib.blake2b(f"{run_seed}:{step}:{prompt}:{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**62 - 1)


class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = False, overwrite: bool = False, task=None,
                 on_step: Optional[Callable[["Trainer", dict, "Batch"], dict]] = None, evaluate_only: bool = False):
        """task: the task serving data.source / reward.kind / reward.process "task" (default:
        the built-in ``MaxTask``); on_step(trainer, metrics, batch) -> more metrics for the
        log, called after each step on every process (experiments add their own);
        evaluate_only: a trainer that will write nothing (``evaluate``): run.output_dir may
        hold a run."""
        config.validate()  # a config built or edited in Python has not been checked yet
        self.cfg = config
        self.task = task if task is not None else task_lib.MaxTask(config.data.operands)
        self.on_step = on_step
        self.proc, self.device = distributed.setup(config.run.device)
        self.out = Path(config.run.output_dir)
        self.log_path = self.out / "metrics.jsonl"
        self.ckpt_dir = self.out / "checkpoints"
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"run.output_dir {str(self.out)!r} is a file, not a folder")
        if place := checkpoint.unwritable(self.out):
            raise ConfigError(f"run.output_dir {str(self.out)!r}: cannot create or write in {str(place)!r}")
        self._check_layout()
        if resume and overwrite:
            raise ConfigError("--resume continues the run in run.output_dir and --overwrite starts it again: pass one")
        self.resume, self.overwrite = resume, overwrite
        if not evaluate_only:
            self._check_free()
        self.config_changes = self._resume_changes() if resume else []
        random.seed(config.run.seed)
        np.random.seed(config.run.seed)
        torch.manual_seed(config.run.seed)  # equal on every process: seeds never depend on the rank

        # data and rewards first: their errors come before any model is loaded
        self.prompts = Prompts(config.data, config.run.seed, self.task)
        scoring.check_records(config, self.prompts)
        self.data_fingerprint = self.prompts.fingerprint()
        if resume:
            self._check_same_data()
        self.eval_data = self.eval_rows = None
        if config.eval.source is not None:
            self.eval_data = dataclasses.replace(config.data, source=config.eval.source, split=config.eval.split)
            held_out = Prompts(self.eval_data, config.run.seed, self.task, "eval")
            self.eval_rows = held_out.first(config.eval.prompts)
            # the records evaluated, a task's problems too (data.answer_key names their answer)
            scoring.check_records(config, held_out, self.eval_rows)
            if len(self.eval_rows) < (config.eval.prompts or 0) and self.proc.main:
                warnings.warn(f"eval.prompts is {config.eval.prompts}, but eval.source holds {len(self.eval_rows)} "
                              "records: the evaluation reads all of them")
        self.rewards = scoring.outcome_rewards(config, self.task)
        self.correct = scoring.outcome_correct(config)
        self.tokenizer, model = self._load_model()
        self.max_positions = position_limit(model)
        if self.max_positions is not None and config.rollout.max_new_tokens >= self.max_positions:
            raise ConfigError(f"rollout.max_new_tokens ({config.rollout.max_new_tokens}) leaves no room for a prompt "
                              f"in the model's {self.max_positions} positions")
        self.reference = None
        if config.model.reference == "initial":
            self.reference = copy.deepcopy(model)
        elif config.model.reference is not None:
            self.reference = self._from_pretrained("model.reference", config.model.reference)
            scoring.check_same_vocabulary("model.reference", config.model.reference, self.reference, self.tokenizer)
        if self.reference is not None:
            self.reference = self.reference.to(self.device).eval()
            self.reference.requires_grad_(False)
        if config.model.lora_rank:
            model = self._lora(model)
        value_head = None
        if config.algo.name == "gae":
            # the model's dtype: FSDP2 shards one dtype per parameter group
            value_head = nn.Linear(model.config.get_text_config().hidden_size, 1,
                                   dtype=next(model.parameters()).dtype)
            nn.init.zeros_(value_head.weight)
            nn.init.zeros_(value_head.bias)
        self.policy = Policy(model, value_head).to(self.device)
        self.module = self._wrap(self.policy)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        o = config.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        total = config.run.steps * config.algo.epochs * config.algo.mini_batches
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda i: _lr_factor(i, total, o))
        self.process = (scoring.ProcessReward(config, self.tokenizer, self.device, self.task)
                        if config.algo.name == "pure" else None)
        self.token_texts = ([self.tokenizer.decode([i], skip_special_tokens=True) for i in range(len(self.tokenizer))]
                            if config.algo.name == "pure" else None)
        eos = self.tokenizer.eos_token_id
        extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.eos = sorted({eos, *(extra if isinstance(extra, list) else [extra] if extra is not None else [])} - {None})
        if not self.eos:
            raise ConfigError("the tokenizer has no eos_token_id: responses could never end")
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos[0]
        self.eval_prompts = None
        if self.eval_rows is not None:
            self.eval_prompts = [self._encode(prompt_text(self.eval_data, r)) for r in self.eval_rows]
            longest = max(map(len, self.eval_prompts))
            if self.max_positions is not None and longest + config.rollout.max_new_tokens > self.max_positions:
                raise ConfigError(f"eval.source has a prompt of {longest} tokens, and with rollout.max_new_tokens "
                                  f"({config.rollout.max_new_tokens}) its sequences would exceed the model's "
                                  f"{self.max_positions} positions: lower data.max_prompt_tokens (prompts are cut "
                                  "from the left to it) or rollout.max_new_tokens")
        self.step = 0
        self._stop, self._stop_signal = False, signal.SIGINT

    # ---- setup ---------------------------------------------------------------------

    def _check_layout(self):
        cfg, world = self.cfg, self.proc.world
        if cfg.data.prompts_per_step % world:
            raise ConfigError(f"data.prompts_per_step ({cfg.data.prompts_per_step}) must be a multiple of the "
                              f"number of processes ({world})")
        a, G = cfg.algo, cfg.rollout.group_size
        smallest = cfg.data.prompts_per_step // world * (G // a.mini_batches)
        if smallest < a.grad_accum:
            raise ConfigError(f"each process's smallest mini-batch has {smallest} responses, fewer than "
                              f"algo.grad_accum ({a.grad_accum}) micro-batches")

    def _check_free(self):
        """A ConfigError where run.output_dir holds what this run would overwrite: another
        program's config.json (a model folder), or unless --resume or --overwrite, a run."""
        config_file = self.out / "config.json"
        if config_file.is_file():
            try:
                saved = json.loads(config_file.read_text())
                ours = not isinstance(saved, dict) or {"run", "algo"} <= set(saved)
            except ValueError:  # not JSON: a run's own, cut short (written by no model)
                ours = True
            if not ours:
                raise ConfigError(f"run.output_dir {str(self.out)!r} holds a config.json that is not a fastrl "
                                  "run's (a model's?), which the run would replace: choose another run.output_dir")
        if self.resume or self.overwrite:
            return
        # a run that stopped before its first checkpoint still holds a log; one whose checkpoints and log
        # were cleared, its final policy
        final = self.out / "final"
        held = checkpoint.latest(self.ckpt_dir) or next(
            (p for p in (self.log_path, final) if p.is_file() and p.stat().st_size or p.is_dir() and any(p.iterdir())),
            None)
        if held:
            raise ConfigError(f"{self.out} already holds a run ({held}): pass --resume to continue it, --overwrite "
                              "to start again, or another run.output_dir")

    def _check_same_data(self):
        path = checkpoint.latest(self.ckpt_dir)
        saved = checkpoint.saved_data_fingerprint(path) if path is not None else None
        if saved is not None and saved != self.data_fingerprint:
            raise ConfigError(f"--resume: the records of data.source {self.cfg.data.source} are not those the "
                              f"checkpoint {path} was trained on (changed under the same name): restore them, or "
                              "start a new run (--overwrite or another run.output_dir)")

    def _resume_changes(self) -> list[str]:
        """The config's changes since the checkpoint --resume continues, read before anything
        is loaded or written: a ConfigError unless every changed key is in RESUME_SAFE."""
        path = checkpoint.latest(self.ckpt_dir)
        if path is None:
            return []
        saved_step = int(path.name.rpartition("_")[2])
        if saved_step > self.cfg.run.steps:  # (the run would end at once, reporting success)
            raise ConfigError(f"--resume: the checkpoint {path} is at step {saved_step}, past run.steps "
                              f"{self.cfg.run.steps}: nothing is left to train; set run.steps above {saved_step} "
                              "to go on")
        # a key added to fastrl since the checkpoint was written did what its default does
        changed = _config_changes(_with_defaults(checkpoint.saved_config(path), TrainConfig().to_dict()),
                                  self.cfg.to_dict())
        unsafe = [c for c in changed if c.partition(" ")[0] not in RESUME_SAFE]
        if unsafe:
            raise ConfigError(f"--resume: the config differs from the checkpoint's ({path}) in {'; '.join(unsafe)}. "
                              f"Only {', '.join(RESUME_SAFE)} may change on resume: restore the others, or start "
                              "a new run (--overwrite or another run.output_dir)")
        return changed

    def _attention(self) -> str:
        wanted = self.cfg.model.attn_implementation
        flash = importlib.util.find_spec("flash_attn") is not None and self.device.type == "cuda"
        if wanted == "flash_attention_2" and not flash:  # (transformers' own error is a traceback)
            raise ConfigError("model.attn_implementation flash_attention_2 needs the flash_attn package and a "
                              f"CUDA device ({'flash_attn is not installed' if self.device.type == 'cuda' else f'run.device is {self.device}'}); "
                              "'auto' picks it where it works, else sdpa")
        if wanted != "auto":
            return wanted
        return "flash_attention_2" if flash else "sdpa"

    def _from_pretrained(self, key, path):
        from transformers import AutoModelForCausalLM

        attention = self._attention()
        return scoring.load_pretrained(key, path, lambda p: AutoModelForCausalLM.from_pretrained(
            p, dtype=getattr(torch, self.cfg.model.dtype), attn_implementation=attention))

    def _load_model(self):
        m = self.cfg.model
        if m.path is None:
            tokenizer = self.task.tokenizer()
        else:
            from transformers import AutoTokenizer

            tokenizer = scoring.load_pretrained("model.tokenizer" if m.tokenizer else "model.path", m.tokenizer or m.path,
                                                AutoTokenizer.from_pretrained,
                                                "" if m.tokenizer else "; model.tokenizer may name a folder with its tokenizer")
        if self.cfg.data.chat_template and not getattr(tokenizer, "chat_template", None):  # before any weights load
            raise ConfigError("data.chat_template: the tokenizer has no chat template (set model.tokenizer to one "
                              "that has, or data.chat_template false)")
        if m.path is None:
            model = task_lib.tiny_model(len(tokenizer), m.tiny_hidden_size, m.tiny_layers, self.cfg.run.seed)
            model.set_attn_implementation(self._attention())
            model = model.to(getattr(torch, m.dtype))
        else:
            model = self._from_pretrained("model.path", m.path)
        if m.gradient_checkpointing:  # (renamed activation checkpointing in transformers 5.2x)
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        return tokenizer, model

    def _lora(self, model):
        try:
            import peft
        except ImportError:
            raise ConfigError("model.lora_rank > 0 needs peft (pip install peft)") from None
        m = self.cfg.model
        names = [name for name, _ in model.named_modules()]

        def targets(name, target):  # peft's rule: the whole name or its last dotted parts
            return name == target or name.endswith("." + target)

        # (peft's own error is a traceback naming no config key)
        if missing := [t for t in m.lora_target_modules if not any(targets(n, t) for n in names)]:
            suffixes = sorted({n.rsplit(".", 1)[-1] for n, module in model.named_modules() if isinstance(module, nn.Linear)})
            raise ConfigError(f"model.lora_target_modules: no module of the model is named {', '.join(missing)}; its "
                              f"linear layers are named {', '.join(suffixes)}")
        head = next((n for n, module in model.named_modules() if module is model.get_output_embeddings()), None)
        if head is not None and (hit := [t for t in m.lora_target_modules if targets(head, t)]):
            # the log-prob ops read the head's weight as one matrix: an adapter on it would be skipped
            raise ConfigError(f"model.lora_target_modules: {', '.join(hit)} is the output head ({head}), which "
                              "LoRA may not adapt here (fastrl's log-prob ops read its weight directly)")
        lora = peft.LoraConfig(r=m.lora_rank, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                               target_modules=m.lora_target_modules, task_type="CAUSAL_LM")
        return peft.get_peft_model(model, lora)

    def _wrap(self, policy):
        if self.proc.world == 1:
            return policy
        if self.cfg.run.distributed == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            return DistributedDataParallel(policy, device_ids=[self.device] if self.device.type == "cuda" else None)
        from torch.distributed.fsdp import fully_shard

        # each transformer block its own group (gathered in turn during the body's forward and
        # backward); the rest (embeddings, final norm, head, value head) in the root group,
        # gathered at the Policy's forward, since response_logprobs reads the head's weight
        # outside the head's own forward
        blocks = set(getattr(policy.causal_lm(), "_no_split_modules", None) or ())
        for module in policy.causal_lm().modules():
            if type(module).__name__ in blocks:
                fully_shard(module)
        root = fully_shard(policy)
        # FSDP2 sets itself up at the root's first forward; generation calls the blocks
        # before any, so run one (two tokens, nothing to score) first
        with torch.no_grad():
            ids = torch.zeros(1, 2, dtype=torch.long, device=self.device)
            root(ids, torch.ones_like(ids), torch.zeros_like(ids), 1.0)
        root.reshard()  # the root keeps its gathered weights after a forward: the optimizer takes the shards
        return root

    # ---- one step ------------------------------------------------------------------

    @contextmanager
    def _full_weights(self):
        """Generation runs the model outside the Policy's forward: under FSDP2 gather all its
        parameters first, on every process together, and keep them until it ends. Each block
        would otherwise gather its own at each of its forwards, a collective: a process whose
        rows all ended (or that has none) runs no more forwards, and the others waited on it
        for ever."""
        if not (self.proc.world > 1 and self.cfg.run.distributed == "fsdp2"):
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        sharded = [m for m in self.module.modules() if isinstance(m, FSDPModule)]
        blocks = [m for m in sharded if m is not self.module]
        try:  # (a failed gather too leaves every group sharded and resharding after its forward)
            for m in blocks:
                m.set_reshard_after_forward(False, recurse=False)
            for m in sharded:
                m.unshard()
            yield
        finally:
            for m in blocks:
                m.set_reshard_after_forward(True, recurse=False)  # (fully_shard's default for a non-root module)
            for m in sharded:
                m.reshard()

    def _agree(self, count: int) -> int:
        """The micro-batch count every process runs: the largest (under FSDP2 each forward
        gathers weights, a collective)."""
        return self.proc.max(count, self.device)

    def _autocast(self):
        m = self.cfg.model
        if self.device.type == "cuda" and m.autocast_bf16 and m.dtype == "float32":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _no_sync(self, skip: bool):
        if not skip or self.proc.world == 1:
            return nullcontext()
        if self.cfg.run.distributed == "ddp":
            return self.module.no_sync()

        @contextmanager
        def fsdp_no_sync():
            self.module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.module.set_requires_gradient_sync(True)
        return fsdp_no_sync()

    def _encode(self, prompt: str) -> list[int]:
        if self.cfg.data.chat_template:
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                     tokenize=True)
            # transformers 5 returns a BatchEncoding (a Mapping, not a dict), 4.x a list
            ids = ids["input_ids"] if isinstance(ids, Mapping) else ids
        else:
            ids = self.tokenizer.encode(prompt)
        return list(ids)[-self.cfg.data.max_prompt_tokens:]

    def collect(self, step: int) -> "Batch":
        """Rollout, rewards, the old policy's statistics and credit for training step ``step``."""
        cfg, proc, G = self.cfg, self.proc, self.cfg.rollout.group_size
        start = time.perf_counter()
        records = self.prompts.batch(step)
        n = len(records) // proc.world
        first = proc.rank * n
        mine = records[first:first + n]
        rows = [r for r in mine for _ in range(G)]
        prompts = [ids for ids in map(self._encode, (prompt_text(self.cfg.data, r) for r in mine)) for _ in range(G)]
        longest = max(map(len, prompts))
        if self.max_positions is not None and longest + cfg.rollout.max_new_tokens > self.max_positions:
            raise ConfigError(f"step {step + 1} has a prompt of {longest} tokens, and with rollout.max_new_tokens "
                              f"({cfg.rollout.max_new_tokens}) its sequences would exceed the model's "
                              f"{self.max_positions} positions: lower data.max_prompt_tokens (prompts are cut "
                              "from the left to it; it may change on --resume) or rollout.max_new_tokens (a new run)")
        group_ids = torch.arange(first, first + n, device=self.device).repeat_interleave(G)
        seeds = torch.tensor([sample_seed(cfg.run.seed, step, first + i, j) for i in range(n) for j in range(G)])

        r = cfg.rollout
        # no dropout until the update: the old policy's statistics (and the reference's) are
        # those of the policy that sampled, so the first ratio is exactly 1 and the KL 0
        self.module.eval()
        with self._full_weights(), self._autocast():
            ro = self._rollout(prompts, seeds, r.temperature, r.top_k, r.top_p, r.max_rows)
        input_ids, attention_mask, response_mask = ro.sequences()
        lengths, texts, scores, correct = self._scored(ro, rows)

        T = cfg.rollout.temperature
        with torch.no_grad(), self._autocast():
            old, old_values = scoring.in_micro_batches(
                lambda rows, cols: self.module(input_ids[rows, cols], attention_mask[rows, cols],
                                               response_mask[rows, cols], T, entropy=True,
                                               mean_logp=cfg.algo.name == "rover"), attention_mask, cfg, self._agree)
            ref_logp = None
            if self.reference is not None:
                ref_logp = scoring.in_micro_batches(lambda rows, cols: response_logprobs(
                    self.reference, input_ids[rows, cols], attention_mask[rows, cols], response_mask[rows, cols],
                    T).logprob, attention_mask, cfg)
        self.module.train()

        keep = torch.ones_like(scores, dtype=torch.bool)
        if cfg.rollout.dynamic_sampling:
            lo = scores.new_zeros(len(records)).scatter_reduce(0, group_ids, scores, "amin", include_self=False)
            hi = scores.new_zeros(len(records)).scatter_reduce(0, group_ids, scores, "amax", include_self=False)
            keep = (hi > lo)[group_ids]
        loss_mask = response_mask * keep[:, None]

        kl_old = kl_k3(old.logprob, ref_logp, loss_mask) if ref_logp is not None else None
        credit_scores, token_rewards = scores, None
        if kl_old is not None and cfg.algo.kl_in == "reward":
            if cfg.algo.name == "gae":
                token_rewards = -cfg.algo.kl_coef * kl_old
            else:
                credit_scores = scores - cfg.algo.kl_coef * kl_old.sum(-1)
        inputs = credit_lib.CreditInputs(credit_scores, group_ids, loss_mask, token_rewards, old_values)
        if self.process is not None:
            P = ro.prompt_ids.shape[1]
            steps = step_ends(ro.response_ids, ro.response_mask, self.token_texts)
            texts_by_step = scoring.step_texts(self.tokenizer, ro.response_ids, steps, ro.response_mask != 0)
            step_scores = self.process.scores(rows, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask,
                                              steps, texts_by_step)
            inputs.step_scores, inputs.step_mask = F.pad(step_scores, (P, 0)), F.pad(steps, (P, 0))
            inputs.solved = correct
        credit = credit_lib.assign(cfg.algo.name, inputs, cfg.algo, proc)
        return Batch(step, input_ids, attention_mask, response_mask, loss_mask, old, old_values, ref_logp, credit,
                     scores, correct, lengths, keep, kl_old, time.perf_counter() - start, rows, texts, ro.ended)

    def _rollout(self, prompts, seeds, temperature, top_k, top_p, max_rows, progress=False):
        return rollout(self.policy.causal_lm(), prompts, self.cfg.rollout.max_new_tokens, self.eos, self.pad,
                       temperature=temperature, top_k=top_k, top_p=top_p, seeds=seeds, progress=progress,
                       max_rows=max_rows)

    def _scored(self, ro, rows):
        """Each response's length, text (special tokens dropped), reward and correctness."""
        lengths = ro.response_mask.sum(1)
        texts = self.tokenizer.batch_decode([ids[:k] for ids, k in zip(ro.response_ids.tolist(), lengths.tolist())],
                                            skip_special_tokens=True)
        # float64 statistics for a float64 model (tests compare runs to 1e-9), else float32
        lm = self.policy.causal_lm()
        dtype = torch.float64 if next(lm.parameters()).dtype == torch.float64 else torch.float32
        rewards = self.rewards(rows, texts)
        scores = torch.tensor(rewards, device=self.device, dtype=dtype)
        correct = torch.tensor([float(self.correct(r, t, s)) for r, t, s in zip(rows, texts, rewards)],
                               device=self.device, dtype=dtype)
        return lengths, texts, scores, correct

    def evaluate(self) -> dict:
        """The policy on the held-out prompts of eval.source: eval_reward_mean, eval_accuracy
        (the mean correctness of eval.samples responses per prompt), eval_pass@k,
        eval_response_length, eval_time and eval_peak_memory_mb, over every process's share of
        the prompts. Each response's seed is a function of (run.seed, prompt, sample), the same
        at every evaluation, so two evaluations differ by the policy alone."""
        cfg, e, proc = self.cfg, self.cfg.eval, self.proc
        start = time.perf_counter()
        memory.reset_peak(self.device)
        count, n = len(self.eval_rows), e.samples
        share = -(-count // proc.world)
        mine = range(min(proc.rank * share, count), min((proc.rank + 1) * share, count))
        records = [i for i in mine for _ in range(n)]  # each prompt's index, once per sample
        prompts = [self.eval_prompts[i] for i in records]
        seeds = torch.tensor([sample_seed(cfg.run.seed, -1, i, j) for i in mine for j in range(n)], dtype=torch.int64)
        ks = reported_ks(n)[1:]  # (pass@1 is eval_accuracy)
        # greedy: the most likely token alone (top-k 1), at any temperature
        sampling = (e.temperature, e.top_k, e.top_p) if e.temperature > 0 else (1.0, 1, None)
        # at most a training step's rows at once: the memory a step's rollout is known to fit in
        at_once = cfg.rollout.max_rows or cfg.data.prompts_per_step // proc.world * cfg.rollout.group_size
        self.module.eval()
        # (a process without prompts still takes part in gathering the weights under FSDP2)
        with self._full_weights(), self._autocast():
            ro = self._rollout(prompts, seeds, *sampling, at_once,
                               progress=cfg.run.progress and proc.main) if prompts else None
        self.module.train()
        totals = [0.0] * (4 + len(ks))
        if prompts:
            rows = [self.eval_rows[i] for i in records]
            lengths, _, scores, correct = self._scored(ro, rows)
            solved = correct.view(-1, n).sum(1).round().long().cpu().numpy()
            totals = [len(rows), scores.double().sum().item(), correct.double().sum().item(),
                      lengths.double().sum().item(), *(float(pass_at_k(n, solved, k).sum()) for k in ks)]
        rows, reward, solved, length, *passed = proc.sum(torch.tensor(totals, dtype=torch.float64,
                                                                      device=self.device)).tolist()
        return {"eval_reward_mean": reward / rows, "eval_accuracy": solved / rows,
                **{f"eval_pass@{k}": p / count for k, p in zip(ks, passed)},
                "eval_response_length": length / rows, "eval_time": time.perf_counter() - start,
                "eval_peak_memory_mb": self._peak_memory_mb()}

    def _peak_memory_mb(self) -> float:
        """The most MiB any process held since memory.reset_peak (at the start of a step or an evaluation)."""
        return self.proc.max(memory.peak_bytes(self.device) / 2**20, self.device)

    def _evaluates(self, step: int) -> bool:
        """Whether the policy after ``step`` steps is evaluated: every eval.every steps and
        after the last."""
        every = self.cfg.eval.every
        return self.eval_rows is not None and (step == self.cfg.run.steps or every > 0 and step % every == 0)

    def run_step(self, step: int) -> dict:
        """One training step; returns its metrics (means over all processes)."""
        proc = self.proc
        start = time.perf_counter()
        memory.reset_peak(self.device)
        batch = self.collect(step)
        sums = self.update(batch)
        elapsed = time.perf_counter() - start

        valid = batch.loss_mask != 0
        response = batch.response_mask != 0
        # summed in float64: float32 sums round each process's part its own way, and N processes would log
        # other figures than one
        adv, scores = batch.credit.advantages[valid].double(), batch.scores.double()
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        stats = proc.sum(torch.stack([
            torch.tensor(float(len(scores)), dtype=torch.float64, device=self.device), scores.sum(),
            (scores ** 2).sum(), batch.correct.double().sum(), batch.lengths.double().sum(), batch.keep.double().sum(),
            valid.double().sum(), adv.sum(), (adv ** 2).sum(), batch.old.entropy[response].double().sum(),
            response.double().sum(), batch.kl_old.double().sum() if batch.kl_old is not None else zero,
            batch.attention_mask.double().sum(),
        ])).cpu()  # reduced on the device: nccl reduces no CPU tensors
        rows, s1, s2, acc, length, kept, tok, a1, a2, ent, resp_tok, kl, all_tokens = stats.tolist()
        mean, a_mean = s1 / rows, a1 / max(tok, 1)
        metrics = {
            "step": step + 1,
            "reward_mean": mean,
            "reward_std": math.sqrt(max(s2 / rows - mean ** 2, 0.0) * rows / max(rows - 1, 1)),
            "accuracy": acc / rows,
            "response_length": length / rows,
            "kept_fraction": kept / rows,
            "entropy": ent / max(resp_tok, 1),
            "advantage_mean": a_mean,
            "advantage_std": math.sqrt(max(a2 / max(tok, 1) - a_mean ** 2, 0.0)),
            **sums,
            "step_time": elapsed,
            "rollout_time": batch.collect_time,
            "tokens_per_s": all_tokens / elapsed,
            "peak_memory_mb": self._peak_memory_mb(),
        }
        if batch.kl_old is not None:
            metrics["kl"] = kl / max(tok, 1)
        if self.on_step is not None:
            metrics.update(self.on_step(self, metrics, batch))
        return metrics

    def update(self, batch: "Batch") -> dict:
        """algo.epochs passes of PPO (or ROVER) over the batch's mini-batches; returns the
        mean loss, gradient norm and clip fraction."""
        cfg, a, proc = self.cfg, self.cfg.algo, self.proc
        step, input_ids, attention_mask, loss_mask = batch.step, batch.input_ids, batch.attention_mask, batch.loss_mask
        old, old_values, ref_logp, credit = batch.old, batch.old_values, batch.ref_logp, batch.credit
        B = input_ids.shape[0]
        rover = a.name == "rover"
        valid = loss_mask != 0
        if rover:  # ROVER's A, constant along each row
            row_adv = (credit.advantages * valid).sum(-1) / valid.sum(-1).clamp_min(1)
        # loss, clipped tokens, tokens, gradient norm: summed on the device, read once at the end
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        updates, nonfinite, lr = 0, 0, self.optimizer.param_groups[0]["lr"]
        # dynamic sampling dropped every group on every process: no gradient, so no optimizer
        # or scheduler step either (Adam's momentum and weight decay would still move the weights)
        skipped = int(proc.sum(valid.sum())) == 0
        G = cfg.rollout.group_size
        first = proc.rank * (B // G)
        for epoch in range(0 if skipped else a.epochs):
            minis = [torch.arange(B)]
            if a.mini_batches > 1:
                # each mini-batch takes a share of every group, drawn per (step, epoch, prompt): the
                # same mini-batches whatever the process count
                chunks = [torch.tensor_split(i * G + torch.randperm(G, generator=torch.Generator().manual_seed(
                    sample_seed(cfg.run.seed, step, first + i, -1 - epoch))), a.mini_batches) for i in range(B // G)]
                minis = [torch.cat(parts) for parts in zip(*chunks)]
            for mini in minis:
                mini = mini.to(self.device)
                units = proc.sum(aggregation_units(loss_mask[mini], a.aggregation).double())
                token_units = proc.sum(valid[mini].sum().double())
                micros = scoring.micro_batches(mini, attention_mask, a.grad_accum, a.micro_batch_tokens, self._agree)
                # this update's loss, clipped tokens and tokens: counted where the update is made
                update = torch.zeros(3, dtype=torch.float64, device=self.device)
                for i, (rows, cols) in enumerate(micros):
                    idx = (rows, cols)  # the micro-batch's rows, and the columns they use
                    with self._no_sync(i < len(micros) - 1), self._autocast():
                        mask = loss_mask[idx]
                        stats, values = self.module(input_ids[idx], attention_mask[idx], mask, cfg.rollout.temperature,
                                                    entropy=a.entropy_coef > 0, mean_logp=rover)
                        if rover:
                            q, target = rover_targets(stats.logprob, old.logprob[idx], stats.mean_logp,
                                                      old.mean_logp[idx], row_adv[rows], mask, a.rover_rho,
                                                      a.rover_kappa)
                            loss = aggregate((q - target) ** 2, mask, "token_mean", denominator=token_units)
                        else:
                            pl = policy_loss(stats.logprob, old.logprob[idx], credit.advantages[idx], mask,
                                             a.clip_low, a.clip_high, a.dual_clip)
                            loss = aggregate(pl.loss, mask, a.aggregation, cfg.rollout.max_new_tokens, units)
                            update[1] += pl.clipped.sum()
                        if ref_logp is not None and a.kl_in == "loss":
                            kl = kl_k3(stats.logprob, ref_logp[idx], mask)
                            loss = loss + a.kl_coef * aggregate(kl, mask, a.aggregation,
                                                                cfg.rollout.max_new_tokens, units)
                        if a.entropy_coef > 0:
                            loss = loss - a.entropy_coef * aggregate(stats.entropy, mask, a.aggregation,
                                                                     cfg.rollout.max_new_tokens, units)
                        if values is not None:
                            vl = value_loss(values, old_values[idx], credit.returns[idx], mask, a.value_clip)
                            loss = loss + a.value_coef * aggregate(vl, mask, "token_mean", denominator=token_units)
                        # DDP and FSDP average gradients over processes; the loss is already a
                        # share of the global mean
                        (loss * proc.world).backward()
                    update[0] += loss.detach()
                    update[2] += mask.ne(0).sum()
                norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.max_grad_norm or float("inf"))
                norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
                # a NaN/Inf gradient (an overflow, a bad sample) would make every weight NaN, and the
                # next checkpoint would keep them: the update is dropped, as verl does (the norm is
                # the same on every process: gradients are reduced before it)
                if torch.isfinite(norm):
                    sums[:3] += update
                    sums[3] += norm
                    self.optimizer.step()
                    updates += 1
                else:
                    nonfinite += 1
                    self._say(f"step {step + 1}: the gradient norm is {norm.item()}; that update is dropped")
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        loss, clipped, tokens, grad_norm = torch.cat([proc.sum(sums[:3]), sums[3:]]).tolist()
        # lr: the step's first update's (the scheduler has moved on since); loss, grad_norm and
        # clip_fraction: over the updates made, absent where none was (a 0.0 would plot as a real value)
        out = {"lr": lr, "update_skipped": int(skipped), "updates_nonfinite": nonfinite}
        if updates:
            out.update(loss=loss / updates, grad_norm=grad_norm / updates)
            if not rover:
                out["clip_fraction"] = clipped / max(tokens, 1)
        return out

    # ---- the run -------------------------------------------------------------------

    def _resume(self):
        path = checkpoint.latest(self.ckpt_dir)
        if path is None:
            self._say(f"--resume: no checkpoint under {self.ckpt_dir}; starting from step 0")
        else:
            self.step = checkpoint.load(path, self.module, self.optimizer, self.scheduler, self.proc)["step"]
            if self.config_changes:
                self._say("--resume: the config differs from the checkpoint's in " + ", ".join(self.config_changes))
        if self.proc.main and self.log_path.exists():
            # drop the log of steps after the checkpoint: they are run again (from no checkpoint, every
            # line, the evaluation before training too)
            lines = [line for line in self.log_path.read_text().splitlines() if line.strip()]
            steps = []
            for i, line in enumerate(lines):
                try:
                    steps.append(json.loads(line)["step"])
                except json.JSONDecodeError:
                    if i < len(lines) - 1:
                        raise ConfigError(f"{self.log_path}: line {i + 1} of {len(lines)} is not JSON") from None
                    self._say(f"--resume: dropping the last line of {self.log_path}, cut short (a crash while "
                              "writing it)")
            # a new file renamed over the log: a crash while writing must not lose the steps kept
            kept = self.log_path.with_name(self.log_path.name + ".tmp")
            kept.write_text("".join(line + "\n" for line, s in zip(lines, steps) if self.step and s <= self.step))
            os.replace(kept, self.log_path)
        if path is not None:
            self._say(f"resumed from {path} at step {self.step}")

    def _say(self, text):
        if self.proc.main:
            tqdm.write(text)

    def _save(self):
        checkpoint.save(self.ckpt_dir, self.step, self.module, self.optimizer, self.scheduler, self.cfg.to_dict(),
                        self.proc, self.cfg.run.keep_checkpoints, self.data_fingerprint)

    def train(self) -> TrainResult:
        lock = refused = None
        try:
            if self.proc.main:  # (alone: the others would read the config.json it writes next)
                try:
                    self.out.mkdir(parents=True, exist_ok=True)
                    lock = _lock(self.out)
                    if lock is None:
                        raise ConfigError(f"run.output_dir {str(self.out)!r} is in use by another fastrl train "
                                          f"(it holds {self.out / LOCK}): wait for it, or choose another "
                                          "run.output_dir")
                    self._check_free()  # again, under the lock: another run may have written there since
                except (ConfigError, OSError) as e:
                    refused = e
            if self.proc.any(refused is not None, self.device):  # every process stops, not the main one alone
                raise refused or ConfigError(f"run.output_dir {str(self.out)!r} was refused by the main process")
            return self._train()
        finally:
            if lock is not None:
                lock.close()

    def _train(self) -> TrainResult:
        cfg, proc = self.cfg, self.proc
        if proc.main:
            if self.overwrite:
                # the old run's checkpoints would outrank (and prune) this run's, and a later
                # --resume would continue it
                for name in RUN_FILES:
                    old = self.out / name
                    shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
            with checkpoint.synced(self.out / "config.json") as f:
                f.write(json.dumps(cfg.to_dict(), indent=2))
        proc.barrier()
        if self.resume:
            self._resume()
        elif proc.main and self.log_path.exists():
            self.log_path.unlink()
        lm = self.policy.causal_lm()
        n_params = sum(p.numel() for p in self.policy.parameters())
        self._say(f"fastrl train: {cfg.algo.name} on {'task ' + self.task.name if cfg.data.source == 'task' else cfg.data.source}"
                  f", model {cfg.model.path or 'built-in tiny Llama'} ({n_params / 1e6:.2f}M parameters), "
                  f"attention {getattr(lm.config, '_attn_implementation', '?')}, {proc.world} process(es) on "
                  f"{self.device}{', ' + cfg.run.distributed if proc.world > 1 else ''}; "
                  f"{cfg.run.steps} steps of {cfg.data.prompts_per_step} prompts x {cfg.rollout.group_size}")
        writers = _writers(cfg, self.out, self.step) if proc.main else []
        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        interrupted = False

        def on_stop(signum, frame):
            self._stop, self._stop_signal = True, signum
            for s in handled:  # a second signal stops at once
                signal.signal(s, previous[s])
            what = "interrupted" if signum == signal.SIGINT else f"{signal.Signals(signum).name} received"
            again = "Ctrl-C" if signum == signal.SIGINT else "the signal"
            self._say(f"{what}: finishing this step, then saving a checkpoint ({again} again to abort)")

        # a process that ignores Ctrl-C (an experiment's worker) is stopped by its parent, so it
        # handles neither; SIGTERM too, unless someone else has a handler for it
        handled = []
        if threading.current_thread() is threading.main_thread() and previous[signal.SIGINT] is not signal.SIG_IGN:
            handled.append(signal.SIGINT)
            if previous[signal.SIGTERM] in (signal.SIG_DFL, stopping.raise_stopped):
                handled.append(signal.SIGTERM)
        for signum in handled:
            signal.signal(signum, on_stop)
        bar = tqdm(total=cfg.run.steps, initial=self.step, desc="train", unit="step",
                   disable=not (cfg.run.progress and proc.main))
        try:
            with self.log_path.open("a") if proc.main else nullcontext() as log:
                def record(metrics):
                    if proc.main:
                        log.write(json.dumps(metrics) + "\n")
                        log.flush()
                        for w in writers:
                            w(metrics)

                if self.eval_rows is not None and cfg.eval.before_training and self.step == 0:
                    record({"step": 0, **self.evaluate()})
                    interrupted = self.proc.any(self._stop, self.device)  # (nothing to save yet)
                while not interrupted and self.step < cfg.run.steps:
                    metrics = self.run_step(self.step)
                    self.step += 1
                    if self._evaluates(self.step):
                        metrics.update(self.evaluate())
                    record(metrics)
                    bar.update()
                    bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", acc=f"{metrics['accuracy']:.3f}", refresh=False)
                    every = cfg.run.checkpoint_every
                    # every process stops after the same step: Ctrl-C reaches them at different points of it;
                    # in the last step, the run just ends (final/ is written below, not left to a --resume)
                    stop = self.proc.any(self._stop, self.device) and self.step < cfg.run.steps
                    if stop or (every and self.step % every == 0 and self.step < cfg.run.steps):
                        self._save()
                    if stop:
                        interrupted = True
                        break
        finally:
            bar.close()
            for signum in handled:
                signal.signal(signum, previous[signum])
        if interrupted:
            self._say(f"stopped at step {self.step}; continue with: fastrl train ... --resume "
                      f"(run.output_dir {self.out})")
            raise stopping.Stopped(self._stop_signal)
        self._save()
        final = self._save_final()
        metrics = [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()] \
            if proc.main else []
        plot = None
        if proc.main and cfg.run.plot:
            plot = plot_metrics(self.log_path, self.out / "metrics.png")
        return TrainResult(metrics, self.out, self.log_path, plot, final)

    def _save_final(self) -> Path:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        path = self.out / "final"
        state = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.proc.main:
            prefix = "model."
            model_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            # from the gathered state, not the live model, whose FSDP2 shards are freed by now;
            # PEFT takes the adapter's weights out of it and saves those alone
            self.policy.model.save_pretrained(path, state_dict=model_state)
            self.tokenizer.save_pretrained(path)
            if self.policy.value_head is not None:
                torch.save({k[len("value_head."):]: v for k, v in state.items() if k.startswith("value_head.")},
                           path / "value_head.pt")
        self.proc.barrier()
        return path


def _lr_factor(i: int, total: int, o) -> float:
    if o.warmup_steps and i < o.warmup_steps:
        return (i + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    progress = min(1.0, (i - o.warmup_steps) / max(1, total - 1 - o.warmup_steps))  # update total - 1 is the last
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _config_changes(saved: dict, now: dict, prefix="") -> list[str]:
    changes = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += _config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key} ({a!r} -> {b!r})")
    return changes


def _with_defaults(saved: dict, defaults: dict) -> dict:
    """saved, with the keys and sections of defaults that it lacks."""
    merged = dict(defaults)
    for key, value in saved.items():
        merged[key] = (_with_defaults(value, defaults[key]) if isinstance(value, dict)
                       and isinstance(defaults.get(key), dict) else value)
    return merged


def _writers(cfg: TrainConfig, out: Path, step: int) -> list:
    """The metric writers of a run that continues after ``step`` (0: a new run): a resumed
    run's TensorBoard drops the events logged after its checkpoint, as metrics.jsonl does,
    and its wandb run is the same run (its id is kept in output_dir/wandb_id)."""
    writers = []
    if cfg.run.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("run.tensorboard needs tensorboard (pip install tensorboard)") from None
        # (from 0 too: a run that stopped first; from no checkpoint, the evaluation before training too)
        tb = SummaryWriter(str(out / "tensorboard"), purge_step=step + 1 if step else 0)
        writers.append(lambda m: [tb.add_scalar(k, v, m["step"]) for k, v in m.items() if k != "step"])
    if cfg.run.wandb:
        try:
            import wandb
        except ImportError:
            raise ConfigError("run.wandb needs wandb (pip install wandb)") from None
        id_file = out / "wandb_id"
        if not id_file.exists():
            id_file.write_text(uuid.uuid4().hex[:12])
        run = wandb.init(project=cfg.run.wandb_project, config=cfg.to_dict(), dir=str(out), id=id_file.read_text(),
                         resume="allow")
        writers.append(lambda m: run.log(m, step=m["step"]))
    return writers


PLOTTED = ("reward_mean", "accuracy", "eval_accuracy", "response_length", "entropy", "kl", "clip_fraction", "loss",
           "grad_norm", "advantage_std", "tokens_per_s")


def plot_metrics(log: Path, png: Path) -> Optional[Path]:
    """PNG curves of a metrics log against the step; None (with a note) without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    rows = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    keys = [k for k in PLOTTED if any(k in r for r in rows)]
    cols = 3
    fig, axes = plt.subplots(math.ceil(len(keys) / cols), cols, figsize=(4 * cols, 2.6 * math.ceil(len(keys) / cols)),
                             squeeze=False)
    for ax, key in zip(axes.flat, keys):
        xs = [r["step"] for r in rows if key in r]
        ys = [r[key] for r in rows if key in r]
        ax.plot(xs, ys, lw=0.8, alpha=0.5)
        if len(ys) >= 10 and not key.startswith("eval_"):  # a running mean over 10 steps on the raw curve
            smooth = np.convolve(ys, np.ones(10) / 10, mode="valid")
            ax.plot(xs[9:], smooth, lw=1.5)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def evaluate(config: TrainConfig, resume: bool = False, task=None) -> dict:
    """The evaluation alone (``fastrl train --eval-only``): the metrics of ``Trainer.evaluate``
    for model.path's weights, or with resume the newest checkpoint's in run.output_dir, with
    "step" (0, or the checkpoint's). Nothing is written."""
    if config.eval.source is None:
        raise ConfigError("--eval-only evaluates on eval.source, which is not set")
    trainer = Trainer(config, resume=resume, task=task, evaluate_only=True)
    try:
        if resume:
            path = checkpoint.latest(trainer.ckpt_dir)
            if path is None:
                raise ConfigError(f"--resume --eval-only: no checkpoint under {trainer.ckpt_dir} to evaluate")
            trainer.step = checkpoint.load(path, trainer.module, trainer.optimizer, trainer.scheduler,
                                           trainer.proc)["step"]
        return {"step": trainer.step, **trainer.evaluate()}
    finally:
        trainer.proc.close()


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False, task=None, on_step=None) -> TrainResult:
    """Run ``config`` to its last step (the Python API of ``fastrl train``; task and on_step
    as ``Trainer``). Ctrl-C or SIGTERM (a scheduler's time limit) in the main thread finishes
    the step, saves a checkpoint and raises ``fastrl.stopping.Stopped``, a KeyboardInterrupt;
    a second one stops at once."""
    trainer = Trainer(config, resume=resume, overwrite=overwrite, task=task, on_step=on_step)
    try:
        return trainer.train()
    finally:
        trainer.proc.close()
