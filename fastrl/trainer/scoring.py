"""Rewards for the trainer: outcome rewards per response and PURE's step scores, from
the verifiers, the built-in task, a process reward model or a user function."""
from __future__ import annotations

import heapq
import math
from typing import Callable, Optional

import torch

from fastrl.integrations.hf import count_positions
from fastrl.trainer.config import CLASSIFICATION_KINDS, ConfigError, TrainConfig, user_function
from fastrl.trainer.data import prompt_text


def _gold(config: TrainConfig, row: dict):
    if config.data.answer_key not in row:
        raise KeyError(f"record has no field {config.data.answer_key!r} (data.answer_key) for reward.kind "
                       f"{config.reward.kind!r}")
    return row[config.data.answer_key]


def _labels(config: TrainConfig, row: dict):
    if config.data.labels_key not in row:
        raise KeyError(f"record has no field {config.data.labels_key!r} (data.labels_key)")
    return row[config.data.labels_key]


def check_records(config: TrainConfig, prompts, rows=None) -> None:
    """The built-in rewards that read a gold answer find it in every record of ``prompts``
    (``fastrl.trainer.data.Prompts``; checked at load, not at the step that first draws it);
    rows: those records alone (a task's problems too: it has no records to check)."""
    rows = prompts.rows if rows is None else rows
    if rows is None or config.reward.kind not in ("math", *CLASSIFICATION_KINDS):
        return
    keys = {config.data.answer_key: "data.answer_key"}
    if config.reward.kind in CLASSIFICATION_KINDS:
        keys[config.data.labels_key] = "data.labels_key"
    for key, option in keys.items():
        missing = next((i for i, row in enumerate(rows) if key not in row), None)
        if missing is not None:
            raise ConfigError(f"{prompts.where(missing)} has no field {key!r} ({option}), which reward.kind "
                              f"{config.reward.kind!r} reads")
    key = config.data.answer_key
    bad = next((i for i, row in enumerate(rows) if not _is_answer(row[key])), None)
    if bad is not None:  # a list or an object would be compared as its repr, and never match
        raise ConfigError(f"{prompts.where(bad)}: field {key!r} (data.answer_key) must be a string or a finite number, "
                          f"got {type(rows[bad][key]).__name__}: {rows[bad][key]!r:.60}")
    if config.reward.kind in CLASSIFICATION_KINDS:
        from fastrl.rewards.classification import check_labels

        for i, row in enumerate(rows):  # a label set that is no list of names, or lacks the gold
            try:
                check_labels(str(row[key]), row[config.data.labels_key])
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{prompts.where(i)}: field {config.data.labels_key!r} (data.labels_key): "
                                  f"{e}") from None


def _is_answer(value) -> bool:  # (JSON's NaN and Infinity are no answers either)
    return isinstance(value, (str, int, float)) and not isinstance(value, bool) and (
        not isinstance(value, float) or math.isfinite(value))


def outcome_rewards(config: TrainConfig, task=None) -> Callable[[list, list], list]:
    """rewards(rows, responses) -> [float per response] for config.reward.kind ("task":
    task.outcome_reward); the math verifier checks the batch in parallel."""
    kind = config.reward.kind
    if kind == "math":
        from fastrl.rewards.math import score_batch

        return lambda rows, responses: score_batch([_gold(config, row) for row in rows], responses)
    if kind == "task":
        one = task.outcome_reward
    elif kind in CLASSIFICATION_KINDS:
        from fastrl.rewards.classification import reward

        def one(row, response):
            return reward(response, str(_gold(config, row)), _labels(config, row), thinking=kind == "classification")
    elif kind == "format":
        from fastrl.rewards.classification import format_reward

        def one(row, response):
            return format_reward(response)
    else:
        fn = user_function(kind, "reward.kind")

        def one(row, response):
            return _number(fn(prompt_text(config.data, row), response, row), f"reward.kind {kind!r}")
    return lambda rows, responses: [float(one(row, response)) for row, response in zip(rows, responses)]


