"""Token log-probabilities from the lm_head: fastrl against materialised logits, TRL and Liger (issue 4).

Ops and passes (the ``pass`` entry of each row's shape):
- linear_logprobs, pass=fwd: logprob of each label from hidden[N, H] and the
  lm_head weight[V, H] under torch.no_grad() (old / reference log-probs);
- linear_logprobs, pass=fwd+bwd: the same with autograd, then the gradient of
  sum(logprob * g) (g: random per-token weights, like advantages) to hidden AND
  weight (torch.autograd.grad, so no .grad accumulation is timed);
- logprobs_from_logits, pass=fwd / fwd+bwd: the same from existing logits[N, V]
  (gradient to the logits).
Providers, like for like unless marked "loss":
- fastrl_<backend>: fastrl.ops.linear_logprobs / logprobs_from_logits (no [N, V]
  logits: chunked PyTorch on CPU, Triton on CUDA); fastrl_<backend>_inplace:
  logprobs_from_logits(inplace_backward=True), the gradient over the logits;
- eager: F.linear -> float() -> log_softmax -> gather, as verl and TRL write it;
  compiled: torch.compile(dynamic=True) of eager;
- trl_selective: F.linear, then trl's selective_log_softmax on the logits viewed
  [B, T=1024, V] (TRL's Triton kernel on CUDA, a per-sequence loop on CPU);
- trl_chunked: trl.kernels.ChunkedLogProbFunction, the fused lm_head behind
  TRL's add_fused_lm_head (4096-token x 32768-vocabulary tiles);
- liger_flce (CUDA): liger_fused_linear_cross_entropy(reduction="none") =
  -logprob per token (liger >= 0.8 computes its gradient in the backward for "none");
- liger_flce_sum_loss (CUDA, fwd+bwd only, a loss): reduction="sum", whose gradient
  is computed inside the forward (backward only scales it): the uniform sum, no
  per-token weights, no per-token output;
- liger_grpo_loss (fwd+bwd only, a loss): LigerFusedLinearGRPOLoss (beta=0,
  dapo, torch.compile'd loss math), which also computes its gradients inside the
  forward; the GRPO loss over [N] tokens costs nothing next to the lm_head, so
  it is set beside fastrl's fwd+bwd;
- cublas_lm_head (CUDA, fwd+bwd): the bare F.linear forward and its backward
  with a random [N, V] gradient (three matmuls, no softmax): the issue's GPU
  target holds fastrl's fwd+bwd to at most 1.5x this.
A provider whose package is missing, or that fails on this device, is left out
with the reason printed (and the committed results, where they have its rows, are kept).

Acceptance (printed at the end): on the CPU at N=4096 H=1024 V=32768 fp32,
fwd+bwd, fastrl's peak memory growth at most 1/4 of eager's (needs --memory) and
its time at most 1.5x eager's; on a GPU, fwd+bwd at most 1.5x cublas_lm_head and
at most 1 GiB beyond the gradients and one fp32 weight-gradient accumulator.

    python benchmarks/bench_logprobs.py [--quick] [--device cuda] [--memory] [--shape N,H,V]
"""
from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import fastrl.ops as ops  # noqa: E402
from fastrl.ops import logprobs as logprobs_module  # noqa: E402

try:
    from trl.trainer.utils import selective_log_softmax as trl_selective_log_softmax
    from trl.kernels import ChunkedLogProbFunction as TrlChunkedLogProb

    try:
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE as TRL_VOCAB_TILE
    except ImportError:
        TRL_VOCAB_TILE = 32768
    TRL_MISSING = None
except Exception as exc:  # the trl rows are left out
    TRL_MISSING = f"{type(exc).__name__}: {exc}"[:200]
try:
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    LIGER_MISSING = None
except Exception as exc:  # the liger rows are left out
    LIGER_MISSING = f"{type(exc).__name__}: {exc}"[:200]

CPU_SHAPES = [(4096, 1024, 32768)]
ACCEPTANCE_CPU = (4096, 1024, 32768)
GPU_SHAPES = [(8192, 4096, 32000), (32768, 3584, 151936)]
QUICK_SHAPES = [(512, 128, 4096)]
SEQ_LEN = 1024  # T of the [B, T] views the TRL and Liger GRPO providers take
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def seq_view(N):
    T = SEQ_LEN if N % SEQ_LEN == 0 else N
    return N // T, T


