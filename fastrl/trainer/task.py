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
from dataclasses import dataclass

SEPARATOR = "\n\n"
PAD, EOS = "<pad>", "<eos>"
SYMBOLS = [PAD, EOS, *"0123456789", ",", "=", SEPARATOR, "\n"]  # "\n": a PRM's step separator


def tokenizer():
    """A ``PreTrainedTokenizerFast`` over SYMBOLS, one token per character (the step
    separator is one token); it saves and loads like any Hugging Face tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({s: i for i, s in enumerate(SYMBOLS)}, unk_token=PAD))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n\n|[^\n]|\n"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, padding_side="left")


def tiny_model(vocab_size: int, hidden_size: int = 64, num_layers: int = 2, seed: int = 0):
    """A randomly initialised Llama of about 100k parameters (hidden 64, 2 layers)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, pad_token_id=SYMBOLS.index(PAD),
                         eos_token_id=SYMBOLS.index(EOS), bos_token_id=None, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str
    steps: tuple[str, ...]  # the running maxima, the last one is the answer


def problem(rng: random.Random, operands: int = 3) -> Problem:
    digits = [rng.randrange(10) for _ in range(operands)]
    steps = tuple(str(max(digits[:i + 1])) for i in range(1, operands))
    return Problem(",".join(map(str, digits)) + "=", steps[-1], steps)


def problems(seed: int, step: int, count: int, operands: int = 3) -> list[Problem]:
    """The prompts of training step ``step``: a function of (seed, step) alone, so a resumed
    run sees the data an uninterrupted one would."""
    rng = random.Random(f"fastrl-task:{seed}:{step}")
    return [problem(rng, operands) for _ in range(count)]


def outcome_reward(response: str, answer: str) -> float:
    digits = [c for c in response if c.isdigit()]
    return float(bool(digits) and digits[-1] == answer)


def step_scores(steps: list[str], expected: tuple[str, ...]) -> list[float]:
    """One score per step of a response (its text between blank lines): +1 where step i is
    exactly the i-th running maximum, 0 for an empty step (e.g. EOS alone after a blank
    line), -1 otherwise."""
    return [0.0 if not s.strip() else 1.0 if i < len(expected) and s.strip() == expected[i] else -1.0
            for i, s in enumerate(steps)]
