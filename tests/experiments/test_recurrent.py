"""The GRU policy, plain and with attention over its states, behaves as a Hugging Face
causal LM for fastrl: padding, cache, rollout, training log-probs, save and load."""
import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM  # noqa: E402

from fastrl.experiments.recurrent import tiny_gru  # noqa: E402
from fastrl.integrations.hf import response_logprobs  # noqa: E402
from fastrl.ops import sample  # noqa: E402
from fastrl.trainer.rollout import rollout  # noqa: E402

PAD, EOS, VOCAB = 0, 1, 17


@pytest.fixture(params=[0, 4], ids=["plain", "attention"])
def model(request):
    return tiny_gru(VOCAB, hidden_size=32, num_layers=2, seed=0, attention_heads=request.param).double()


def test_padding_does_not_reach_the_state(model):
    torch.manual_seed(1)
    row = torch.randint(2, VOCAB, (1, 6))
    alone = model(row).logits
    padded = torch.cat([torch.full((1, 3), PAD), row, torch.full((1, 2), PAD)], 1)
    mask = torch.tensor([[0] * 3 + [1] * 6 + [0] * 2])
    logits = model(padded, attention_mask=mask).logits
    torch.testing.assert_close(logits[:, 3:9], alone, rtol=0, atol=1e-12)


def test_cache_continues_the_sequence(model):
    torch.manual_seed(2)
    ids = torch.randint(2, VOCAB, (3, 8))
    full = model(ids).logits
    head = model(ids[:, :5], use_cache=True)
    tail = model(ids[:, 5:], past_key_values=head.past_key_values, use_cache=True).logits
    torch.testing.assert_close(torch.cat([head.logits, tail], 1), full, rtol=0, atol=1e-12)


def test_rollout_matches_a_plain_loop_and_training_logprobs(model):
    prompts = [[3, 4, 5], [6, 7], [8, 9, 10, 11]]
    seeds = torch.tensor([11, 12, 13])
    ro = rollout(model, prompts, 8, EOS, PAD, seeds=seeds, progress=False)
    for b, prompt in enumerate(prompts):
        ids, tokens = torch.tensor([prompt]), []
        for step in range(8):
            token = sample(model(ids).logits[:, -1], 1.0, None, None, seeds[b:b + 1], offset=step).tokens
            tokens.append(int(token))
            ids = torch.cat([ids, token[:, None]], 1)
            if tokens[-1] == EOS:
                break
        assert ro.response_ids[b, :int(ro.response_mask[b].sum())].tolist() == tokens
    ids = torch.cat([ro.prompt_ids, ro.response_ids], 1)
    attention = torch.cat([ro.prompt_mask, ro.response_mask], 1)
    response = torch.cat([torch.zeros_like(ro.prompt_mask), ro.response_mask], 1)
    logprob = response_logprobs(model, ids, attention, response).logprob[:, ro.prompt_ids.shape[1]:]
    torch.testing.assert_close(logprob, ro.policy_logprob.to(logprob), rtol=0, atol=1e-10)


def test_save_and_load(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64, attn_implementation="sdpa")
    assert type(loaded) is type(model) and not loaded.config.tie_word_embeddings
    ids = torch.randint(2, VOCAB, (2, 5))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-12)


@pytest.mark.parametrize("heads", [0, 4])
def test_initialisation_is_pytorchs_and_seeded(heads):
    a, b = tiny_gru(VOCAB, 32, 2, seed=3, attention_heads=heads), tiny_gru(VOCAB, 32, 2, seed=3, attention_heads=heads)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert a.model.embed_tokens.weight.std() > 0.5  # nn.Embedding's N(0, 1), not transformers' std 0.02
    if heads:  # nn.Linear's uniform(+-1/sqrt(32)), not transformers' normal(0, 0.02)
        assert a.model.qkv.weight.abs().max() > 0.1


def test_attention_is_causal():
    model = tiny_gru(VOCAB, 32, 2, seed=0, attention_heads=4).double()
    ids = torch.randint(2, VOCAB, (1, 6))
    changed = ids.clone()
    changed[0, 4] = (ids[0, 4] - 2 + 1) % (VOCAB - 2) + 2
    a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=0)
    assert not torch.allclose(a[:, 4:], b[:, 4:])


@pytest.mark.parametrize("heads", [-1, 5])
def test_bad_attention_heads(heads):
    with pytest.raises(ValueError, match="attention_heads must be 0 or divide hidden_size"):
        tiny_gru(VOCAB, 32, 2, attention_heads=heads)