# ---- inputs ----

_LIVE: list = []  # the inputs of the case being timed, dropped when the next case is set up


def release_inputs(device):
    for x in _LIVE:
        x.clear()
    _LIVE.clear()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def make_inputs(family, N, H, V, dtype, device, seed=0):
    g = torch.Generator(device).manual_seed(seed)

    def randn(*shape, std=1.0, dt=dtype):  # in place: an [N, V] bf16 tensor on a GPU is 10 GB at the top shape
        return torch.randn(*shape, generator=g, device=device, dtype=dt).mul_(std)

    x = {"labels": torch.randint(0, V, (N,), generator=g, device=device),
         "g": randn(N, dt=torch.float32)}
    if family == "linear":
        x["hidden"] = randn(N, H).requires_grad_()
        x["weight"] = randn(V, H, std=H ** -0.5 * 2).requires_grad_()  # logits of std 2
        x["wrt"] = [x["hidden"], x["weight"]]
    else:
        # computed, as a model's logits are (inplace_backward will not overwrite a leaf): a 0-dim zero that
        # requires grad, added in place, so no second [N, V] tensor is made
        x["logits"] = randn(N, V, std=2.0).add_(torch.zeros((), device=device, dtype=dtype, requires_grad=True))
        x["wrt"] = [x["logits"]]
    return x


# ---- providers: each returns the per-token logprob [N] (or, for "loss" ones, a scalar loss) ----


def eager_linear(hidden, weight, labels):
    logits = F.linear(hidden, weight)
    return logits.float().log_softmax(-1).gather(-1, labels[:, None]).squeeze(-1)


def eager_logits(logits, labels):
    return logits.float().log_softmax(-1).gather(-1, labels[:, None]).squeeze(-1)


COMPILED = {}


def compiled_linear(hidden, weight, labels):
    if "linear" not in COMPILED:
        COMPILED["linear"] = torch.compile(eager_linear, dynamic=True)
    return COMPILED["linear"](hidden, weight, labels)


def trl_selective(logits, labels):
    B, T = seq_view(labels.shape[0])
    return trl_selective_log_softmax(logits.view(B, T, -1), labels.view(B, T)).reshape(-1)


def trl_chunked(hidden, weight, labels):
    return TrlChunkedLogProb.apply(hidden, weight, None, labels, 1.0, TRL_VOCAB_TILE, None, 1.0, ("log_probs",))[0]


def liger_flce(hidden, weight, labels):
    return -liger_fused_linear_cross_entropy(hidden, weight, labels, reduction="none")


def liger_flce_sum(hidden, weight, labels):
    return liger_fused_linear_cross_entropy(hidden, weight, labels, reduction="sum")


_GRPO = {}


def liger_grpo(x):
    if "loss" not in _GRPO:
        _GRPO["loss"] = LigerFusedLinearGRPOLoss(beta=0.0, use_ref_model=False, loss_type="dapo")
    N, H = x["hidden"].shape
    B, T = seq_view(N)
    if "mask" not in x:
        x["mask"] = torch.ones(B, T, device=x["hidden"].device)
        x["advantages"] = x["g"][:B].clone()
    loss, _ = _GRPO["loss"](x["hidden"].view(B, T, H), x["weight"], x["labels"].view(B, T), x["mask"],
                            x["advantages"])
    return loss


def fused_forward_linear(x):
    previous, logprobs_module.TRITON_LINEAR_FORWARD = logprobs_module.TRITON_LINEAR_FORWARD, "fused"
    try:
        return ops.linear_logprobs(x["hidden"], x["weight"], x["labels"]).logprob
    finally:
        logprobs_module.TRITON_LINEAR_FORWARD = previous


