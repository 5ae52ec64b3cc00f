"""The orchestrator: rollout -> reward -> credit -> loss -> update (DESIGN 1)."""
from fastrl.trainer.rollout import Rollout, rollout

__all__ = ["Rollout", "rollout"]
