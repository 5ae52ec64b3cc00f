"""Grouped advantages against their reference (DESIGN 3.2, 4) on every backend present."""
import functools
import sys
import warnings
from unittest import mock

import numpy as np
import pytest
import torch

import fastrl.ops as ops
from fastrl import _extension
from fastrl.ops import reference
from fastrl.ops.advantages import GROUP_METHODS, RISK_CREDITS


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


@pytest.mark.parametrize("method", GROUP_METHODS)
def test_eps_reaches_every_backend(method, device, rng):
    """Every other check used the default eps=1e-6: a kernel that ignored it passed."""
    ids = random_groups(rng, CASES["unequal"](rng))
    s = scores_for(ids, rng)
    want = reference.group_advantages(s, ids, method, 0.5)
    for backend in compiled_backends(device):
        with ops.use_backend(backend):
            got = ops.group_advantages(s.to(device), ids.to(device), method, 0.5)
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


def test_all_equal_group_gives_zeros_at_a_subnormal_eps(device):
    """1 / (0 + 1e-310) overflows to inf: a kernel that multiplied by it read 0 * inf = NaN."""
    s = torch.tensor([1.0, 1.0, 0.0, 2.0], dtype=torch.float64, device=device)
    ids = torch.tensor([0, 0, 1, 1], device=device)
    for backend in ops.available_backends("group_advantages", device.type):
        with ops.use_backend(backend):
            got = ops.group_advantages(s, ids, "grpo", eps=1e-310).cpu()
            assert got[:2].eq(0).all() and got[2:].isfinite().all(), (backend, got)
            equal = torch.full_like(s, 0.5)
            assert ops.group_advantages(equal, ids, "batch_std", eps=1e-310).eq(0).all(), backend


@pytest.mark.parametrize("n", [7, 8, 16])
@pytest.mark.parametrize("value", [0.7, 0.1, 1 / 3])
def test_every_backend_accumulates_in_double(value, n, device):
    """These are not exact in float32: a float32 mean leaves residues that grpo's division
    by a near-zero std blows up (to 0.056 at 0.7, n=7); no backend may, the reference
    included (it is what runs on a device without a compiled kernel)."""
    s = torch.full((n,), value, device=device)
    ids = torch.zeros(n, dtype=torch.int64, device=device)
    for backend in ops.available_backends("group_advantages", device.type):
        with ops.use_backend(backend):
            for method in ("grpo", "batch_std"):
                assert (ops.group_advantages(s, ids, method) == 0).all(), (backend, method)


def test_eps_zero_is_refused_where_it_divides():
    """An all-equal group has std 0: grpo and batch_std with eps=0 would give 0/0 = NaN."""
    s, ids = torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1])
    for method in ("grpo", "batch_std"):
        with pytest.raises(ValueError, match=f"eps must be > 0 for method '{method}'"):
            ops.group_advantages(s, ids, method, eps=0.0)
    for method in ("dr_grpo", "rloo"):  # no division: eps unused
        assert ops.group_advantages(s, ids, method, eps=0.0).isfinite().all()
    with pytest.raises(ValueError, match="eps must be >= 0"):
        ops.group_advantages(s, ids, "dr_grpo", eps=-1.0)


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
    fn = torch.compile(lambda a, b: ops.group_advantages(a, b, "rloo"), fullgraph=True)
    torch.testing.assert_close(fn(s, ids), ops.group_advantages(s, ids, "rloo"))


