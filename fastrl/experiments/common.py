"""What the experiments share: supervised warm-up on a task's correct solutions, sampling
responses for evaluation, running jobs in worker processes, running means."""
from __future__ import annotations

import contextlib
import math
import os
import random
import re
import shutil
import signal
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch


def check_seeds(seeds) -> None:
    """Each seed once: a seed twice would be two identical runs writing one folder, and
    counted as two in a criterion over seeds."""
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"seeds must differ, got {list(seeds)}")


def previous_run(out: Path, outputs) -> list[Path]:
    """What an earlier run left in ``out``: the entries there whose names an experiment's
    ``outputs`` regular expressions match whole (its summary, plots and run folders;
    nothing else of the folder's: "seed_notes.txt" is no run folder)."""
    if not out.is_dir():
        return []
    return sorted(path for path in out.iterdir() if any(re.fullmatch(pattern, path.name) for pattern in outputs))


def remove(paths) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


@contextlib.contextmanager
def replacing(out: Path, earlier: list[Path], outputs):
    """Run the body with an earlier run's outputs moved aside: they go when it succeeds, and
    come back (the new run's outputs removed) when it fails or is interrupted."""
    aside, moved = (_aside_folder(out) if earlier else None), []
    try:
        for path in earlier:
            path.rename(aside / path.name)
            moved.append(path.name)
        yield
    except BaseException:
        if aside is not None:
            remove(previous_run(out, outputs))
            for name in moved:
                remove([out / name] if (out / name).exists() else [])
                (aside / name).rename(out / name)
            aside.rmdir()
        raise
    if aside is not None:
        shutil.rmtree(aside)


def set_aside(out: Path) -> list[Path]:
    """Earlier runs that replacing() set aside and a killed process left there."""
    where = out.resolve()
    return sorted([*where.parent.glob(f".{where.name}.replaced.*"), *where.glob(".replaced.*")])


def _aside_folder(out: Path) -> Path:
    """A new folder beside out, where the run then finds out as it would emptied; or, where that
    cannot be (out a mount point, its parent read-only), a hidden one in out, which no output's
    name matches."""
    where = out.resolve()
    beside = where.parent / f".{where.name}.replaced.{os.getpid()}"
    try:
        beside.mkdir()
    except OSError:
        pass
    else:
        if beside.stat().st_dev == where.stat().st_dev:  # (rename() does not cross file systems)
            return beside
        beside.rmdir()
    inside = where / f".replaced.{os.getpid()}"
    inside.mkdir()
    return inside


def solution_batch(task, tokenizer, rows, rng: random.Random):
    """(input_ids, attention_mask, response_mask) for prompt + a correct solution + EOS."""
    seqs, masks = [], []
    for row in rows:
        prompt = tokenizer.encode(row["prompt"])
        answer = tokenizer.encode(task.solution(row, rng)) + [tokenizer.eos_token_id]
        seqs.append(prompt + answer)
        masks.append([0] * len(prompt) + [1] * len(answer))
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([m + [0] * (width - len(m)) for m in masks])
    return ids, (ids != tokenizer.pad_token_id) | (mask != 0), mask


