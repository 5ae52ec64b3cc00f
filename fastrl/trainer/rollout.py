"""Batched generation for a Hugging Face causal LM with its KV cache, sampling with
``fastrl.ops.sample`` (DESIGN 3.3) at every step.

Prompts are left-padded and position ids come from the attention mask, as Hugging
Face's ``generate`` does, so each row decodes as it would alone. Step ``i`` samples with
``offset=i`` and the row's seed: equal seeds give equal tokens, whatever the batch, where the
model's numerics do not depend on the batch (bf16 with sdpa attention: they do).
Once at most half the rows the model runs are still going, the ended ones leave its batch.
"""
from __future__ import annotations

import inspect
import operator
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Optional, Union

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fastrl.integrations.hf import count_positions, unwrapped, vocabulary_size
from fastrl.ops import _checks, sample
from fastrl.ops.logprobs import TokenStats
from fastrl.ops.sampling import check_temperature_scale


@dataclass
class Rollout:
    """A batch of sampled responses. R is the number of steps run: up to
    max_new_tokens, fewer when every row reached EOS first.

    prompt_ids, prompt_mask: [B, P] left-padded prompts and their attention mask.
    response_ids: [B, R] sampled tokens, the row's EOS included, pad_token_id after it.
    response_mask: [B, R] int64, 1 up to and including the row's EOS.
    logprob: [B, R] log-probability under the filtered (top-k/top-p) sampling distribution;
    policy_logprob: under the unfiltered temperature-scaled policy; mean_logp: mean over
    the vocabulary of that policy's log-softmax (ROVER's m). All 0 where response_mask is 0.
    ended: [B] bool, True where the row stopped at EOS rather than at max_new_tokens.
    seeds: [B] the seeds used (replaying them gives the same tokens).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprob: torch.Tensor
    policy_logprob: torch.Tensor
    mean_logp: torch.Tensor
    ended: torch.Tensor
    seeds: torch.Tensor

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, response_mask), each [B, P + R]: the layout of
        ``fastrl.integrations.hf.response_logprobs`` for the training-side forward."""
        input_ids = torch.cat([self.prompt_ids, self.response_ids], 1)
        attention_mask = torch.cat([self.prompt_mask, self.response_mask], 1)
        return input_ids, attention_mask, F.pad(self.response_mask, (self.prompt_ids.shape[1], 0))

    def sampler_stats(self, weights_identical: bool = False) -> TokenStats:
        """The sampler's policy_logprob and mean_logp in the [B, P + R] layout of
        ``sequences()``, as old-policy values for ROVER or PPO. Only valid where the
        rollout ran with exactly the training weights (DESIGN 3.4: otherwise compute them
        with a training-side forward of the rollout policy), hence the explicit flag."""
        if weights_identical is not True:
            raise ValueError("the sampler's log-probs stand in for the rollout policy's only where rollout and "
                             "training weights are identical: pass weights_identical=True to say so, or use "
                             "fastrl.algos.old_policy_stats")
        pad = (self.prompt_ids.shape[1], 0)
        return TokenStats(F.pad(self.policy_logprob, pad), None, F.pad(self.mean_logp, pad))