@pytest.mark.parametrize("op", ["group_advantages", "risk_advantages"])
def test_compile_fullgraph_without_a_compiled_kernel(op, monkeypatch, rng):
    """As on a GPU machine built without nvcc (no CUDA kernel: the op's fallback runs the
    reference there): the public function must call the registered op, whose fake
    torch.compile uses, not the reference itself, whose group ids read back with .tolist()
    break a fullgraph compile. (Here the op still finds its C++ kernel when it runs.)"""
    from fastrl.ops import _registry

    monkeypatch.setitem(_registry.OPS[op].compiled, "CPU", False)
    assert ops.backend_for(op, "cpu") == "reference"
    ids = random_groups(rng, [3, 1, 5, 8])
    s = torch.randn(ids.numel(), generator=rng)
    call = (lambda a, b: ops.group_advantages(a, b, "rloo")) if op == "group_advantages" else (
        lambda a, b: ops.risk_advantages(a, b, bundle_size=2))
    with ops.use_backend("reference"):
        want = call(s, ids)
    torch.testing.assert_close(torch.compile(call, fullgraph=True)(s, ids), want)


# ---- broadcast_to_tokens and group_ids_from_uids ----


def test_broadcast_to_tokens():
    adv = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    out = ops.broadcast_to_tokens(adv, mask)
    assert out.dtype == torch.float32
    assert out.tolist() == [[1.5, 1.5, 0.0], [0.0, -2.0, -2.0]]
    with pytest.raises(ValueError, match="mask must have 2 rows"):
        ops.broadcast_to_tokens(adv, torch.ones(3, 4))
    for bad in (float("nan"), float("inf")):  # README: value checks read the data on the CPU
        with pytest.raises(ValueError, match="advantages contains NaN or Inf"):
            ops.broadcast_to_tokens(torch.tensor([1.0, bad]), mask)


def test_broadcast_to_tokens_mask_values(device):
    """Any nonzero is valid (uint8 2, a transposed mask), and a float8 -0.0 is 0, on every backend."""
    adv = torch.tensor([1.5, -2.0], dtype=torch.float16, device=device)
    masks = [torch.tensor([[1, 0, 2], [0, 3, 1]], dtype=torch.uint8),
             torch.tensor([[1, 0, 2], [0, 3, 1]], dtype=torch.uint8).T.contiguous().T,
             torch.tensor([[0x38, 0x80, 0x38], [0x00, 0x38, 0x38]], dtype=torch.uint8).view(torch.float8_e4m3fn)]
    for mask in masks:
        want = reference.broadcast_to_tokens(adv.cpu(), mask)
        assert want.tolist() == [[1.5, 0.0, 1.5], [0.0, -2.0, -2.0]]
        for backend in ops.available_backends("broadcast_to_tokens", device.type):
            with ops.use_backend(backend):
                assert torch.equal(ops.broadcast_to_tokens(adv, mask.to(device)).cpu(), want), backend


