"""rollout on a tiny random Llama against a plain loop that reruns the whole sequence."""
import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fastrl.algos import old_policy_stats  # noqa: E402
from fastrl.ops import available_backends, sample, use_backend  # noqa: E402
from fastrl.trainer import rollout  # noqa: E402

VOCAB, PAD = 50, 0
EOS = [2, 7, 11, 19, 23, 31, 42]  # several stop tokens, so that rows end at different steps


def tiny_llama(rng, dtype=torch.float64):
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=rng))
    return model.to(dtype)


def prompts_and_seeds(rng, B=5):
    lengths = torch.randint(1, 8, (B,), generator=rng).tolist()
    lengths[0] = 8  # the longest: the others are left-padded
    prompts = [torch.randint(3, VOCAB, (n,), generator=rng).tolist() for n in lengths]
    return prompts, torch.randint(0, 2**62, (B,), generator=rng)


@torch.no_grad()
def plain_loop(model, prompts, seeds, max_new_tokens, eos, **sampling):
    """Per row, unpadded: the full model on the whole sequence so far at every step."""
    rows = []
    for prompt, seed in zip(prompts, seeds):
        seq, out = list(prompt), []
        for step in range(max_new_tokens):
            logits = model(torch.tensor([seq], device=seed.device)).logits[:, -1]
            s = sample(logits, seeds=seed[None], offset=step, **sampling)
            scaled = torch.log_softmax(logits.double() / sampling.get("temperature", 1.0), -1)[0]
            token = int(s.tokens)
            out.append((token, float(s.logprob), float(s.policy_logprob), float(s.mean_logp),
                        float(scaled[token]), float(scaled.mean())))
            seq.append(token)
            if token in eos:
                break
        rows.append(out)
    return rows


def assert_matches_loop(r, expected, atol, eos=EOS):
    r = type(r)(*(x.cpu() for x in vars(r).values()))
    B, R = r.response_ids.shape
    assert R == max(map(len, expected))
    for b, row in enumerate(expected):
        n = len(row)
        assert r.response_ids[b, :n].tolist() == [t[0] for t in row]
        assert r.response_ids[b, n:].tolist() == [PAD] * (R - n)
        assert r.response_mask[b].tolist() == [1] * n + [0] * (R - n)
        assert bool(r.ended[b]) == (row[-1][0] in eos)
        column = torch.tensor(row, dtype=torch.float64)[:, 1:].T
        # the sampler's values, and policy_logprob, mean_logp as the temperature-scaled log_softmax of the logits
        for x, values in zip((r.logprob, r.policy_logprob, r.mean_logp, r.policy_logprob, r.mean_logp), column):
            torch.testing.assert_close(x[b, :n].double(), values, atol=atol, rtol=atol)
            assert not x[b, n:].any()


SAMPLING = [dict(), dict(temperature=0.7, top_k=10), dict(temperature=1.3, top_p=0.9),
            dict(temperature=1.0, top_k=6, top_p=0.8)]


@pytest.mark.parametrize("sampling", SAMPLING, ids=["plain", "top_k", "top_p", "top_k+top_p"])
def test_matches_plain_loop(rng, sampling, device):
    model = tiny_llama(rng).to(device)
    prompts, seeds = prompts_and_seeds(rng)
    seeds = seeds.to(device)
    r = rollout(model, prompts, 12, EOS, PAD, seeds=seeds, progress=False, **sampling)
    assert_matches_loop(r, plain_loop(model, prompts, seeds, 12, EOS, **sampling), atol=1e-10)
    assert r.logprob.dtype == torch.float64  # the sampler's dtype for float64 logits
    assert torch.equal(r.seeds, seeds)
    if "top_k" not in sampling and "top_p" not in sampling:  # unfiltered: the two log-probs agree
        torch.testing.assert_close(r.logprob, r.policy_logprob)


