"""Q-softmax sampling (DESIGN 3.3) on every backend present: the reference (the CPU
path), Triton under TRITON_INTERPRET=1 on CPU tensors (few rows: the interpreter runs
a filtered row in ~0.1 s) and natively on a GPU (many rows)."""
import math

import pytest
import torch

import fastrl.ops as ops
from fastrl.ops import reference
from fastrl.ops.sampling import LOG2E

# V=12 with ties: four tokens tied at 1.5 across the top-k=4 cutoff, so five are kept
LOGITS = torch.tensor([2.0, 1.5, 1.5, 1.5, 1.5, 0.3, 0.0, -0.5, -1.0, -1.0, -2.0, -3.0])


def backends(device):
    return [b for b in ops.available_backends("sample", device.type)]


def rows_for(backend, device, many):
    """How many draws a backend can afford here: all but Triton's interpreter (the torch
    sampler, the CPU's default, had only 100 draws, too few for any frequency check)."""
    return max(16, many // 200) if backend == "triton" and device.type == "cpu" else many


def kept_probabilities(logits, temperature, top_k, top_p):
    """The exact filtered distribution, by enumeration (ties at a cutoff kept)."""
    z = logits.double() / temperature
    keep = torch.ones_like(z, dtype=torch.bool)
    if top_k is not None:
        keep &= z >= z.sort(descending=True).values[top_k - 1]
    if top_p is not None:
        p = torch.softmax(torch.where(keep, z, float("-inf")), -1)
        mass_at_or_above = torch.stack([p[z >= v].sum() for v in z])
        cutoff = z[keep & (mass_at_or_above >= top_p - 1e-12)].max()
        keep &= z >= cutoff
    return torch.softmax(torch.where(keep, z, float("-inf")), -1)


def draw(backend, logits, n, device, **kw):
    with ops.use_backend(backend):
        return ops.sample(logits.expand(n, -1).to(device), seeds=torch.arange(n, device=device), **kw)


def chi_square(tokens, probabilities):
    counts = torch.bincount(tokens.cpu(), minlength=len(probabilities)).double()
    expected = probabilities * len(tokens)
    support = expected > 0
    assert counts[~support].sum() == 0, "drew a token outside the kept set"
    # cells expecting under 5 draws pooled into one, for the chi-square law to hold with few draws
    rare = support & (expected < 5)
    counts = torch.cat([counts[support & ~rare], counts[rare].sum()[None]])
    expected = torch.cat([expected[support & ~rare], expected[rare].sum()[None]])
    cells = expected > 0
    return ((counts[cells] - expected[cells]) ** 2 / expected[cells]).sum().item(), int(cells.sum())


# A threshold for chi-square over <= 12 cells far above the real sampler's statistic
# with the fixed seeds (p ~ 1e-6 for df = 11 is ~ 45) and far below what the biased
# sampler below produces.
THRESHOLD = 45.0


@pytest.mark.parametrize("options", [dict(), dict(top_k=4), dict(top_p=0.7), dict(top_k=6, top_p=0.8),
                                     dict(temperature=0.7, top_p=0.9)])
def test_frequencies_match_the_exact_distribution(options, device):
    probabilities = kept_probabilities(LOGITS, options.get("temperature", 1.0), options.get("top_k"),
                                       options.get("top_p"))
    for backend in backends(device):
        n = rows_for(backend, device, 20000)
        # the interpreter's 100 draws catch only gross errors (always the argmax scores ~200 to
        # 300), but in the filtered path, whose frequencies no other CPU test checks
        stat, cells = chi_square(draw(backend, LOGITS, n, device, **options).tokens, probabilities)
        assert stat < THRESHOLD, (backend, n, stat, cells)


def test_a_biased_sampler_fails_the_frequency_test():
    """The test's threshold catches a sampler whose temperature is off by 20%."""
    probabilities = kept_probabilities(LOGITS, 1.0, None, 0.9)
    biased = draw("reference", LOGITS * 1.2, 20000, torch.device("cpu"), top_p=0.9).tokens
    kept = probabilities > 0
    biased = biased[kept[biased]]  # the biased draw may keep fewer tokens: compare on the common set
    stat, _ = chi_square(biased, probabilities)
    assert stat > 2 * THRESHOLD, stat


def test_plain_triton_frequencies_on_cpu_interpreter(device):
    """The plain path (one pass) is cheap enough under the interpreter for a real frequency test."""
    if "triton" not in backends(device):
        pytest.skip("triton not available")
    n = 2000
    stat, cells = chi_square(draw("triton", LOGITS, n, device).tokens, kept_probabilities(LOGITS, 1.0, None, None))
    assert stat < THRESHOLD, (stat, cells)


@pytest.mark.parametrize("options", [dict(top_k=4), dict(top_p=0.5), dict(top_k=2, top_p=0.99)])
def test_never_outside_the_kept_set_and_ties_are_kept(options, device):
    probabilities = kept_probabilities(LOGITS, 1.0, options.get("top_k"), options.get("top_p"))
    for backend in backends(device):
        n = rows_for(backend, device, 4000)
        tokens = draw(backend, LOGITS, n, device, **options).tokens.cpu()
        assert (probabilities[tokens] > 0).all(), backend
        if n >= 4000:  # every kept token shows up, the ones tied at the cutoff included
            assert set(tokens.tolist()) == set(torch.nonzero(probabilities > 0).flatten().tolist())


def test_returned_log_probabilities(device, rng):
    for backend in backends(device):
        rows = 37 if rows_for(backend, device, 2) == 2 else 6
        logits = torch.randn(rows, 300, generator=rng) * 2
        logits[:, 5] = logits[:, 7]  # ties
        for options in [dict(), dict(top_k=20), dict(top_p=0.6), dict(top_k=50, top_p=0.9, temperature=0.8)]:
            with ops.use_backend(backend):
                out = ops.sample(logits.to(device), seeds=torch.arange(rows, device=device) * 7, offset=3, **options)
            tokens = out.tokens.cpu()
            t = options.get("temperature", 1.0)
            policy = torch.log_softmax(logits.double() / t, -1)
            for b in range(rows):
                filtered = kept_probabilities(logits[b], t, options.get("top_k"), options.get("top_p"))
                assert filtered[tokens[b]] > 0
                torch.testing.assert_close(out.logprob[b].cpu().double(), filtered[tokens[b]].log(),
                                           rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.policy_logprob.cpu().double(), policy.gather(-1, tokens[:, None])[:, 0],
                                       rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.mean_logp.cpu().double(), policy.mean(-1), rtol=1e-5, atol=1e-5)


def test_mean_logp_of_logits_with_a_common_offset(device, rng):
    """The torch sampler took mean(z) - m - log s: an offset of 300 cost 3.9e-5 in float32
    (the float32 reference: 1.6e-6); it is now within twice the reference's error plus 1e-6
    relative. The Triton kernel still sums z itself, per lane (its hot loop, tuned on a
    GPU), and its mean logit is a float32 near the offset: it is allowed two float32
    spacings of the offset more (6.1e-5). With one (3.1e-5) seed 170276118 failed, 4.5e-5
    against about 4.4e-5 allowed (5.1e-5 on the kernel before its FMAs); the largest of 61
    other seeds was 4.3e-5."""
    z = 300.0 + torch.randn(4, 20000, generator=rng, dtype=torch.float64)
    exact = (z - torch.logsumexp(z, -1, keepdim=True)).mean(-1)
    seeds = torch.arange(4)

    def error(backend):
        with ops.use_backend(backend):
            got = ops.sample(z.float().to(device), seeds=seeds.to(device), offset=0).mean_logp.cpu().double()
        return (got - exact).abs().max()

    bound = 2 * error("reference") + 1e-6 * exact.abs().max()
    spacing = 2 * torch.finfo(torch.float32).eps * 256  # two of 300
    for backend in backends(device):
        assert error(backend) <= bound + (spacing if backend == "triton" else 0), backend


def test_very_low_temperature_is_argmax(device, rng):
    logits = torch.randn(16, 200, generator=rng)
    for backend in backends(device):
        for options in [dict(), dict(top_p=0.9)]:
            with ops.use_backend(backend):
                out = ops.sample(logits.to(device), temperature=1e-4, seeds=torch.arange(16, device=device), **options)
            assert torch.equal(out.tokens.cpu(), logits.argmax(-1)), backend


@pytest.mark.parametrize("temperature", [1e-3, 1e-5, 1e-6])
def test_log_probabilities_at_low_temperatures(temperature, device):
    """Three bf16 tokens tied at the top: each has log-probability -log 3 under the policy
    and the filtered distribution at any temperature. Taken as z - (m + log sum) it lost
    log 3 to float32's rounding at |z| = 25 / temperature (-2 and 0 at 1e-6; the kernels
    now take (z - m) - log sum). On a GPU the sums' exp2 arguments x * scale - m are FMAs,
    which keep the product's rounding error (up to 2 at 3.6e7): a z - m rounded apart from
    them failed here at 1e-3 and 1e-6 on an H200 (kernels/sampling.py's _over)."""
    logits = torch.randn(3, 500, generator=torch.Generator().manual_seed(0)).clamp(max=20)
    logits[:, [7, 200, 401]] = 25.0
    logits = logits.to(torch.bfloat16).to(device)
    for backend in backends(device):
        for options in [dict(), dict(top_p=0.5)]:
            with ops.use_backend(backend):
                out = ops.sample(logits, temperature=temperature, seeds=torch.arange(3, device=device), **options)
            assert set(out.tokens.tolist()) <= {7, 200, 401}, backend
            third = torch.full((3,), -torch.tensor(3.0).log().item())
            torch.testing.assert_close(out.logprob.cpu(), third, rtol=0, atol=1e-5, msg=backend)
            torch.testing.assert_close(out.policy_logprob.cpu(), third, rtol=0, atol=1e-5, msg=backend)
            mean = torch.log_softmax(logits.cpu().double() / temperature, -1).mean(-1).float()
            torch.testing.assert_close(out.mean_logp.cpu(), mean, rtol=1e-5, atol=0, msg=backend)


@pytest.mark.parametrize("options", [dict(), dict(top_p=0.5)])
def test_ties_at_a_low_temperature_are_drawn_alike(options, device):
    """Four tokens tied at 25, two in one run (one group) and two in other groups, at
    temperature 1e-6: z ~ 3.6e7, where float32's spacing is 4, so noise added to z itself
    was rounded away and the first tied token won (Triton and the reference: 201, 53, 46 of
    300 for three ties); the noise now goes on z less a max, where the tied tokens read 0."""
    row = torch.zeros(12)
    tied = [0, 1, 4, 9]
    row[tied] = 25.0
    uniform = torch.zeros(12, dtype=torch.float64)
    uniform[tied] = 0.25
    for backend in backends(device):
        n = (240 if not options else 120) if backend == "triton" and device.type == "cpu" else 4000
        stat, cells = chi_square(draw(backend, row, n, device, temperature=1e-6, **options).tokens, uniform)
        assert stat < THRESHOLD, (backend, n, stat, cells)


def test_triton_ties_at_a_low_temperature_across_spans_and_programs(device):
    """As above, a tie between the first and second span of a row, read by one program or
    two (each chunk's draw relative to its own max, compared at the row's)."""
    if "triton" not in backends(device):
        pytest.skip("triton not available")
    from fastrl.kernels import sampling

    span = sampling.span(torch.float32)
    n = 160 if device.type == "cpu" else 20000
    logits = torch.zeros(n, span + 64, device=device)
    logits[:, [span - 1, span + 7]] = 25.0
    seeds = torch.arange(n, device=device)
    for chunks in (1, 2):
        tokens = sampling.sample(logits, 1e-6, 0, 1.0, seeds, 0, chunks=chunks)[0].cpu()
        assert torch.isin(tokens, torch.tensor([span - 1, span + 7])).all()
        stat, _ = chi_square((tokens == span + 7).long(), torch.tensor([0.5, 0.5], dtype=torch.float64))
        assert stat < THRESHOLD, (chunks, stat)


def test_mean_logp_of_a_logit_near_the_float32_floor(device):
    """A logit of -3e38 (finite, so accepted): the Triton kernel scaled the row's sum of
    logits before dividing it by V, and that overflowed to -inf."""
    logits = torch.tensor([[0.0, -3e38, 1.0, 2.0]], device=device)
    exact = torch.log_softmax(logits.cpu().double(), -1).mean(-1)
    for backend in backends(device):
        with ops.use_backend(backend):
            got = ops.sample(logits, seeds=torch.zeros(1, dtype=torch.int64, device=device)).mean_logp.cpu()
        torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=0, msg=backend)


