"""Static cost of the Triton sampler, without a GPU: compile kernels/sampling.py for
sm_90a (Triton's own ptxas and cuobjdump), then per config print the registers per
thread, the global load widths and, per loop, its instructions per token and whether
threads exchange data inside it (shuffles, barriers).

What a GPU run cannot show cheaply, and the budget it is measured against: reading
B=256 x V=151936 bf16 at 80% of an H200's copy rate leaves about 20 instructions per
token at its issue rate (4 per clock per SM). Uses Triton internals (ASTSource,
GPUTarget): written against Triton 3.9, runs under 3.6. Needs torch and Triton only, not
fastrl: run it under triton==3.6.0 too, the GPU machines' version, which lays some
tensors out unlike 3.9 (it once spread the sampler's groups over four threads).

    python benchmarks/sampling_sass.py [--config 8192x8] [--config 8192x8f] ...
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import re
import subprocess
import tempfile
from pathlib import Path

import torch
import triton
import triton.compiler as tc
from triton.backends.compiler import GPUTarget

KERNEL = Path(__file__).resolve().parents[1] / "kernels" / "sampling.py"


def load_kernel(path=KERNEL):
    """A kernels/sampling.py source (or an edited copy) as a module, by path, not through fastrl:
    any environment with torch and a Triton can run this (the GPU machines' Triton 3.6 lays
    some tensors out unlike 3.9; check both)."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sampling = load_kernel()

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
TYPES = {"logits_ptr": "*bf16", "stride_b": "i32", "seeds_ptr": "*i64", "shift": "i64", "scale": "fp32",
         "top_k": "i32", "top_p": "fp32", "tokens_ptr": "*i64", "logprob_ptr": "*fp32", "policy_ptr": "*fp32",
         "mean_ptr": "*fp32", "partial_ptr": "*fp32", "count_ptr": "*i32", "V": "i32", "spans": "i32",
         "chunks": "i32"}
ALIGNED = {"logits_ptr", "stride_b", "seeds_ptr", "tokens_ptr", "logprob_ptr", "policy_ptr", "mean_ptr",
           "partial_ptr", "count_ptr", "V"}  # as the launcher specialises them for V=151936