def test_no_gradient_on_any_backend(device, rng):
    """Advantages are computed from rewards: no gradient on any backend, through the public
    function or the op; outputs never require grad and backward never warns."""
    ids = random_groups(rng, [3, 1, 5]).to(device)
    s = torch.randn(ids.numel(), generator=rng).to(device).requires_grad_()
    mask = torch.ones(ids.numel(), 4, device=device)
    cases = [
        ("group_advantages", lambda: ops.group_advantages(s, ids), (s, ids, "grpo", 1e-6)),
        ("risk_advantages", lambda: ops.risk_advantages(s, ids, bundle_size=2),
         (s, ids, 2, 0.2, 0.8, 1.5, True, "std")),
        ("broadcast_to_tokens", lambda: ops.broadcast_to_tokens(s, mask), (s, mask)),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, public, args in cases:
            for backend in ops.available_backends(name, device.type):
                with ops.use_backend(backend):
                    assert not public().requires_grad, (name, backend)
                    assert not getattr(torch.ops.fastrl, name)(*args).requires_grad, (name, backend)
            torch.library.opcheck(getattr(torch.ops.fastrl, name).default, args)


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
    for uids in ([["a"], ["b"]], ["a", "a", {"b": 1}], np.array(["a", ["b"]], dtype=object)):
        with pytest.raises(TypeError, match=r"uids\[\d\] must be hashable, got (list|dict)"):
            ops.group_ids_from_uids(uids)
        with mock.patch.object(_extension, "module", None):  # the Python path
            with pytest.raises(TypeError, match=r"uids\[\d\] must be hashable"):
                ops.group_ids_from_uids(uids)
    with pytest.raises(TypeError, match="uids must be a sequence"):
        ops.group_ids_from_uids("abc")
    with pytest.raises(TypeError, match="1-D integer tensor"):
        ops.group_ids_from_uids(torch.ones(3))


# ---- bad inputs: one test each, the error names the argument ----


def test_length_mismatch():
    with pytest.raises(ValueError, match="group_ids must have one id per row of scores"):
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


# ---- risk_advantages (RiskPO) ----

RISK_CONFIGS = [
    dict(bundle_size=5, natural_baseline=True, credit="std"),
    dict(bundle_size=1, natural_baseline=True, credit="std"),
    dict(bundle_size=3, natural_baseline=False, credit="std"),
    dict(bundle_size=5, natural_baseline=True, credit="sum_mean"),
    dict(bundle_size=2, natural_baseline=False, credit="sum_mean"),
    dict(bundle_size=1000, natural_baseline=True, credit="std"),  # one partial bundle
    # quantiles and weight other than the defaults (every config above used 0.2, 0.8, 1.5)
    dict(bundle_size=3, natural_baseline=True, credit="std", alpha=0.1, beta=0.6, omega=0.5),
    dict(bundle_size=2, natural_baseline=False, credit="sum_mean", alpha=0.35, beta=0.95, omega=2.5),
]


def risk_backends(device):
    found = [b for b in ops.available_backends("risk_advantages", device.type) if b != "reference"]
    if not found:
        pytest.skip(f"no compiled risk_advantages on {device.type}")
    return found


def risk_reference(s, ids, cfg):
    return reference.risk_advantages(s, ids, cfg["bundle_size"], cfg.get("alpha", 0.2), cfg.get("beta", 0.8),
                                     cfg.get("omega", 1.5), cfg["natural_baseline"], cfg["credit"])


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("case", ["unequal", "singletons", "sizes_1_to_256"])
@pytest.mark.parametrize("cfg", RISK_CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_risk_matches_reference(cfg, case, ties, device, rng):
    """Bundles whose questions have different numbers of responses, a partial last
    bundle, responses beyond the smallest group size, bundles of one paper."""
    ids = random_groups(rng, CASES[case](rng))
    s = scores_for(ids, rng, ties=ties)
    want = risk_reference(s, ids, cfg)
    for backend in risk_backends(device):
        with ops.use_backend(backend):
            got = ops.risk_advantages(s.to(device), ids.to(device), **cfg)
        torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cfg", RISK_CONFIGS[:4], ids=lambda c: "-".join(str(v) for v in c.values()))
def test_risk_float32_close_to_float64(cfg, device, rng):
    ids = random_groups(rng, CASES["unequal"](rng))
    s = scores_for(ids, rng, torch.float32)
    exact = risk_reference(s.double(), ids, cfg)
    for backend in risk_backends(device):
        with ops.use_backend(backend):
            got = ops.risk_advantages(s.to(device), ids.to(device), **cfg)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.cpu().double(), exact, rtol=1e-5, atol=1e-5)


def test_risk_near_ties_every_backend_in_double(device, rng):
    """sum_mean switches formula at |sum of centred scores| <= 1e-6 and std credit divides by
    std + 1e-6: float32 rounding of near-tied scores flipped the reference (it worked in
    float32) against the kernels (float64) in 1241 of 2000 cases (376916 against -0.646)."""
    for _ in range(50):
        base, d = torch.randint(-1000, 1000, (2,), generator=rng).double() / 7, torch.rand(1, generator=rng).item() * 3
        s = torch.tensor([base[0] + d, base[0] - d, base[1] - d, base[1] + d, base[0], base[1]]).float()
        ids = torch.tensor([0, 0, 1, 1, 2, 2])
        for credit in ("sum_mean", "std"):
            want = risk_reference(s.double(), ids, dict(bundle_size=2, credit=credit, natural_baseline=True))
            for backend in ops.available_backends("risk_advantages", device.type):
                with ops.use_backend(backend):
                    got = ops.risk_advantages(s.to(device), ids.to(device), bundle_size=2, credit=credit)
                torch.testing.assert_close(got.cpu().double(), want, rtol=1e-4, atol=1e-4)


def test_risk_by_hand_one_failure_among_seven_successes():
    """bundle_size=1, 0/1 rewards in a group of 8: -24 for the lone failure (credit std),
    0 when 0, 1 or 8 answers are correct; never positive."""
    ids = torch.zeros(8, dtype=torch.int64)
    for backend in ops.available_backends("risk_advantages", "cpu"):
        with ops.use_backend(backend):
            adv = ops.risk_advantages(torch.tensor([1.0] * 7 + [0.0], dtype=torch.float64), ids, bundle_size=1)
            torch.testing.assert_close(adv[:7], torch.zeros(7, dtype=torch.float64))
            assert abs(adv[7].item() + 24) < 1e-3
            for correct in (0, 1, 8):
                s = torch.tensor([1.0] * correct + [0.0] * (8 - correct), dtype=torch.float64)
                assert (ops.risk_advantages(s, ids, bundle_size=1) == 0).all()


def test_risk_natural_baseline_is_never_positive(rng):
    ids = random_groups(rng, CASES["unequal"](rng))
    s = scores_for(ids, rng)
    for backend in ops.available_backends("risk_advantages", "cpu"):
        with ops.use_backend(backend):
            assert (ops.risk_advantages(s, ids, credit="std") <= 1e-12).all()


def test_risk_responses_beyond_the_smallest_group_get_zero():
    # question 0 (rows 0, 2, 4) and question 1 (rows 1, 3): P = 2, row 4 is beyond it
    ids = torch.tensor([3, 1, 3, 1, 3])
    s = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.7], dtype=torch.float64)
    for backend in ops.available_backends("risk_advantages", "cpu"):
        with ops.use_backend(backend):
            adv = ops.risk_advantages(s, ids, bundle_size=2, natural_baseline=False)
        assert adv[4] == 0 and adv[:4].abs().sum() > 0