class CacheNamedCache(torch.nn.Module):
    """A causal LM as transformers >= 5.2x has it: the KV cache is `cache` in and out
    (`past_key_values` deprecated, to go in 5.40); there is no past_key_values here."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=False):
        inner = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=use_cache, **{inner: cache})
        return transformers.modeling_outputs.ModelOutput(logits=out.logits, cache=getattr(out, inner))


def test_a_model_whose_kv_cache_is_named_cache(rng):
    model = tiny_llama(rng)
    prompts, seeds = prompts_and_seeds(rng)
    r = rollout(CacheNamedCache(model), prompts, 8, EOS, PAD, seeds=seeds, progress=False)
    assert_matches_loop(r, plain_loop(model, prompts, seeds, 8, EOS), atol=1e-10)


class Wrapper(torch.nn.Module):
    """A model around a causal LM whose forward passes every keyword on (as torch.compile's module)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


class StateSpace(Wrapper):
    """A Mamba-style forward: its recurrent state is cache_params, no KV cache."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None, cache_params=None):
        return self.inner(input_ids, attention_mask=attention_mask, position_ids=position_ids)


def test_a_model_without_a_kv_cache_argument_is_refused(rng):
    """(it failed after the first step, with an AttributeError)"""
    prompts, seeds = prompts_and_seeds(rng, B=2)
    with pytest.raises(TypeError, match="rollout needs a model whose forward takes a KV cache .*StateSpace's takes"):
        rollout(StateSpace(tiny_llama(rng)), prompts, 4, EOS, PAD, seeds=seeds, progress=False)


def test_a_model_that_passes_keywords_on_is_run(rng):
    model = tiny_llama(rng)
    prompts, seeds = prompts_and_seeds(rng)
    r = rollout(Wrapper(model), prompts, 8, EOS, PAD, seeds=seeds, progress=False)
    assert_matches_loop(r, plain_loop(model, prompts, seeds, 8, EOS), atol=1e-10)


class Peft(Wrapper):
    """PEFT's model: forward(*args, **kwargs), the causal LM from get_base_model()."""

    def get_base_model(self):
        return self.inner


@pytest.mark.parametrize("wrap", [Peft, lambda m: torch.compile(m, backend="eager"),
                                  lambda m: Peft(torch.compile(m, backend="eager"))], ids=["peft", "compiled", "both"])
def test_a_wrapped_model_computes_one_position_of_logits_per_row(rng, wrap):
    """A wrapper's forward takes **kwargs only: logits_to_keep went unpassed, and the first
    step computed the logits of every prompt position ([5, 8, 50], not [5, 1, 50])."""
    model = tiny_llama(rng)
    shapes = []
    model.lm_head.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    prompts, seeds = prompts_and_seeds(rng)
    r = rollout(wrap(model), prompts, 4, EOS, PAD, seeds=seeds, progress=False)
    assert shapes and shapes[0][0] == 5 and {s[1:] for s in shapes} == {(1, VOCAB)}  # (fewer rows once ended)
    assert_matches_loop(r, plain_loop(model, prompts, seeds, 4, EOS), atol=1e-10)


def test_length_and_temperature_are_refused_before_the_prefill(rng):
    """Past the model's positions GPT-2 failed in its embedding with an IndexError four steps
    in; a temperature outside float32's scale was refused only after the prompt's forward."""
    calls = []

    class Counted(Peft):
        def forward(self, *args, **kwargs):
            calls.append(1)
            return super().forward(*args, **kwargs)

    model = Counted(tiny_llama(rng, torch.float32))
    prompts, seeds = prompts_and_seeds(rng, B=2)  # the longest prompt: 8 tokens, in 64 positions
    with pytest.raises(ValueError, match=r"max_new_tokens \(57\) after a prompt of 8 tokens .* 64 positions"):
        rollout(model, prompts, 57, EOS, PAD, seeds=seeds, progress=False)
    with pytest.raises(ValueError, match=r"temperature must be in .* for torch.float32 logits"):
        rollout(model, prompts, 4, EOS, PAD, temperature=1e-40, seeds=seeds, progress=False)
    assert not calls
    rollout(model, prompts, 56, None, PAD, seeds=seeds, progress=False)  # 8 + 56 = 64 positions: runs
    # more left padding than any row needs: the positions count each row's own tokens (it was refused)
    padded = torch.tensor([[PAD] * 4 + prompts[0], [PAD] * (12 - len(prompts[1])) + prompts[1]])
    rollout(model, padded, 56, None, PAD, attention_mask=(padded != PAD).long(), seeds=seeds, progress=False)


@pytest.mark.parametrize("rope,limit", [(None, 64), ({"rope_type": "yarn", "factor": 4.0}, 256),
                                        ({"rope_type": "linear", "factor": 2.0}, 128), ({"rope_type": "dynamic",
                                                                                         "factor": 2.0}, None)])
def test_position_limit_follows_rope_scaling(rope, limit):
    """(YaRN on Qwen2.5 keeps max_position_embeddings 32768 and runs to 131072: it was refused)"""
    from fastrl.trainer.rollout import position_limit

    assert position_limit(transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=64, rope_scaling=rope))) == limit