@torch.no_grad()  # not inference_mode: the ids are reused as inputs of the training forward
def rollout(
    model,
    prompts: Union[Sequence[Sequence[int]], torch.Tensor],
    max_new_tokens: int,
    eos_token_id: Union[int, Sequence[int], None],
    pad_token_id: int,
    attention_mask: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seeds: Optional[torch.Tensor] = None,
    progress: bool = True,
    max_rows: Optional[int] = None,
) -> Rollout:
    """Sample up to max_new_tokens tokens after each prompt (see ``Rollout``).

    prompts: a list of token-id lists (left-padded here), or a [B, P] integer tensor,
    left-padded, with its attention_mask (None: no padding). eos_token_id: one id or
    several; a row stops at the first (None: no stop token, every row runs max_new_tokens).
    Token ids must lie in the model's vocabulary. temperature, top_k, top_p: as
    ``fastrl.ops.sample``. seeds: LongTensor[B]; None draws them from torch's default generator. progress: a
    tqdm bar over the decoding steps. The model runs as it is (call ``model.eval()`` to
    turn dropout off) on the device of its first parameter, where the outputs live.
    max_rows: at most this many prompts decode at once (their KV cache), the next ones after
    them, with the same tokens; None: all of them.

    Rows that have ended leave the model's batch: when the rows still going are at most half
    of those it runs, the KV cache, attention mask and positions are cut down to them, and
    the outputs keep the [B, R] layout. Each cut (at most log2(B) of them) copies the kept
    rows' keys and values a layer at a time, so it needs at most one layer's kept rows in
    memory beside the cache. Only transformers' dynamic cache with full or sliding-window
    layers is cut; any other (static, offloaded, quantized, hybrid or recurrent layers, a
    model's own) runs every row to the end, as generate does.
    """
    device = next(model.parameters()).device
    input_ids, prompt_mask = _prompt_batch(prompts, attention_mask, pad_token_id, device)
    B = input_ids.shape[0]
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    eos_ids = [] if eos_token_id is None else _token_ids("eos_token_id", eos_token_id)
    _check_vocabulary(model, input_ids, prompt_mask, eos_ids, pad_token_id)
    limit, longest = position_limit(model), int(prompt_mask.sum(1).max())  # (positions count each row's own tokens)
    if limit is not None and longest + max_new_tokens > limit:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) after a prompt of {longest} tokens goes past "
                         f"the model's {limit} positions")
    eos = torch.tensor(eos_ids, dtype=torch.int64, device=device)
    weights = next(model.parameters()).dtype
    _check_sampling(temperature, top_k, top_p, weights if weights.is_floating_point else torch.float32)
    if seeds is None:
        seeds = torch.randint(0, 2**62, (B,))
    _checks.tensor("seeds", seeds, ndim=1)
    if seeds.dtype != torch.int64:
        raise TypeError(f"seeds must be int64, got {seeds.dtype}")
    if seeds.shape[0] != B:
        raise ValueError(f"seeds must have one seed per prompt ({B}), got {seeds.shape[0]}")
    seeds = seeds.to(device)
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise ValueError(f"max_rows must be None or an int >= 1, got {max_rows!r}")
    at_once = B if max_rows is None else max_rows
    parts = [_decode(model, input_ids[start:start + at_once], prompt_mask[start:start + at_once], max_new_tokens,
                     eos, pad_token_id, temperature, top_k, top_p, seeds[start:start + at_once], progress)
             for start in range(0, B, at_once)]
    return parts[0] if len(parts) == 1 else _joined(parts, pad_token_id)


def _decode(model, input_ids, prompt_mask, max_new_tokens, eos, pad_token_id, temperature, top_k, top_p, seeds,
            progress) -> Rollout:
    """rollout's decoding loop, over prompts it has checked."""
    B, device = input_ids.shape[0], input_ids.device
    mask, positions = prompt_mask, count_positions(prompt_mask)
    takes = inspect.signature(unwrapped(model, through_data_parallel=True).forward).parameters
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in takes else {}
    # transformers >= 5.2x names the KV cache `cache` (past_key_values is deprecated, going in 5.40)
    cache_name = "cache" if "cache" in takes else "past_key_values"
    passes_on = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in takes.values())
    if cache_name not in takes and not passes_on:  # (Mamba's takes cache_params: getattr(out, ...) failed after a step)
        raise TypeError(f"rollout needs a model whose forward takes a KV cache (past_key_values or cache); "
                        f"{type(model).__name__}'s takes neither")
    step_ids, cache = input_ids, None
    ended = torch.zeros(B, dtype=torch.bool, device=device)
    # the rows the model runs (their places in the batch) and their seeds: all of them until compacted
    rows, width, run_seeds = torch.arange(B, device=device), B, seeds
    columns = []
    bar = tqdm(total=max_new_tokens, desc="rollout", unit="tok", disable=not progress, leave=False)
    for step in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    **{cache_name: cache}, **keep_last)
        cache = getattr(out, cache_name)
        if cache is None:
            raise RuntimeError(f"the model returned no KV cache ({cache_name}=None although use_cache=True: "
                               "Hugging Face turns the cache off under gradient checkpointing in train mode); "
                               "call model.eval() or disable gradient checkpointing before the rollout")
        drawn = sample(out.logits[:, -1], temperature, top_k, top_p, run_seeds, offset=step)
        if width < B:  # each row's values back in its place; the rows left out have ended (masked below)
            drawn = type(drawn)(*(x.new_zeros(B).index_copy_(0, rows, x) for x in drawn))
        live = ~ended
        token = torch.where(live, drawn.tokens, pad_token_id)
        zero = drawn.logprob.new_zeros(())
        columns.append((token, live, *(torch.where(live, x, zero) for x in drawn[1:])))
        ended = ended | (live & torch.isin(token, eos))
        bar.update()
        going = int(B - ended.sum())  # one host sync per step: generate's stopping check, and the compaction's
        if not going or step == max_new_tokens - 1:  # (after the last step: no cache to cut for nothing)
            break
        step_ids, mask, positions = token[rows, None], F.pad(mask, (0, 1), value=1), positions[:, -1:] + 1
        # halving: the model runs fewer than twice the rows going, for at most log2(B) copies of the cache,
        # each of half the rows before (all together less than one copy of the whole) and as many batch
        # shapes; cutting as each row ends would copy the cache, as much as a step's attention reads,
        # to save that one row's share of a step
        if 2 * going <= width and _compactable(cache):
            keep = ended[rows].byte().argsort(stable=True)[:going]  # the rows going, in order (nonzero would sync)
            for layer in cache.layers:  # the index on each layer's device (a model split over GPUs)
                layer.batch_select_indices(keep.to(getattr(getattr(layer, "keys", None), "device", keep.device)))
            rows, step_ids, mask, positions, run_seeds = (x[keep] for x in (rows, step_ids, mask, positions,
                                                                             run_seeds))
            width = going
    bar.close()
    token, live, logprob, policy_logprob, mean_logp = (torch.stack(c, 1) for c in zip(*columns))
    return Rollout(input_ids, prompt_mask, token, live.long(), logprob, policy_logprob, mean_logp, ended, seeds)


