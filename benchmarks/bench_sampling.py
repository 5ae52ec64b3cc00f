"""Q-softmax sampling: fastrl.ops.sample against softmax + multinomial and HF's sort-based top-k/top-p (issue 5).

One draw per row of logits[B, V], temperature 1, with the filters (the
``filter`` entry of each row's shape):
- plain: no filtering;
- top_p: top-p 0.9;
- top_k+top_p: top-k 50, then top-p 0.9 (Hugging Face's order).
Providers:
- fastrl_<backend>: fastrl.ops.sample(logits, top_k, top_p, seeds, offset)
  (a one-launch Triton kernel on CUDA: threshold search on the float bits, no sort;
  PyTorch on the CPU). It also returns the token's log-probability under the
  filtered and the unfiltered distribution and the row's mean log-softmax;
  the baselines below return the token only;
- softmax_multinomial (plain): torch.multinomial(torch.softmax(logits, -1,
  dtype=float32), 1);
- hf_sort_eager (top_p, top_k+top_p): what transformers' generate() runs:
  logits.float(), TopKLogitsWarper (mask below the k-th largest value, ties
  kept), TopPLogitsWarper (sort ascending, softmax, cumsum, remove the tokens
  with cumulative mass <= 1 - top_p, keep the last one, scatter the mask back,
  masked_fill -inf), then softmax + multinomial; written here, no transformers
  import;
- hf_sort_compiled: torch.compile(dynamic=True) of hf_sort_eager (for plain:
  of softmax_multinomial); compile time is reported in the note and counted
  against --compile-budget, after which the remaining compiled rows are
  skipped (their rows say so);
- read_once_amax, read_once_triton, read_once_tma (plain, CUDA): a row max, no sampling, by
  torch.amax, by a Triton loop on the sampler's grid (its programs per row, tile, warps and
  pipelining) and by that loop with TMA bulk copies for its tiles: what one read of the
  logits costs under this timing, beside the copy-rate floor, and how much of the
  sampler's time its arithmetic adds;
- topk_multinomial (top_k+top_p): torch.topk(k), top-p on the k sorted values,
  softmax + multinomial over k, gather the index: the usual fast path when a
  small top-k is set (ties at the k-th value are not kept);
- fastrl_triton[...] (with --configs, CUDA, at V=151936 and B=256 or the B after @): the Triton
  kernel at other warps and programs per row (plain) and search tiles and
  arities (top-p), to choose the defaults.
Logits (default): Zipf-like, 1.3 x i.i.d. standard Gumbel noise per token, so
the weights exp(z) have a Pareto tail and the ranked probabilities fall off like
Zipf's law (exponent ~1.3), as language-model next-token distributions do;
top-p 0.9 then keeps a few hundred tokens on average with a wide spread across
rows (the counts per shape are printed). fp32 on the CPU, bf16 on CUDA.
On CUDA every row also gets the bandwidth floor: B * V * itemsize (the logits
read once) over the device's measured copy rate.

    python benchmarks/bench_sampling.py [--quick] [--device cuda] [--shape B,V] [--filters top_p]
    fastrl bench sampling --quick
"""
from __future__ import annotations

import functools
import gc
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import fastrl.ops as ops  # noqa: E402