def test_float32_matches_plain_loop(rng, device):
    """float32 logits reach every sampling backend here (the Triton one under TRITON_INTERPRET=1)."""
    model = tiny_llama(rng, torch.float32).to(device)
    prompts, seeds = prompts_and_seeds(rng, B=3)
    for backend in available_backends("sample", device.type):
        print(backend)
        with use_backend(backend):
            r = rollout(model, prompts, 6, EOS, PAD, seeds=seeds.to(device), progress=False, temperature=0.9,
                        top_p=0.95)
            expected = plain_loop(model, prompts, seeds.to(device), 6, EOS, temperature=0.9, top_p=0.95)
        assert r.logprob.dtype == torch.float32
        assert_matches_loop(r, expected, atol=1e-4)


def test_rows_stop_at_eos(rng):
    """Deterministically: the token row 0 draws at step 3 becomes the EOS of a second run."""
    model = tiny_llama(rng)
    prompts, seeds = prompts_and_seeds(rng)
    free = rollout(model, prompts, 10, None, PAD, seeds=seeds, progress=False)  # no stop token
    assert free.response_mask.all() and not free.ended.any() and free.response_ids.shape == (5, 10)
    eos = int(free.response_ids[0, 3])
    stopped = rollout(model, prompts, 10, eos, PAD, seeds=seeds, progress=False)
    assert bool(stopped.ended[0])
    for b in range(5):
        row = free.response_ids[b].tolist()
        n = row.index(eos) + 1 if eos in row else 10  # EOS itself is part of the response
        assert stopped.response_ids[b, :n].tolist() == row[:n]
        assert stopped.response_mask[b].tolist() == [1] * n + [0] * (stopped.response_ids.shape[1] - n)
        assert (stopped.response_ids[b, n:] == PAD).all()
        assert bool(stopped.ended[b]) == (eos in row)
    # the loop ends when every row has: R is the longest response
    assert stopped.response_ids.shape[1] == int(stopped.response_mask.sum(1).max())


def widths_seen(model):
    """The rows the model runs at each step (its head gets one position per row)."""
    widths = []
    model.lm_head.register_forward_hook(lambda module, args, out: widths.append(out.shape[0]))
    return widths


def all_but_the_first_end_at_once(model, prompts, seeds):
    """Seeds and stop tokens under which every row but the first ends at step 0."""
    while True:
        first = rollout(model, prompts, 1, None, PAD, seeds=seeds, progress=False).response_ids[:, 0].tolist()
        if first[0] not in first[1:]:
            return seeds, first[1:]
        seeds = torch.cat([seeds[:1] + 1, seeds[1:]])


def test_rows_that_end_leave_the_batch(rng):
    """The model ran all 5 rows up to the last one's EOS; now a step runs the rows still going."""
    model = tiny_llama(rng)
    prompts, seeds = prompts_and_seeds(rng)
    seeds, eos = all_but_the_first_end_at_once(model, prompts, seeds)
    widths = widths_seen(model)
    r = rollout(model, prompts, 12, eos, PAD, seeds=seeds, progress=False)
    assert r.response_mask.sum(1)[1:].tolist() == [1] * 4 and r.response_ids.shape[1] > 1
    assert widths == [5] + [1] * (r.response_ids.shape[1] - 1)
    assert_matches_loop(r, plain_loop(model, prompts, seeds, 12, eos), atol=1e-10, eos=eos)


def tiny_sliding_qwen2(rng, dtype):
    """A full-attention layer, then one with a window of 4 positions (a cache of 3)."""
    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      use_sliding_window=True, sliding_window=4, max_window_layers=1, pad_token_id=PAD)
    model = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=rng))
    return model.to(dtype)


