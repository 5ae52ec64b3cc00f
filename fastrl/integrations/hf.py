"""Token log-probabilities of a Hugging Face causal LM without its [B, L, V] logits.

``response_logprobs`` runs the model's body to its last hidden states, keeps only the
rows that predict response tokens and hands them, with the lm_head's own weight (and
bias), to ``fastrl.ops.linear_logprobs``: the prompt and padding rows never meet the
head, and the logits of the others exist a chunk (on GPU a tile) at a time.

transformers is never imported: any model whose forward is ``lm_head(body(...)[0])``
works, where lm_head is an ``nn.Linear`` and the body is the model's one other
submodule. The logit rescalings that transformers' own causal LMs apply after the
head are folded into the temperature (see ``LOGIT_SCALES``); soft-capping, a tanh, and
masking vocabulary columns after the head (``MASKED_LOGITS``) are refused. The head's weight must be whole on one device: not an FSDP2/tensor-parallel
DTensor nor an offloaded (meta) parameter, since the head's forward hooks never run.
A wrapped model (PEFT with a LoRA-style adapter, the head not adapted; torch.compile's module,
run uncompiled) is read through the model it wraps; a DDP or FSDP wrapper is refused (its forward
must run: call fastrl inside the forward of the module it wraps).
"""
from __future__ import annotations

import inspect
import sys

import torch
import torch.nn.functional as F
from torch import nn

from fastrl.ops import _checks
from fastrl.ops.logprobs import INT_DTYPES, TokenStats, linear_logprobs

# Config fields that soft-cap the logits (tanh(z / c) * c) in transformers' causal LMs:
# Gemma 2/3/3n/4, VaultGemma, NanoChat; RecurrentGemma; xLSTM.
SOFTCAP_FIELDS = ("final_logit_softcapping", "logits_soft_cap", "output_logit_soft_cap")

# model_type -> (config field, +1: the forward multiplies the logits by it, -1: divides),
# as in each model's *ForCausalLM.forward in transformers. The same field name means
# opposite things (Granite divides by logits_scaling, HyperCLOVAX multiplies), and some
# models carry a field they never apply (MPT's logit_scale, Cohere2-Vision's): hence by type.
LOGIT_SCALES = {
    "cohere": ("logit_scale", 1),
    "cohere2": ("logit_scale", 1),
    "cohere2_moe": ("logit_scale", 1),
    "granite": ("logits_scaling", -1),
    "granitemoe": ("logits_scaling", -1),
    "granitemoehybrid": ("logits_scaling", -1),
    "granitemoeshared": ("logits_scaling", -1),
    "hyperclovax": ("logits_scaling", 1),
    "falcon_h1": ("lm_head_multiplier", 1),
}
SCALE_FIELDS = ("logit_scale", "logits_scaling", "lm_head_multiplier")

# model_type -> what its forward masks after the head (finfo.min in those columns): the fused
# head would normalise over tokens the model never emits.
MASKED_LOGITS = {"chameleon": "its image tokens"}


def unwrapped(model: nn.Module, through_data_parallel: bool = False) -> nn.Module:
    """The module a wrapper runs: torch.compile's, activation checkpointing's, a PEFT model's base
    model (a LoRA-style adapter lives in its layers), and DDP's or FSDP's only where
    through_data_parallel (their forward must run for the gradients to be reduced: a caller that
    would run the inner module refuses them instead). Their forwards take **kwargs only, so
    what the model takes is read here."""
    while True:
        if through_data_parallel and _data_parallel(model):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "_checkpoint_wrapped_module"):
            model = model._checkpoint_wrapped_module
        elif hasattr(model, "get_base_model"):
            if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
                raise ValueError(f"model is a PEFT model with a prompt-learning adapter "
                                 f"({model.active_peft_config.peft_type}): its virtual tokens are not supported")
            model = model.get_base_model()
        else:
            return model


