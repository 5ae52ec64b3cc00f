"""The ``fastrl`` command: ``train``, ``experiment``, ``eval``, ``bench`` and ``info``."""
from __future__ import annotations

import argparse
import errno
import importlib.util
import json
import math
import os
import sys
import warnings
from pathlib import Path

from fastrl import stopping

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
        print(f"extension fastrl._C: {_extension.status}; every op runs in plain PyTorch (torch or reference)")
    else:
        print(f"extension fastrl._C: {_extension.status}, built with torch {ext.built_with_torch}"
              f"{f' and CUDA {ext.built_with_cuda}' if ext.with_cuda else ' without CUDA'}")
    mismatch = _extension.build_mismatch()
    if mismatch:
        print(f"WARNING: {mismatch}")
    forced = _registry.forced()
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
    if args.family is None or not script.exists():
        known = sorted(p.stem[len("bench_"):] for p in BENCHMARKS.glob("bench_*.py"))
        if not known:
            print("fastrl bench needs the benchmarks/ folder of a source checkout", file=sys.stderr)
        elif args.family is None:
            print(f"fastrl bench: name a benchmark family: {', '.join(known)}", file=sys.stderr)
        else:
            print(f"unknown benchmark {args.family!r}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location(f"bench_{args.family}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    program, sys.argv[0] = sys.argv[0], f"fastrl bench {args.family}"  # its usage line names this command
    harness = getattr(module, "harness", None)  # (bench_verifier has its own table)
    if harness:
        # only a command typed in a shell may be re-run with other malloc settings, not a Python caller's
        harness.TYPED_COMMAND = args.typed
    try:
        rows = module.main(args.rest)
    finally:
        sys.argv[0] = program
    return harness.exit_status(rows) if harness else 0


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced; None when there is none."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def _eval_verifier():
    """(score_batch(golds, completions) -> [float], description). fastrl.rewards.math is
    imported lazily, only here: it is heavier (sympy, a worker pool) and may not exist in a tree."""
    try:
        from fastrl.rewards.math import score_batch
    except ModuleNotFoundError as e:
        if e.name not in ("fastrl.rewards.math", "fastrl.rewards"):
            raise  # math.py exists but a dependency of it is missing: say so, do not hide it
        def score_batch(golds, completions):
            return [float(_last_boxed(c) == g.strip()) for g, c in zip(golds, completions)]
        return score_batch, ("FALLBACK verifier (fastrl.rewards.math not available): exact string "
                             "match of the last \\boxed{} content against the gold")
    return score_batch, "verifier: fastrl.rewards.math.score_batch"


def eval_samples(args) -> int:
    import json

    from fastrl.metrics import majority, pass_at_k, reported_ks
    from fastrl.trainer.data import json_lines, json_record

    if args.plot:
        if not Path(args.plot).resolve().parent.is_dir():
            print(f"fastrl eval: --plot: no folder {str(Path(args.plot).parent)!r} to write {args.plot!r} in",
                  file=sys.stderr)
            return 2
        if error := _image_format_error(args.plot):
            print(f"fastrl eval: --plot {args.plot!r}: {error}", file=sys.stderr)
            return 2
    try:
        score_batch, description = _eval_verifier()
    except ValueError as e:  # FASTRL_VERIFY_TIMEOUT, read when the verifier loads
        print(f"fastrl eval: {e}", file=sys.stderr)
        return 2
    samples = []  # (problem_id, gold, completion, CoT judged correct), file order
    golds: dict = {}  # problem_id as text -> (problem_id, gold, the line that first gave it)
    any_cot = False
    try:
        lines = json_lines(Path(args.samples).read_text(encoding="utf-8-sig"))
    except OSError as e:
        print(f"fastrl eval: cannot read {args.samples}: {e.strerror}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:
        print(f"fastrl eval: cannot read {args.samples}: not UTF-8 text ({e.reason} at byte {e.start})",
              file=sys.stderr)
        return 2
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{args.samples}:{lineno}"
        try:
            row = json_record(line)
        except ValueError as e:
            print(f"{where}: {e}", file=sys.stderr)
            return 2
        if not isinstance(row, dict):
            print(f"{where}: a row must be a JSON object, got {type(row).__name__}", file=sys.stderr)
            return 2
        try:
            pid, gold, completion = row["problem_id"], row["gold"], row["completion"]
        except KeyError as e:
            print(f"{where}: missing field {e}", file=sys.stderr)
            return 2
        for field, value, types in [("problem_id", pid, (str, int)), ("gold", gold, (str, int, float)),
                                    ("completion", completion, (str,))]:
            if isinstance(value, bool) or not isinstance(value, types) or (
                    isinstance(value, float) and not math.isfinite(value)):  # (JSON's NaN, Infinity)
                names = " or ".join({str: "a string", int: "an integer", float: "a finite number"}[t] for t in types)
                print(f"{where}: {field} must be {names}, got {json.dumps(value)}", file=sys.stderr)
                return 2
        # (compared as text, "3" and 3 alike; scored as the verifier reads a number gold)
        first_pid, first_gold, first_line = golds.setdefault(str(pid), (pid, str(gold), lineno))
        if pid != first_pid:  # 1 and "1": one problem written two ways, or two problems?
            print(f"{where}: problem_id {json.dumps(pid)} here but {json.dumps(first_pid)} on line {first_line}; "
                  "write each problem's id one way", file=sys.stderr)
            return 2
        if str(gold) != first_gold:
            print(f"{where}: problem_id {json.dumps(pid)} has gold {json.dumps(str(gold))} here but "
                  f"{json.dumps(first_gold)} on line {first_line}", file=sys.stderr)
            return 2
        verdict = row.get("cot_correct")
        any_cot |= verdict is not None
        # one verdict (bool / "yes" / "no") or a list of judge verdicts, majority-voted;
        # an unjudged sample is not CoT-correct
        try:
            if verdict == []:
                raise ValueError("an empty list of verdicts; leave the field out for an unjudged sample")
            cot = verdict is not None and majority(verdict if isinstance(verdict, list) else [verdict])
        except (TypeError, ValueError) as e:
            print(f"{where}: cot_correct: {e}", file=sys.stderr)
            return 2
        samples.append((pid, gold, completion, cot))
    if not samples:
        print(f"{args.samples}: no samples", file=sys.stderr)
        return 2
    scores = score_batch([gold for _, gold, _, _ in samples], [completion for _, _, completion, _ in samples])
    problems: dict = {}  # problem_id -> [(answer correct, CoT judged correct), ...], file order
    for (pid, _, _, cot), reward in zip(samples, scores):
        correct = reward >= 0.5
        problems.setdefault(pid, []).append((correct, correct and cot))
    import numpy as np

    n = np.array([len(s) for s in problems.values()])
    c = np.array([sum(a for a, _ in s) for s in problems.values()])
    d = np.array([sum(b for _, b in s) for s in problems.values()])
    ks = reported_ks(int(n.min()))  # (n.min(): the largest k every problem supports)
    passk = [float(pass_at_k(n, c, k).mean()) for k in ks]
    cotk = [float(pass_at_k(n, d, k).mean()) for k in ks] if any_cot else None
    print(description)
    print(f"{len(problems)} problems, {int(n.sum())} samples (n per problem: {n.min()}..{n.max()}); "
          f"mean over problems")
    print(f"{'k':>5} {'pass@k':>8} {'CoT-pass@k':>11}")
    for i, k in enumerate(ks):
        print(f"{k:>5} {passk[i]:>8.4f} {f'{cotk[i]:.4f}' if cotk else 'n/a':>11}")
    if args.plot:
        from fastrl.plotting import pyplot

        plt = pyplot("skipping --plot")
        if plt is None:
            return 0
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(ks, passk, "o-", label="pass@k")
        if cotk:
            ax.plot(ks, cotk, "s-", label="CoT-pass@k")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k")
        ax.set_ylim(0, 1.02)
        ax.legend()
        ax.set_title(Path(args.samples).name)
        fig.tight_layout()
        try:
            fig.savefig(args.plot)
        except (OSError, ValueError) as e:
            print(f"fastrl eval: cannot write {args.plot}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
            return 1  # (not 2: the arguments were fine, as far as could be told before the work)
        finally:
            plt.close(fig)
        print(f"wrote {args.plot}")
    return 0


def _image_format_error(path: str):
    """Why matplotlib cannot write an image named ``path`` (it takes the format from the
    extension, and adds ".png" to a name without one), or None."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if not suffix:
        return "name the image format by its extension, e.g. curves.png"
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return None  # the plot is skipped, with a note
    formats = FigureCanvasBase.get_supported_filetypes()
    return None if suffix in formats else f"no image format {suffix!r}; one of {', '.join(sorted(formats))}"


def train(args) -> int:
    from fastrl.trainer.config import ConfigError, TrainConfig, describe

    if args.help_config:
        print(describe())
        return 0
    overrides = list(args.set or [])
    for flag, key in (("algo", "algo.name"), ("steps", "run.steps"), ("output_dir", "run.output_dir"),
                      ("seed", "run.seed")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append((key, value))  # as typed: "--output-dir '001'" is a folder, not YAML's 1
    if args.plot:
        overrides.append("run.plot=true")
    try:
        with warnings.catch_warnings(record=True) as advisories:
            warnings.simplefilter("always", UserWarning)
            config = TrainConfig.load(args.config, overrides)
    except (ConfigError, OSError) as e:
        print(f"fastrl train: {e}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":  # (once under torchrun)
        for advisory in advisories:
            print(f"fastrl train: warning: {advisory.message}", file=sys.stderr)
    if args.eval_only and args.overwrite:
        print("fastrl train: --eval-only writes nothing: --overwrite does not go with it", file=sys.stderr)
        return 2
    try:
        from fastrl.trainer.train import evaluate, train as run

        if args.eval_only:
            metrics = evaluate(config, resume=args.resume)
            if os.environ.get("RANK", "0") == "0":
                print(json.dumps(metrics))
            return 0
        result = run(config, resume=args.resume, overwrite=args.overwrite)
    except ConfigError as e:
        print(f"fastrl train: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        return stopping.exit_status(e)
    except ModuleNotFoundError as e:
        return _missing_extra("fastrl train", e)
    except OSError as e:
        return _os_error("fastrl train", e, f"run.output_dir {config.run.output_dir}")
    if result.steps:
        first, last = result.reward_gain()
        fifth = max(1, len(result.steps) // 5)
        print(f"reward: {first:.3f} (mean of the first {fifth} steps) -> {last:.3f} (last {fifth}), "
              f"{last - first:+.3f}")
        evaluations = [m for m in result.metrics if "eval_accuracy" in m]
        if evaluations:
            print("eval accuracy: " + " -> ".join(f"{m['eval_accuracy']:.3f} (step {m['step']})"
                                                  for m in (evaluations[0], evaluations[-1])[:len(evaluations)]))
        print(f"log: {result.log}")
        if result.plot:
            print(f"plot: {result.plot}")
        print(f"final policy: {result.final_model}")
    return 0


def _os_error(command: str, error: OSError, output: str) -> int:
    """A full disk, a folder made read-only meanwhile: the file (or folder) and why, no traceback
    (a write's error without a file name: the output folder)."""
    where = f": {error.filename}" if error.filename else ""
    if not error.filename and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS):
        where = f" (writing in {output})"
    print(f"{command}: {error.strerror or error}{where}", file=sys.stderr)
    return 1


# pyproject's [train], and what transformers brings that fastrl imports itself (the built-in
# task's tokenizer is built with tokenizers before transformers is imported)
TRAIN_EXTRA = ("transformers", "peft", "datasets", "matplotlib", "tokenizers")


def _missing_extra(command: str, error: ModuleNotFoundError) -> int:
    """A module of the train extra is missing: say how to install it (anything else is a bug: raised)."""
    if (error.name or "").split(".")[0] not in TRAIN_EXTRA:
        raise error
    print(f"{command}: needs {error.name.split('.')[0]}, from fastrl's train extra: "
          "pip install 'fastrl[train]' (from a source checkout: pip install --no-build-isolation -e '.[train]')",
          file=sys.stderr)
    return 2


def _seeds(text: str) -> tuple[int, ...]:
    """--seeds: comma-separated ints >= 0."""
    parts = text.split(",")
    if not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"comma-separated integers >= 0, got {text!r}")
    seeds = tuple(int(p) for p in parts)
    if len(set(seeds)) < len(seeds):  # one seed twice would be two identical runs into one folder
        raise argparse.ArgumentTypeError(f"each seed once, got {text!r}")
    return seeds


def experiment(args) -> int:
    try:
        return _experiment(args)
    except ModuleNotFoundError as e:
        return _missing_extra(f"fastrl experiment {args.name}", e)
    except KeyboardInterrupt as e:
        print(f"\nfastrl experiment {args.name}: interrupted, its runs stopped (an earlier run it was replacing is "
              "put back); an experiment does not resume: run it again with --overwrite", file=sys.stderr)
        return stopping.exit_status(e)
    except OSError as e:
        return _os_error(f"fastrl experiment {args.name}", e, f"--output-dir {_experiment_dir(args)}")


def _experiment_dir(args) -> Path:
    return Path(args.output_dir or f"runs/experiments/{args.name}_{args.setting}{'_smoke' if args.smoke else ''}")


def summarised_outputs(out: Path) -> tuple[str, ...]:
    """The output names of the run whose summary.json is in out (another setting's or
    command's, in a shared --output-dir): replacing its summary orphans its plots and runs."""
    from fastrl.experiments import countdown, pure

    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return ()
    if not isinstance(summary, dict):
        return ()
    if "setting" in summary:  # pure's
        return pure.OUTPUTS
    if summary.get("experiment") in {name for name, _ in countdown.EXPERIMENTS}:
        return tuple(name for setting in summary.get("settings") or {}
                     for name in countdown.outputs(summary["experiment"], str(setting)))
    return ()


def _experiment(args) -> int:
    from fastrl.experiments import common, countdown, pure
    from fastrl.trainer import checkpoint

    settings = {"pure": ("A", "B"), "riskpo": ("A",), "rover": ("A", "D")}[args.name]
    if args.setting not in settings:
        print(f"fastrl experiment {args.name}: --setting must be one of {', '.join(settings)}", file=sys.stderr)
        return 2
    if args.lr is not None and (args.name != "pure" or not (math.isfinite(args.lr) and args.lr > 0)):
        why = ("must be a finite number > 0" if args.name == "pure"
               else "is for pure only (riskpo and rover follow the issue's recipe)")
        print(f"fastrl experiment {args.name}: --lr {why}, got {args.lr}", file=sys.stderr)
        return 2
    if args.policy is not None and args.name != "pure":
        print(f"fastrl experiment {args.name}: --policy is for pure only", file=sys.stderr)
        return 2
    if args.seeds is not None and args.smoke:
        print(f"fastrl experiment {args.name}: --seeds does not go with --smoke (its plan has its own seed)",
              file=sys.stderr)
        return 2
    out = _experiment_dir(args)
    if out.exists() and not out.is_dir():
        print(f"fastrl experiment {args.name}: --output-dir {str(out)!r} is a file", file=sys.stderr)
        return 2
    if place := checkpoint.unwritable(out):
        print(f"fastrl experiment {args.name}: --output-dir {str(out)!r}: cannot create or write in {str(place)!r}",
              file=sys.stderr)
        return 2
    for stale in common.set_aside(out):
        print(f"note: {stale} holds an earlier run that a stopped --overwrite set aside; move it back into {out} "
              "or delete it", file=sys.stderr)
    outputs = pure.OUTPUTS if args.name == "pure" else countdown.outputs(args.name, args.setting)
    if held := common.previous_run(out, outputs + summarised_outputs(out)):
        names = ", ".join(path.name + "/" * path.is_dir() for path in held)
        if not args.overwrite:
            print(f"fastrl experiment {args.name}: {out} holds an earlier run ({names}): pass --overwrite to replace "
                  "it, or another --output-dir", file=sys.stderr)
            return 2
        print(f"replacing the earlier run in {out}: {names}")
    with common.replacing(out, held, outputs):
        summary = _run_experiment(args, out)
    plots = ", ".join(str(out / name) for name in summary["plots"]) or "none (matplotlib is not installed)"
    print(f"\nsummary: {out / 'summary.json'}; plots: {plots}")
    return 0


def _run_experiment(args, out: Path) -> dict:
    from fastrl.experiments import countdown, pure

    if args.name == "pure":
        plan = pure.Plan.smoke_plan(args.setting) if args.smoke else pure.Plan(args.setting, seeds=args.seeds or (0, 1))
        if args.lr is not None:
            plan.lr = args.lr
        plan.policy = args.policy or plan.policy
        summary = pure.run(args.setting, out, plan)
        print(pure.report(summary))
    else:
        plan = countdown.Plan.smoke_plan() if args.smoke else countdown.Plan()
        if args.seeds:
            plan.settings[args.setting] = {**plan.settings[args.setting], "seeds": args.seeds}
        summary = countdown.run(args.name, args.setting, out, plan)
        print(countdown.report(summary))
    return summary


def main(argv=None) -> int:
    try:
        with stopping.sigterm_stops():
            return _main(argv)
    except KeyboardInterrupt as e:  # (train saves a checkpoint first; bench has written its rows so far)
        print("\ninterrupted" if stopping.exit_status(e) == 130 else f"\n{e} received", file=sys.stderr)
        return stopping.exit_status(e)
    except BrokenPipeError:  # `fastrl info | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (so the exit's flush does not fail too)
        return 141


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastrl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="RL post-training; with no arguments, the built-in task on a tiny model",
                       description="Train a policy. With no arguments: GRPO on the built-in task (the largest of three digits) with a "
                                   "tiny model built here, on the CPU, in a few minutes. Under torchrun "
                                   "--nproc_per_node N the same command trains on N processes (run.distributed: "
                                   "ddp or fsdp2).")
    t.add_argument("--config", metavar="RUN.yaml", help="a YAML file of sections (see --help-config)")
    t.add_argument("--algo", help="credit assignment: grpo, dr_grpo, rloo, gae, pure, riskpo, rover")
    t.add_argument("--steps", type=int, help="training steps (run.steps)")
    t.add_argument("--output-dir", help="where the log, checkpoints, plot and final policy go (run.output_dir)")
    t.add_argument("--seed", type=int, help="run.seed")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config key (repeatable)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in run.output_dir (the config may differ from the "
                        "checkpoint's only in fastrl.trainer.config.RESUME_SAFE: run.steps, logging, ...)")
    t.add_argument("--overwrite", action="store_true",
                   help="start again even if run.output_dir holds a run, removing its checkpoints, final/ and logs")
    t.add_argument("--plot", action="store_true", help="write PNG curves of the metrics at the end")
    t.add_argument("--eval-only", action="store_true",
                   help="only evaluate on eval.source (model.path's weights; with --resume, the newest checkpoint's) "
                        "and print the metrics as a JSON line; nothing is written")
    t.add_argument("--help-config", action="store_true", help="list every config key with its default and meaning")
    x = sub.add_parser("experiment", help="reproduce a paper's headline effect at toy scale on the CPU")
    x.add_argument("name", choices=["pure", "riskpo", "rover"])
    x.add_argument("--setting", choices=["A", "B", "D"], default="A",
                   help="pure: A (r_triv 1.0) or B (r_triv 0.8); riskpo: A; rover: A or D (8 epochs per batch)")
    x.add_argument("--seeds", type=_seeds, help="comma-separated seeds (default: the experiment's)")
    x.add_argument("--output-dir", help="default: runs/experiments/<name>_<setting> (with --smoke: ..._smoke); riskpo "
                                        "and rover share their warmed-up models in countdown_warm[_smoke]/ beside it")
    x.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in the output folder (its summary, plots and run folders)")
    x.add_argument("--lr", type=float, help="pure: the RL learning rate (default 2e-4)")
    x.add_argument("--policy", choices=["gru_attention", "llama", "gru"],
                   help="pure: the policy (fastrl.experiments.pure.POLICIES): a GRU with one attention layer over "
                        "its states (default), a Llama, or a plain GRU as the prototype's; each about 250-280k "
                        "parameters")
    x.add_argument("--smoke", action="store_true", help="a few steps of everything (CI)")
    sub.add_parser("info", help="versions, the extension, and which backend serves each op")
    b = sub.add_parser("bench", help="run benchmarks/bench_<family>.py and print a table")
    b.add_argument("family", nargs="?", help="e.g. scans (without one, the families are listed)")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options for the benchmark (--quick, --device, ...)")
    e = sub.add_parser("eval", help="verify sampled completions and print pass@k and CoT-pass@k")
    e.add_argument("samples", help="JSONL rows {problem_id, gold, completion, optional cot_correct}")
    e.add_argument("--plot", metavar="OUT.png", help="draw both curves (needs matplotlib)")
    args = parser.parse_args(argv)
    args.typed = argv is None  # a command from the shell, not a Python caller's
    from fastrl.ops import _registry

    if error := _registry.forced_backend_error():
        print(f"fastrl: {error}", file=sys.stderr)
        return 2
    if args.command == "info":
        return info(args)
    if args.command == "eval":
        return eval_samples(args)
    if args.command == "train":
        return train(args)
    if args.command == "experiment":
        return experiment(args)
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
