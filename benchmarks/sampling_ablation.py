"""Where plain sampling's time goes on a GPU: the Triton sampler with parts of its work
removed or done another way, one program per row, against the read-only loop on the same
grid (issue 5).

Each variant is kernels/sampling.py with some lines replaced (its outputs are then
wrong or unguarded: timing only), loaded by path. Parts removed:
- noise: the groups' Philox and Gumbel pick (the running best becomes a sum of the masses);
- resolve: the drawn group's second read and its tokens' noise (the token is the group; with
  rows split, each program's);
- zsum: the sum of the logits (mean_logp);
- max: the running max per group (exp2 against a fixed reference, 0: safe for these logits).
Forms tried (--variants), timing only:
- nocap: no register cap (the cap keeps four programs per SM resident; at B=256 there are two);
- elements: bf16 read element by element, not as 32-bit pairs;
- unfused: the row's end reduces its accumulators one by one (six exchanges between warps), not in one.
(ragged_last, the ragged span's load issued before the loop and reduced after it, was timed
slower on an H200, sampling_forms_c1.json; gone with the kernel it applied to. So were
lagged, each span's exp2s against the max of the spans before it with a second read of the
rows where that was unsafe, and tma, the full spans loaded by the tensor-memory accelerator:
sampling_ablation_forms_tma.json, 29.26 and 27.04 us against 26.50.)
--kernels times the variants of other sources of the kernel too (e.g. an older commit's
kernels/sampling.py) in the same run. Timing as bench_sampling's (harness.time_ms, L2
flushed clean), median of --repeat.

    python benchmarks/sampling_ablation.py [--shape 256,151936] [--repeat 30] [--out PATH]
        [--variants noise+resolve,elements+nocap,...] [--kernels kernels/sampling.py,old.py]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_sampling  # noqa: E402
import harness  # noqa: E402
from sampling_sass import KERNEL, load_kernel  # noqa: E402

PARTS = {
    "noise": [("        best, best_group = _group_pick(_log2(mass, FAST), m_old - m_ref, v0, bits, best, best_group, RUN, "
               "FAST)",
               "        best, best_group = best + mass, best_group"),
              ("\n                n0, n1, n2, n3 = _group_noise(key, v0, RUN)\n", "\n                pass\n")],
    "resolve": [("        token, x_tok = _resolve(logits_ptr, row, group, V, scale, key, cutoff, RUN, FAST",
                 "        token, x_tok = group, top  # ("),  # the rest of the call, whatever its arguments
                ('        token, x_tok = _resolve(logits_ptr, row, group, V, scale, key, float("-inf"), RUN, FAST',
                 "        token, x_tok = group, top  # (")],
    "zsum": [("    else:\n        zsum += _group_sum(x, odd)", "    else:\n        zsum += 0.0")],  # full spans
    "max": [("    m_new = tl.maximum(m, _group_max(x, odd) * scale)", "    m_new = tl.maximum(m, 0.0)")],
    "nocap": [("maxnreg=register_cap(num_warps, filtered)", "maxnreg=None")],
    "elements": [("WORDS=_as_words(logits)", "WORDS=False")],
    "unfused": [("FUSED=not interpreted if fused is None else fused", "FUSED=False")],
}
REMOVALS = ("noise", "resolve", "zsum", "max")  # the rest of PARTS are forms tried
VARIANTS = [(), ("resolve",), ("noise",), ("zsum",), ("max",), ("noise", "resolve"),
            ("noise", "resolve", "zsum", "max")]


def load_variant(removed, folder, kernel=KERNEL):
    source = Path(kernel).read_text()
    for part in removed:
        if part not in PARTS:
            raise SystemExit(f"unknown part {part!r}; known: {', '.join(PARTS)}")
        for old, new in PARTS[part]:
            if source.count(old) != 1:
                raise SystemExit(f"part {part!r}: {old!r} is not in {kernel} once; update PARTS")
            source = source.replace(old, new)
    path = Path(folder, f"{Path(kernel).stem}_{'_'.join(removed) or 'as_is'}.py")
    path.write_text(source)  # Triton reads a kernel's source from its file
    return load_kernel(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="256,151936", help="B,V (bf16)")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--chunks", type=int, default=1, help="programs per row")
    parser.add_argument("--variants", default=None,
                        help="comma-separated, each a +-joined list of parts and forms (default: the ablation set)")
    parser.add_argument("--kernels", default=str(KERNEL),
                        help="comma-separated sources of the kernel module, each timed with every variant")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not re.fullmatch(r"[1-9]\d*,[1-9]\d*", args.shape):
        parser.error(f"--shape {args.shape!r}: expected B,V, two positive integers, as in 256,151936")
    if args.repeat < 1:
        parser.error(f"--repeat: at least 1 timed run, got {args.repeat}")
    if not torch.cuda.is_available():
        raise SystemExit("sampling_ablation.py times the Triton sampler on a CUDA GPU; none is visible")
    device = torch.device("cuda")
    B, V = (int(v) for v in args.shape.split(","))
    x = bench_sampling.make_logits(B, V, torch.bfloat16, device)
    seeds = torch.arange(B, dtype=torch.int64, device=device) * 7919 + 12345
    floor_ms = B * V * 2 / harness.copy_rate_bytes_per_ms(device)
    out = Path(args.out or harness.RESULTS / harness.device_slug(device) / f"sampling_ablation_c{args.chunks}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{harness.device_name(device)}, B={B} V={V} bf16, {args.chunks} program(s) per row, "
          f"floor {floor_ms * 1e3:.1f} us; median of {args.repeat}")
    with tempfile.TemporaryDirectory() as folder:
        calls = [("read_once_triton", lambda: bench_sampling.read_once_triton(x, chunks=args.chunks)),
                 ("read_once_tma", lambda: bench_sampling.read_once_tma(x, chunks=args.chunks))]
        variants = VARIANTS if args.variants is None else [tuple(part for part in v.split("+") if part)
                                                           for v in args.variants.split(",")]
        kernels = args.kernels.split(",")
        for kernel, removed in ((k, r) for k in kernels for r in variants):
            module = load_variant(removed, folder, kernel)
            source = "" if len(kernels) == 1 else f" ({kernel})"
            calls.append(("sampler " + (" + ".join(f"without {p}" if p in REMOVALS else p for p in removed) or "as is")
                          + source, lambda m=module: m.sample(x, 1.0, 0, 1.0, seeds, 0, chunks=args.chunks)))
        for name, call in calls:
            try:
                ms = statistics.median(harness.time_ms(call, device, 3, args.repeat))
            except Exception as error:  # (e.g. no TMA on this GPU or Triton): the other rows still run
                print(f"  {name:<70} failed: {type(error).__name__}: {str(error)[:200]}")
                continue
            rows.append({"variant": name, "median_ms": ms, "B": B, "V": V, "chunks": args.chunks,
                         "floor_ms": floor_ms, "device": harness.device_name(device)})
            print(f"  {name:<70} {ms * 1e3:6.2f} us  {100 * floor_ms / ms:5.1f}% of the copy rate")
            out.write_text(json.dumps(rows, indent=1))  # each row as it comes: a run cut short keeps them
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