def compile_sass(block_v, num_warps, filtered=False, split_row=True):
    fn = sampling._sample_kernel
    constants = dict(FILTER=filtered, TOP_K=False, TOP_P=filtered, BLOCK_V=block_v, SPLIT=4,
                     SPLIT_ROW=split_row and not filtered, MAX_CHUNKS=sampling.MAX_CHUNKS,
                     RUN=sampling.run_size(torch.bfloat16), FAST=True, STAGES=3)
    names = fn.arg_names
    constants.update({name: True for name in ("WORDS", "FUSED") if name in names})  # (older kernels lack them)
    source = tc.ASTSource(
        fn=fn, signature={n: "constexpr" if n in constants else TYPES[n] for n in names},
        constexprs={(names.index(k),): v for k, v in constants.items()},
        attrs={(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n in ALIGNED})
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": num_warps, "maxnreg": sampling.register_cap(num_warps, filtered)})
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = Path(tmp, "k.ptx"), Path(tmp, "k.o")
        ptx.write_text(kernel.asm["ptx"])
        info = subprocess.run([BIN / "ptxas-blackwell", "-arch=sm_90a", "-v", ptx, "-o", cubin],
                              capture_output=True, text=True, check=True).stderr
        sass = subprocess.run([BIN / "cuobjdump", "-sass", cubin], capture_output=True, text=True, check=True).stdout
    registers = int(re.search(r"Used (\d+) registers", info).group(1))
    loads = collections.Counter(re.findall(r"ld\.global[.\w]*|cp\.async\.cg\.shared\.global", kernel.asm["ptx"]))
    return registers, loads, sass


def instructions(sass):
    """The SASS listing as (address, instruction text) pairs."""
    found = []
    for line in sass.splitlines():
        if m := re.match(r"\s+/\*([0-9a-f]{4})\*/\s+(.*)", line):
            found.append((int(m.group(1), 16), m.group(2)))
    return found


def shortest_path(code, start, end):
    """The fewest instructions an iteration of the loop [start, end] can execute, taking or
    not each forward branch in it (e.g. past the groups' Philox, run once every four spans,
    and through the full spans' copy of the pass rather than the ragged span's)."""
    body = [(a, text) for a, text in code if start <= a <= end]
    cost = {}
    for index in range(len(body) - 1, -1, -1):
        a, text = body[index]
        after = cost[body[index + 1][0]] if index + 1 < len(body) else 0
        m = re.search(r"BRA (?:U?!?P[T0-9]+, )?(0x[0-9a-f]+)", text)
        target = int(m.group(1), 16) if m else None
        if target is None or not start <= target <= end or target <= a:  # not a forward branch inside the loop
            cost[a] = 1 + after
        elif text.startswith("@") and not text.startswith("@PT "):  # conditional: either way
            cost[a] = 1 + min(after, cost[target])
        else:
            cost[a] = 1 + cost[target]
    return cost[start]


def loops(sass):
    """Each loop (a backward branch) as (start, end, Counter of opcodes in its body, whether it
    is innermost (holds no other loop), how many of its instructions a conditional forward
    branch inside it can jump over (e.g. the groups' Philox, run once every four spans), the
    fewest an iteration executes (shortest_path))."""
    code = instructions(sass)
    branches = [(a, int(m.group(1), 16), text.startswith("@") and not text.startswith("@PT ")) for a, text in code
                if (m := re.search(r"BRA (0x[0-9a-f]+)", text))]
    spans = [(target, a) for a, target, _ in branches if target < a]
    found = []
    for start, end in spans:
        opcodes = collections.Counter(re.sub(r"^@!?U?P[T0-9]+\s+", "", text).split()[0].split(".")[0]
                                      for a, text in code if start <= a <= end)
        innermost = not any(start <= s0 and e0 <= end and (s0, e0) != (start, end) for s0, e0 in spans)
        skippable = {b for a, target, conditional in branches if conditional and start <= a < target <= end
                     for b, _ in code if a < b < target}
        found.append((start, end, opcodes, innermost, len(skippable), shortest_path(code, start, end)))
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=None,
                        help="BLOCKxWARPS (BLOCK: the search passes' tile), f: top-p (default 8192x8, 8192x4, 8192x8f)")
    args = parser.parse_args()
    span = sampling.span(torch.bfloat16)
    for config in args.config or ["8192x8", "8192x4", "8192x8f"]:
        match = re.fullmatch(r"(\d+)x(\d+)f?", config)
        if not match:
            parser.error(f"--config {config!r}: expected BLOCKxWARPS, with f (top-p) after, e.g. 8192x8f")
        block_v, num_warps = (int(v) for v in match.groups())
        if num_warps not in (1, 2, 4, 8, 16, 32):  # (Triton's own error is a traceback from its compiler)
            parser.error(f"--config {config}: WARPS must be a power of two from 1 to 32, got {num_warps}")
        if block_v != span:
            parser.error(f"--config {config}: per-token figures need BLOCK = the span, {span}")
        registers, loads, sass = compile_sass(block_v, num_warps, filtered="f" in config)
        per_thread = block_v // (32 * num_warps)
        print(f"{config}: {registers} registers, {sass.count('STL')} spill stores; loads {dict(loads)}; "
              f"{per_thread} tokens per thread per tile")
        for start, end, opcodes, innermost, skippable, fewest in sorted(loops(sass)):
            count = sum(opcodes.values())
            print(f"  loop {start:#06x}-{end:#06x}{' (innermost)' if innermost else ''}: {count} instructions, "
                  f"{count / per_thread:.1f} per token ({skippable} behind a branch), "
                  f"{fewest / per_thread:.1f} per token executed at least; "
                  f"SHFL {opcodes['SHFL']}, BAR {opcodes['BAR']}, "
                  f"MUFU {opcodes['MUFU']}; " + ", ".join(f"{op} {n}" for op, n in opcodes.most_common(8)))


if __name__ == "__main__":
    main()
