"""The README's code runs as written: each Python block against small inputs of the
shapes it names, its commented results checked, and its YAML a valid config."""
import ast
import math
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)
B, T, V, H = 6, 9, 40, 16


def tiny_llama(seed):
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=V, hidden_size=H, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512)).eval()


def token_mask(rng):
    """[B, T] bool, each row a run of valid tokens (at least one) then padding."""
    lengths = torch.randint(1, T + 1, (B,), generator=rng)
    return torch.arange(T) < lengths[:, None]


def sequences(rng):
    """input_ids, attention_mask and response_mask of B rows: a prompt of 3, a response of up to T - 3."""
    attention_mask = token_mask(rng) | (torch.arange(T) < 4)
    response_mask = attention_mask & (torch.arange(T) >= 3)
    return torch.randint(0, V, (B, T), generator=rng), attention_mask.long(), response_mask.long()


def inputs(block: int, rng) -> dict:
    """The names each block uses without defining them (`ops` as the first block imports it)."""
    import fastrl.ops as ops

    mask = token_mask(rng)
    group_ids = torch.arange(B) // 3
    if block == 0:
        scores = torch.rand(B, T, generator=rng, dtype=torch.float64)
        return dict(rewards=torch.randn(B, T, generator=rng), values=torch.randn(B, T, generator=rng), mask=mask,
                    scores=scores, step_mask=mask & (torch.rand(B, T, generator=rng) < 0.4))
    if block == 1:
        return dict(ops=ops, scores=torch.randint(0, 2, (B,), generator=rng).double(), group_ids=group_ids, mask=mask,
                    uids=np.array(["b", "b", "a", "a", "c", "c"], dtype=object))
    if block == 2:
        labels = torch.randint(0, V, (B * T,), generator=rng).masked_fill(~mask.flatten(), -100)
        logits = torch.randn(B * T, V, generator=rng, requires_grad=True) * 1.0  # computed, as a model's are
        return dict(ops=ops, hidden=torch.randn(B * T, H, generator=rng), lm_head=torch.nn.Linear(H, V, bias=False),
                    labels=labels, logits=logits)
    if block == 3:
        input_ids, attention_mask, response_mask = sequences(rng)
        return dict(model=tiny_llama(0), input_ids=input_ids, attention_mask=attention_mask,
                    response_mask=response_mask)
    if block == 4:
        prompts = [[1, 2, 3], [4, 5], [6]] * 2
        return dict(ops=ops, logits=torch.randn(B, V, generator=rng), seeds=torch.arange(B), step=3,
                    model=tiny_llama(0),
                    prompts=prompts, tok=types.SimpleNamespace(eos_token_id=2, pad_token_id=0),
                    rewards=torch.randint(0, 2, (B,), generator=rng).float(), group_ids=group_ids,
                    rollout_policy=tiny_llama(1))
    return {}


def commented_result(comment: str):
    """The value a `# ...` comment gives for its line, if it starts with an expression in
    numbers (and C(n, k) for binomials): `2.0`, `1 - C(13, 4) / C(16, 4), vectorised ...`."""
    for end in [len(comment)] + [m.start() for m in re.finditer(",", comment)][::-1]:
        try:
            value = eval(comment[:end], {"__builtins__": {}, "C": math.comb})
        except Exception:
            continue
        if isinstance(value, (int, float)):
            return value
    return None


def test_every_python_block_has_its_inputs_here():
    assert len(PYTHON_BLOCKS) == 6, "the README's Python blocks changed: give each its inputs in inputs()"


@pytest.mark.parametrize("block", range(len(PYTHON_BLOCKS)))
def test_readme_python_block_runs_and_gives_its_commented_results(block, rng):
    source = PYTHON_BLOCKS[block]
    namespace = inputs(block, rng)
    lines = source.splitlines()
    checked = 0
    for statement in ast.parse(source).body:
        code = compile(ast.Module([statement], []), f"README block {block}", "exec")
        if not isinstance(statement, ast.Expr):
            exec(code, namespace)
            continue
        value = eval(compile(ast.Expression(statement.value), f"README block {block}", "eval"), namespace)
        comment = lines[statement.end_lineno - 1].partition("#")[2].strip()
        expected = commented_result(comment)
        if expected is not None:
            assert float(value) == pytest.approx(expected, rel=1e-12), lines[statement.lineno - 1]
            checked += 1
    # the blocks with results in their comments: classification rewards and pass@k
    assert checked == {5: 3}.get(block, 0)


def test_readme_yaml_is_a_valid_config_without_warnings(tmp_path, monkeypatch):
    from fastrl.trainer.config import TrainConfig

    monkeypatch.chdir(tmp_path)  # the paths it names, as a user would have them
    (tmp_path / "Qwen2.5-0.5B-Instruct").mkdir()
    (tmp_path / "math_prompts.jsonl").write_text('{"prompt": "1 + 1", "answer": "2"}\n')
    (tmp_path / "math500.jsonl").write_text('{"prompt": "2 + 2", "answer": "4"}\n')
    (block,) = re.findall(r"^```yaml\n(.*?)^```", README, re.S | re.M)
    raw = yaml.safe_load(block)
    config = TrainConfig.from_dict(raw)
    assert config.advisories({f"{section}.{key}" for section, keys in raw.items() for key in keys}) == []
    assert config.to_dict()["algo"]["clip_high"] == 0.28 and config.to_dict()["optim"]["lr"] == 1e-6


def test_every_config_key_the_readme_names_exists():
    from fastrl.trainer.config import TrainConfig

    config = TrainConfig.from_dict({}).to_dict()
    files = {("run", "yaml"), ("data", "sha256")}  # a config file, a checkpoint's record of the data
    named = set(re.findall(rf"\b({'|'.join(config)})\.([a-z_0-9]+)\b", README)) - files
    assert len(named) > 20 and sorted(f"{s}.{k}" for s, k in named if k not in config[s]) == []
