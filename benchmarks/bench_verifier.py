"""fastrl.rewards.math vs math-verify on HardVerify-Math (issue 6, item 6).

For each split ("benchmarks", "big_math") prints the share of equivalent answers
(`fn_output`) accepted, of wrong answers (`tn_output`) rejected, and pairs per second.
math-verify is called the way its docs suggest: gold wrapped in $...$, answer in
\\boxed{}.  fastrl runs one verify_batch over all pairs (warm pool, all CPU cores);
math-verify runs sequentially (its timeouts rely on signals in the main thread).

    python benchmarks/bench_verifier.py [--data PATH] [--json OUT] [--show-misses]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "verifier" / "HardVerify-Math.json"


def _strip_dollars(s: str) -> str:
    s = s.strip()
    while s.startswith("$") and s.endswith("$") and len(s) > 1:
        s = s[1:-1].strip()
    return s


def run_fastrl(golds, answers, workers=None):
    from fastrl.rewards import math as vm

    vm.verify_batch(["1"], ["1.0"])  # start the pool (counted as set-up, not per pair)
    t = time.perf_counter()
    res = vm.verify_batch(golds, answers, workers=workers)
    return res, time.perf_counter() - t


def run_math_verify(golds, answers):
    from math_verify import parse, verify

    t = time.perf_counter()
    res = []
    for g, a in zip(golds, answers):
        try:
            res.append(bool(verify(parse("$" + g + "$"), parse("\\boxed{" + a + "}"))))
        except Exception:
            res.append(False)
    return res, time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(prog="fastrl bench verifier", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DATA), help="HardVerify-Math.json (default: the team's shared copy)")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / f"cpu-{os.cpu_count()}core"
                                          / "bench_verifier.json"), help="where the rows go ('' for nowhere)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--show-misses", action="store_true")
    ap.add_argument("--no-math-verify", action="store_true")
    args = ap.parse_args(argv)
    if not Path(args.data).is_file():
        ap.error(f"--data: no file {args.data} (HardVerify-Math.json from the HardVerify-Math dataset)")
    items = json.loads(Path(args.data).read_text())
    golds, answers, labels, splits, kinds = [], [], [], [], []
    for it in items:
        for kind, expect in (("fn_output", True), ("tn_output", False)):
            golds.append(_strip_dollars(it["ground_truth"]))
            answers.append(it[kind])
            labels.append(expect)
            splits.append(it["split"])
            kinds.append(kind)
    providers = {"fastrl": run_fastrl(golds, answers, args.workers)}
    if not args.no_math_verify:
        try:
            providers["math-verify"] = run_math_verify(golds, answers)
        except ImportError:
            print("math-verify not installed: pip install math-verify")
    rows = []
    print(f"{'provider':<12} {'split':<11} {'accepted(fn)':>13} {'rejected(tn)':>13}")
    for name, (res, secs) in providers.items():
        for split in ("benchmarks", "big_math"):
            idx = [k for k in range(len(res)) if splits[k] == split]
            fn = [k for k in idx if labels[k]]
            tn = [k for k in idx if not labels[k]]
            acc = sum(res[k] for k in fn) / max(1, len(fn))
            rej = sum(not res[k] for k in tn) / max(1, len(tn))
            # the pairs of both splits are verified in one timed run: one throughput per provider
            rows.append(dict(provider=name, split=split, accepted=acc, rejected=rej, n_fn=len(fn), n_tn=len(tn),
                             pairs_per_s_all_splits=len(res) / secs))
            print(f"{name:<12} {split:<11} {acc:>12.1%} {rej:>13.1%}")
        print(f"{name:<12} all {len(res)} pairs: {len(res) / secs:.1f} pairs/s")
        if args.show_misses and name == "fastrl":
            for k in range(len(res)):
                if res[k] != labels[k]:
                    print(f"  MISS [{splits[k]}] {kinds[k]}: gold={golds[k]!r} answer={answers[k]!r}")
    if args.json:
        meta = dict(machine=platform.machine(), cpus=os.cpu_count(), python=platform.python_version(),
                    workers=args.workers)
        try:
            from importlib.metadata import version
            meta["math_verify"] = version("math-verify")
            meta["sympy"] = version("sympy")
        except Exception:
            pass
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))


if __name__ == "__main__":
    main()