def providers(device, backend_linear, backend_logits):
    """(family, provider, kind, fn(x), passes, note); kind: "logprob", "loss" or "lm_head"."""
    fused = "fused, no [N, V] logits (" + ("Triton" if device.type == "cuda" else "chunked PyTorch") + ")"
    found = [
        ("linear", f"fastrl_{backend_linear}", "logprob",
         lambda x: ops.linear_logprobs(x["hidden"], x["weight"], x["labels"]).logprob, ("fwd", "fwd+bwd"), fused),
        ("linear", "eager", "logprob", lambda x: eager_linear(x["hidden"], x["weight"], x["labels"]),
         ("fwd", "fwd+bwd"), "materialised logits: F.linear -> float() -> log_softmax -> gather (verl/TRL)"),
        ("linear", "compiled", "logprob", lambda x: compiled_linear(x["hidden"], x["weight"], x["labels"]),
         ("fwd", "fwd+bwd"), "torch.compile(dynamic=True) of eager"),
    ]
    if TRL_MISSING is None:
        found += [
            ("linear", "trl_selective", "logprob",
             lambda x: trl_selective(F.linear(x["hidden"], x["weight"]), x["labels"]), ("fwd", "fwd+bwd"),
             f"F.linear logits, then trl selective_log_softmax on [B, T={SEQ_LEN}, V]"),
            ("linear", "trl_chunked", "logprob", lambda x: trl_chunked(x["hidden"], x["weight"], x["labels"]),
             ("fwd", "fwd+bwd"), f"trl.kernels.ChunkedLogProbFunction (add_fused_lm_head), tiles 4096 x "
                                 f"{TRL_VOCAB_TILE}" + ("" if device.type == "cuda" else "; its torch fallback here")),
        ]
    # liger's FLCE is a Triton kernel: on the CPU it fails ("0 active drivers"), a left-out row
    # that would make every CPU run partial
    if LIGER_MISSING is None and device.type == "cuda":
        found += [
            ("linear", "liger_flce", "logprob", lambda x: liger_flce(x["hidden"], x["weight"], x["labels"]),
             ("fwd", "fwd+bwd"), "liger FLCE reduction='none' = -logprob; its gradient is computed in the backward"),
            ("linear", "liger_flce_sum_loss", "loss", lambda x: liger_flce_sum(x["hidden"], x["weight"], x["labels"]),
             ("fwd+bwd",), "NOT like for like: liger FLCE reduction='sum', a scalar loss, gradient computed inside "
                           "its forward; uniform weights"),
        ]
    if LIGER_MISSING is None:
        found += [
            ("linear", "liger_grpo_loss", "loss", liger_grpo, ("fwd+bwd",),
             "NOT like for like: LigerFusedLinearGRPOLoss (beta=0, dapo), a scalar loss, gradients computed inside "
             f"its forward; [B, T={SEQ_LEN}] views"),
        ]
    if device.type == "cuda":
        found.append(("linear", "fastrl_triton_fused_fwd", "logprob", fused_forward_linear, ("fwd", "fwd+bwd"),
                      "the other Triton forward: lm_head matmul and online log-sum-exp in one kernel"))
        found.append(("linear", "cublas_lm_head", "lm_head", None, ("fwd+bwd",),
                      "bare lm_head: F.linear fwd + bwd with a random [N, V] gradient (3 matmuls), no softmax"))
    found += [
        ("logits", f"fastrl_{backend_logits}", "logprob",
         lambda x: ops.logprobs_from_logits(x["logits"], x["labels"]).logprob, ("fwd", "fwd+bwd"),
         "one pass per row"),
        ("logits", f"fastrl_{backend_logits}_inplace", "logprob",
         lambda x: ops.logprobs_from_logits(x["logits"], x["labels"], inplace_backward=True).logprob, ("fwd+bwd",),
         "inplace_backward=True: the gradient is written over the logits"),
        ("logits", "eager", "logprob", lambda x: eager_logits(x["logits"], x["labels"]), ("fwd", "fwd+bwd"),
         "float() -> log_softmax -> gather"),
    ]
    if TRL_MISSING is None:
        found.append(("logits", "trl_selective", "logprob", lambda x: trl_selective(x["logits"], x["labels"]),
                      ("fwd", "fwd+bwd"), f"trl selective_log_softmax on [B, T={SEQ_LEN}, V]"))
    return found


def make_call(kind, fn, pas, x):
    if kind == "lm_head":
        def call():
            logits = F.linear(x["hidden"], x["weight"])
            return torch.autograd.grad(logits, x["wrt"], x["grad_logits"])
    elif pas == "fwd":
        def call():
            with torch.no_grad():
                return fn(x)
    elif kind == "loss":
        def call():
            return torch.autograd.grad(fn(x), x["wrt"])
    else:
        def call():
            return torch.autograd.grad((fn(x) * x["g"]).sum(), x["wrt"])
    return call


class OutOfMemory(RuntimeError):
    pass


