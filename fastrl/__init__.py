"""fastrl: fused kernels and a thin orchestrator for RL post-training of language models."""

__version__ = "0.1.0"

from fastrl import ops  # noqa: E402,F401  (defines torch.ops.fastrl.* and loads the kernels)