def test_the_op_checks_what_it_indexes_by(device):
    """Called as torch.ops.fastrl.sample (past sample()'s checks), a seed tensor shorter than
    the batch was read past its end by the Triton kernel (and broadcast by the others);
    top_k >= V keeps every token on every backend, as sample() does (torch.topk raised)."""
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1)).to(device)
    seeds = torch.arange(4, device=device) + 3
    for backend in backends(device):
        with ops.use_backend(backend):
            with pytest.raises(ValueError, match=r"seeds must be int64 of shape \[4\]"):
                torch.ops.fastrl.sample(logits, 1.0, 0, 1.0, seeds[:1], 0)
            with pytest.raises(ValueError, match=r"seeds must be int64 of shape \[4\]"):
                torch.ops.fastrl.sample(logits, 1.0, 0, 1.0, seeds.int(), 0)
            for args in ((0.0, 0, 1.0, 0), (float("nan"), 0, 1.0, 0), (1.0, -3, 1.0, 0), (1.0, 0, 0.0, 0),
                         (1.0, 0, 1.5, 0), (1.0, 0, 1.0, -1)):  # were accepted: nan tokens, or a ZeroDivisionError
                with pytest.raises(ValueError, match="the op needs temperature > 0 and finite, top_k >= 0"):
                    torch.ops.fastrl.sample(logits, args[0], args[1], args[2], seeds, args[3])
            with pytest.raises(ValueError, match="log2\\(e\\) / temperature a normal float32"):
                torch.ops.fastrl.sample(logits, 1e-39, 0, 1.0, seeds, 0)
            every = torch.ops.fastrl.sample(logits, 1.0, 0, 0.9, seeds, 2)
            for k in (50, 51, 10**6):
                for got, want in zip(torch.ops.fastrl.sample(logits, 1.0, k, 0.9, seeds, 2), every):
                    torch.testing.assert_close(got, want, msg=backend)