def _data_parallel(model) -> bool:
    """DDP, or FSDP (version 1): where torch.distributed.fsdp was never imported (0.7 s, not done
    here), no model is one."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return isinstance(model, nn.parallel.DistributedDataParallel) or (
        fsdp is not None and isinstance(model, fsdp.FullyShardedDataParallel))


def split_causal_lm(model: nn.Module) -> tuple[nn.Module, nn.Linear, float]:
    """(body, lm_head, scale) of a causal LM whose logits are ``lm_head(body(...)[0]) * scale``;
    a wrapped model (PEFT with a LoRA-style adapter, torch.compile) by the model it wraps.

    Raises TypeError for a head that is not a plain ``nn.Linear`` on the body's output or a
    DDP/FSDP wrapper, ValueError for a config that soft-caps or rescales the logits in a way
    not known here.
    """
    if _data_parallel(model):
        raise TypeError(f"model is wrapped in {type(model).__name__}, whose forward must run for the gradients to "
                        "be reduced: call this inside the forward of the module it wraps, with that module's "
                        "causal LM (as fastrl's trainer does)")
    model = unwrapped(model)
    name = type(model).__name__
    if not isinstance(model, nn.Module) or not hasattr(model, "get_output_embeddings") or not hasattr(model, "config"):
        raise TypeError(f"model must be a Hugging Face causal LM (a PreTrainedModel with a head), got {name}")
    head = model.get_output_embeddings()
    children = dict(model.named_children())
    if not isinstance(head, nn.Linear):
        kind = f"{type(head).__module__}.{type(head).__qualname__}"  # (peft's adapted head is a "Linear" too)
        raise TypeError(f"model's output head must be an nn.Linear, {name}'s is {kind}")
    body = [module for module in children.values() if module is not head]
    if len(body) != 1 or len(children) != 2:
        # e.g. a head nested in a prediction module (BERT, RoBERTa) or a transform before it (Electra)
        raise TypeError(f"model must consist of a body and a linear head applied to its output; {name} has "
                        f"submodules {list(children)} and output head {type(head).__name__}")
    weight = head.weight
    if weight.device.type == "meta" or _is_dtensor(weight):
        raise ValueError(f"{name}'s lm_head weight is not a whole tensor on one device ({type(weight).__name__} on "
                         f"{weight.device}): offloaded or sharded (FSDP2, tensor parallel) heads are not supported")

    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for field in SOFTCAP_FIELDS:
        if getattr(text_config, field, None) is not None:
            raise ValueError(f"{name} soft-caps its logits (config.{field}={getattr(text_config, field)}), which "
                             "is not a linear map of the hidden state; compute its logits and use "
                             "fastrl.ops.logprobs_from_logits instead")
    scale, model_type = 1.0, getattr(config, "model_type", None)
    if model_type in MASKED_LOGITS:
        raise ValueError(f"{name} masks {MASKED_LOGITS[model_type]} out of its logits after the head (model_type "
                         f"{model_type!r}); compute its logits and use fastrl.ops.logprobs_from_logits instead")
    for field in SCALE_FIELDS:
        value = getattr(text_config, field, None)
        if value is None:
            continue
        known = LOGIT_SCALES.get(model_type)
        if known is not None and known[0] == field:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"config.{field} of {name} must be a positive number, got {value!r}")
            scale *= value if known[1] > 0 else 1.0 / value
        elif value != 1:
            raise ValueError(f"config.{field}={value!r} rescales the logits in some models, and fastrl does not know "
                             f"how {name} (model_type {model_type!r}) applies it")
    return body[0], head, scale


def _is_dtensor(x: torch.Tensor) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(x, DTensor)


def vocabulary_size(model) -> int | None:
    """The ids the model embeds: its input embedding's rows, else its config's vocab_size."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    size = getattr(embeddings, "num_embeddings", None)
    return size if size is not None else getattr(getattr(model, "config", None), "vocab_size", None)