BATCHES = [1, 64, 256]
VOCABS = [32768, 151936]
# The whole grid on both devices: about 2 minutes on 2 CPU cores (over half of it
# at B=256, V=151936, where a full sort takes seconds a call).
CPU_SHAPES = GPU_SHAPES = [(B, V) for V in VOCABS for B in BATCHES]
QUICK_SHAPES = [(16, 32768)]
ACCEPTANCE_CPU = (64, 151936, "top_p")
ACCEPTANCE_GPU = (256, 151936)
FILTERS = {"plain": (None, None), "top_p": (None, 0.9), "top_k+top_p": (50, 0.9)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LOGIT_SCALES = {"gumbel": 1.3, "normal": 4.0}


# ---- inputs ----

_CACHE: dict = {}  # the logits of the shape being timed, shared by its providers


def make_logits(B, V, dtype, device, dist="gumbel", scale=None, seed=0):
    key = (B, V, dtype, device, dist, scale, seed)
    if key not in _CACHE:
        _CACHE.clear()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        scale = LOGIT_SCALES[dist] if scale is None else scale
        g = torch.Generator(device).manual_seed(seed)
        if dist == "gumbel":  # -log(-log u): standard Gumbel; u > 0 so no -inf
            z = torch.rand(B, V, generator=g, device=device).clamp_(min=1e-30).log_().neg_().log_().neg_()
        else:
            z = torch.randn(B, V, generator=g, device=device)
        _CACHE[key] = z.mul_(scale).to(dtype)
    return _CACHE[key]


def kept_by_top_p(logits, top_p=0.9, rows=64):
    """Tokens top-p keeps (the smallest prefix of the sorted row reaching top_p), over the first rows."""
    probs = logits[:rows].float().softmax(-1).sort(-1, descending=True).values
    mass_before = probs.cumsum(-1) - probs
    kept = (mass_before < top_p).sum(-1).float().cpu()
    top1 = probs[:, 0].float().mean().item()
    return kept, top1


# ---- providers: each returns the tokens [B] (fastrl: Sampled) ----


def hf_filter(scores, top_k, top_p):
    """transformers' TopKLogitsWarper then TopPLogitsWarper (min_tokens_to_keep=1, filter_value=-inf)."""
    if top_k is not None:
        top_k = min(top_k, scores.size(-1))
        indices_to_remove = scores < torch.topk(scores, top_k)[0][..., -1, None]
        scores = scores.masked_fill(indices_to_remove, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        sorted_indices_to_remove = cumulative_probs <= (1 - top_p)
        sorted_indices_to_remove[..., -1:] = 0
        indices_to_remove = sorted_indices_to_remove.scatter(1, sorted_indices, sorted_indices_to_remove)
        scores = scores.masked_fill(indices_to_remove, float("-inf"))
    return scores


def hf_sample(logits, top_k, top_p):
    """generate()'s sampling step: float32 scores, the warpers, softmax, multinomial."""
    scores = hf_filter(logits.float(), top_k, top_p)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, num_samples=1).squeeze(1)


def softmax_multinomial(logits, top_k=None, top_p=None):
    return torch.multinomial(torch.softmax(logits, -1, dtype=torch.float32), 1).squeeze(1)


def topk_multinomial(logits, top_k, top_p):
    values, indices = torch.topk(logits.float(), top_k)  # descending
    probs = values.softmax(-1)
    mass_before = probs.cumsum(-1) - probs
    probs = probs.masked_fill(mass_before >= top_p, 0.0)
    pick = torch.multinomial(probs, 1)
    return indices.gather(-1, pick).squeeze(1)


def read_once_triton(logits, chunks=None, stages=3, num_warps=8):
    """Each row's max by as many programs per row, warps and tiles as the sampler's plain pass
    (kernels/sampling.py; or the programs per row, pipeline stages and warps given); each program
    takes an equal share of the row in whole tiles (the last less), where the sampler evens the
    shares out (9 + 9.5 tiles rather than 10 + 8.5 at V=151936)."""
    import triton

    from fastrl.kernels import sampling

    B, V = logits.shape
    tile = sampling.span(logits.dtype)
    chunks = sampling.programs_per_row(logits.device, B, triton.cdiv(V, tile), chunks)
    chunk = triton.cdiv(triton.cdiv(V, tile), chunks) * tile
    chunks = triton.cdiv(V, chunk)
    out = torch.empty(B, chunks, dtype=torch.float32, device=logits.device)
    _row_max_kernel()[(B, chunks)](logits, out, logits.stride(0), V, chunk, TILE=tile, STAGES=stages,
                                   num_warps=num_warps)
    return out


TMA_BOX = (64, 128)  # rows of 128 tokens: a span of bf16 (8192 tokens) per load


def read_once_tma(logits, chunks=None, stages=3, num_warps=8):
    """read_once_triton's loop with each tile loaded by the Hopper tensor-memory accelerator
    (a host-side TensorDescriptor over logits viewed as [B, V / 128, 128], boxes of 64 x 128,
    Triton's pipelining of descriptor loads): whether bulk copies read faster than the
    sampler's 16-byte cp.async tiles. V must be a multiple of 128, rows contiguous; the
    box past a row's end reads zeros, not the next row. Timing only."""
    import triton
    from triton.tools.tensor_descriptor import TensorDescriptor

    from fastrl.kernels import sampling

    B, V = logits.shape
    rows, cols = TMA_BOX
    if V % cols or not logits.is_contiguous():
        raise Skipped(f"read_once_tma needs contiguous rows of a multiple of {cols} tokens")
    R = V // cols
    chunks = sampling.programs_per_row(logits.device, B, triton.cdiv(R, rows), chunks)
    chunk_rows = triton.cdiv(triton.cdiv(R, rows), chunks) * rows
    chunks = triton.cdiv(R, chunk_rows)
    desc = TensorDescriptor.from_tensor(logits.view(B, R, cols), [1, rows, cols])
    out = torch.empty(B, chunks, dtype=torch.float32, device=logits.device)
    _row_max_tma_kernel()[(B, chunks)](desc, out, R, chunk_rows, ROWS=rows, COLS=cols, STAGES=stages,
                                       num_warps=num_warps)
    return out


@functools.lru_cache(maxsize=None)
def _row_max_tma_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(desc, out_ptr, R, chunk_rows, ROWS: tl.constexpr, COLS: tl.constexpr, STAGES: tl.constexpr):
        b = tl.program_id(0)
        start = tl.program_id(1) * chunk_rows
        stop = tl.minimum(start + chunk_rows, R)
        best = tl.full([ROWS, COLS], float("-inf"), tl.float32)
        for r0 in tl.range(start, stop, ROWS, num_stages=STAGES):
            best = tl.maximum(best, desc.load([b, r0, 0]).reshape([ROWS, COLS]).to(tl.float32))
        tl.store(out_ptr + b * tl.num_programs(1) + tl.program_id(1), tl.max(tl.max(best, 1), 0))

    return kernel


@functools.lru_cache(maxsize=None)
def _row_max_kernel():  # built on first use: a CPU run never imports triton
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(x_ptr, out_ptr, stride, V, chunk, TILE: tl.constexpr, STAGES: tl.constexpr):
        start = tl.program_id(1) * chunk
        stop = tl.minimum(start + chunk, V)
        row = x_ptr + tl.program_id(0).to(tl.int64) * stride
        best = tl.full([TILE], float("-inf"), tl.float32)
        for v0 in tl.range(start, stop, TILE, num_stages=STAGES):
            cols = v0 + tl.arange(0, TILE)
            x = tl.load(row + cols, mask=cols < stop, other=float("-inf"))
            best = tl.maximum(best, x.to(tl.float32))
        tl.store(out_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), tl.max(best, 0))

    return kernel