@pytest.mark.parametrize("options", [dict(), dict(top_k=3), dict(top_p=0.5)])
def test_an_empty_batch(options, device):
    for backend in backends(device):
        for dtype in (torch.float32, torch.float64):
            with ops.use_backend(backend):
                out = ops.sample(torch.zeros(0, 10, dtype=dtype, device=device), **options)
            assert out.tokens.shape == out.logprob.shape == out.mean_logp.shape == (0,), backend


def test_same_seed_and_offset_same_token_other_offsets_independent(device):
    uniform = torch.zeros(16)
    for backend in backends(device):
        n = rows_for(backend, device, 4000)
        first = draw(backend, uniform, n, device, offset=5).tokens
        again = draw(backend, uniform, n, device, offset=5).tokens
        other = draw(backend, uniform, n, device, offset=6).tokens
        assert torch.equal(first, again)
        same = (first == other).double().mean().item()
        assert same < 0.25, (backend, same)  # 1/16 for independent draws
        if n >= 4000:
            assert abs(same - 1 / 16) < 0.02, (backend, same)


@pytest.mark.parametrize("options", [dict(top_k=40, top_p=0.9), dict(top_p=0.9), dict(top_k=40)])
def test_a_row_draws_the_same_token_whatever_the_other_rows(options, device, rng):
    """bf16 logits tie often; a flat row beside them makes the CPU path take more candidates
    (the most ties at a cutoff, and top-p's k), and torch.topk orders ties differently for
    another k: the draw must not follow that order (it did: 45 of 900 draws changed)."""
    x = (torch.randn(1, 1000, generator=rng) * 2).to(torch.bfloat16).expand(300, -1).to(device)
    seeds = torch.arange(300, device=device)
    flat = torch.zeros(1, 1000, dtype=torch.bfloat16, device=device)
    for backend in backends(device):
        if backend == "triton" and device.type == "cpu":
            continue  # the interpreter: too slow for 300 rows (its tokens do not depend on other rows by layout)
        with ops.use_backend(backend):
            alone = ops.sample(x, seeds=seeds, **options).tokens
            beside = ops.sample(torch.cat([x, flat]), seeds=torch.cat([seeds, seeds[:1]]), **options).tokens
        assert torch.equal(alone, beside[:300]), backend


