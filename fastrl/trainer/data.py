"""Prompts for training: the built-in task, a JSONL file or a ``datasets`` folder.

``Prompts.batch(step)`` is a function of the step alone (and the run's seed): a resumed
run sees exactly the prompts an uninterrupted one would, in the same order.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Optional

from fastrl.trainer.config import ConfigError, DataConfig


class Prompts:
    def __init__(self, cfg: DataConfig, seed: int, task=None, section: str = "data"):
        """task: the task object serving data.source "task" (``fastrl.trainer.task.MaxTask``);
        section: the config section whose source and split cfg holds, for errors ("eval":
        the held-out prompts, read with data's keys)."""
        self.cfg, self.seed, self.task, self.section = cfg, seed, task, section
        self.rows, self._lines = (None, None) if cfg.source == "task" else _load(cfg, section)
        self._epoch_order = (None, None)

    def fingerprint(self) -> str | None:
        """sha256 of the records (None for a task's, which the config fixes): --resume refuses
        records changed under the same data.source, as they change which prompts a step reads."""
        if self.rows is None:
            return None
        digest = hashlib.sha256()
        for row in self.rows:
            digest.update(json.dumps(row, sort_keys=True, default=lambda value: type(value).__name__).encode())
        return digest.hexdigest()

    def where(self, i: int) -> str:
        """Record i's place, for errors: the file and line, or the dataset and index."""
        return _place(self.section, self.cfg.source, self._lines, i)

    def batch(self, step: int) -> list[dict]:
        """The prompts_per_step records of training step ``step`` (0-based): a file's as it
        holds them, a task's with at least "prompt" (and what its rewards read)."""
        n = self.cfg.prompts_per_step
        if self.rows is None:
            return self.task.problems(self.seed, step, n)
        size = len(self.rows)
        out = []
        for i in range(step * n, (step + 1) * n):
            epoch, j = divmod(i, size)
            out.append(self.rows[self._order(epoch)[j]])
        return out

    def first(self, count: Optional[int]) -> list[dict]:
        """The first ``count`` records (None: all); a task's, the problems of step -1, which
        no training step draws (though its problems may be among them): 64 for None."""
        if self.rows is None:
            return self.task.problems(self.seed, -1, 64 if count is None else count)
        return self.rows[:count]

    def _order(self, epoch: int) -> list[int]:
        # one shuffle per epoch, not per prompt (200k rows: seconds a step); a step visits
        # epochs in increasing order, so caching the last one suffices
        if self._epoch_order[0] != epoch:
            order = list(range(len(self.rows)))
            if self.cfg.shuffle:
                random.Random(f"fastrl-data:{self.seed}:{epoch}").shuffle(order)
            self._epoch_order = (epoch, order)
        return self._epoch_order[1]


def prompt_text(cfg: DataConfig, record: dict) -> str:
    """A record's prompt: its data.prompt_key field (a task's: "prompt"). Records stay as the
    file has them, for the reward functions that read them."""
    return record["prompt"] if cfg.source == "task" else record[cfg.prompt_key]


def json_lines(text: str) -> list[str]:
    """A JSONL text's lines: split at "\n" only (a string may hold U+2028 or U+0085, where
    str.splitlines() breaks too), a trailing "\r" dropped."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def json_record(line: str):
    """One JSONL line's value, or a ValueError saying why not (a key given twice too: json
    keeps the last one silently)."""
    def unique(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"key {key!r} given twice")
            seen.add(key)
        return dict(pairs)

    try:
        return json.loads(line, object_pairs_hook=unique)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e})") from None


def _place(section, source, lines, i: int) -> str:
    return f"{source}:{lines[i]}" if lines else f"{section}.source {source}: record {i}"


def _load(cfg: DataConfig, section: str) -> tuple[list[dict], list[int] | None]:
    """The records, and for a JSONL file each one's line number."""
    path = Path(cfg.source)
    lines = None
    if path.is_file():
        rows, lines = [], []
        try:
            text = path.read_text(encoding="utf-8-sig")  # JSON is UTF-8, whatever the locale (a BOM skipped)
        except UnicodeDecodeError as e:
            line = path.read_bytes()[:e.start].count(b"\n") + 1
            raise ConfigError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        for lineno, line in enumerate(json_lines(text), 1):
            if line.strip():
                try:
                    rows.append(json_record(line))
                except ValueError as e:
                    raise ConfigError(f"{path}:{lineno}: {e}") from None
                lines.append(lineno)
    else:
        import datasets

        try:
            data = datasets.load_from_disk(str(path))
        except FileNotFoundError as e:  # a folder that holds no saved dataset
            raise ConfigError(f"{section}.source {path}: {e}") from None
        if isinstance(data, datasets.DatasetDict):
            if cfg.split not in data:
                got = f" (got {cfg.split!r})" if cfg.split else ""
                raise ConfigError(f"{section}.source {path} is a DatasetDict with splits {', '.join(data)}: "
                                  f"set {section}.split to one of them{got}")
            data = data[cfg.split]
        elif cfg.split is not None:
            raise ConfigError(f"{section}.split: {section}.source {path} is a single Dataset, not a DatasetDict")
        rows = list(data)
    if not rows:
        raise ConfigError(f"{section}.source {path} holds no records")
    for i, row in enumerate(rows):
        where = _place(section, path, lines, i)
        if not isinstance(row, dict) or not isinstance(row.get(cfg.prompt_key), str):
            raise ConfigError(f"{where} has no string field {cfg.prompt_key!r} (data.prompt_key)")
        if not row[cfg.prompt_key]:  # a tokenizer without BOS makes no tokens of it: the step drawing it would fail
            raise ConfigError(f"{where} has an empty {cfg.prompt_key!r} (data.prompt_key)")
    return rows, lines