def guard_oom(call, device):
    """A CUDA out-of-memory error becomes a short one, with the memory released."""
    if device.type != "cuda":
        return call

    def guarded():
        try:
            return call()
        except torch.cuda.OutOfMemoryError as exc:  # "CUDA out of memory. Tried to allocate ... GPU 0 has ..."
            message = ". ".join(str(exc).split(". ")[:3])
        gc.collect()
        torch.cuda.empty_cache()
        raise OutOfMemory(message) from None

    return guarded


# ---- cases ----


def dtype_name(dtype):
    return next(k for k, v in DTYPES.items() if v == dtype)


def cases(shapes, device, dtype, skip=()):
    found = []
    backend_linear = ops.backend_for("linear_logprobs", device.type)
    backend_logits = ops.backend_for("logprobs_from_logits", device.type)
    table = [p for p in providers(device, backend_linear, backend_logits) if f"{p[0]}/{p[1]}" not in skip]
    for N, H, V in shapes:
        for family in ("linear", "logits"):
            for pas in ("fwd", "fwd+bwd"):
                for fam, name, kind, fn, passes, note in table:
                    if fam != family or pas not in passes:
                        continue

                    def setup(family=family, name=name, kind=kind, fn=fn, pas=pas, N=N, H=H, V=V):
                        release_inputs(device)
                        if device.type == "cpu":
                            # a tiny run first, so compilation and lazy initialisation happen before
                            # a memory probe's baseline (torch.compile is dynamic: the full shape
                            # reuses the graph); on a GPU the warm-up runs at the full shape do it
                            tiny = make_inputs(family, min(N, 64), min(H, 64), min(V, 512), dtype, device, seed=1)
                            make_call(kind, fn, pas, tiny)()
                            del tiny
                        x = make_inputs(family, N, H, V, dtype, device)
                        if kind == "lm_head":
                            x["grad_logits"] = torch.randn(N, V, device=device, dtype=dtype)
                        _LIVE.append(x)
                        call = guard_oom(make_call(kind, fn, pas, x), device)
                        if name.endswith("_inplace"):  # its backward writes the gradient over the logits
                            pristine = x["logits"].detach().clone()

                            def reset(logits=x["logits"], pristine=pristine):
                                with torch.no_grad():
                                    logits.copy_(pristine)

                            call.reset = reset
                        if pas == "fwd" and kind == "logprob":  # [N] log-probs (gradients would be [N, V])
                            call.comparable = lambda out: out.float()
                            call.tolerance = 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2
                        return call

                    shape = {"N": N, "H": H, "V": V} if family == "linear" else {"N": N, "V": V}
                    shape.update(dtype=dtype_name(dtype), **{"pass": pas})
                    op = "linear_logprobs" if family == "linear" else "logprobs_from_logits"
                    found.append(harness.Case(op, shape, name, setup, note))
    return found


