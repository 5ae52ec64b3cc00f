"""response_logprobs on tiny random Hugging Face models against log_softmax of the full model's logits."""
import os

import pytest
import torch
from torch import nn

if os.environ.get("FASTRL_REQUIRE_ANCHORS") == "1":
    import transformers
else:
    transformers = pytest.importorskip("transformers")

from fastrl.integrations.hf import count_positions, response_logprobs, split_causal_lm  # noqa: E402

VOCAB = 97
BASE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
FALCON_H1 = dict(mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8, mamba_d_state=8, mamba_chunk_size=8)
ARCHS = {  # name: (config, model, config overrides)
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "phi": ("PhiConfig", "PhiForCausalLM", {}),  # lm_head with a bias
    # heads that rescale their logits, folded into the temperature
    "cohere": ("CohereConfig", "CohereForCausalLM", dict(logit_scale=0.4)),
    "granite": ("GraniteConfig", "GraniteForCausalLM", dict(logits_scaling=3.0)),
    "hyperclovax": ("HyperCLOVAXConfig", "HyperCLOVAXForCausalLM", dict(logits_scaling=2.5)),
    "falcon_h1": ("FalconH1Config", "FalconH1ForCausalLM", dict(lm_head_multiplier=0.5, **FALCON_H1)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(head_dim=8)),  # soft-capped
}


def tiny(rng, arch="llama", tie=False, dtype=torch.float32, **overrides):
    """A tiny model with weights large enough for far-from-uniform logits."""
    config_name, model_name, extra = ARCHS[arch]
    config = getattr(transformers, config_name)(**{**BASE, "tie_word_embeddings": tie, **extra, **overrides})
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=rng))
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == tie
    return model.to(dtype)


def batch(rng, padding, B=4, L=13):
    """Rows of different lengths padded left or right, a prompt then a response with a hole."""
    lengths = torch.randint(2, L + 1, (B,), generator=rng)
    prompts = 1 + (torch.rand(B, generator=rng) * (lengths - 1)).long()  # in [1, length - 1]
    lengths[0], prompts[0] = L, 3  # a full row, whose response gets a hole below
    pos = torch.arange(L)
    start = torch.zeros(B, dtype=torch.long) if padding == "right" else L - lengths
    attention = (pos >= start[:, None]) & (pos < (start + lengths)[:, None])
    response = attention & (pos >= (start + prompts)[:, None])
    response[0, 7] = False  # a hole (e.g. a tool's tokens)
    input_ids = torch.randint(3, VOCAB, (B, L), generator=rng).masked_fill(~attention, 0)
    return input_ids, attention.long(), response


def full_model_stats(model, input_ids, attention_mask, response, temperature, **kwargs):
    """log_softmax of the full model's logits: logprob, entropy, mean at response positions
    (positions counted from each row's first token unless given, as response_logprobs does)."""
    kwargs.setdefault("position_ids", count_positions(attention_mask))
    logits = model(input_ids, attention_mask=attention_mask, **kwargs).logits[:, :-1]
    logp = torch.log_softmax(logits.double() / temperature, -1)
    logprob = logp.gather(-1, input_ids[:, 1:, None])[..., 0]
    entropy = -(logp.exp() * logp).sum(-1)
    mean = logp.mean(-1)
    pad = lambda x: torch.nn.functional.pad(x, (1, 0)) * response  # noqa: E731
    return pad(logprob), pad(entropy), pad(mean)


def grads(model, stats, w):
    model.zero_grad()
    ((stats[0].double() * w[0]).sum() + (stats[1].double() * w[1]).sum()).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def check_equals_full_model(model, input_ids, attention_mask, response, temperature, rng, tol, **kwargs):
    w = torch.randn((2,) + input_ids.shape, generator=rng, dtype=torch.float64).to(input_ids.device)
    want = full_model_stats(model, input_ids, attention_mask, response, temperature, **kwargs)
    want_grads = grads(model, want, w)
    got = response_logprobs(model, input_ids, attention_mask, response, temperature, entropy=True,
                            mean_logp=True, **kwargs)
    got_grads = grads(model, got, w)
    dtype = torch.float64 if model.dtype == torch.float64 else torch.float32
    for g, x in zip(got, want):
        assert g.dtype == dtype and g.shape == input_ids.shape
        assert (g[~response.bool()] == 0).all()
        torch.testing.assert_close(g.double(), x, **tol)
    assert got_grads.keys() == want_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], **tol, msg=lambda m: f"{name}: {m}")


TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=2e-5)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_equals_full_model(arch, tie, padding, dtype, device, rng):
    model = tiny(rng, arch, tie, dtype).to(device)
    input_ids, attention_mask, response = (x.to(device) for x in batch(rng, padding))
    temperature = [1.0, 0.6][int(torch.randint(2, (1,), generator=rng))]
    check_equals_full_model(model, input_ids, attention_mask, response, temperature, rng, TOL[dtype])


@pytest.mark.parametrize("arch", ["phi", "cohere", "granite", "hyperclovax", "falcon_h1"])
def test_biased_and_rescaled_heads(arch, rng):
    model = tiny(rng, arch, dtype=torch.float64)
    check_equals_full_model(model, *batch(rng, "left"), 0.8, rng, TOL[torch.float64])


def test_positions_default_to_the_rollouts_on_absolute_position_embeddings(rng):
    """With position_ids None the model numbered a left-padded row from its padding: on GPT-2
    (learned absolute positions) the log-probs differed from the sampler's by 0.44. The
    default is the rollout's count from each row's first real token."""
    from fastrl.trainer.rollout import rollout

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)).double().eval()
    prompts = [[3, 4, 6, 7, 8, 9, 10], [12, 13]]
    out = rollout(model, prompts, max_new_tokens=5, eos_token_id=2, pad_token_id=0, seeds=torch.tensor([5, 6]))
    input_ids, attention_mask, response_mask = out.sequences()
    got = response_logprobs(model, input_ids, attention_mask, response_mask).logprob
    want = out.sampler_stats(weights_identical=True).logprob
    torch.testing.assert_close(got[response_mask], want[response_mask].to(got), rtol=1e-6, atol=1e-6)


def test_explicit_position_ids(rng):
    """Positions counted from each row's first real token (as in generation) pass through to the body."""
    model = tiny(rng, dtype=torch.float64)
    input_ids, attention_mask, response = batch(rng, "left")
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    check_equals_full_model(model, input_ids, attention_mask, response, 1.0, rng, TOL[torch.float64],
                            position_ids=position_ids)


def test_defaults_and_empty_responses(rng):
    model = tiny(rng)
    input_ids, attention_mask, response = batch(rng, "right")
    stats = response_logprobs(model, input_ids, attention_mask, response.float())  # float masks as verl passes
    assert stats.entropy is None and stats.mean_logp is None
    want = full_model_stats(model, input_ids, attention_mask, response, 1.0)[0]
    torch.testing.assert_close(stats.logprob.double(), want, rtol=1e-4, atol=2e-5)
    none = response_logprobs(model, input_ids, attention_mask, torch.zeros_like(response), entropy=True)
    assert (none.logprob == 0).all() and (none.entropy == 0).all()
    single = response_logprobs(model, input_ids[:, :1], attention_mask[:, :1], response[:, :1])
    assert single.logprob.shape == (4, 1) and (single.logprob == 0).all()


def test_soft_capped_head_is_refused(rng):
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        response_logprobs(tiny(rng, "gemma2"), *batch(rng, "left"))


def test_unknown_heads_are_refused(rng):
    model = tiny(rng)
    input_ids, attention_mask, response = batch(rng, "left")
    model.config.model_type = "chameleon"  # its forward masks the image tokens' logits after the head
    with pytest.raises(ValueError, match="masks its image tokens out of its logits"):
        response_logprobs(model, input_ids, attention_mask, response)
    model.config.model_type = "llama"
    model.config.logit_scale = 2.0  # a field Llama does not apply, but other models do
    with pytest.raises(ValueError, match="config.logit_scale=2.0"):
        response_logprobs(model, input_ids, attention_mask, response)
    model.config.logit_scale = 1.0
    response_logprobs(model, input_ids, attention_mask, response)
    model.extra = nn.Linear(4, 4)
    with pytest.raises(TypeError, match="a body and a linear head"):
        split_causal_lm(model)
    del model.extra
    model.lm_head = nn.Sequential(model.lm_head)
    with pytest.raises(TypeError, match=r"output head must be an nn.Linear, LlamaForCausalLM's is "
                                        r"torch.nn.modules.container.Sequential"):
        split_causal_lm(model)
    with pytest.raises(TypeError, match="output head must be an nn.Linear"):
        split_causal_lm(model.model)  # the body alone
    with pytest.raises(TypeError, match="Hugging Face causal LM"):
        split_causal_lm(nn.Linear(4, 4))
    with torch.device("meta"):
        offloaded = transformers.LlamaForCausalLM(transformers.LlamaConfig(**BASE))
    with pytest.raises(ValueError, match="offloaded or sharded"):
        split_causal_lm(offloaded)


