"""Checkpoints: the policy (and value head), optimizer, scheduler, RNG states and the
step reached, written atomically (a temporary folder renamed into place) so that a crash
while writing leaves the previous checkpoint intact.

States are gathered whole on the main process through torch.distributed.checkpoint's
state-dict API, so one file serves any process count and DDP or FSDP2 alike.
"""
from __future__ import annotations

import os
import random
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


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(folder: Path, step: int, model, optimizer, scheduler, config: dict, processes, keep: int) -> Path:
    """Write ``folder/step_<step>`` (every process must call it) and keep the ``keep`` newest."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = {
        "model": get_model_state_dict(model, options=options),
        "optimizer": get_optimizer_state_dict(model, optimizer, options=options),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
        "step": step,
        "config": config,
    }
    path = Path(folder) / f"{PREFIX}{step:08d}"
    if processes.main:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(folder) / f".tmp_{PREFIX}{step:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        with open(tmp / "state.pt", "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        for old in sorted(Path(folder).glob(f"{PREFIX}*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    processes.barrier()
    return path


def latest(folder: Path) -> Path | None:
    found = sorted(p for p in Path(folder).glob(f"{PREFIX}*") if (p / "state.pt").exists())
    return found[-1] if found else None


def load(path: Path, model, optimizer, scheduler) -> dict:
    """Restore a checkpoint written by ``save`` into model/optimizer/scheduler (each
    process reads the file) and the RNG states. Returns the saved record (step, config)."""
    state = torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, state["model"], options=options)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return {"step": state["step"], "config": state["config"]}
