"""The ``fastrl`` command: ``info`` and ``bench`` (train and eval come with their issues)."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def info(_args=None) -> int:
    import torch

    import fastrl
    from fastrl import _extension
    from fastrl.ops import _registry

    print(f"fastrl {fastrl.__version__}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}; "
          f"GPU {'available' if torch.cuda.is_available() else 'not available'})")
    ext = _extension.module
    if ext is None:
        print(f"extension fastrl._C: {_extension.status}; every op runs its reference")
    else:
        print(f"extension fastrl._C: {_extension.status}, built with torch {ext.built_with_torch}"
              f"{f' and CUDA {ext.built_with_cuda}' if ext.with_cuda else ' without CUDA'}")
    mismatch = _extension.build_mismatch()
    if mismatch:
        print(f"WARNING: {mismatch}")
    forced = _registry._forced
    if forced:
        print(f"backend forced to {forced!r} (FASTRL_BACKEND / use_backend) where an op has it")
    width = max(map(len, _registry.OPS))
    print(f"\n{'op':<{width}} {'CPU tensors':<12} {'CUDA tensors':<12} available")
    for name in sorted(_registry.OPS):
        cpu, cuda = _registry.backend_for(name, "cpu"), _registry.backend_for(name, "cuda")
        available = sorted(set(_registry.available_backends(name, "cpu"))
                           | set(_registry.available_backends(name, "cuda")))
        print(f"{name:<{width}} {cpu:<12} {cuda:<12} {', '.join(available)}")
    return 0


def bench(args) -> int:
    script = BENCHMARKS / f"bench_{args.family}.py"
    if not script.exists():
        known = sorted(p.stem[len("bench_"):] for p in BENCHMARKS.glob("bench_*.py"))
        if not known:
            print("fastrl bench needs the benchmarks/ folder of a source checkout", file=sys.stderr)
        else:
            print(f"unknown benchmark {args.family!r}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location(f"bench_{args.family}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(args.rest)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastrl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, the extension, and which backend serves each op")
    b = sub.add_parser("bench", help="run benchmarks/bench_<family>.py and print a table")
    b.add_argument("family", help="e.g. scans")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options for the benchmark (--quick, --device, ...)")
    args = parser.parse_args(argv)
    if args.command == "info":
        return info(args)
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
