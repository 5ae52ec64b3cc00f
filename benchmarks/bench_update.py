"""A training step's forwards and update: micro-batches of similar-length rows over their columns, against full-width ones.

One step of B responses on the built-in tiny Llama widened to hidden 256, 4 layers (float32,
vocabulary of the built-in task), GRPO with B / 8 micro-batches of 8 rows (algo.grad_accum):
the old policy's no-grad forward (``fastrl.trainer.scoring.in_micro_batches``), then one update
(``Trainer.update``: forward, backward, AdamW step). Prompts of 8 to 32 tokens; response lengths
long-tailed as in RL (log-normal, median N / 8, capped at N: most short, a few long), printed.
Providers:
- fastrl: the trainer as it is: rows sorted by length into the micro-batches, each computed over
  the columns its rows use (``fastrl.trainer.scoring.micro_batches``);
- full_width: contiguous micro-batches over every column of the batch (as the trainer was).
Both give the same loss and gradient norm (compared: to 1e-4 of the larger on the CPU, 3e-2 on a
GPU, whose forwards run under bf16 autocast, the trainer's default there).

    python benchmarks/bench_update.py [--quick] [--device cuda] [--shape B,N]
    fastrl bench update --quick
"""
from __future__ import annotations

import contextlib
import functools
import sys
import tempfile
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

CPU_SHAPES = [(64, 224)]
GPU_SHAPES = [(64, 224), (256, 224)]
QUICK_SHAPES = [(16, 64)]
PROMPTS = (8, 32)  # prompt lengths, uniform in this range
MODEL = {"tiny_hidden_size": 256, "tiny_layers": 4}  # (its 256 positions hold a prompt and N <= 224 tokens)


def lengths(B: int, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(B * 1000 + N)
    prompts = torch.randint(PROMPTS[0], PROMPTS[1] + 1, (B,), generator=g)
    responses = (torch.randn(B, generator=g) + torch.log(torch.tensor(N / 8))).exp().round().clamp(1, N).long()
    return prompts, responses


def trainer_and_batch(B: int, N: int, device: torch.device):
    """A Trainer (its output folder temporary) and a step's Batch in the layout of
    ``Rollout.sequences()``: random tokens, advantages and rows of the lengths above."""
    from fastrl.algos.pure import Credit
    from fastrl.ops.logprobs import TokenStats
    from fastrl.trainer.config import TrainConfig
    from fastrl.trainer.train import Batch, Trainer

    folder = tempfile.mkdtemp(prefix="bench_update_")
    config = TrainConfig.from_dict({
        "model": MODEL, "rollout": {"group_size": 8, "max_new_tokens": N},
        "data": {"prompts_per_step": B // 8}, "algo": {"grad_accum": B // 8},
        "run": {"output_dir": folder, "progress": False, "device": str(device)}})
    trainer = Trainer(config)
    prompts, responses = lengths(B, N)
    P, R = PROMPTS[1], int(responses.max())
    g = torch.Generator().manual_seed(B)
    input_ids = torch.randint(2, len(trainer.tokenizer), (B, P + R), generator=g)
    columns = torch.arange(P + R)
    attention_mask = ((columns >= P - prompts[:, None]) & (columns < P + responses[:, None])).long()
    response_mask = ((columns >= P) & (columns < P + responses[:, None])).long()
    input_ids = torch.where(attention_mask != 0, input_ids, trainer.pad)
    advantages = torch.randn(B, 1, generator=g) * response_mask
    scores = torch.zeros(B)
    to = functools.partial(torch.Tensor.to, device=device)
    batch = Batch(0, to(input_ids), to(attention_mask), to(response_mask), to(response_mask), None, None, None,
                  Credit(to(advantages), None), to(scores), to(scores), to(responses), to(scores) == 0, None, 0.0,
                  [{}] * B, [""] * B, to(scores) == 0)
    batch.old = TokenStats(torch.zeros(B, P + R, device=device))
    return trainer, batch


def prepared(B: int, N: int, device: torch.device, provider: str):
    from fastrl.trainer import scoring

    trainer, batch = trainer_and_batch(B, N, device)
    T = trainer.cfg.rollout.temperature

    def contiguous(rows, attention_mask, parts, *_):  # the trainer's micro-batches before: every column
        return [(part, slice(None)) for part in torch.tensor_split(rows, parts)]

    def step():
        with mock.patch.object(scoring, "micro_batches", contiguous) if provider == "full_width" \
                else contextlib.nullcontext():
            with torch.no_grad():
                batch.old = scoring.in_micro_batches(lambda rows, cols: trainer.module(
                    batch.input_ids[rows, cols], batch.attention_mask[rows, cols], batch.response_mask[rows, cols],
                    T)[0], batch.attention_mask, trainer.cfg)
            return trainer.update(batch)
    step.comparable = lambda out: torch.tensor([out["loss"], out["grad_norm"]])
    # on a GPU the forwards run under bf16 autocast (the trainer's default), where other shapes round otherwise
    step.tolerance = 1e-4 if device.type == "cpu" else 3e-2
    return step


def cases(shapes, device) -> list[harness.Case]:
    return [harness.Case("update", {"B": B, "N": N}, provider, functools.partial(prepared, B, N, device, provider))
            for B, N in shapes for provider in ("fastrl", "full_width")]


def describe(shapes):
    for B, N in shapes:
        prompts, responses = lengths(B, N)
        tokens, width = int((prompts + responses).sum()), PROMPTS[1] + int(responses.max())
        print(f"  B={B:<4} N={N:<4} response lengths: median {int(responses.median())}, max {int(responses.max())}; "
              f"tokens {tokens} of {B * width} in the padded batch ({tokens / (B * width):.0%})")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = harness.parse_args(__doc__.splitlines()[0], "B,N", argv, repeat={"cpu": 5}, warmup={"cpu": 1})
    shapes = harness.shapes(args, QUICK_SHAPES, CPU_SHAPES, GPU_SHAPES)
    bad = [f"{B},{N}" for B, N in shapes if B % 8 or N > 224]
    if bad:
        harness.usage_error(f"--shape {', '.join(bad)}: B must be a multiple of 8 (groups of 8) and N at most 224 "
                            "(the tiny model's 256 positions)")
    found = cases(shapes, args.device)
    if args._probe is None:
        print(f"model: built-in tiny Llama, {MODEL}, float32; prompts of {PROMPTS[0]} to {PROMPTS[1]} tokens; "
              f"micro-batches of 8 rows; {harness.device_name(args.device)}")
        describe(shapes)
    return harness.run("update", found, args, __file__, argv)


if __name__ == "__main__":
    harness.command_line(main)