class CompileState:
    """torch.compile'd baselines, one per filter, and the compile time spent so far."""

    def __init__(self, budget_s, device):
        self.budget_s = budget_s
        self.spent_s = 0.0
        self.fns: dict = {}
        self.device = device

    def fn(self, filter_name):
        if filter_name not in self.fns:
            if self.device.type == "cpu" and not self.fns:
                # No pool of compile workers: on a few cores they keep running after the
                # compile and slow every row timed after it (several-fold here, on 2 cores).
                import torch._inductor.config as inductor_config

                inductor_config.compile_threads = 1
            base = softmax_multinomial if filter_name == "plain" else hf_sample
            top_k, top_p = FILTERS[filter_name]
            self.fns[filter_name] = torch.compile(lambda x: base(x, top_k, top_p), dynamic=True)
        return self.fns[filter_name]


class Skipped(RuntimeError):
    pass


# ---- cases ----


def dtype_name(dtype):
    return next(k for k, v in DTYPES.items() if v == dtype)


def providers(device, backend):
    """(name, filters it runs, fn(logits, top_k, top_p, seeds), note)."""
    read_once = ("plain",) if device.type == "cuda" else ()  # the bandwidth floor's companion: a GPU figure
    return [
        (f"fastrl_{backend}", tuple(FILTERS),
         lambda x, k, p, seeds: ops.sample(x, top_k=k, top_p=p, seeds=seeds, offset=0),
         "fastrl.ops.sample: token + 2 log-probs + mean_logp"),
        ("softmax_multinomial", ("plain",), lambda x, k, p, seeds: softmax_multinomial(x),
         "softmax(dtype=fp32) + multinomial"),
        ("read_once_amax", read_once, lambda x, k, p, seeds: torch.amax(x, -1),
         "torch.amax(logits, -1): one read of the logits, no sampling"),
        ("read_once_triton", read_once, lambda x, k, p, seeds: read_once_triton(x),
         "a row max in Triton on the sampler's grid: one read, no sampling"),
        ("read_once_tma", read_once, lambda x, k, p, seeds: read_once_tma(x),
         "read_once_triton with each tile a TMA bulk copy (64 x 128 tokens): one read, no sampling"),
        ("hf_sort_eager", ("top_p", "top_k+top_p"), lambda x, k, p, seeds: hf_sample(x, k, p),
         "float(), HF TopK/TopP warpers (full sort), softmax + multinomial"),
        ("hf_sort_compiled", tuple(FILTERS), None,
         "torch.compile(dynamic=True) of hf_sort_eager (plain: of softmax_multinomial)"),
        ("topk_multinomial", ("top_k+top_p",), lambda x, k, p, seeds: topk_multinomial(x, k, p),
         "topk(k), top-p on k values, multinomial over k (ties at k-th not kept)"),
    ]


