"""Run by test_distributed.py under torchrun (and alone): a short training run, its final
weights and metrics written to the output folder."""
import json
import sys

from fastrl.trainer.config import TrainConfig
from fastrl.trainer.train import train

output_dir, mode, *overrides = sys.argv[1:]
resume = "--resume" in overrides
overrides = [o for o in overrides if o != "--resume"]
config = TrainConfig.from_dict({
    "run": {"steps": 3, "output_dir": output_dir, "progress": False, "distributed": mode},
    "model": {"dtype": "float64"},
    "data": {"prompts_per_step": 8},
    "rollout": {"group_size": 4},
    "optim": {"lr": 0.003},
}, overrides)
result = train(config, resume=resume)
if result.metrics:
    (result.output_dir / "result.json").write_text(json.dumps(result.metrics))
