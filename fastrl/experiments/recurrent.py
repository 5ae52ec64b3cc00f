"""A tiny GRU language model as a Hugging Face causal LM (the PURE prototype's policy was a
recurrent net), so that ``fastrl.trainer`` drives it like any other: its rollout passes the
GRU state as ``past_key_values``, its training forward reads the body's hidden states.

With ``attention_heads`` the GRU's states are followed by one causal self-attention layer
over them (no position encoding: the GRU's state carries the position), whose keys and
values join the cache. In ``fastrl experiment pure`` the plain GRU must carry the prompt's
digits in its state and RL barely teaches it to copy them; the attention layer looks them
up, while the GRU keeps count of the steps, so a restatement does not throw it off as it
does the Llama (README, "Experiments").

Padding: a call's tokens may start with padding (left-padded prompts) and end with it
(finished rows); each row is shifted so that its tokens start at 0, run packed, and
shifted back, so leading padding never reaches the state, and attention skips every
position whose attention_mask is 0. Importing this module registers the model with
``AutoModelForCausalLM`` (model_type ``fastrl_gru``).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast


class GRUConfig(PretrainedConfig):
    model_type = "fastrl_gru"

    def __init__(self, vocab_size: int = 32, hidden_size: int = 128, num_hidden_layers: int = 2, pad_token_id: int = 0,
                 eos_token_id: int = 1, tie_word_embeddings: bool = False, attention_heads: int = 0, **kwargs):
        if attention_heads < 0 or (attention_heads and hidden_size % attention_heads):
            raise ValueError(f"attention_heads must be 0 or divide hidden_size ({hidden_size}), got {attention_heads}")
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        self.attention_heads = attention_heads
        super().__init__(pad_token_id=pad_token_id, eos_token_id=eos_token_id, tie_word_embeddings=tie_word_embeddings,
                         **kwargs)


def _shift(x: torch.Tensor, by: torch.Tensor) -> torch.Tensor:
    """Row b of x [B, T, ...] rotated left by by[b] positions."""
    index = (torch.arange(x.shape[1], device=x.device)[None, :] + by[:, None]) % x.shape[1]
    return x.gather(1, index.view(*index.shape, *[1] * (x.dim() - 2)).expand_as(x))


class GRUModel(PreTrainedModel):
    config_class = GRUConfig
    _supports_sdpa = True  # no attention: any implementation asked for is fine

    def __init__(self, config: GRUConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.gru = nn.GRU(config.hidden_size, config.hidden_size, config.num_hidden_layers, batch_first=True)
        if config.attention_heads:
            self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
            self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
                **kwargs):
        T = input_ids.shape[1]
        x = self.embed_tokens(input_ids)
        past_kv = None
        if self.config.attention_heads and past_key_values is not None:
            past_key_values, past_kv = past_key_values
        if T == 1:  # a decoding step: nothing to shift or pack, and no host sync for the lengths
            hidden, state = self.gru(x, past_key_values)
        else:
            live = (torch.ones_like(input_ids) if attention_mask is None else attention_mask[:, -T:]) != 0
            leading = torch.where(live.any(1), live.int().argmax(1), T)
            packed = nn.utils.rnn.pack_padded_sequence(_shift(x, leading), (T - leading).clamp_min(1).cpu(),
                                                        batch_first=True, enforce_sorted=False)
            out, state = self.gru(packed, past_key_values)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
            hidden = _shift(out, (T - leading) % T)
        if self.config.attention_heads:
            hidden, kv = self.attend(hidden, attention_mask, past_kv)
            state = (state, kv)
        return BaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=state if use_cache else None)

    def attend(self, hidden, attention_mask, past_kv):
        """hidden [B, T, H] plus causal attention over the cached and new states; returns it
        and the keys and values of all L = cached + T positions."""
        B, T, H = hidden.shape
        heads = self.config.attention_heads
        q, k, v = (t.view(B, T, heads, H // heads).transpose(1, 2) for t in self.qkv(hidden).chunk(3, -1))
        if past_kv is not None:
            k, v = torch.cat([past_kv[0], k], 2), torch.cat([past_kv[1], v], 2)
        L = k.shape[2]
        query = torch.arange(L - T, L, device=hidden.device)[:, None]
        key = torch.arange(L, device=hidden.device)[None, :]
        allowed = key <= query  # [T, L]
        if attention_mask is not None:
            # padding keys are skipped; a padding query sees only itself (its output is never
            # used), so no row is empty
            allowed = ((allowed & (attention_mask[:, -L:] != 0)[:, None, :]) | (key == query))[:, None]
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return hidden + self.o_proj(out.transpose(1, 2).reshape(B, T, H)), (k, v)


class GRUForCausalLM(PreTrainedModel):
    config_class = GRUConfig
    _supports_sdpa = True

    def __init__(self, config: GRUConfig):
        super().__init__(config)
        self.model = GRUModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
                logits_to_keep: int = 0, **kwargs):
        out = self.model(input_ids, attention_mask, past_key_values=past_key_values, use_cache=use_cache)
        hidden = out.last_hidden_state[:, -logits_to_keep:] if logits_to_keep else out.last_hidden_state
        return CausalLMOutputWithPast(logits=self.lm_head(hidden), past_key_values=out.past_key_values)


AutoConfig.register(GRUConfig.model_type, GRUConfig)
AutoModelForCausalLM.register(GRUConfig, GRUForCausalLM)


def tiny_gru(vocab_size: int, hidden_size: int = 128, num_layers: int = 2, seed: int = 0,
             attention_heads: int = 0) -> GRUForCausalLM:
    """A randomly initialised GRU LM, token 0 the padding and 1 the EOS (as ``char_tokenizer``),
    with PyTorch's default initialisation and an untied head, as a plain recurrent net has:
    with the tied, std-0.02 embedding of transformers' initialisation the PURE warm-up needed
    2,550 steps to reach 0.5 (and stopped at 3,000 short of it in one seed of two), and RL
    then barely moved the accuracy."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GRUForCausalLM(GRUConfig(vocab_size, hidden_size, num_layers, attention_heads=attention_heads))
        for module in model.modules():
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return model