def test_bad_arguments(rng):
    model = tiny(rng)
    input_ids, attention_mask, response = batch(rng, "left")
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        response_logprobs(model, input_ids.float(), attention_mask, response)
    with pytest.raises(ValueError, match="input_ids must have 2 dimensions"):
        response_logprobs(model, input_ids[0], attention_mask, response)
    with pytest.raises(ValueError, match="attention_mask must have the shape of input_ids"):
        response_logprobs(model, input_ids, attention_mask[:, 1:], response)
    with pytest.raises(ValueError, match="response_mask must have the shape of input_ids"):
        response_logprobs(model, input_ids, attention_mask, response[:2])
    with pytest.raises(TypeError, match="response_mask must be bool, integer or float"):
        response_logprobs(model, input_ids, attention_mask, response.to(torch.complex64))
    with pytest.raises(ValueError, match="position 0"):
        response_logprobs(model, input_ids, torch.ones_like(attention_mask), torch.ones_like(response))
    with pytest.raises(ValueError, match="attention_mask is 0"):
        response_logprobs(model, input_ids, attention_mask.index_put((torch.tensor(0), torch.tensor(5)),
                                                                     torch.tensor(0)), response)
    # a left-padded row's first token: its log-prob came from a padding state (-6.24, -5.55 or -3.59 by pad id)
    row = int(attention_mask[:, 0].argmin())  # a left-padded row
    first = int(attention_mask[row].argmax())
    with pytest.raises(ValueError, match="right after padding"):
        response_logprobs(model, input_ids, attention_mask, response.index_put((torch.tensor(row), torch.tensor(first)),
                                                                               torch.tensor(True)))
    with pytest.raises(ValueError, match=r"input_ids holds ids outside \[0, 97\) .* not -100"):
        response_logprobs(model, input_ids.masked_fill(attention_mask == 0, -100), attention_mask, response)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        response_logprobs(model, input_ids, attention_mask, response, temperature=0.0)
    with pytest.raises(TypeError, match="position_ids must be an integer tensor"):
        response_logprobs(model, input_ids, attention_mask, response, position_ids=attention_mask.float())
    for wrong in (attention_mask[:, 1:], attention_mask[:1].expand(3, -1), attention_mask[0], attention_mask[..., None]):
        with pytest.raises(ValueError, match=r"position_ids must be \[B, L\] or \[1, L\]"):
            response_logprobs(model, input_ids, attention_mask, response, position_ids=wrong)
    with pytest.raises(ValueError, match="input_ids is on meta"):
        response_logprobs(model, input_ids.to("meta"), attention_mask.to("meta"), response.to("meta"))


def gpt2(rng):
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                                                 n_positions=64)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=rng))
    return model


def lora(model):
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False))
    return wrapped.double()


@pytest.mark.parametrize("wrap", [
    lora,
    lambda m: torch.compile(m, backend="eager"),
    lambda m: torch.compile(lora(m), backend="eager"),
    lambda m: setattr(m, "transformer", torch.compile(m.transformer, backend="eager")) or m,
], ids=["peft", "compiled", "compiled peft", "compiled body"])
def test_a_wrapped_model_is_read_through_the_model_it_wraps(rng, wrap):
    """A PEFT or compiled model was refused ("PeftModel has submodules ['base_model']"), and a
    compiled body (forward(*args, **kwargs)) got no position_ids: on left-padded GPT-2 its
    log-probs were 1.37 off."""
    model = wrap(gpt2(rng))
    input_ids, attention_mask, response = batch(rng, "left")
    want = full_model_stats(model, input_ids, attention_mask, response, 0.8)
    got = response_logprobs(model, input_ids, attention_mask, response, 0.8, entropy=True, mean_logp=True)
    for g, x in zip(got, want):
        torch.testing.assert_close(g, x, **TOL[torch.float64])


