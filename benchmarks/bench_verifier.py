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
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import writable  # noqa: E402  (not `import harness`: fastrl bench would read its rows as timings)

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


FIELDS = ("ground_truth", "fn_output", "tn_output", "split")
RESULTS = Path(__file__).resolve().parent / "results" / f"cpu-{os.cpu_count()}core"


def load_pairs(path: str, error) -> list[tuple[str, str, bool, str, str]]:
    """(gold, answer, equivalent, split, kind) per pair of HardVerify-Math's items; error(message)
    on a file that is not a list of items with the four string fields."""
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        error(f"--data: cannot read {path} as JSON ({e})")
    if not isinstance(items, list) or not items:
        error(f"--data: {path} must hold a non-empty JSON list of items")
    pairs = []
    for i, item in enumerate(items):
        bad = [f for f in FIELDS if not isinstance(item, dict) or not isinstance(item.get(f), str)]
        if bad:
            error(f"--data: item {i} of {path} lacks string field(s) {', '.join(bad)} (HardVerify-Math's {FIELDS})")
        for kind, equivalent in (("fn_output", True), ("tn_output", False)):
            pairs.append((_strip_dollars(item["ground_truth"]), item[kind], equivalent, item["split"], kind))
    return pairs


def share(hits: list[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def main(argv=None):
    ap = argparse.ArgumentParser(prog="fastrl bench verifier", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DATA), help="HardVerify-Math.json (default: the team's shared copy)")
    ap.add_argument("--json", default=None,
                    help=f"where the rows go ('' for nowhere; default {RESULTS.name}/bench_verifier.json, or "
                         "bench_verifier.partial.json for a run of other data, workers or providers)")
    ap.add_argument("--workers", type=int, default=None, help="verifier processes (default: one per core)")
    ap.add_argument("--show-misses", action="store_true")
    ap.add_argument("--no-math-verify", action="store_true")
    args = ap.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        ap.error(f"--workers: at least 1, got {args.workers}")
    if not Path(args.data).is_file():
        ap.error(f"--data: no file {args.data} (HardVerify-Math.json from the HardVerify-Math dataset)")
    pairs = load_pairs(args.data, ap.error)
    if args.json:  # before the work: a path it cannot write (a folder, ...) lost the whole run's results
        writable(args.json, "--json")
    golds, answers, labels, splits, kinds = map(list, zip(*pairs))
    providers = {"fastrl": run_fastrl(golds, answers, args.workers)}
    if not args.no_math_verify:
        try:
            providers["math-verify"] = run_math_verify(golds, answers)
        except ImportError:
            print("math-verify not installed: pip install math-verify")
    rows = []
    print(f"{'provider':<12} {'split':<11} {'accepted(fn)':>13} {'rejected(tn)':>13}")
    for name, (res, secs) in providers.items():
        for split in dict.fromkeys(splits):  # the file's splits, in order
            idx = [k for k in range(len(res)) if splits[k] == split]
            acc = share([res[k] for k in idx if labels[k]])
            rej = share([not res[k] for k in idx if not labels[k]])
            # the pairs of all splits are verified in one timed run: one throughput per provider
            rows.append(dict(provider=name, split=split, accepted=acc, rejected=rej,
                             n_fn=sum(labels[k] for k in idx), n_tn=sum(not labels[k] for k in idx),
                             pairs_per_s_all_splits=len(res) / secs))
            print(f"{name:<12} {split:<11} {'n/a' if acc is None else f'{acc:.1%}':>13} "
                  f"{'n/a' if rej is None else f'{rej:.1%}':>13}")
        print(f"{name:<12} all {len(res)} pairs: {len(res) / secs:.1f} pairs/s")
        if args.show_misses and name == "fastrl":
            for k in range(len(res)):
                if res[k] != labels[k]:
                    print(f"  MISS [{splits[k]}] {kinds[k]}: gold={golds[k]!r} answer={answers[k]!r}")
    # the committed results are a full run: the team's data, both providers, every core
    partial = [option for option, on in (("--data", Path(args.data).resolve() != DATA.resolve()),
                                         ("--workers", args.workers is not None),
                                         ("--no-math-verify", args.no_math_verify or "math-verify" not in providers))
               if on]
    out = args.json
    if out is None:
        out = str(RESULTS / f"bench_verifier{'.partial' if partial else ''}.json")
        if partial:
            print(f"a partial run ({', '.join(partial)}): not replacing the committed results")
    if out:
        meta = dict(machine=platform.machine(), cpus=os.cpu_count(), python=platform.python_version(),
                    workers=args.workers, data=Path(args.data).name, partial=partial)
        try:
            from importlib.metadata import version
            meta["math_verify"] = version("math-verify")
            meta["sympy"] = version("sympy")
        except Exception:
            pass
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
        print(f"wrote {len(rows)} rows to {out}")
    return rows


if __name__ == "__main__":
    main()
