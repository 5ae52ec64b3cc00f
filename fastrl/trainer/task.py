"""The built-in task of ``fastrl train`` with no arguments: the largest of a few digits,
generated on the fly, with a character-level tokenizer and a tiny Llama built here
(nothing is downloaded).

A prompt is ``operands`` digits joined by commas, e.g. ``3,8,5=``; the answer is their
maximum. The expected response writes the running maximum after each further digit,
one step per line, the last one being the answer: ``8\n\n8<eos>``. Steps end in a
blank line, the step separator of DESIGN 3.4, so PURE splits responses here as it does
text.

Outcome reward: 1 when the last digit of the response is the answer, else 0. A random
policy writes some digit last, right about one time in ten: it scores about 0.1 from the
start, and GRPO lifts it to about 0.9 in a few hundred steps. Process reward (PURE,
programmatic, no model): step i scores +1 when it is exactly the i-th running maximum
(the last step: the answer), 0 when empty, -1 otherwise.

(Arithmetic mod 10 on the same scale, tried first, did not move from 0.1 in 1,500 GRPO
steps: an addition table is a harder thing to find from a 10% reward than a comparison.)
"""
from __future__ import annotations

import random

SEPARATOR = "\n\n"
PAD, EOS = "<pad>", "<eos>"
SYMBOLS = [PAD, EOS, *"0123456789", ",", "=", SEPARATOR, "\n"]  # "\n": a PRM's step separator


def char_tokenizer(symbols: list[str]):
    """A ``PreTrainedTokenizerFast`` over ``symbols`` (symbols[0] the padding, symbols[1] the
    EOS), one token per character except the blank line, which is one token; it saves and
    loads like any Hugging Face tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({s: i for i, s in enumerate(symbols)}, unk_token=symbols[0]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n\n|[^\n]|\n"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=symbols[0], eos_token=symbols[1],
                                   padding_side="left")


def tiny_model(vocab_size: int, hidden_size: int = 64, num_layers: int = 2, seed: int = 0):
    """A randomly initialised Llama of about 100k parameters (hidden 64, 2 layers), token 0
    the padding and 1 the EOS (as ``char_tokenizer``)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


class MaxTask:
    """The built-in task (module docstring). A task for ``fastrl train`` offers its
    tokenizer, the prompts of each step (records with at least "prompt"), an outcome
    reward and step scores for PURE; ``Trainer(config, task=...)`` takes any such object."""

    name = "max"

    def __init__(self, operands: int = 3):
        self.operands = operands

    def tokenizer(self):
        return char_tokenizer(SYMBOLS)

    def problems(self, seed: int, step: int, count: int) -> list[dict]:
        """The prompts of training step ``step``: a function of (seed, step) alone, so a
        resumed run sees the data an uninterrupted one would."""
        rng = random.Random(f"fastrl-task:{seed}:{step}")
        out = []
        for _ in range(count):
            digits = [rng.randrange(10) for _ in range(self.operands)]
            steps = [str(max(digits[:i + 1])) for i in range(1, self.operands)]
            out.append({"prompt": ",".join(map(str, digits)) + "=", "answer": steps[-1], "steps": steps})
        return out

    def outcome_reward(self, row: dict, response: str) -> float:
        digits = [c for c in response if c.isdigit()]
        return float(bool(digits) and digits[-1] == row["answer"])

    def step_scores(self, row: dict, steps: list[str]) -> list[float]:
        """One score per step of a response (its text between blank lines): +1 where step i
        is exactly the i-th running maximum, 0 for an empty step (e.g. EOS alone after a
        blank line), -1 otherwise."""
        expected = row["steps"]
        return [0.0 if not s.strip() else 1.0 if i < len(expected) and s.strip() == expected[i] else -1.0
                for i, s in enumerate(steps)]