def _joined(parts: list[Rollout], pad_token_id: int) -> Rollout:
    """Rollouts of consecutive prompts (padded alike) as one: the responses padded to the longest."""
    R = max(part.response_ids.shape[1] for part in parts)

    def field(name):
        values = [getattr(part, name) for part in parts]
        if name in ("response_ids", "response_mask", "logprob", "policy_logprob", "mean_logp"):
            fill = pad_token_id if name == "response_ids" else 0
            values = [F.pad(v, (0, R - v.shape[1]), value=fill) for v in values]
        return torch.cat(values)

    return Rollout(*(field(f.name) for f in fields(Rollout)))


def _compactable(cache) -> bool:
    """Whether each layer's ``batch_select_indices`` keeps exactly the rows asked for. In transformers'
    cache_utils a DynamicLayer indexes its keys and values, as does its sliding-window subclass
    (whose length counts the batch's tokens, not a row's). A quantized layer would keep its
    quantized part whole and a hybrid one its conv and recurrent states; static and
    linear-attention layers lack the method; an offloaded cache moves its layers between the
    CPU and the device (untried). Anything else (a subclass that overrides it, another
    library's cache, a tuple of tensors) is not known here: its batch stays whole."""
    utils = sys.modules.get("transformers.cache_utils")  # (loaded wherever a transformers cache exists)
    known = tuple(getattr(utils, name, None) for name in ("DynamicLayer", "DynamicSlidingWindowLayer"))
    # (getattr: a transformers without these names or attributes, older or newer, is not known here either)
    return (utils is not None and isinstance(cache, utils.Cache) and not getattr(cache, "offloading", True)
            and getattr(type(cache), "batch_select_indices", None) is getattr(utils.Cache, "batch_select_indices", 0)
            and all(type(layer) in known for layer in getattr(cache, "layers", [None])))


def position_limit(model) -> Optional[int]:
    """The positions the model has (max_position_embeddings, GPT-2's n_positions), if it says;
    with RoPE scaling, the original positions times its factor where that is more (YaRN on
    Qwen2.5 keeps 32768 there and runs to 131072), none for dynamic NTK scaling."""
    config = getattr(unwrapped(model, through_data_parallel=True), "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = next((getattr(config, key) for key in ("max_position_embeddings", "n_positions")
                  if isinstance(getattr(config, key, None), int)), None)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if limit is None or not isinstance(rope, dict):
        return limit
    kind, factor = rope.get("rope_type", rope.get("type")), rope.get("factor")
    if kind == "dynamic":
        return None
    if kind not in (None, "default") and isinstance(factor, (int, float)) and factor > 1:
        return max(limit, int(rope.get("original_max_position_embeddings", limit) * factor))
    return limit