def test_data_parallel_and_prompt_learning_wrappers_are_refused(rng, tmp_path):
    peft = pytest.importorskip("peft")
    from torch.nn.parallel import DistributedDataParallel

    input_ids, attention_mask, response = batch(rng, "left")
    fake_ddp = DistributedDataParallel.__new__(DistributedDataParallel)  # (no process group needed to be refused)
    with pytest.raises(TypeError, match="wrapped in DistributedDataParallel, whose forward must run"):
        response_logprobs(fake_ddp, input_ids, attention_mask, response)
    prompted = peft.get_peft_model(gpt2(rng), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    with pytest.raises(ValueError, match="prompt-learning adapter .*PROMPT_TUNING"):
        response_logprobs(prompted, input_ids, attention_mask, response)


def test_count_positions_numbers_each_rows_own_tokens_from_zero():
    """As generate numbers a row: its first real token is position 0, padding reads 0."""
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    assert count_positions(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 0, 0], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]]
    assert count_positions(mask.bool()).tolist() == count_positions(mask).tolist()


def test_default_positions_on_a_right_padded_row_are_the_models_own(rng):
    """Right-padded, the model's own default numbering (0, 1, ...) is the rollout's: on GPT-2
    (learned absolute positions) response_logprobs without position_ids equals the model's
    logits without them (a shift by one position moves every log-prob)."""
    model = gpt2(rng)
    input_ids, attention_mask, response = batch(rng, "right")
    logits = model(input_ids, attention_mask=attention_mask).logits[:, :-1]
    want = torch.log_softmax(logits / 0.7, -1).gather(-1, input_ids[:, 1:, None])[..., 0]
    got = response_logprobs(model, input_ids, attention_mask, response, 0.7).logprob
    torch.testing.assert_close(got, torch.nn.functional.pad(want, (1, 0)) * response, **TOL[torch.float64])


@pytest.mark.parametrize("rows", ["B", "1"])
def test_explicit_position_ids_that_are_not_the_count_reach_the_body(rng, rows):
    """Given position_ids ([B, L] or [1, L]) are the body's, not replaced by the default count:
    on GPT-2 (absolute positions, unlike RoPE's shift invariance) other positions give other log-probs."""
    model = gpt2(rng)
    input_ids, attention_mask, response = batch(rng, "right")
    if rows == "B":
        position_ids = count_positions(attention_mask) + torch.arange(1, 5)[:, None]  # each row its own offset
    else:
        position_ids = torch.arange(3, 3 + input_ids.shape[1])[None]
    want = full_model_stats(model, input_ids, attention_mask, response, 0.9, position_ids=position_ids)
    default = full_model_stats(model, input_ids, attention_mask, response, 0.9)
    assert not torch.allclose(want[0], default[0])  # (the positions matter here)
    got = response_logprobs(model, input_ids, attention_mask, response, 0.9, entropy=True, mean_logp=True,
                            position_ids=position_ids)
    for g, x in zip(got, want):
        torch.testing.assert_close(g, x, **TOL[torch.float64])


def test_an_id_equal_to_the_vocabulary_size_is_refused(rng):
    model = tiny(rng)
    input_ids, attention_mask, response = batch(rng, "left")
    with pytest.raises(ValueError, match=r"input_ids holds ids outside \[0, 97\)"):
        response_logprobs(model, input_ids.masked_fill(attention_mask == 0, VOCAB), attention_mask, response)
    response_logprobs(model, input_ids.masked_fill(attention_mask == 0, VOCAB - 1), attention_mask, response)


@pytest.mark.parametrize("value", [0.0, -2.0, float("inf"), float("nan")])
def test_a_known_logit_scale_that_is_not_a_positive_number_is_refused(rng, value):
    model = tiny(rng, "granite")
    model.config.logits_scaling = value
    with pytest.raises(ValueError, match="config.logits_scaling of GraniteForCausalLM must be a positive number"):
        split_causal_lm(model)


def test_return_hidden_gives_the_bodys_differentiable_last_hidden_states(rng):
    """The hidden states feed a value head: they are the body's output, in the graph."""
    model = tiny(rng, dtype=torch.float64)
    input_ids, attention_mask, response = batch(rng, "left")
    w = torch.randn(input_ids.shape + (32,), generator=rng, dtype=torch.float64)
    want = model.model(input_ids, attention_mask=attention_mask,
                       position_ids=count_positions(attention_mask)).last_hidden_state
    want_grad = torch.autograd.grad((want * w).sum(), model.model.embed_tokens.weight)[0]
    stats, hidden = response_logprobs(model, input_ids, attention_mask, response, return_hidden=True)
    torch.testing.assert_close(hidden, want, **TOL[torch.float64])
    got_grad = torch.autograd.grad((hidden * w).sum(), model.model.embed_tokens.weight)[0]
    torch.testing.assert_close(got_grad, want_grad, **TOL[torch.float64])
    torch.testing.assert_close(stats.logprob, response_logprobs(model, input_ids, attention_mask, response).logprob)
