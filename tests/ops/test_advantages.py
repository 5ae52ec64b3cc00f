"""Grouped advantages against their reference (DESIGN 3.2, 4) on every backend present."""
import numpy as np
import pytest
import torch

import fastrl.ops as ops
from fastrl.ops import reference
from fastrl.ops.advantages import GROUP_METHODS


def compiled_backends(device):
    found = [b for b in ops.available_backends("group_advantages", device.type) if b != "reference"]
    if not found:
        pytest.skip(f"no compiled backend on {device.type}")
    return found


def random_groups(rng, sizes):
    """Group ids for groups of the given sizes, numbered at random, rows shuffled."""
    B = sum(sizes)
    labels = torch.randperm(B, generator=rng)[: len(sizes)]
    ids = torch.cat([torch.full((n,), int(label)) for n, label in zip(sizes, labels)])
    return ids[torch.randperm(B, generator=rng)]


def scores_for(ids, rng, dtype=torch.float64, ties=False):
    s = torch.randn(ids.numel(), generator=rng, dtype=torch.float64)
    if ties:  # 0/1 rewards: ties everywhere and some all-equal groups
        s = (s > 0.3).double()
    return s.to(dtype)


CASES = {
    "unequal": lambda rng: [int(n) for n in torch.randint(1, 20, (30,), generator=rng)],
    "singletons": lambda rng: [1] * 17,
    "one_group": lambda rng: [64],
    "sizes_1_to_256": lambda rng: [1, 2, 3, 7, 16, 64, 255, 256],
}


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", GROUP_METHODS)
def test_matches_reference_float64(method, case, ties, device, rng):
    ids = random_groups(rng, CASES[case](rng))
    s = scores_for(ids, rng, ties=ties)
    want = reference.group_advantages(s, ids, method, 1e-6)
    for backend in compiled_backends(device):
        with ops.use_backend(backend):
            got = ops.group_advantages(s.to(device), ids.to(device), method)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", GROUP_METHODS)
def test_no_less_accurate_than_pytorch(method, dtype, device, rng):
    ids = random_groups(rng, CASES["unequal"](rng))
    s = scores_for(ids, rng, dtype)
    exact = reference.group_advantages(s.double(), ids, method, 1e-6)
    pytorch_err = (reference.group_advantages(s, ids, method, 1e-6).double() - exact).abs().max().item()
    for backend in compiled_backends(device):
        with ops.use_backend(backend):
            got = ops.group_advantages(s.to(device), ids.to(device), method)
        assert got.dtype == torch.float32
        assert (got.cpu().double() - exact).abs().max().item() <= 2 * pytorch_err + 1e-6


def test_by_hand():
    s = torch.tensor([1.0, 2.0, 3.0, 10.0, 4.0], dtype=torch.float64)
    ids = torch.tensor([2, 2, 2, 0, 4])  # groups {1, 2, 3}, {10}, {4}
    eps = 1e-6
    want = {
        "grpo": [-1 / (1 + eps), 0.0, 1 / (1 + eps), 10 / (1 + eps), 4 / (1 + eps)],
        "dr_grpo": [-1.0, 0.0, 1.0, 10.0, 4.0],
        "rloo": [1 - 2.5, 2 - 2.0, 3 - 1.5, 10.0, 4.0],
        "batch_std": [v / (s.std().item() + eps) for v in (-1.0, 0.0, 1.0, 10.0, 4.0)],
    }
    for backend in ops.available_backends("group_advantages", "cpu"):
        with ops.use_backend(backend):
            for method, expected in want.items():
                got = ops.group_advantages(s, ids, method, eps)
                torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_all_equal_group_gives_zeros(device):
    ids = torch.zeros(8, dtype=torch.int64, device=device)
    for backend in ops.available_backends("group_advantages", device.type):
        with ops.use_backend(backend):
            for method in GROUP_METHODS:
                assert (ops.group_advantages(torch.full((8,), 0.5, device=device), ids, method) == 0).all()


def test_kernels_accumulate_in_double(device):
    """0.7 is not exact in float32: a float32 mean leaves residues that grpo's
    division by a near-zero std blows up (to 0.056 here); the kernels do not."""
    s = torch.full((8,), 0.7, device=device)
    ids = torch.zeros(8, dtype=torch.int64, device=device)
    for backend in compiled_backends(device):
        with ops.use_backend(backend):
            assert (ops.group_advantages(s, ids, "grpo") == 0).all()