def test_risk_sum_mean_fallback_when_the_paper_sum_vanishes():
    # every question's responses are equal: each paper's centred sum is 0 -> A_p / questions in the bundle
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    s = torch.tensor([1.0, 1.0, 0.0, 0.0, 3.0, 3.0], dtype=torch.float64)
    for backend in ops.available_backends("risk_advantages", "cpu"):
        with ops.use_backend(backend):
            adv = ops.risk_advantages(s, ids, bundle_size=2, natural_baseline=False, credit="sum_mean")
        torch.testing.assert_close(adv, reference.risk_advantages(s, ids, 2, 0.2, 0.8, 1.5, False, "sum_mean"))
        assert adv[0] == adv[2]  # the same A_p / 2 for both questions of bundle 0


def test_risk_opcheck_and_compile(device, rng):
    ids = random_groups(rng, [3, 4, 5, 2]).to(device)
    s = torch.randn(ids.numel(), generator=rng).to(device)
    torch.library.opcheck(torch.ops.fastrl.risk_advantages.default, (s, ids, 2, 0.2, 0.8, 1.5, True, "std"))
    fn = torch.compile(lambda a, b: ops.risk_advantages(a, b, bundle_size=2), fullgraph=True)
    torch.testing.assert_close(fn(s, ids), ops.risk_advantages(s, ids, bundle_size=2))