def warm_up(model, tokenizer, task, rng: random.Random, batch: int, lr: float, max_steps: int,
            check_every: int, done: Callable[[int, float], bool], cosine: bool = False) -> int:
    """Teacher-forced training on correct solutions (the response tokens' mean negative
    log-likelihood through ``response_logprobs``, Adam at ``lr``, or with ``cosine`` a
    100-step linear ramp to ``lr`` then a cosine decay to 0 at max_steps) until
    ``done(step, loss)``, asked every ``check_every`` steps, says so or max_steps pass.
    Returns the steps run."""
    from fastrl.integrations.hf import response_logprobs

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    ramp = min(100, max_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / ramp) * 0.5 * (1 + math.cos(math.pi * s / max_steps)) if cosine else 1.0)
    for step in range(1, max_steps + 1):
        ids, attention, mask = solution_batch(task, tokenizer, [task.problem(rng) for _ in range(batch)], rng)
        loss = -(response_logprobs(model, ids, attention, mask).logprob.sum() / mask.sum())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step % check_every == 0 or step == max_steps) and done(step, loss.item()):
            return step
    return max_steps


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], max_new_tokens: int, greedy: bool = False, seed: int = 0,
           batch: int = 1024) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Responses (special tokens dropped), whether each ended with EOS, and each one's
    summed negative log-probability under the policy (temperature 1) with its token count
    ([B, 2]: an entropy estimate), sampled at temperature 1 (or greedily) through
    ``fastrl.trainer.rollout``, ``batch`` at a time."""
    from fastrl.trainer.rollout import rollout

    model.eval()
    texts, ended, surprise = [], [], []
    for start in range(0, len(prompts), batch):
        part = prompts[start:start + batch]
        ro = rollout(model, [tokenizer.encode(p) for p in part], max_new_tokens, tokenizer.eos_token_id,
                     tokenizer.pad_token_id, top_k=1 if greedy else None, progress=False,
                     seeds=torch.tensor([seed * 100003 + start + i for i in range(len(part))]))
        lengths = ro.response_mask.sum(1).tolist()
        texts += tokenizer.batch_decode([ids[:n] for ids, n in zip(ro.response_ids.tolist(), lengths)],
                                        skip_special_tokens=True)
        ended.append(ro.ended.cpu())
        surprise.append(torch.stack([-ro.policy_logprob.sum(1), ro.response_mask.sum(1).float()], 1).cpu())
    model.train()
    return texts, torch.cat(ended), torch.cat(surprise)


def smoothed(values, window=10):
    return [float(np.mean(values[max(0, i - window + 1):i + 1])) for i in range(len(values))]


def verdicts(criteria: list[dict]) -> list[str]:
    """One line per criterion: [HELD], [NOT HELD] or [reported], what it asks, what was measured."""
    names = {True: "HELD", False: "NOT HELD", None: "reported"}
    return [f"[{names[c['held']]}] {c['criterion']}: {c['measured']}" for c in criteria]


class Workers:
    """Jobs ``fn(*args)`` in worker processes of one thread each (by default one per core),
    so what a job computes does not depend on how many cores the machine has. ``fn`` must
    be a module-level function: workers are spawned, not forked (torch's threads do not
    survive a fork). Use as a context manager; ``finished()`` yields (fn, args, result)
    as jobs finish, jobs submitted meanwhile included."""

    def __init__(self, workers: int | None = None):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # (macOS)
        self.pool = ProcessPoolExecutor(workers or cores, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start_worker)
        self.pending = {}

    def submit(self, fn: Callable, *args):
        # a worker the pool starts here inherits this thread's blocked Ctrl-C from its first
        # instruction, so one still importing cannot die of it with a traceback (_start_worker then
        # ignores it); the parent's other threads still take it, so it raises here, not lost
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.pending[self.pool.submit(fn, *args)] = (fn, args)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # (the caller's own mask, as it was)

    def finished(self) -> Iterator[tuple[Callable, tuple, object]]:
        from concurrent.futures import FIRST_COMPLETED, wait

        while self.pending:
            done, _ = wait(self.pending, return_when=FIRST_COMPLETED)
            for future in done:
                fn, args = self.pending.pop(future)
                yield fn, args, future.result()

    def __enter__(self):
        return self

    def __exit__(self, error_type, *_):
        if error_type is not None:  # Ctrl-C or a failed job: stop the running jobs too, not only queued ones
            for process in list(getattr(self.pool, "_processes", {}).values()):
                process.terminate()
        self.pool.shutdown(cancel_futures=True)


def _start_worker():
    """One thread; Ctrl-C ignored (see ``submit``): it is the parent's to handle, by stopping
    the workers; a worker's trainer would save a checkpoint and suggest a --resume experiments
    lack."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # before the unblock: a Ctrl-C held meanwhile is dropped
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    torch.set_num_threads(1)