CONFIG = re.compile(r"^(once)?(\d+)x(\d+)(?:s(\d+))?(?:c(\d+))?(?:p(\d+))?(?:@(\d+))?$")


def config_providers(configs):
    """The Triton kernel at other settings, '[once]BLOCKxWARPS[sSPLIT][cCHUNKS][pSTAGES][@B]': tokens
    per tile of the cutoff search, warps, thresholds per search pass, programs per row and
    pipeline stages for plain sampling (kernels/sampling.py), at batch B (default 256; one of
    the shapes run) and V=151936. Plain sampling; top-p too where SPLIT is given. once:
    read_once_triton on that grid (BLOCK: the span). Returns (name, filters, fn, note, (B, V))."""
    from fastrl.kernels import sampling

    table = []
    for config in configs.split(","):
        match = CONFIG.match(config)
        if not match:
            harness.usage_error(f"--configs: {config!r} is not [once]BLOCKxWARPS[sSPLIT][cCHUNKS][pSTAGES][@B]")
        once, block_v, num_warps, split, chunks, stages, batch = match.groups()
        shape = (int(batch) if batch else ACCEPTANCE_GPU[0], ACCEPTANCE_GPU[1])
        knobs = dict(num_warps=int(num_warps), chunks=int(chunks) if chunks else None, stages=int(stages or 3))
        if once:
            table.append((f"read_once_triton[{config}]", ("plain",),
                          lambda x, k, p, seeds, knobs=knobs: read_once_triton(x, **knobs),
                          "read_once_triton, " + ", ".join(f"{k}={v}" for k, v in knobs.items()), shape))
            continue
        knobs.update(block_v=int(block_v), split=int(split or 4))
        table.append((f"fastrl_triton[{config}]", ("plain", "top_p") if split else ("plain",),
                      lambda x, k, p, seeds, knobs=knobs: sampling.sample(x, 1.0, k or 0, p or 1.0, seeds, 0, **knobs),
                      "kernels.sampling.sample, " + ", ".join(f"{k}={v}" for k, v in knobs.items()), shape))
    return table


def cases(shapes, filters, device, dtype, args, compiled: CompileState):
    backend = ops.backend_for("sample", device.type)
    table = providers(device, backend)
    if args.configs:
        table += config_providers(args.configs)
    if args.providers:
        wanted = harness.wanted_providers(args.providers, {p[0].split("[")[0] for p in table} | {"fastrl"})
        table = [p for p in table
                 if p[0].split("[")[0] in wanted or (p[0].startswith("fastrl") and "fastrl" in wanted)]
    if args.no_compile:
        table = [p for p in table if p[0] != "hf_sort_compiled"]
    found = []
    for B, V in shapes:
        for filter_name in filters:
            top_k, top_p = FILTERS[filter_name]
            for name, runs_on, fn, note, *only in table:
                if filter_name not in runs_on or (only and (B, V) != only[0]):
                    continue
                case = harness.Case(
                    "sample", {"B": B, "V": V, "dtype": dtype_name(dtype), "filter": filter_name}, name, None, note,
                    bytes_moved=B * V * dtype.itemsize if device.type == "cuda" else None)

                def setup(B=B, V=V, fn=fn, name=name, top_k=top_k, top_p=top_p, filter_name=filter_name, case=case,
                          note=note):
                    x = make_logits(B, V, dtype, device, args.logits, args.logit_scale)
                    seeds = torch.arange(B, dtype=torch.int64, device=device) * 7919 + 12345
                    if name == "hf_sort_compiled":
                        if compiled.spent_s >= compiled.budget_s:
                            raise Skipped(f"compile budget ({compiled.budget_s:.0f} s) spent "
                                          f"({compiled.spent_s:.0f} s so far)")
                        f = compiled.fn(filter_name)
                        t0 = time.perf_counter()
                        try:
                            f(x)  # compiles (or recompiles) for this shape
                            if device.type == "cuda":
                                torch.cuda.synchronize(device)
                        finally:
                            took = time.perf_counter() - t0
                            compiled.spent_s += took
                        case.note = f"{note}; first call (compile) {took:.1f} s"
                        return lambda: f(x)
                    if device.type == "cpu":  # lazy initialisation before a memory probe's baseline
                        fn(torch.randn(2, 512, dtype=dtype), top_k, top_p, torch.tensor([1, 2]))  # (B may be 1)
                    return lambda: fn(x, top_k, top_p, seeds)

                case.setup = setup
                found.append(case)
    return found