def test_risk_bundle_size_beyond_the_questions_is_one_bundle():
    """Any bundle_size >= the number of questions is one bundle, sys.maxsize too (the
    kernels' bundle count must not overflow); past int64 it is a ValueError naming it."""
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    s = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.7, 0.3, 0.4], dtype=torch.float64)
    for credit in RISK_CREDITS:
        want = reference.risk_advantages(s, ids, 3, 0.2, 0.8, 1.5, True, credit)
        for backend in ops.available_backends("risk_advantages", "cpu"):
            with ops.use_backend(backend):
                for bundle_size in (3, 1000, sys.maxsize):
                    got = ops.risk_advantages(s, ids, bundle_size=bundle_size, credit=credit)
                    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"bundle_size must fit in int64"):
        ops.risk_advantages(s, ids, bundle_size=2**63)


@pytest.mark.parametrize("kw,match", [
    ({"alpha": 0.8, "beta": 0.8}, "alpha must be < beta"),
    ({"alpha": 0.9, "beta": 0.5}, "alpha must be < beta"),
    ({"alpha": 0.0}, r"alpha must be in \(0, 1\)"),
    ({"beta": 1.0}, r"beta must be in \(0, 1\)"),
    ({"omega": -0.5}, "omega must be >= 0"),
    ({"bundle_size": 0}, "bundle_size must be >= 1"),
    ({"credit": "mean"}, "credit must be one of"),
])
def test_risk_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        ops.risk_advantages(torch.ones(4), torch.tensor([0, 0, 1, 1]), **kw)


def test_the_kernels_reject_unknown_names_too():
    """Callers of torch.ops.fastrl.* skip the Python checks; the kernels still refuse."""
    if "cpp" not in ops.available_backends("group_advantages", "cpu"):
        pytest.skip("extension not built")
    with pytest.raises(ValueError, match="unknown group advantage method 'ppo'"):
        torch.ops.fastrl.group_advantages(torch.ones(2), torch.tensor([0, 0]), "ppo", 1e-6)
    with pytest.raises(ValueError, match="unknown credit 'mean'"):
        torch.ops.fastrl.risk_advantages(torch.ones(2), torch.tensor([0, 0]), 1, 0.2, 0.8, 1.5, True, "mean")