def count_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over each row's own tokens, as generate numbers them (padding gets
    0: it is masked anyway). fastrl's rollout and the trainer's forwards use them, so that a
    left-padded prompt starts at 0 in training as in sampling, and a model with absolute
    position embeddings (GPT-2) sees in training what it saw sampling."""
    valid = attention_mask != 0
    return (valid.long().cumsum(-1) - 1).masked_fill(~valid, 0)


def response_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    entropy: bool = False,
    mean_logp: bool = False,
    position_ids: torch.Tensor | None = None,
    return_hidden: bool = False,
) -> TokenStats | tuple[TokenStats, torch.Tensor]:
    """Log-probabilities of the response tokens under a Hugging Face causal LM.

    input_ids, attention_mask, response_mask: [B, L]; a mask is bool or numeric, nonzero
    means set. The token at position t is predicted from the hidden state at t - 1, so
    response_mask may not mark position 0. The body sees exactly what
    ``model(input_ids, attention_mask=attention_mask, position_ids=position_ids)`` gives
    it, so the results equal ``log_softmax(model(...).logits[:, t - 1] / temperature)[input_ids[:, t]]``.
    position_ids None: ``count_positions(attention_mask)``, as the rollout and generate number
    a left-padded row (a body that takes no position ids, Mamba's, gets none).

    Returns TokenStats(logprob, entropy, mean_logp) of [B, L] tensors, float32 (float64
    for a float64 model), 0 wherever response_mask is 0; entropy and mean_logp are None
    unless asked for. logprob and entropy are differentiable in the model's parameters.
    ``return_hidden``: also return the body's last hidden states [B, L, H] (e.g. for a
    value head), as a pair (stats, hidden).
    Selecting the response rows syncs with the host once (a data-dependent count); the
    value checks on the masks run on CPU, and on CUDA only with FASTRL_CHECK=1.
    """
    body, head, scale = split_causal_lm(model)
    model = unwrapped(model)
    _checks.tensor("input_ids", input_ids, ndim=2)
    if input_ids.dtype not in INT_DTYPES:
        raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
    _checks.mask("attention_mask", attention_mask, "input_ids", input_ids)
    _checks.mask("response_mask", response_mask, "input_ids", input_ids)
    if position_ids is not None:
        _checks.tensor("position_ids", position_ids)
        if position_ids.dtype not in INT_DTYPES:
            raise TypeError(f"position_ids must be an integer tensor, got {position_ids.dtype}")
        _checks.same_device("position_ids", position_ids, "input_ids", input_ids)
        if position_ids.dim() != 2 or position_ids.shape[1] != input_ids.shape[1] \
                or position_ids.shape[0] not in (1, input_ids.shape[0]):
            raise ValueError(f"position_ids must be [B, L] or [1, L] for input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(position_ids.shape)}")
    first = next(body.parameters(), None)  # the input embeddings, in transformers' bodies
    if first is not None and first.device.type != "meta" and first.device != input_ids.device:
        raise ValueError(f"input_ids is on {input_ids.device} but the model's body starts on {first.device}")
    temperature = _checks.positive("temperature", temperature)

    response = response_mask != 0
    if _checks.values_checked(response) and response.numel():
        if bool(response[:, 0].any()):
            raise ValueError("response_mask marks position 0, whose token no hidden state predicts")
        if bool((response & (attention_mask == 0)).any()):
            raise ValueError("response_mask marks a position where attention_mask is 0 (padding)")
        if bool((response[:, 1:] & (attention_mask[:, :-1] == 0)).any()):
            raise ValueError("response_mask marks a token right after padding, whose token no hidden state of its "
                             "row predicts")
        size = vocabulary_size(model)
        if size is not None and bool(((input_ids < 0) | (input_ids >= size)).any()):
            raise ValueError(f"input_ids holds ids outside [0, {size}) (the model's embedding); padding too must "
                             "hold a real id (pad_token_id, not -100)")

    if position_ids is None and "position_ids" in inspect.signature(unwrapped(body).forward).parameters:
        # (the model's own default numbers a left-padded row from its padding: with learned
        # absolute positions its log-probs were not the sampler's)
        position_ids = count_positions(attention_mask)
    extra = {} if position_ids is None else {"position_ids": position_ids}
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra)[0]
    predicts = response[:, 1:]  # the state at t - 1 predicts the token at t
    rows = hidden[:, :-1][predicts].to(head.weight)  # Mamba-style bodies may return another dtype than the head's
    labels = input_ids[:, 1:][predicts].to(head.weight.device)
    stats = linear_logprobs(rows, head.weight, labels, head.bias, temperature / scale,
                            entropy=entropy, mean_logp=mean_logp)

    def unpack(values):
        if values is None:
            return None
        values = values.to(input_ids.device)
        return F.pad(values.new_zeros(predicts.shape).masked_scatter(predicts, values), (1, 0))

    stats = TokenStats(*(unpack(values) for values in stats))
    return (stats, hidden) if return_hidden else stats
