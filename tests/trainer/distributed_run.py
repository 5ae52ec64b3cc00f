"""Run by test_distributed.py under torchrun (and alone): a short training run, its final
weights and metrics written to the output folder. --interrupt-rank0-at=K: rank 0 alone gets
a SIGINT during step K (as when Ctrl-C reaches the processes at different points); the run
then writes interrupted.json."""
import json
import os
import signal
import sys
from pathlib import Path

from fastrl.trainer.config import TrainConfig
from fastrl.trainer.train import train

output_dir, mode, *overrides = sys.argv[1:]
resume = "--resume" in overrides
interrupt_at = next((int(o.split("=")[1]) for o in overrides if o.startswith("--interrupt-rank0-at=")), None)
overrides = [o for o in overrides if not o.startswith("--")]


def interrupt(trainer, metrics, batch):
    if trainer.proc.main and metrics["step"] == interrupt_at:
        os.kill(os.getpid(), signal.SIGINT)
    return {}


config = TrainConfig.from_dict({
    "run": {"steps": 3, "output_dir": output_dir, "progress": False, "distributed": mode},
    "model": {"dtype": "float64"},
    "data": {"prompts_per_step": 8},
    "rollout": {"group_size": 4},
    "optim": {"lr": 0.003},
}, overrides)
try:
    result = train(config, resume=resume, on_step=interrupt if interrupt_at else None)
except KeyboardInterrupt:
    (Path(config.run.output_dir) / f"interrupted_rank{os.environ.get('RANK', '0')}.json").write_text("{}")
    sys.exit(0)
if result.metrics:
    (result.output_dir / "result.json").write_text(json.dumps(result.metrics))