def test_the_kernels_check_the_shapes_they_index_by(device):
    """Called as torch.ops.fastrl.*, past the Python checks, the kernels took their sizes from
    one tensor and read the others out of bounds (broadcast_to_tokens returned heap memory,
    gae garbage rows), and a bundle size of 0 killed the process (a division by zero)."""
    if not set(ops.available_backends("group_advantages", device.type)) & {"cpp", "cuda"}:
        pytest.skip(f"no compiled kernels on {device.type}")
    ones = functools.partial(torch.ones, device=device)
    ids = torch.zeros(2, dtype=torch.int64, device=device)
    fastrl = torch.ops.fastrl
    with pytest.raises(ValueError, match="bundle_size must be >= 1, got 0"):
        fastrl.risk_advantages(ones(2), ids, 0, 0.2, 0.8, 1.5, True, "std")
    with pytest.raises(ValueError, match="bundle_size must be >= 1, got -1"):
        fastrl.risk_advantages(ones(2), ids, -1, 0.2, 0.8, 1.5, True, "std")
    with pytest.raises(ValueError, match=r"advantages must be \[B\] for a \[B, T\] mask"):
        fastrl.broadcast_to_tokens(ones(1), ones(8, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="scores and group_ids must both be"):
        fastrl.group_advantages(ones(6), ids[:1], "grpo", 1e-6)
    with pytest.raises(ValueError, match="scores and group_ids must both be"):
        fastrl.risk_advantages(ones(6), ids, 1, 0.2, 0.8, 1.5, True, "std")
    with pytest.raises(ValueError, match=r"values must have the shape of rewards"):
        fastrl.gae(ones(4, 3), ones(1, 3), ones(4, 3), 1.0, 1.0)
    with pytest.raises(ValueError, match=r"mask must have the shape of rewards"):
        fastrl.discounted_returns(ones(4, 3), ones(4, 2), 1.0)
    with pytest.raises(ValueError, match=r"step_mask must have the shape of scores"):
        fastrl.min_form_returns(ones(4, 3), ones(3, 3), ones(4, 3), 0.1, "soft")
    with pytest.raises(ValueError, match=r"rewards must be \[B, T\]"):
        fastrl.discounted_returns(ones(4), ones(4), 1.0)


# ---- value and argument checks on every CPU backend (mutation testing: the checks in
# fastrl/ops/advantages.py were only exercised where the C++ kernel repeats them) ----


@pytest.mark.parametrize("op", ["group_advantages", "risk_advantages"])
@pytest.mark.parametrize("bad", [-1, 4])
def test_ids_outside_range_on_every_cpu_backend(op, bad):
    """DESIGN 2: value checks are always made on CPU, whichever backend serves the op (the
    reference, which would index nothing out of bounds, returned a result for id 4 of 4)."""
    for backend in ops.available_backends(op, "cpu"):
        with ops.use_backend(backend), pytest.raises(ValueError, match=r"group_ids must be in \[0, 4\)"):
            getattr(ops, op)(torch.ones(4), torch.tensor([0, 1, bad, 1]))


@pytest.mark.parametrize("op", ["group_advantages", "risk_advantages"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_on_every_cpu_backend(op, bad):
    for backend in ops.available_backends(op, "cpu"):
        with ops.use_backend(backend), pytest.raises(ValueError, match="scores contains NaN or Inf"):
            getattr(ops, op)(torch.tensor([1.0, 0.5, bad, 0.0]), torch.tensor([0, 0, 1, 1]))


@pytest.mark.parametrize("bundle_size", [0, -1])
def test_risk_bundle_size_below_one_on_every_cpu_backend(bundle_size):
    """A clear ValueError naming bundle_size on every backend, not Python's range() error."""
    for backend in ops.available_backends("risk_advantages", "cpu"):
        with ops.use_backend(backend), pytest.raises(ValueError, match=f"bundle_size must be >= 1, got {bundle_size}"):
            ops.risk_advantages(torch.ones(4), torch.tensor([0, 0, 1, 1]), bundle_size=bundle_size)


@pytest.mark.parametrize("name", ["eps", "omega"])
def test_non_finite_float_arguments_are_refused(name):
    """omega = inf passed omega >= 0 and made every advantage NaN (inf * 0 / inf); eps = inf
    made them 0."""
    s, ids = torch.tensor([0.1, 0.9, 0.5, 0.2]), torch.tensor([0, 0, 1, 1])
    op = ops.group_advantages if name == "eps" else ops.risk_advantages
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match=f"{name} must be finite"):
            op(s, ids, **{name: bad})


def test_risk_sum_mean_fallback_in_a_partial_last_bundle():
    """The sum_mean fallback divides by the number of questions in the bundle: in the last,
    shorter bundle that is fewer than bundle_size (DESIGN 3.2, step 1 and 4). Here the last
    bundle holds one question, whose paper 2 has a centred sum of exactly 0 (0.5 - 0.5) and
    A_2 != 0: it must get A_2 / 1, i.e. what the question gets as a bundle of its own (a
    kernel dividing by bundle_size gave A_2 / 2)."""
    ids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    s = torch.tensor([0.1, 0.9, 0.4, 0.3, 0.2, 0.8, 0.0, 1.0, 0.5], dtype=torch.float64)
    want = reference.risk_advantages(s, ids, 2, 0.2, 0.8, 1.5, True, "sum_mean")
    alone = reference.risk_advantages(s[6:], ids[6:] - 2, 1, 0.2, 0.8, 1.5, True, "sum_mean")
    torch.testing.assert_close(want[6:], alone, rtol=1e-12, atol=1e-12)
    assert alone[2].abs() > 0.1  # the fallback's A_p is not 0: dividing it by 2 shows
    for backend in ops.available_backends("risk_advantages", "cpu"):
        with ops.use_backend(backend):
            got = ops.risk_advantages(s, ids, bundle_size=2, credit="sum_mean")
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=lambda m: f"{backend}: {m}")