def check_providers(device, dtype):
    """Third-party providers that fail on this device at a tiny shape, with why."""
    failed = {}
    for family, name, kind, fn, passes, _ in providers(device, "x", "x"):
        if not name.startswith(("trl", "liger")):
            continue
        try:
            for pas in passes:
                x = make_inputs(family, 64, 32, 256, dtype, device, seed=2)
                make_call(kind, fn, pas, x)()
        except Exception as exc:
            failed[f"{family}/{name}"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return failed


# ---- the acceptance figures ----


def summarize(rows, device):
    index = {(r["op"], json.dumps(r["shape"]), r["provider"]): r for r in rows}
    print("\nacceptance figures (linear_logprobs, fwd+bwd):")
    for r in rows:
        if r["op"] != "linear_logprobs" or r["shape"]["pass"] != "fwd+bwd" or not r["provider"].startswith("fastrl"):
            continue
        key = json.dumps(r["shape"])
        s = r["shape"]
        label = f"  N={s['N']} H={s['H']} V={s['V']} {s['dtype']}:"
        if r["error"]:
            print(f"{label} fastrl failed: {r['error']}")
            continue
        if device.type == "cpu":
            eager = index.get(("linear_logprobs", key, "eager"))
            if eager is None or eager["error"]:
                print(f"{label} no eager row to compare with" + (f" ({eager['error']})" if eager else ""))
                continue
            time_ratio = r["median_ms"] / eager["median_ms"]
            line = f"{label} time fastrl/eager {time_ratio:.2f}x (target <= 1.5)"
            if r["peak_memory_bytes"] is not None and eager["peak_memory_bytes"] is not None:
                mem_ratio = r["peak_memory_bytes"] / max(eager["peak_memory_bytes"], 1)
                line += (f"; peak RSS growth fastrl/eager {mem_ratio:.3f} ({r['peak_memory_bytes'] / 2**20:.0f} MiB "
                         f"vs {eager['peak_memory_bytes'] / 2**20:.0f} MiB; target <= 0.25)")
                met = time_ratio <= 1.5 and mem_ratio <= 0.25
            else:
                line += "; peak memory not measured (run with --memory)"
                met = None
            if (s["N"], s["H"], s["V"]) == ACCEPTANCE_CPU and s["dtype"] == "fp32" and met is not None:
                line += f"  -> acceptance {'MET' if met else 'NOT MET'}"
            print(line)
        else:
            cublas = index.get(("linear_logprobs", key, "cublas_lm_head"))
            line = label
            if cublas and not cublas["error"]:
                ratio = r["median_ms"] / cublas["median_ms"]
                line += (f" time fastrl/cublas_lm_head {ratio:.2f}x ({r['median_ms']:.1f} vs "
                         f"{cublas['median_ms']:.1f} ms; target <= 1.5{', met' if ratio <= 1.5 else ', NOT met'})")
            else:
                line += " no cublas_lm_head row"
            if r["peak_memory_bytes"] is not None:
                size = DTYPES[s["dtype"]].itemsize
                allowed = s["N"] * s["H"] * size + s["V"] * s["H"] * size + s["V"] * s["H"] * 4
                extra = r["peak_memory_bytes"] - allowed
                line += (f"; peak {r['peak_memory_bytes'] / 2**30:.2f} GiB - (grad_hidden + grad_weight + fp32 "
                         f"V*H accumulator = {allowed / 2**30:.2f} GiB) = {extra / 2**30:.3f} GiB "
                         f"(target <= 1 GiB{', met' if extra <= 2**30 else ', NOT met'})")
            print(line)


def add_options(parser):
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--providers", default=None,
                        help="comma-separated providers to run (default: all that import)")
    parser.add_argument("--_skip", default=None, help="(internal) providers found failing by the parent")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    # on the CPU a call takes seconds, and setup already ran each provider once
    args = harness.parse_args(__doc__.splitlines()[0], "N,H,V", argv, extra=add_options, repeat={"cpu": 3}, warmup={"cpu": 1})
    device = args.device
    dtype = DTYPES[args.dtype or ("fp32" if device.type == "cpu" else "bf16")]
    shapes = harness.shapes(args, QUICK_SHAPES, CPU_SHAPES, GPU_SHAPES)

    if args._skip is not None:  # a memory probe: the parent already checked the providers
        skip = [s for s in args._skip.split(",") if s]
        return harness.run("logprobs", cases(shapes, device, dtype, skip), args, __file__, argv)

    if TRL_MISSING:
        print(f"trl is not importable ({TRL_MISSING}): its rows are left out (pip install trl)")
    if LIGER_MISSING:
        print(f"liger-kernel is not importable ({LIGER_MISSING}): its rows are left out (pip install liger-kernel)")
    failed = check_providers(device, dtype)
    for name, why in failed.items():
        print(f"left out on {device.type}: {name}: {why}")
    if args.providers:
        table = providers(device, ops.backend_for("linear_logprobs", device.type),
                          ops.backend_for("logprobs_from_logits", device.type))
        wanted = harness.wanted_providers(args.providers, (p[1] for p in table))
        failed.update({f"{p[0]}/{p[1]}": "not selected" for p in table if p[1] not in wanted})
    all_cases = cases(shapes, device, dtype, tuple(failed))
    print("providers:")
    seen = set()
    for c in all_cases:
        if (c.op, c.provider) not in seen:
            seen.add((c.op, c.provider))
            print(f"  {c.op:<22} {c.provider:<24} {c.note}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = harness.run("logprobs", all_cases, args, __file__, [*argv, "--_skip", ",".join(failed)])
    summarize(rows, device)
    if load is not None and device.type == "cpu":  # other work on the machine inflates CPU times
        print(f"\n1-minute load average: {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end "
              f"({os.cpu_count()} cores)")
    return rows


if __name__ == "__main__":
    harness.command_line(main)