def _prompt_batch(prompts, attention_mask, pad_token_id, device):
    """[B, P] left-padded ids and int64 mask on device, from lists or a padded tensor."""
    if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
        raise TypeError(f"pad_token_id must be an int, got {type(pad_token_id).__name__}")
    if isinstance(prompts, torch.Tensor):
        _checks.tensor("prompts", prompts, ndim=2)
        if prompts.dtype.is_floating_point or prompts.dtype.is_complex or prompts.dtype == torch.bool:
            raise TypeError(f"prompts must be an integer tensor, got {prompts.dtype}")
        if attention_mask is None:
            attention_mask = torch.ones_like(prompts)
        _checks.tensor("attention_mask", attention_mask, ndim=2)
        if attention_mask.shape != prompts.shape:
            raise ValueError(f"attention_mask must have the shape of prompts {tuple(prompts.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
        mask = (attention_mask != 0).long()
        if prompts.shape[0] == 0 or prompts.shape[1] == 0:
            raise ValueError(f"prompts must hold at least one token per row, got shape {tuple(prompts.shape)}")
        if bool((mask[:, 1:] < mask[:, :-1]).any()) or not bool(mask[:, -1].all()):
            raise ValueError("prompts must be left-padded: each attention_mask row zeros then ones, "
                             "ending with a token")
        # the padding's ids as pad_token_id: any id there (-100, say) would reach the embedding and the outputs
        ids = torch.where(mask != 0, prompts.to(mask.device, torch.int64), pad_token_id)
        return ids.to(device), mask.to(device)
    if attention_mask is not None:
        raise ValueError("attention_mask goes with a padded tensor of prompts, not with lists")
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise TypeError("prompts must be a non-empty list of token-id lists or a [B, P] tensor")
    if any(isinstance(p, (str, bytes)) or not isinstance(p, (Sequence, torch.Tensor)) for p in prompts):
        raise TypeError("prompts must be a list of token-id lists, one per prompt, or a [B, P] tensor; got a list "
                        "holding something else (for one prompt's ids pass [ids], not ids)")
    rows = [_token_ids(f"prompts[{i}]", p) for i, p in enumerate(prompts)]
    P = max(map(len, rows))
    ids = torch.tensor([[pad_token_id] * (P - len(r)) + r for r in rows], dtype=torch.int64)
    mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows], dtype=torch.int64)
    return ids.to(device), mask.to(device)


def _token_ids(name, ids) -> list[int]:
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    ids = [ids] if not isinstance(ids, Sequence) or isinstance(ids, (str, bytes)) else ids
    try:
        if not ids or any(isinstance(i, bool) for i in ids):
            raise TypeError
        return [operator.index(i) for i in ids]  # ints, numpy ints, 0-d integer tensors
    except TypeError:
        raise TypeError(f"{name} must be a token id or a non-empty list of token ids, got {ids!r}") from None


def _check_vocabulary(model, input_ids, mask, eos_ids, pad_token_id):
    """Token ids inside the model's vocabulary: one outside is an IndexError deep in the
    embedding (a pad id only once a row has ended), and an EOS id outside never stops a row."""
    size = vocabulary_size(model)
    if size is None:
        return
    for name, ids in (("eos_token_id", eos_ids), ("pad_token_id", [pad_token_id])):
        bad = [i for i in ids if not 0 <= i < size]
        if bad:
            raise ValueError(f"{name} must be in [0, {size}) (the model's vocabulary), got {bad[0]}")
    prompt_ids = input_ids[mask != 0]
    if prompt_ids.numel() and not bool(((prompt_ids >= 0) & (prompt_ids < size)).all()):
        raise ValueError(f"prompts hold token ids outside [0, {size}) (the model's vocabulary)")


def _check_sampling(temperature, top_k, top_p, dtype):
    # the same rules as fastrl.ops.sample, checked before the prefill rather than after it
    _checks.positive("temperature", temperature)
    check_temperature_scale(temperature, dtype)  # the logits are in the weights' dtype
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)):
        raise TypeError(f"top_k must be None or an int, got {type(top_k).__name__}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < _checks.number("top_p", top_p) <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
