"""Checkpoints: the policy (and value head), optimizer, scheduler, RNG states and the
step reached, written atomically (a temporary folder renamed into place) so that a crash
while writing leaves the previous checkpoint intact.

States are gathered whole on the main process through torch.distributed.checkpoint's
state-dict API, so one file serves any process count and DDP or FSDP2 alike.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

PREFIX = "step_"
ASIDE = ".old_"
DATA_FINGERPRINT = "data.sha256"


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _rng_states(processes) -> list:
    """Every process's RNG states, on the main process (others: None): ranks draw different
    amounts of randomness (dropout over differently padded batches), so one rank's states
    restored on all would not continue the run."""
    if processes.world == 1:
        return [_rng_state()]
    gathered = [None] * processes.world if processes.main else None
    torch.distributed.gather_object(_rng_state(), gathered, dst=0)
    return gathered


def _set_rng_state(state: dict):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(folder: Path, step: int, model, optimizer, scheduler, config: dict, processes, keep: int,
         data_fingerprint: str | None = None) -> Path:
    """Write ``folder/step_<step>`` (every process must call it) and keep the ``keep`` newest;
    data_fingerprint: the training records' (``Prompts.fingerprint``), compared on --resume."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = {
        "model": get_model_state_dict(model, options=options),
        # None for an optimizer that has not stepped yet (dynamic sampling skipped every update
        # so far): the state-dict API would first give it a state by a zero-lr step, which
        # counts in Adam's bias correction and so changes the run that saved
        "optimizer": get_optimizer_state_dict(model, optimizer, options=options) if optimizer.state else None,
        "scheduler": scheduler.state_dict(),
        "rng": _rng_states(processes),  # one per process
        "step": step,
        "config": config,
    }
    path = Path(folder) / f"{PREFIX}{step:08d}"
    if processes.main:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in Path(folder).glob(f".tmp_{PREFIX}*"):  # saves cut short (a second Ctrl-C), any step
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(folder) / f".tmp_{PREFIX}{step:08d}"
        tmp.mkdir()
        with synced(tmp / "state.pt", "wb") as f:
            torch.save(state, f)
        # the config alone too: --resume compares it before loading anything
        with synced(tmp / "config.json") as f:
            f.write(json.dumps(config, indent=2))
        if data_fingerprint is not None:
            with synced(tmp / DATA_FINGERPRINT) as f:
                f.write(data_fingerprint)
        # the same step saved again (--resume of a finished run): the old one is set aside, not
        # deleted, until the new one is in place; latest() falls back to it in between
        aside = Path(folder) / f"{ASIDE}{path.name}"
        if path.exists():
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(path, aside)
        os.replace(tmp, path)
        for done in Path(folder).glob(f"{ASIDE}{PREFIX}*"):  # this one's, or one a resume started from
            shutil.rmtree(done, ignore_errors=True)
        for old in sorted(Path(folder).glob(f"{PREFIX}*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    processes.barrier()
    return path


def latest(folder: Path) -> Path | None:
    found = {p.name: p for p in Path(folder).glob(f"{PREFIX}*") if (p / "state.pt").exists()}
    for p in Path(folder).glob(f"{ASIDE}{PREFIX}*"):  # a crash while the same step was saved again
        if (p / "state.pt").exists():
            found.setdefault(p.name[len(ASIDE):], p)
    return found[max(found)] if found else None


def saved_config(path: Path) -> dict:
    """The config a checkpoint was written with, without loading its tensors."""
    path = Path(path)
    with _readable(path):
        if (path / "config.json").exists():
            return json.loads((path / "config.json").read_text())
        # checkpoints written before config.json was: memory-mapped, so nothing large is read
        return torch.load(path / "state.pt", map_location="cpu", weights_only=False, mmap=True)["config"]


def saved_data_fingerprint(path: Path) -> str | None:
    """The training records' fingerprint a checkpoint was written with (None before they were)."""
    file = Path(path) / DATA_FINGERPRINT
    if not file.exists():
        return None
    with _readable(Path(path)):
        text = file.read_text()
        if not re.fullmatch("[0-9a-f]{64}", text):
            raise ValueError(f"{DATA_FINGERPRINT} holds no sha256")
        return text


@contextlib.contextmanager
def synced(path: Path, mode: str = "w"):
    """path open for writing, on disk once the block ends (a crash after leaves all of it)."""
    with open(path, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def unwritable(folder: Path) -> Path | None:
    """The place that stops folder being made or written in (itself, or the nearest parent that
    exists: a file, or without write permission), else None: found at the start, not after
    minutes of work."""
    place = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    return None if place.is_dir() and os.access(place, os.W_OK | os.X_OK) else place


@contextlib.contextmanager
def _readable(path: Path):
    """A damaged checkpoint (a disk error, a file cut short by hand) as a ConfigError naming it
    and the one --resume would fall back to once it is deleted."""
    try:
        yield
    except (RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as e:
        from fastrl.trainer.config import ConfigError

        before = sorted(p for p in path.parent.glob(f"{PREFIX}*") if p.name < path.name and (p / "state.pt").exists())
        then = f"delete it to resume from {before[-1]}" if before else "delete it to resume from step 0"
        raise ConfigError(f"--resume: the checkpoint {path} cannot be read ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}): {then}") from e


def load(path: Path, model, optimizer, scheduler, processes) -> dict:
    """Restore a checkpoint written by ``save`` into model/optimizer/scheduler (each
    process reads the file) and the RNG states (each process its own where the checkpoint
    has as many processes, else the first's). Returns the saved record (step, config)."""
    with _readable(Path(path)):
        state = torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, state["model"], options=options)
    if state["optimizer"] is not None:
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)
    scheduler.load_state_dict(state["scheduler"])
    # the saved lrs follow the schedule the checkpoint was written under; a resumed run may
    # be longer or shorter (run.steps): its first update takes this run's schedule too
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    rng = state["rng"]
    if isinstance(rng, list):  # (checkpoints from before held one dict: the main process's)
        rng = rng[processes.rank] if len(rng) == processes.world else rng[0]
    _set_rng_state(rng)
    return {"step": state["step"], "config": state["config"]}
