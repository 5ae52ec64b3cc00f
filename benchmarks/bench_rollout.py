"""Rollout: fastrl.trainer.rollout with ended rows leaving the model's batch, against the same loop at full width.

One rollout of B prompts (random lengths 8 to 32, left-padded), up to N new tokens each, on a
random Llama (hidden 256, 4 layers of 4 heads, MLP 1024, vocab 32000, float32 on every device:
bf16 with sdpa decodes a row differently in another batch, and the two providers' tokens would
part), with the ``ends`` entry of each row's shape:
- early: the EOS logit raised by 7.0 (about a 1 in 30 chance of EOS a step from the random
  model's nearly flat logits), so most rows end early and a few run on (the lengths are printed:
  at B=32, N=128 a median of 27 tokens, the longest 88);
- none: no stop token, every row runs N steps (what compaction costs where it never happens).
Providers:
- fastrl: rollout as it is: once at most half the rows the model runs are going, the KV cache,
  mask and positions are cut down to them;
- full_width: the same loop with compaction off, every row run to the end (as rollout was, and
  as Hugging Face's generate runs). Both sample the same tokens (checked: their log-probs).
- hf_generate: transformers' ``generate`` (do_sample, top_k 0, top_p 1: the same distribution),
  what TRL's GRPOTrainer runs without vLLM. It draws with torch's generator (seeded alike in each
  call), so its tokens, and where its rows end, are its own: its lengths are printed too.

    python benchmarks/bench_rollout.py [--quick] [--device cuda] [--shape B,N] [--ends early]
    fastrl bench rollout --quick
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import sys
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

rollout_module = importlib.import_module("fastrl.trainer.rollout")  # (fastrl.trainer.rollout is also the function)

CPU_SHAPES = [(32, 128)]
GPU_SHAPES = [(32, 128), (256, 512)]
QUICK_SHAPES = [(8, 64)]  # (rows end there too: the model runs 8, 4, 2, then 1 of them)
ENDS = {"early": 7.0, "none": None}  # the EOS logit's bias; None: no stop token
EOS, PAD = 2, 0
MODEL = dict(vocab_size=32000, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=2048)


@functools.lru_cache(maxsize=None)
def model(device: torch.device, bias):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(**MODEL, pad_token_id=PAD, eos_token_id=EOS)).eval().to(device)
    if bias is not None:
        def raise_eos(module, args, logits):
            logits[..., EOS] += bias
        lm.lm_head.register_forward_hook(raise_eos)
    return lm


def inputs(B: int, device: torch.device):
    g = torch.Generator().manual_seed(B)
    prompts = [torch.randint(3, MODEL["vocab_size"], (int(n),), generator=g).tolist()
               for n in torch.randint(8, 33, (B,), generator=g)]
    return prompts, torch.randint(0, 2**62, (B,), generator=g).to(device)


def prepared(B: int, N: int, ends: str, device: torch.device, provider: str = "fastrl"):
    """The model and inputs (built here, not in the timed call) and the call: one rollout."""
    lm, (prompts, seeds), eos = model(device, ENDS[ends]), inputs(B, device), None if ENDS[ends] is None else EOS
    if provider == "hf_generate":
        batch = rollout_module._prompt_batch(prompts, None, PAD, device)  # (left-padded, as generate wants)

        def generate():
            torch.manual_seed(B)
            out = lm.generate(input_ids=batch[0], attention_mask=batch[1], do_sample=True, top_k=0, top_p=1.0,
                              temperature=1.0, max_new_tokens=N, eos_token_id=eos, pad_token_id=PAD)
            return out[:, batch[0].shape[1]:]
        return generate

    def call():
        with mock.patch.object(rollout_module, "_compactable", lambda cache: False) if provider == "full_width" \
                else contextlib.nullcontext():
            return rollout_module.rollout(lm, prompts, N, eos, PAD, seeds=seeds, progress=False)
    call.comparable = lambda out: out.logprob
    return call


def cases(shapes, ends, device) -> list[harness.Case]:
    return [harness.Case("rollout", {"B": B, "N": N, "ends": end}, provider,
                         functools.partial(prepared, B, N, end, device, provider))
            for B, N in shapes for end in ends for provider in ("fastrl", "full_width", "hf_generate")]


def lengths(shapes, ends, device):
    """The responses' lengths and the rows the model ran over all steps, with compaction and without."""
    for B, N in shapes:
        for end in ends:
            call, widths = prepared(B, N, end, device), []
            hook = model(device, ENDS[end]).lm_head.register_forward_hook(
                lambda module, args, out: widths.append(out.shape[0]))
            try:
                r = call()
            finally:
                hook.remove()
            n = r.response_mask.sum(1).float()
            print(f"  B={B:<4} N={N:<5} ends={end:<6} lengths: mean {n.mean():.1f}, median {n.median():.0f}, "
                  f"max {r.response_ids.shape[1]}; rows run over the steps: {sum(widths)} (full width "
                  f"{B * len(widths)}); widths {sorted(set(widths), reverse=True)}")
            generated = prepared(B, N, end, device, "hf_generate")()
            ended = (generated == EOS).cumsum(1).cummax(1).values - (generated == EOS).long()  # after the EOS
            n = (ended == 0).sum(1).float() if ENDS[end] is not None else torch.full((B,), float(N))
            print(f"  {'':<23} hf_generate's lengths: mean {n.mean():.1f}, median {n.median():.0f}, "
                  f"max {generated.shape[1]}")


def add_options(parser):
    parser.add_argument("--ends", default=None, help=f"comma-separated, of {', '.join(ENDS)} (default: both)")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = harness.parse_args(__doc__.splitlines()[0], "B,N", argv, extra=add_options, repeat={"cpu": 5},
                              warmup={"cpu": 1})
    shapes = harness.shapes(args, QUICK_SHAPES, CPU_SHAPES, GPU_SHAPES)
    ends = list(ENDS) if args.ends is None else [e.strip() for e in args.ends.split(",") if e.strip()]
    unknown = [e for e in ends if e not in ENDS]
    if unknown or not ends:
        harness.usage_error(f"--ends: unknown {unknown or args.ends!r}; known: {', '.join(ENDS)}")
    found = cases(shapes, ends, args.device)
    if args._probe is None:
        print(f"model: random Llama {MODEL}, float32; prompts of 8 to 32 tokens; {harness.device_name(args.device)}")
        lengths(shapes, ends, args.device)
    return harness.run("rollout", found, args, __file__, argv)


if __name__ == "__main__":
    harness.command_line(main)
