"""Advantage estimators and losses composed from fastrl's ops (DESIGN 3.4)."""
from fastrl.algos.rover import (
    RoverTargets,
    old_policy_stats,
    rover_advantages,
    rover_loss,
    rover_loss_hf,
    rover_targets,
)

__all__ = ["RoverTargets", "old_policy_stats", "rover_advantages", "rover_loss", "rover_loss_hf", "rover_targets"]