def cpu_backends_that_run_wide_rows():
    return [b for b in backends(torch.device("cpu")) if b != "triton"]  # (the interpreter: too slow at this width)


def assert_alone_equals_in_batch(batch, row, seeds, **options):
    """The row's token drawn alone and in the batch, and on the CPU path (the torch backend)
    every output to the bit (the reference's means are sums whose order torch picks)."""
    for backend in cpu_backends_that_run_wide_rows():
        with ops.use_backend(backend):
            together = ops.sample(batch, seeds=seeds, **options)
            alone = ops.sample(batch[row:row + 1], seeds=seeds[row:row + 1], **options)
        for name, a, b in list(zip(together._fields, alone, together))[:4 if backend == "torch" else 1]:
            assert torch.equal(a[0], b[row]), (backend, name, a[0].item(), b[row].item())


def test_a_top_p_cutoff_at_the_last_bit_of_the_mass_does_not_depend_on_the_other_rows():
    """The CPU path's top-p target is top_p times the row's total mass: torch summed a
    151936-wide row over two threads alone and on one beside 15 others (102.335205 and
    102.335197), and a top_p between the two targets kept another set (seed 4 drew 38973
    alone, 48545 in the batch); mean_logp's sum differed the same way."""
    x = (torch.randn(16, 151936, generator=torch.Generator().manual_seed(0)) * 2).to(torch.bfloat16)
    masses = torch.exp(x.float() - x.float().amax(-1, keepdim=True))
    in_batch = masses.sum(-1)
    alone = torch.stack([masses[i:i + 1].sum(-1)[0] for i in range(16)])
    differ = (in_batch != alone).nonzero().flatten().tolist()
    if not differ:
        pytest.skip("torch sums a row alike alone and in this batch here (one thread?)")
    row = differ[0]
    mass = masses[row].sort(descending=True).values.cumsum(0)
    # a top_p whose float32 targets (as the sampler computes them) keep different sets for the two sums
    top_p = next(p for c in mass[20:4000].tolist() for p in (c / alone[row].item(), c / in_batch[row].item())
                 if (mass < p * in_batch[row]).sum() != (mass < p * alone[row]).sum())
    assert_alone_equals_in_batch(x, row, torch.arange(16), top_p=top_p)