def _number(value, source: str) -> float:
    """A user function's reward or step score as a finite float, or a ConfigError naming the
    function's key (the CLI prints it in one line)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source} returned {value!r} ({type(value).__name__}); it must return a number") from None
    if not math.isfinite(number):
        raise ConfigError(f"{source} returned {number}; rewards and step scores must be finite")
    return number


def outcome_correct(config: TrainConfig) -> Callable[[dict, str, float], bool]:
    """correct(row, response, reward) -> whether the response counts as correct (the logged
    accuracy, PURE's solved rows): its answer is the gold label for the classification
    kinds (their reward adds the format's point, so no threshold on it can tell a right
    answer from a well-formed wrong one), else reward >= reward.correct_threshold."""
    if config.reward.kind in CLASSIFICATION_KINDS:
        from fastrl.rewards.classification import accuracy_reward

        return lambda row, response, _: accuracy_reward(response, str(_gold(config, row)), _labels(config, row)) == 1.0
    threshold = config.reward.correct_threshold
    return lambda row, response, reward: reward >= threshold


def check_same_vocabulary(key: str, path: str, model, tokenizer):
    """A model that reads the policy's token ids (the PRM, the KL reference): its tokenizer
    (where its folder has one) must be the policy's, and its embedding must hold every id."""
    from transformers import AutoTokenizer

    try:
        own = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):  # a folder without a tokenizer
        own = None
    if own is not None and own.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"{key}: the model at {path} has its own tokenizer ({len(own)} tokens), not the "
                          f"policy's ({len(tokenizer)}): it reads the policy's token ids, so it must share them")
    rows = model.get_input_embeddings().num_embeddings
    if rows < len(tokenizer):
        raise ConfigError(f"{key}: the model at {path} embeds {rows} token ids, the policy's tokenizer has "
                          f"{len(tokenizer)}: it reads the policy's token ids, so it must share them")


def load_pretrained(key: str, path: str, load, hint: str = ""):
    """load(path), a Hugging Face from_pretrained, or a ConfigError naming key: a folder that
    holds no such model failed with transformers' traceback, naming no key."""
    try:
        return load(path)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{key}: {path!r} does not load ({first}){hint}") from e