@pytest.mark.parametrize("make,dtype", [(tiny_llama, torch.float64), (tiny_llama, torch.float32),
                                        (tiny_sliding_qwen2, torch.float64)], ids=["float64", "float32", "sliding"])
def test_rows_ending_at_scattered_steps_match_the_plain_loop(rng, make, dtype, device):
    """Rows end at step 0, later or never; the model runs them until at most half of its rows
    are going, then only those (again at each halving)."""
    model, T, narrowest, ended_at_once = make(rng, dtype).to(device), 16, 8, False
    widths = widths_seen(model)
    for sampling in SAMPLING:
        prompts, seeds = prompts_and_seeds(rng, B=8)
        seeds = seeds.to(device)
        free = rollout(model, prompts, T, None, PAD, seeds=seeds, progress=False).response_ids
        ends_at = ((0, 0), (1, 0), (2, 0), (3, 0), (4, 3), (5, T // 2))  # (row, step); row 7 never ends
        eos = {int(free[b, s]) for b, s in ends_at} - set(free[7].tolist())
        widths.clear()
        r = rollout(model, prompts, T, sorted(eos) or None, PAD, seeds=seeds, progress=False, **sampling)
        lengths, expected = r.response_mask.sum(1), [8]
        for step in range(1, r.response_ids.shape[1]):
            going = int((lengths > step).sum())
            expected.append(going if 2 * going <= expected[-1] else expected[-1])
        assert widths == expected
        narrowest, ended_at_once = min(narrowest, *widths), ended_at_once or bool(((lengths == 1) & r.ended).any())
        assert_matches_loop(r, plain_loop(model, prompts, seeds, T, eos, **sampling), 1e-4 if dtype == torch.float32
                            else 1e-10, eos=eos)
    assert ended_at_once and narrowest < 8


class UnselectableCache(transformers.DynamicCache):
    def batch_select_indices(self, indices):
        raise NotImplementedError


class GivenCache(Wrapper):
    """A model that starts from a cache of its own (as a model with a static cache does)."""

    def __init__(self, inner, make):
        super().__init__(inner)
        self.make = make

    def forward(self, *args, past_key_values=None, **kwargs):
        cache = self.make(self.inner) if past_key_values is None else past_key_values
        return self.inner(*args, past_key_values=cache, **kwargs)


@pytest.mark.parametrize("make", [lambda m: transformers.StaticCache(m.config, max_cache_len=32),
                                  lambda m: UnselectableCache(config=m.config)], ids=["static", "unselectable"])
def test_a_cache_that_cannot_drop_rows_runs_every_row(rng, make):
    """A static cache's layers have no batch_select_indices (AttributeError), a cache may raise
    NotImplementedError: either runs every row to the end, as before."""
    model = tiny_llama(rng)
    prompts, seeds = prompts_and_seeds(rng)
    seeds, eos = all_but_the_first_end_at_once(model, prompts, seeds)
    widths = widths_seen(model)
    r = rollout(GivenCache(model, make), prompts, 12, eos, PAD, seeds=seeds, progress=False)
    assert r.response_ids.shape[1] > 1 and widths == [5] * r.response_ids.shape[1]
    assert_matches_loop(r, plain_loop(model, prompts, seeds, 12, eos), atol=1e-10, eos=eos)


def test_only_caches_whose_rows_are_all_selected_are_compacted():
    """transformers' batch_select_indices is DynamicLayer's: it indexes keys and values, and so
    selects a sliding-window layer too, but leaves a hybrid layer's conv and recurrent states
    (and a quantized layer's quantized part) whole; static and linear-attention layers lack it."""
    from transformers import cache_utils

    from fastrl.trainer.rollout import _compactable

    def dynamic(*layer_types, **kwargs):
        config = transformers.LlamaConfig(num_hidden_layers=len(layer_types), sliding_window=4)
        config.layer_types = list(layer_types)
        return cache_utils.DynamicCache(config=config, **kwargs)

    class Quantized(cache_utils.DynamicLayer):  # (a subclass: its state is not known here)
        pass

    assert _compactable(dynamic("full_attention", "sliding_attention", "chunked_attention"))
    assert _compactable(cache_utils.DynamicCache())
    for layer_type in ("hybrid", "mamba", "linear_attention"):
        assert not _compactable(dynamic("full_attention", layer_type))
    assert not _compactable(dynamic("full_attention", offloading=True))
    assert not _compactable(cache_utils.Cache(layers=[cache_utils.DynamicLayer(), Quantized()]))
    config = transformers.LlamaConfig(num_hidden_layers=2)
    assert not _compactable(cache_utils.StaticCache(config, max_cache_len=8))
    assert not _compactable(UnselectableCache(config=config))
    assert not _compactable((torch.zeros(2, 3), torch.zeros(2, 3)))  # (a recurrent state)


def test_seeds(rng):
    model = tiny_llama(rng)
    prompts, seeds = prompts_and_seeds(rng)
    kwargs = dict(max_new_tokens=8, eos_token_id=None, pad_token_id=PAD, temperature=1.5, progress=False)
    a = rollout(model, prompts, seeds=seeds, **kwargs)
    b = rollout(model, prompts, seeds=seeds.clone(), **kwargs)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprob, b.logprob)
    c = rollout(model, prompts, seeds=seeds + 1, **kwargs)
    assert not torch.equal(a.response_ids, c.response_ids)
    # a row's tokens depend on its prompt and seed only, not on the rest of the batch or its padding
    d = rollout(model, prompts[2:4], seeds=seeds[2:4], **kwargs)
    assert torch.equal(d.response_ids, a.response_ids[2:4])
    # without seeds, they are drawn from torch's default generator and returned
    torch.manual_seed(0)
    e = rollout(model, prompts, **kwargs)
    torch.manual_seed(0)
    assert torch.equal(rollout(model, prompts, **kwargs).response_ids, e.response_ids)
    assert torch.equal(rollout(model, prompts, seeds=e.seeds, **kwargs).response_ids, e.response_ids)


def test_tensor_prompts(rng):
    model = tiny_llama(rng)
    prompts, seeds = prompts_and_seeds(rng)
    from_lists = rollout(model, prompts, 6, EOS, PAD, seeds=seeds, progress=False)
    P = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts], dtype=torch.bool)
    from_tensor = rollout(model, ids, 6, EOS, PAD, attention_mask=mask, seeds=seeds, progress=False)
    assert torch.equal(from_tensor.prompt_ids, from_lists.prompt_ids)
    assert torch.equal(from_tensor.prompt_mask, from_lists.prompt_mask)
    assert torch.equal(from_tensor.response_ids, from_lists.response_ids)
    # whatever ids the padding holds (-100, as a collator writes): an IndexError in the embedding, and in prompt_ids
    odd = rollout(model, torch.where(mask, ids, -100), 6, EOS, PAD, attention_mask=mask, seeds=seeds, progress=False)
    assert torch.equal(odd.prompt_ids, from_lists.prompt_ids) and torch.equal(odd.response_ids, from_lists.response_ids)
    # an unpadded tensor needs no mask
    full = rollout(model, ids[:1], 6, EOS, PAD, seeds=seeds[:1], progress=False)
    assert torch.equal(full.response_ids, from_lists.response_ids[:1, :full.response_ids.shape[1]])