def test_a_top_k_pool_does_not_depend_on_another_rows_ties():
    """top-k keeps every token tied at the cutoff, so a row beside one with 30 more ties got
    trailing zeros in its pool's sum, whose last bit then changed with the width, and a top_p
    between the two targets kept another set."""
    generator, checked = torch.Generator().manual_seed(1), 0
    for k in range(5, 102):
        row = torch.randn(1, 1000, generator=generator) * 3
        tied = torch.zeros(1, 1000)
        tied[0, :k + 30] = 5.0
        masses = torch.exp(row.topk(k).values - row.max())
        own, padded = masses.sum(), torch.cat([masses, torch.zeros(1, 30)], 1).sum()
        mass = masses.cumsum(-1)[0]
        top_p = next((c / ((own + padded) / 2).item() for c in mass[:-1].tolist()
                      if (mass < c / ((own + padded) / 2).item() * own).sum() !=
                      (mass < c / ((own + padded) / 2).item() * padded).sum()), None)
        if own != padded and top_p is not None:
            assert_alone_equals_in_batch(torch.cat([row, tied]), 0, torch.tensor([k, 0]), top_k=k, top_p=top_p)
            checked += 1
    if not checked:
        pytest.skip("torch sums the padded pools alike here")


def test_float64_and_half_logits(device, rng):
    logits = torch.randn(8, 100, generator=rng, dtype=torch.float64)
    for backend in backends(device):
        with ops.use_backend(backend):
            out = ops.sample(logits.to(device), top_k=10, seeds=torch.arange(8, device=device))
        assert out.logprob.dtype == torch.float64 and out.tokens.dtype == torch.int64
    if device.type == "cuda":
        for dtype in (torch.bfloat16, torch.float16):
            out = ops.sample(logits.to(device, dtype), top_p=0.9, seeds=torch.arange(8, device=device))
            assert out.logprob.dtype == torch.float32


def test_masked_tokens_are_never_drawn(device):
    logits = torch.zeros(64, 10)
    logits[:, ::2] = float("-inf")
    for backend in backends(device):
        with ops.use_backend(backend):
            tokens = ops.sample(logits.to(device), seeds=torch.arange(64, device=device)).tokens.cpu()
        assert (tokens % 2 == 1).all()


def test_opcheck(device):
    args = (LOGITS.expand(4, -1).contiguous().to(device), 1.0, 3, 0.9, torch.arange(4, device=device), 2)
    torch.library.opcheck(torch.ops.fastrl.sample.default, args)


def test_strided_and_expanded_seeds(device, rng):
    """Seeds that are every other element of a longer tensor, or one seed expand()ed to
    every row (stride 0), draw what their contiguous copies draw, on every backend."""
    logits = (torch.randn(4, 64, generator=rng) * 2).to(device)
    all_seeds = torch.arange(8, device=device) * 1000003 + 7
    for backend in backends(device):
        with ops.use_backend(backend):
            for options in [dict(), dict(top_k=20)]:
                for seeds in (all_seeds[::2], torch.tensor([42], device=device).expand(4)):
                    got = ops.sample(logits, seeds=seeds, **options)
                    want = ops.sample(logits, seeds=seeds.contiguous(), **options)
                    assert torch.equal(got.tokens, want.tokens), (backend, options, seeds.stride())
                    torch.testing.assert_close(got.logprob, want.logprob)
            same = ops.sample(torch.zeros(4, 64, device=device), seeds=torch.tensor([42], device=device).expand(4))
            assert (same.tokens == same.tokens[0]).all(), backend  # equal rows, equal seeds: equal tokens