# ---- the acceptance figures ----


def summarize(rows, device):
    index = {(json.dumps(r["shape"]), r["provider"]): r for r in rows}

    def find(B, V, filter_name, provider_prefix):
        for r in rows:
            s = r["shape"]
            if (s["B"], s["V"], s["filter"]) == (B, V, filter_name) and r["provider"].startswith(provider_prefix):
                return r
        return None

    def ok(r):
        return r is not None and not r["error"] and r["median_ms"]

    print("\nfastrl against the sort-based eager version (hf_sort_eager median / fastrl median):")
    for r in rows:
        s = r["shape"]
        if not r["provider"].startswith("fastrl") or s["filter"] == "plain":
            continue
        hf = index.get((json.dumps(s), "hf_sort_eager"))
        if ok(r) and ok(hf):
            print(f"  B={s['B']:<4} V={s['V']:<7} {s['dtype']} {s['filter']:<12} "
                  f"{hf['median_ms'] / r['median_ms']:6.2f}x ({r['median_ms']:.3f} vs {hf['median_ms']:.3f} ms)")

    print("\nacceptance figures:")
    if device.type == "cpu":
        B, V, filter_name = ACCEPTANCE_CPU
        ours, hf = find(B, V, filter_name, "fastrl"), find(B, V, filter_name, "hf_sort_eager")
        label = f"  CPU, B={B} V={V} top-p 0.9:"
        if not (ok(ours) and ok(hf)):
            print(f"{label} not measured in this run (run without --quick, or with --shape {B},{V})")
            return
        speedup = hf["median_ms"] / ours["median_ms"]
        print(f"{label} fastrl {ours['median_ms']:.1f} ms, hf_sort_eager {hf['median_ms']:.1f} ms: "
              f"fastrl {speedup:.2f}x faster (target > 1) -> acceptance {'MET' if speedup > 1 else 'NOT MET'}")
        return
    B, V = ACCEPTANCE_GPU
    plain = find(B, V, "plain", "fastrl")
    label = f"  {device.type}, B={B} V={V} {plain['shape']['dtype'] if plain else ''}"
    if ok(plain) and plain.get("bandwidth_floor_ms"):
        fraction = plain["bandwidth_floor_ms"] / plain["median_ms"]
        print(f"{label} plain: {plain['median_ms'] * 1e3:.1f} us, floor {plain['bandwidth_floor_ms'] * 1e3:.1f} us "
              f"-> {100 * fraction:.0f}% of the measured copy rate, {plain['kernels_per_call']} kernel(s) "
              f"(target >= 80%: {'met' if fraction >= 0.8 else 'NOT met'})")
    else:
        print(f"{label} plain: not measured in this run")
    amax = find(B, V, "plain", "read_once_amax")
    if ok(amax) and amax.get("bandwidth_floor_ms"):
        print(f"{label} read_once_amax (one read, no sampling): {amax['median_ms'] * 1e3:.1f} us -> "
              f"{100 * amax['bandwidth_floor_ms'] / amax['median_ms']:.0f}% of the copy rate")
    ours, hf = find(B, V, "top_p", "fastrl"), find(B, V, "top_p", "hf_sort_eager")
    if ok(ours) and ok(hf):
        speedup = hf["median_ms"] / ours["median_ms"]
        print(f"{label} top-p 0.9: fastrl {ours['median_ms'] * 1e3:.1f} us, hf_sort_eager "
              f"{hf['median_ms'] * 1e3:.1f} us -> {speedup:.1f}x faster (target >= 3: "
              f"{'met' if speedup >= 3 else 'NOT met'})")
    else:
        print(f"{label} top-p 0.9: not measured in this run")