def test_sequences_and_sampler_stats(rng):
    """The sampler's values equal a training-side forward on the returned sequences."""
    model = tiny_llama(rng)
    prompts, seeds = prompts_and_seeds(rng)
    r = rollout(model, prompts, 8, EOS, PAD, seeds=seeds, temperature=0.8, top_k=8, progress=True)
    input_ids, attention_mask, response_mask = r.sequences()
    P = r.prompt_ids.shape[1]
    assert input_ids.shape == attention_mask.shape == response_mask.shape == (5, P + r.response_ids.shape[1])
    assert torch.equal(response_mask[:, P:], r.response_mask) and not response_mask[:, :P].any()
    with pytest.raises(ValueError, match="weights_identical=True"):
        r.sampler_stats()
    sampler = r.sampler_stats(weights_identical=True)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    forward = old_policy_stats(model, input_ids, attention_mask, response_mask, 0.8, position_ids)
    torch.testing.assert_close(sampler.logprob, forward.logprob)
    torch.testing.assert_close(sampler.mean_logp, forward.mean_logp)


def test_bad_inputs(rng):
    model = tiny_llama(rng)
    prompts, seeds = prompts_and_seeds(rng, B=2)

    def raises(error, match, prompts=prompts, *args, **kwargs):
        with pytest.raises(error, match=match):
            rollout(model, prompts, *(args or (4, 2, PAD)), **{"progress": False, **kwargs})

    raises(ValueError, "max_new_tokens", prompts, 0, 2, PAD)
    raises(ValueError, "max_new_tokens", prompts, 2.0, 2, PAD)
    raises(TypeError, "eos_token_id", prompts, 4, [], PAD)
    raises(TypeError, "eos_token_id", prompts, 4, "2", PAD)
    raises(TypeError, "pad_token_id", prompts, 4, 2, None)
    raises(TypeError, r"prompts\[1\]", [[3, 4], []])
    raises(TypeError, r"prompts\[0\]", [[3, 4.5]])
    raises(TypeError, "prompts must be a non-empty list", [])
    raises(ValueError, "attention_mask goes with a padded tensor", attention_mask=torch.ones(2, 8))
    right = torch.tensor([[3, 4, 0], [5, 6, 7]])
    raises(ValueError, "left-padded", right, attention_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]))
    raises(ValueError, "left-padded", right, attention_mask=torch.tensor([[0, 0, 0], [1, 1, 1]]))
    raises(ValueError, "attention_mask must have the shape", right, attention_mask=torch.ones(2, 2))
    raises(TypeError, "prompts must be an integer tensor", right.float())
    raises(ValueError, r"seeds must have one seed per prompt \(2\)", seeds=seeds[:1])
    raises(TypeError, "seeds must be int64", seeds=seeds.int())
    raises(ValueError, "temperature", temperature=0.0)
    raises(ValueError, "top_k", top_k=0)
    raises(TypeError, "top_k", top_k=2.5)
    raises(ValueError, "top_p", top_p=1.5)
    raises(ValueError, "top_p", top_p=0.0)
    # one prompt's ids passed flat: it was read as one-token prompts, one per id
    raises(TypeError, r"for one prompt's ids pass \[ids\]", [3, 4, 5])
    # ids outside the vocabulary: an IndexError in the embedding (a pad id only once a row had ended), or an
    # EOS id that can never be drawn, so rows never stopped
    raises(ValueError, rf"pad_token_id must be in \[0, {VOCAB}\)", prompts, 4, 2, -1)
    raises(ValueError, rf"pad_token_id must be in \[0, {VOCAB}\)", prompts, 4, 2, VOCAB)
    raises(ValueError, rf"eos_token_id must be in \[0, {VOCAB}\)", prompts, 4, [2, 1000], PAD)
    raises(ValueError, "prompts hold token ids outside", [[3, VOCAB + 5]])
    raises(ValueError, "prompts hold token ids outside", torch.tensor([[-3, 4]]))
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    model.train()  # Hugging Face (before 5.2x) then turns the KV cache off: the second step failed on a mask shape
    with torch.no_grad():  # (as the rollout: transformers 5.2x keeps the cache there)
        out = model(input_ids=torch.tensor([[3, 4]]), use_cache=True)
    if getattr(out, "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values") is None:
        raises(RuntimeError, "returned no KV cache", prompts, 4, 2, PAD, top_k=None)
    model.eval()


def test_max_rows_decodes_the_prompts_in_turn_with_the_same_tokens(rng):
    model = tiny_llama(rng)
    prompts, seeds = prompts_and_seeds(rng)  # 5 prompts of several lengths
    widths = widths_seen(model)
    whole = rollout(model, prompts, 6, EOS, PAD, seeds=seeds, progress=False)
    widths.clear()
    turns = rollout(model, prompts, 6, EOS, PAD, seeds=seeds, progress=False, max_rows=2)
    assert max(widths) == 2 and widths[0] == 2
    for a, b in zip(vars(whole).values(), vars(turns).values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="max_rows must be None or an int >= 1"):
            rollout(model, prompts, 6, EOS, PAD, seeds=seeds, progress=False, max_rows=bad)