@pytest.mark.parametrize("options", [dict(), dict(top_k=5), dict(top_p=0.8)])
def test_compile_fullgraph_equals_eager(options, device, rng):
    """Through the op and its fake: the torch path's data-dependent cutoffs do not reach Dynamo."""
    logits = torch.randn(3, 50, generator=rng).to(device)
    seeds = torch.arange(3, device=device)
    compiled = torch.compile(lambda z, s: ops.sample(z, seeds=s, offset=1, **options), fullgraph=True)
    got, eager = compiled(logits, seeds), ops.sample(logits, seeds=seeds, offset=1, **options)
    assert torch.equal(got.tokens, eager.tokens)
    for g, e in zip(got[1:], eager[1:]):
        torch.testing.assert_close(g, e)


def test_no_gradient(device):
    logits = LOGITS.expand(4, -1).to(device).requires_grad_()
    for backend in backends(device):
        with ops.use_backend(backend):
            out = ops.sample(logits, top_k=3, seeds=torch.arange(4, device=device))
            assert not any(x.requires_grad for x in out), backend
            raw = torch.ops.fastrl.sample(logits, 1.0, 3, 1.0, torch.arange(4, device=device), 0)
            assert not any(x.requires_grad for x in raw), backend


def test_a_failing_call_leaves_the_global_generator_alone():
    """seeds=None draws from torch's default generator, but only once the arguments passed."""
    bad = torch.zeros(2, 5)
    bad[1, 2] = float("nan")
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match="logits contains NaN"):
        ops.sample(bad)
    with pytest.raises(ValueError, match="top_p must be in"):
        ops.sample(torch.zeros(2, 5), top_p=2.0)
    assert torch.equal(torch.get_rng_state(), state)
    ops.sample(torch.zeros(2, 5))
    assert not torch.equal(torch.get_rng_state(), state)


# ---- bad inputs ----


@pytest.mark.parametrize("kw,error,match", [
    (dict(temperature=0.0), ValueError, "temperature must be > 0"),
    (dict(temperature=-1.0), ValueError, "temperature must be > 0"),
    (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), ValueError, r"top_p must be in \(0, 1\]"),
    (dict(top_k=0), ValueError, "top_k must be >= 1"),
    (dict(top_k=2.5), TypeError, "top_k must be None or an int"),
    (dict(offset=-1), ValueError, "offset must be an int >= 0"),
    (dict(offset=True), TypeError, "offset must be an int, got bool"),
    (dict(offset=2**63), ValueError, "offset must fit in int64"),
    (dict(seeds=torch.arange(3)), ValueError, "seeds must have one seed per row"),
    (dict(seeds=torch.arange(4, dtype=torch.int32)), TypeError, "seeds must be int64"),
])
def test_bad_arguments(kw, error, match):
    with pytest.raises(error, match=match):
        ops.sample(torch.zeros(4, 10), **kw)


@pytest.mark.parametrize("temperature", [1e-39, 1e39])
def test_temperature_outside_float32s_scale(temperature):
    with pytest.raises(ValueError, match=r"temperature must be in \[.*\] for torch.float32 logits \(log2\(e\) / "
                                         r"temperature a normal float32"):
        ops.sample(torch.zeros(4, 10), temperature=temperature)
    out = ops.sample(torch.zeros(4, 10, dtype=torch.float64), temperature=temperature)  # float64's range
    torch.testing.assert_close(out.policy_logprob, torch.full((4,), -math.log(10), dtype=torch.float64))


@pytest.mark.parametrize("logits, temperature", [(torch.full((2, 6), torch.finfo(torch.float32).min), 1.0),
                                                 (torch.tensor([[2.5e38, 0.0, 1.0]]), 1.0),
                                                 (torch.tensor([[3.0, 0.0, 1.0]]), 1e-38)])
def test_logits_whose_scaled_values_overflow_on_cpu(logits, temperature):
    """The kernels scale by log2(e) / temperature in float32: a row whose largest logit
    leaves its range then (a row masked with the dtype's lowest value rather than -inf, or
    a huge logit, or a tiny temperature) gave NaN and wrong tokens on Triton."""
    with pytest.raises(ValueError, match="logits / temperature leave float32.s range"):
        ops.sample(logits, temperature=temperature)
    ops.sample(logits.double(), temperature=temperature)  # within float64's
    ops.sample(torch.where(torch.arange(logits.shape[1]) == 0, 1.0, torch.finfo(torch.float32).min)[None])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_logits_on_cpu(bad):
    logits = torch.zeros(4, 10)
    logits[2, 3] = bad
    with pytest.raises(ValueError, match="logits contains NaN or \\+Inf"):
        ops.sample(logits)


def test_a_row_without_a_finite_logit():
    with pytest.raises(ValueError, match="a row without a finite value"):
        ops.sample(torch.full((2, 5), float("-inf")))