def micro_batches(rows: torch.Tensor, attention_mask: torch.Tensor, parts: int = 1,
                  max_tokens: Optional[int] = None, agree: Optional[Callable[[int], int]] = None,
                  ) -> list[tuple[torch.Tensor, slice]]:
    """``rows`` (indices into the batch) as micro-batches, rows of similar length together
    (sorted by the columns each uses), each with the columns its rows use: (indices,
    columns). A micro-batch's forward computes no column that is padding in all its rows (the
    batch is padded to its longest row: a whole-width forward of short rows did mostly padding).

    parts: as many micro-batches, of as many rows as ``tensor_split`` gives. max_tokens:
    instead as few as keep each one's rows x columns within it (a longer row alone), at
    least ``parts``; agree(count) -> the count every process runs (the largest: under FSDP2
    each forward gathers weights, a collective), reached by halving the costliest."""
    used = attention_mask[rows] != 0
    first = used.int().argmax(1)
    end = used.shape[1] - used.flip(1).int().argmax(1)  # one past the last used column
    first, end, order = first.tolist(), end.tolist(), rows.tolist()  # (one sync for the lot)
    by_length = sorted(range(len(order)), key=lambda i: end[i] - first[i])  # (stable: ties keep their order)

    def columns(group):
        return slice(min(first[i] for i in group), max(end[i] for i in group))

    def tokens(group):
        span = columns(group)
        return len(group) * (span.stop - span.start)

    if max_tokens is None:
        groups = [part.tolist() for part in torch.tensor_split(torch.tensor(by_length, dtype=torch.long), parts)]
    else:
        groups, low, high = [], 0, 0  # (the last group's columns)
        for i in by_length:
            if groups and (len(groups[-1]) + 1) * (max(high, end[i]) - min(low, first[i])) <= max_tokens:
                groups[-1].append(i)
                low, high = min(low, first[i]), max(high, end[i])
            else:
                groups.append([i])
                low, high = first[i], end[i]
        count = max(len(groups), parts)
        count = agree(count) if agree is not None else count
        if count > len(order):
            raise ValueError(f"{count} micro-batches agreed for {len(order)} rows: every process must hold as many")
        if len(groups) < count:
            # halve the costliest, ties the first in the sorted order (a heap: a scan of every
            # group at each halving was quadratic in the rows, seconds for 4096)
            place = {i: k for k, i in enumerate(by_length)}
            heap = [(-tokens(g), place[g[0]], g) for g in groups if len(g) > 1]
            groups = [g for g in groups if len(g) == 1]
            heapq.heapify(heap)
            for _ in range(count - len(groups) - len(heap)):
                _, _, group = heapq.heappop(heap)
                for half in (group[:len(group) // 2], group[len(group) // 2:]):
                    if len(half) > 1:
                        heapq.heappush(heap, (-tokens(half), place[half[0]], half))
                    else:
                        groups.append(half)
            groups = sorted(groups + [g for *_, g in heap], key=lambda g: place[g[0]])
    return [(torch.tensor([order[i] for i in group], dtype=torch.long, device=attention_mask.device), columns(group))
            for group in groups]


def in_micro_batches(forward: Callable, attention_mask: torch.Tensor, config: TrainConfig,
                     agree: Optional[Callable[[int], int]] = None):
    """``forward(rows, columns)`` over the batch of ``attention_mask`` [B, L] in the update's
    micro-batches (``micro_batches``: algo.mini_batches x algo.grad_accum of them, or of
    algo.micro_batch_tokens tokens: a no-grad forward of a whole step held that many times the
    activations of one), its outputs (tensors [rows, columns, ...]; None; tuples of them) put
    back in place, zero in the columns a micro-batch left out. agree: as micro_batches'."""
    a, B = config.algo, attention_mask.shape[0]
    count = max(1, min(B, a.mini_batches * a.grad_accum))
    parts = micro_batches(torch.arange(B, device=attention_mask.device), attention_mask, count,
                          a.micro_batch_tokens, agree)
    return _placed([forward(rows, columns) for rows, columns in parts], parts, attention_mask.shape)


def _placed(outputs: list, parts: list, shape):
    first = outputs[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        full = first.new_zeros(tuple(shape) + first.shape[2:])
        for out, (rows, columns) in zip(outputs, parts):
            full[rows, columns] = out
        return full
    placed = [_placed(list(items), parts, shape) for items in zip(*outputs)]
    return type(first)(*placed) if hasattr(first, "_fields") else tuple(placed)  # (a NamedTuple, as TokenStats)


class ProcessReward:
    """Step scores for PURE: ``scores(rows, prompt_ids, prompt_mask, response_ids,
    response_mask, step_mask, step_texts)`` -> [B, R] float32, the score of each step at its last token."""

    def __init__(self, config: TrainConfig, tokenizer, device, task=None):
        self.config = config
        spec = self.spec = config.reward.process
        self.data = config.data
        self.tokenizer, self.device, self.model, self.fn = tokenizer, device, None, None
        if spec == "task":
            self.fn = lambda prompt, steps, row: task.step_scores(row, steps)
        elif ":" in spec:
            self.fn = user_function(spec, "reward.process")
        else:
            from transformers import AutoModelForTokenClassification

            self.model = load_pretrained("reward.process", spec, AutoModelForTokenClassification.from_pretrained)
            self.model = self.model.to(device).eval()
            check_same_vocabulary("reward.process", spec, self.model, tokenizer)
            if self.model.config.num_labels < 2:
                raise ConfigError(f"reward.process: the PRM at {spec} has {self.model.config.num_labels} label(s); "
                                  "p(label 1) - p(label 0) needs 2")
            newline = tokenizer.encode("\n", add_special_tokens=False)
            if len(newline) != 1:
                raise ConfigError("reward.process: the tokenizer must encode '\\n' as one token (each step "
                                  f"separator becomes one newline token for the PRM), got {newline}")
            self.newline = newline[0]

    @torch.no_grad()
    def scores(self, rows, prompt_ids, prompt_mask, response_ids, response_mask, step_mask, step_texts) -> torch.Tensor:
        out = torch.zeros(response_ids.shape, dtype=torch.float32, device=response_ids.device)
        if self.fn is not None:
            for b, (row, steps) in enumerate(zip(rows, step_texts)):
                values = [_number(v, f"reward.process {self.spec!r}")
                          for v in self.fn(prompt_text(self.data, row), steps, row)]
                if len(values) != len(steps):
                    raise ConfigError(f"reward.process {self.spec!r} returned {len(values)} scores for "
                                      f"{len(steps)} steps")
                out[b, step_mask[b]] = torch.tensor(values, dtype=torch.float32, device=out.device)
            return out
        # the PRM reads each row's prompt then its steps, each step's trailing blank line
        # replaced by one newline token (a token such as ".\n\n" keeps its "."; a blank line of
        # two tokens becomes one), its score read there; the final step ends in a newline too, its
        # EOS dropped, as PURE feeds it (a PRM trained on newline-ended steps never saw an EOS)
        special = set(self.tokenizer.all_special_ids)
        rows_ids, reads = [], []
        for b in range(len(response_ids)):
            ids = prompt_ids[b][prompt_mask[b] != 0].tolist()
            start, ends = 0, step_mask[b].nonzero().flatten().tolist()
            for end in ends:
                step = response_ids[b, start:end + 1].tolist()
                while step and step[-1] in special:
                    step.pop()
                ids += self._without_newlines(step) + [self.newline]
                reads.append((b, len(ids) - 1))
                start = end + 1
            rows_ids.append(ids)
        width = max(map(len, rows_ids))
        ids = torch.zeros(len(rows_ids), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, row in enumerate(rows_ids):
            ids[b, :len(row)], mask[b, :len(row)] = torch.tensor(row, dtype=torch.long), 1
        # positions over each row's own tokens (as the policy's)
        ids, mask, positions = ids.to(self.device), mask.to(self.device), count_positions(mask).to(self.device)
        p = in_micro_batches(lambda rows, cols: self.model(
            input_ids=ids[rows, cols], attention_mask=mask[rows, cols],
            position_ids=positions[rows, cols]).logits.float().softmax(-1), mask, self.config)
        read = torch.tensor(reads, dtype=torch.long).reshape(-1, 2).to(self.device)
        out[step_mask] = (p[read[:, 0], read[:, 1], 1] - p[read[:, 0], read[:, 1], 0]).to(out.device)
        return out

    def _without_newlines(self, ids: list[int]) -> list[int]:
        """A step's tokens without the newlines that end it (a token holding text before
        them is re-encoded as that text)."""
        while ids:
            text = self.tokenizer.decode([ids[-1]])
            if not text.endswith("\n"):
                break
            rest = text.rstrip("\n")
            ids = ids[:-1] + (self.tokenizer.encode(rest, add_special_tokens=False) if rest else [])
            if rest:
                break
        return ids


def step_texts(tokenizer, response_ids: torch.Tensor, step_mask: torch.Tensor, valid: torch.Tensor) -> list[list[str]]:
    """Each row's steps as text (special tokens and the blank-line separators dropped)."""
    rows = []
    for ids, ends, ok in zip(response_ids.tolist(), step_mask.tolist(), valid.tolist()):
        steps, current = [], []
        for token, end, keep in zip(ids, ends, ok):
            if not keep:
                break
            current.append(token)
            if end:
                steps.append(tokenizer.decode(current, skip_special_tokens=True).strip("\n"))
                current = []
        rows.append(steps)
    return rows
