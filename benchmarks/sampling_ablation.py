"""Where plain sampling's time goes on a GPU: the Triton sampler with parts of its work
removed, one program per row, against the read-only loop on the same grid (issue 5).

Each variant is kernels/sampling.py with some lines replaced (its outputs are then
wrong: timing only), loaded by path. Parts:
- noise: the groups' Philox and Gumbel pick (the running best becomes a sum of the masses);
- resolve: the drawn group's second read and its tokens' noise (the token is the group; with
  rows split, each program's);
- zsum: the sum of the logits (mean_logp);
- max: the running max per group (exp2 against a fixed reference, 0: safe for these logits).
Timing as bench_sampling's (harness.time_ms, L2 flushed clean), median of --repeat.

    python benchmarks/sampling_ablation.py [--shape 256,151936] [--repeat 30] [--out PATH]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_sampling  # noqa: E402
import harness  # noqa: E402

KERNEL = Path(__file__).resolve().parents[1] / "kernels" / "sampling.py"
PARTS = {
    "noise": [("        best, best_group = _group_pick(m_ref + _log2(mass, FAST), v0, bits, best, best_group, RUN, FAST)",
               "        best, best_group = best + mass, best_group"),
              ("            if (v0 // SPAN) % 4 == 0:  # the next four spans' noise (the chunk's first span's is "
               "drawn above)\n                n0, n1, n2, n3 = _group_noise(key, v0, RUN)",
               "            pass")],
    "resolve": [("        token, z_tok = _resolve(logits_ptr, row, group, V, scale, key, cutoff, RUN, FAST)",
                 "        token, z_tok = group, top"),
                ('        token, z_tok = _resolve(logits_ptr, row, group, V, scale, key, float("-inf"), RUN, FAST)',
                 "        token, z_tok = group, top")],
    "zsum": [("    else:\n        zsum += _group_sum(x)", "    else:\n        zsum += 0.0")],
    "max": [("    m_new = tl.maximum(m, _group_max(x) * scale)", "    m_new = tl.maximum(m, 0.0)")],
}
VARIANTS = [(), ("resolve",), ("noise",), ("zsum",), ("max",), ("noise", "resolve"),
            ("noise", "resolve", "zsum", "max")]


def load_variant(removed, folder):
    source = KERNEL.read_text()
    for part in removed:
        for old, new in PARTS[part]:
            if source.count(old) != 1:
                raise SystemExit(f"part {part!r}: {old!r} is not in kernels/sampling.py once; update PARTS")
            source = source.replace(old, new)
    path = Path(folder, f"sampling_without_{'_'.join(removed) or 'nothing'}.py")
    path.write_text(source)  # Triton reads a kernel's source from its file
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="256,151936", help="B,V (bf16)")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--chunks", type=int, default=1, help="programs per row")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device("cuda")
    B, V = (int(v) for v in args.shape.split(","))
    x = bench_sampling.make_logits(B, V, torch.bfloat16, device)
    seeds = torch.arange(B, dtype=torch.int64, device=device) * 7919 + 12345
    floor_ms = B * V * 2 / harness.copy_rate_bytes_per_ms(device)
    rows = []
    print(f"{harness.device_name(device)}, B={B} V={V} bf16, {args.chunks} program(s) per row, "
          f"floor {floor_ms * 1e3:.1f} us; median of {args.repeat}")
    with tempfile.TemporaryDirectory() as folder:
        calls = [("read_once_triton", lambda: bench_sampling.read_once_triton(x, chunks=args.chunks))]
        for removed in VARIANTS:
            module = load_variant(removed, folder)
            calls.append(("sampler without " + (", ".join(removed) or "nothing"),
                          lambda m=module: m.sample(x, 1.0, 0, 1.0, seeds, 0, chunks=args.chunks)))
        for name, call in calls:
            ms = statistics.median(harness.time_ms(call, device, 3, args.repeat))
            rows.append({"variant": name, "median_ms": ms, "B": B, "V": V, "chunks": args.chunks,
                         "floor_ms": floor_ms, "device": harness.device_name(device)})
            print(f"  {name:<50} {ms * 1e3:6.2f} us  {100 * floor_ms / ms:5.1f}% of the copy rate")
    out = Path(args.out) if args.out else harness.RESULTS / harness.device_slug(device) / f"sampling_ablation_c{args.chunks}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