def test_logits_shape_and_dtype():
    with pytest.raises(ValueError, match="logits must have 2 dimensions"):
        ops.sample(torch.zeros(10))
    with pytest.raises(TypeError, match="logits must be float16"):
        ops.sample(torch.zeros(2, 10, dtype=torch.int64))


@pytest.mark.parametrize("options", [dict(), dict(top_k=7), dict(top_p=0.8), dict(top_k=40, top_p=0.95)])
@pytest.mark.parametrize("ragged", [203, 200, 0])
def test_triton_tokens_do_not_depend_on_the_tiling(options, ragged, device, rng):
    """The noise is keyed by group and token, so tile size, search arity, warps and rows
    split over programs (plain sampling) change no token; a first tile of -inf tokens and a
    ragged last span are covered: one whose last 16-byte run is cut (203 fp32 tokens: read
    on its own, first), one of whole runs (200: the loop's last span) and none."""
    if "triton" not in backends(device):
        pytest.skip("triton not available")
    from fastrl.kernels import sampling

    span = sampling.span(torch.float32)
    if options and not ragged:
        pytest.skip("a filtered row is a span or less here")
    rows, v = 6, ragged if options else 2 * span + ragged  # plain sampling: rows over 1 to 3 programs
    logits = torch.randn(rows, v, generator=rng) * 3
    logits[:, :32] = float("-inf")
    logits[:, 40] = logits[:, 90]  # a tie
    logits = logits.to(device)
    seeds = torch.arange(rows, device=device) * 31 + 5
    k = options.get("top_k", 0)
    p = options.get("top_p", 1.0)
    runs = [sampling.sample(logits, 1.0, k, p, seeds, 9, block_v=bv, split=split, chunks=chunks, num_warps=warps)
            for bv, split, chunks, warps in [(16, 1, 1, None), (64, 4, 1, 4), (256, 2, None, None), (16, 4, 2, None),
                                             (32, 4, 64, 4)]]
    assert all(not counters.any() for counters in sampling._COUNTERS.values())  # left ready for the next call
    for out in runs[1:]:
        assert torch.equal(out[0], runs[0][0])
        for got, want in zip(out[1:], runs[0][1:]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    tokens, logprob, policy_logprob, _ = (x.cpu() for x in runs[0])
    assert (tokens >= 32).all()
    for b in range(rows):
        filtered = kept_probabilities(logits[b].cpu(), 1.0, options.get("top_k"), options.get("top_p"))
        assert filtered[tokens[b]] > 0
        torch.testing.assert_close(logprob[b].double(), filtered[tokens[b]].log(), rtol=1e-5, atol=1e-5)
    policy = torch.log_softmax(logits.cpu().double(), -1)
    torch.testing.assert_close(policy_logprob.double(), policy.gather(-1, tokens[:, None])[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [dict(), dict(top_p=0.8)])
def test_triton_bf16_pairs_and_fused_reductions_change_no_token(options, device, rng):
    """bf16 rows read as 32-bit pairs (V even, rows 4-byte aligned) and as elements (a copy
    one element off), with the row's end reduced in one exchange between warps (fused, the
    compiled default) or value by value (the interpreter's): the groups' sums are taken in
    the same order either way, so the tokens are equal; the log-probabilities are the
    exact ones to bf16 inputs' float32 accuracy. The rows end in a ragged span."""
    if "triton" not in backends(device):
        pytest.skip("triton not available")
    from fastrl.kernels import sampling

    span = sampling.span(torch.bfloat16)
    rows, v = (3, 2 * span + 200) if not options else (2, span + 200)
    logits = (torch.randn(rows, v, generator=rng) * 3).to(torch.bfloat16)
    logits[0, 1:40:3] = float("-inf")  # masked tokens in the first row (its mean_logp is -inf)
    logits = logits.to(device)
    unaligned = torch.empty(rows * v + 1, dtype=torch.bfloat16, device=device)[1:].view(rows, v)
    unaligned.copy_(logits)
    assert sampling._as_words(logits) and not sampling._as_words(unaligned)
    seeds = torch.arange(rows, device=device) * 17 + 3
    top_p = options.get("top_p", 1.0)
    runs = [sampling.sample(x, 1.0, 0, top_p, seeds, 4, fused=fused)
            for x in (logits, unaligned) for fused in (True, False)]
    for out in runs[1:]:
        assert torch.equal(out[0], runs[0][0])
        for got, want in zip(out[1:], runs[0][1:]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    tokens, logprob, policy_logprob, mean_logp = (x.cpu() for x in runs[0])
    assert tokens[0] not in range(1, 40, 3)
    policy = torch.log_softmax(logits.cpu().double(), -1)
    torch.testing.assert_close(policy_logprob.double(), policy.gather(-1, tokens[:, None])[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mean_logp.double(), policy.mean(-1), rtol=1e-5, atol=1e-5)
    assert mean_logp[1:].isfinite().all()
    for b in range(rows):
        kept = kept_probabilities(logits[b].cpu().float(), 1.0, None, options.get("top_p"))
        torch.testing.assert_close(logprob[b].double(), kept[tokens[b]].log(), rtol=1e-5, atol=1e-5)


def test_triton_frequencies_across_runs_groups_and_spans(device):
    """The two-level draw over a row of three spans (the last one ragged) whose only finite
    logits sit at the edges of 16-byte runs, of a group's four runs and of spans: most alone
    in their group, among them a likely token in each of the four runs, so a run left out of
    a group's mass or noise from the wrong counter shows in the frequencies; two groups hold
    two tokens in different runs, for the draw inside a group."""
    if "triton" not in backends(device):
        pytest.skip("triton not available")
    from fastrl.kernels import sampling

    span, run = sampling.span(torch.float32), sampling.run_size(torch.float32)
    lane = span // 4  # tokens from one run of a group to the next
    places = torch.tensor([0, 2 * run - 1, lane - run - 1, lane, 2 * lane + 9 * run + 2, 3 * lane + 3 * run + 1,
                           span - 1, span, span + lane, 2 * span - 2 * run, 2 * span, 2 * span + 99])
    logits = torch.tensor([-1.0, 0.5, 0.0, 1.5, 1.5, 2.0, 1.5, -1.0, 0.3, 1.0, -2.0, 0.5])
    row = torch.full((2 * span + 100,), float("-inf"))
    row[places] = logits
    n = 600 if device.type == "cpu" else 20000
    tokens = draw("triton", row, n, device).tokens.cpu()
    assert torch.isin(tokens, places).all()
    stat, cells = chi_square(torch.searchsorted(places, tokens), kept_probabilities(logits, 1.0, None, None))
    assert stat < THRESHOLD, (stat, cells)


@pytest.mark.parametrize("top_p,kept", [(0.5, [0]), (0.75, [0, 1])])
def test_a_top_p_reached_exactly_keeps_no_more_tokens(top_p, kept, device):
    """DESIGN 3.3: top-p keeps the head of the sorted row up to the first position whose
    cumulative mass reaches top_p (>=), plus ties there. The probabilities are powers of
    two, so every backend's masses are exact and reach top_p exactly: a sampler that kept
    going while the mass was <= top_p kept the next level of tokens too. The logits are
    log p (the torch and reference paths work with e^z) or log2 p at temperature log2(e)
    (Triton's z = logit * log2(e) / temperature is then log2 p itself)."""
    p = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625])
    kept_p = torch.zeros(5, dtype=torch.float64)
    kept_p[kept] = p[kept].double() / p[kept].double().sum()
    for backend in backends(device):
        logits, temperature = (p.log2(), LOG2E) if backend == "triton" else (p.log(), 1.0)
        n = 16 if backend == "triton" and device.type == "cpu" else 2000
        out = draw(backend, logits, n, device, temperature=temperature, top_p=top_p)
        tokens = out.tokens.cpu()
        assert (kept_p[tokens] > 0).all(), (backend, tokens.unique().tolist())
        torch.testing.assert_close(out.logprob.cpu().double(), kept_p[tokens].log(), rtol=0, atol=1e-6,
                                   msg=lambda m: f"{backend}: {m}")


def test_a_top_p_just_below_one_ends_its_candidate_search(monkeypatch, rng):
    """top_p = the float just below 1 keeps (almost) every token. The torch path finds its
    top-p candidates by torch.topk with a growing k and must stop once k is the whole row:
    there the candidates' mass, summed in another order than the row's total, stays an ulp
    under top_p * total in about a third of random rows, and a search that stopped only on
    the mass asked for the whole row again forever (here: more than 50 topk calls)."""
    logits = torch.randn(32, 300, generator=rng) * 3
    top_p = math.nextafter(1.0, 0.0)
    calls = []
    topk = torch.Tensor.topk

    def counting_topk(self, *args, **kwargs):
        calls.append(args)
        if len(calls) > 50:
            raise AssertionError("the top-p candidate search does not end")
        return topk(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "topk", counting_topk)
    for backend in backends(torch.device("cpu")):
        calls.clear()
        with ops.use_backend(backend):
            out = ops.sample(logits, top_p=top_p, seeds=torch.arange(32))
        torch.testing.assert_close(out.logprob, out.policy_logprob, rtol=0, atol=1e-5, msg=lambda m: f"{backend}: {m}")