def add_options(parser):
    parser.add_argument("--filters", default=None,
                        help=f"comma-separated, of {','.join(FILTERS)} (default: all)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--providers", default=None,
                        help="comma-separated providers to run ('fastrl' for fastrl's; default: all)")
    parser.add_argument("--logits", choices=sorted(LOGIT_SCALES), default="gumbel",
                        help="gumbel: scale x standard Gumbel noise (Zipf-like ranked probabilities); "
                             "normal: scale x randn")
    parser.add_argument("--logit-scale", type=float, default=None,
                        help=f"default {', '.join(f'{k} {v}' for k, v in LOGIT_SCALES.items())}")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument("--configs", default=None,
                        help="CUDA: also time the Triton kernel at these "
                             "[once]BLOCKxWARPS[sSPLIT][cCHUNKS][pSTAGES][@B] configs (e.g. 4096x8s4,8192x4c5p4,"
                             "once8192x8c1,8192x8c4@64; once: the read-only loop) at V=151936, B=256 unless @B")
    parser.add_argument("--compile-budget", type=float, default=None,
                        help="seconds of compiling after which compiled rows are skipped (default 60 CPU, 30 CUDA)")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = harness.parse_args(__doc__.splitlines()[0], "B,V", argv, extra=add_options, repeat={"cpu": 5},
                              warmup={"cpu": 1, "cuda": 3})
    device = args.device
    if args.logit_scale is not None and not (math.isfinite(args.logit_scale) and args.logit_scale > 0):
        harness.usage_error(f"--logit-scale: a finite number > 0, got {args.logit_scale}")
    if args.compile_budget is not None and not args.compile_budget >= 0:  # (nan too)
        harness.usage_error(f"--compile-budget: seconds >= 0, got {args.compile_budget}")
    if args.configs and device.type != "cuda":
        harness.usage_error("--configs: the Triton kernel's settings are timed on a CUDA device (--device cuda)")
    if args.compile_budget is None:
        args.compile_budget = 60.0 if device.type == "cpu" else 30.0
    dtype = DTYPES[args.dtype or ("fp32" if device.type == "cpu" else "bf16")]
    shapes = harness.shapes(args, QUICK_SHAPES, CPU_SHAPES, GPU_SHAPES)
    filters = list(FILTERS) if args.filters is None else [f.strip() for f in args.filters.split(",") if f.strip()]
    unknown = [f for f in filters if f not in FILTERS]
    if unknown:
        harness.usage_error(f"unknown filter(s) {unknown}; known: {', '.join(FILTERS)}")

    compiled = CompileState(args.compile_budget, device)
    all_cases = cases(shapes, filters, device, dtype, args, compiled)
    if args._probe is not None:  # a memory probe: one case in a fresh process
        return harness.run("sampling", all_cases, args, __file__, argv)

    print("providers:")
    seen = set()
    for c in all_cases:
        if c.provider not in seen:
            seen.add(c.provider)
            print(f"  {c.provider:<22} {c.note}")
    scale = LOGIT_SCALES[args.logits] if args.logit_scale is None else args.logit_scale
    print(f"logits: {scale} x {'standard Gumbel' if args.logits == 'gumbel' else 'randn'} per token, "
          f"{dtype_name(dtype)}; tokens top-p 0.9 keeps (first <= 64 rows):")
    for B, V in shapes:
        kept, top1 = kept_by_top_p(make_logits(B, V, dtype, device, args.logits, args.logit_scale))
        print(f"  B={B:<4} V={V:<7} mean {kept.mean():.0f}, median {kept.median():.0f}, "
              f"min {kept.min():.0f}, max {kept.max():.0f}; mean top-1 probability {top1:.2f}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    rows = harness.run("sampling", all_cases, args, __file__, argv)
    summarize(rows, device)
    if compiled.fns:
        print(f"\ntorch.compile: {compiled.spent_s:.1f} s spent compiling (budget {compiled.budget_s:.0f} s)")
    print(f"benchmark wall time {time.perf_counter() - t0:.0f} s")
    if load is not None and device.type == "cpu":  # other work on the machine inflates CPU times
        print(f"1-minute load average: {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end "
              f"({os.cpu_count()} cores)")
    return rows


if __name__ == "__main__":
    harness.command_line(main)