def test_empty_batch(device):
    for backend in ops.available_backends("group_advantages", device.type):
        with ops.use_backend(backend):
            out = ops.group_advantages(torch.empty(0, device=device), torch.empty(0, dtype=torch.int64, device=device))
        assert out.shape == (0,)


@pytest.mark.parametrize("method", GROUP_METHODS)
def test_opcheck(method, device, rng):
    ids = random_groups(rng, [3, 1, 5]).to(device)
    s = torch.randn(ids.numel(), generator=rng).to(device)
    torch.library.opcheck(torch.ops.fastrl.group_advantages.default, (s, ids, method, 1e-6))


def test_compile_fullgraph_equals_eager(device, rng):
    ids = random_groups(rng, [3, 1, 5, 8]).to(device)
    s = torch.randn(ids.numel(), generator=rng).to(device)
    fn = torch.compile(lambda a, b: ops.group_advantages(a, b, "rloo"), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(s, ids), ops.group_advantages(s, ids, "rloo"))


# ---- broadcast_to_tokens and group_ids_from_uids ----


def test_broadcast_to_tokens():
    adv = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    out = ops.broadcast_to_tokens(adv, mask)
    assert out.dtype == torch.float32
    assert out.tolist() == [[1.5, 1.5, 0.0], [0.0, -2.0, -2.0]]
    with pytest.raises(ValueError, match="mask must have 2 rows"):
        ops.broadcast_to_tokens(adv, torch.ones(3, 4))


def test_group_ids_from_uids_first_seen_order():
    uids = np.array(["q7", "q2", "q7", "q9", "q2", "q2"], dtype=object)
    want = [0, 1, 0, 2, 1, 1]
    assert ops.group_ids_from_uids(uids).tolist() == want
    assert ops.group_ids_from_uids(list(uids)).tolist() == want
    assert ops.group_ids_from_uids(np.array([70, 20, 70, 90, 20, 20])).tolist() == want
    assert ops.group_ids_from_uids(torch.tensor([70, 20, 70, 90, 20, 20])).tolist() == want
    assert ops.group_ids_from_uids([("a", 1), ("b", 2), ("a", 1)]).tolist() == [0, 1, 0]
    assert ops.group_ids_from_uids([]).tolist() == []
    out = ops.group_ids_from_uids(uids)
    assert out.dtype == torch.int64


def test_group_ids_from_uids_equals_a_dict(rng):
    """Equal strings that are distinct objects, repeated runs, 16384 uids."""
    raw = torch.randint(0, 1024, (16384,), generator=rng).tolist()
    uids = np.array(["uid-" + str(i) for i in raw], dtype=object)  # fresh str objects
    seen = {}
    want = [seen.setdefault(u, len(seen)) for u in uids]
    assert ops.group_ids_from_uids(uids).tolist() == want
    repeated = np.repeat(np.array([f"p{i}" for i in range(100)], dtype=object), 16)
    assert ops.group_ids_from_uids(repeated).tolist() == [i // 16 for i in range(1600)]


def test_group_ids_from_uids_errors():
    with pytest.raises(TypeError, match="unhashable"):
        ops.group_ids_from_uids([["a"], ["b"]])
    with pytest.raises(TypeError, match="uids must be a sequence"):
        ops.group_ids_from_uids("abc")
    with pytest.raises(TypeError, match="1-D integer tensor"):
        ops.group_ids_from_uids(torch.ones(3))


# ---- bad inputs: one test each, the error names the argument ----


def test_length_mismatch():
    with pytest.raises(ValueError, match="group_ids must have the length of scores"):
        ops.group_advantages(torch.ones(4), torch.zeros(3, dtype=torch.int64))


@pytest.mark.parametrize("bad", [-1, 4])
def test_ids_outside_range_on_cpu(bad):
    with pytest.raises(ValueError, match=r"group_ids must be in \[0, 4\)"):
        ops.group_advantages(torch.ones(4), torch.tensor([0, 1, bad, 1]))


def test_ids_must_be_int64():
    with pytest.raises(TypeError, match="group_ids must be int64"):
        ops.group_advantages(torch.ones(4), torch.zeros(4, dtype=torch.int32))


def test_nan_scores_on_cpu():
    with pytest.raises(ValueError, match="scores contains NaN or Inf"):
        ops.group_advantages(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]))


def test_unknown_method():
    with pytest.raises(ValueError, match="method must be one of"):
        ops.group_advantages(torch.ones(2), torch.tensor([0, 0]), "ppo")


def test_scores_must_be_1d():
    with pytest.raises(ValueError, match="scores must have 1 dimensions"):
        ops.group_advantages(torch.ones(2, 2), torch.tensor([0, 0]))
