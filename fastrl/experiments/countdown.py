"""RiskPO and ROVER against GRPO at toy scale: exploration and pass@k on countdown-4
(``fastrl experiment riskpo`` and ``fastrl experiment rover``).

Task: the prompt gives 4 distinct numbers from 1-9 and a target from 0-99,
``3,5,7,9=52``; the answer uses each number once with + - * (normal precedence, no
brackets), 7 tokens, e.g. ``9*7-5-3``; reward 1 for a correct expression. All 3,729
solvable (numbers, target) pairs; 300 held out. Two answers are the same solution when
they differ only by rearranging terms and factors (merged through a canonical form: the
sorted signed products, what sympy's ordering of Add and Mul gives).

Policy: a Llama of 2 layers, width 64 (about 85k parameters), warmed up by supervised
learning on random correct solutions (1,500 steps of 128, Adam 3e-3 with a cosine decay). Then, with the same seeds and
budget, through ``fastrl.trainer``: GRPO, RiskPO per group (bundle_size 1) and with
bundles of 5 (``riskpo``), ROVER (``rover``). Setting A: 300 steps of 60 prompts x 8, 2
epochs over 4 mini-batches, Adam 1e-4. Setting D (``rover``): 8 epochs over each batch,
150 steps, GRPO and ROVER.

Measured on the held-out problems (n = 32 samples each) at the start, every
``eval_every`` steps and at the end: pass@k (k = 1..32), entropy (mean negative
log-probability per sampled token), distinct correct answers per problem (as strings,
the criteria's measure, and as structures), share of well-formed outputs.
"""
from __future__ import annotations

import fcntl
import itertools
import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastrl.experiments.common import Workers, check_seeds, sample, verdicts, warm_up
from fastrl.metrics import pass_at_k
from fastrl.plotting import pyplot
from fastrl.trainer import task as task_lib

SYMBOLS = [task_lib.PAD, task_lib.EOS, *"0123456789", "+", "-", "*", ",", "="]
FORM = re.compile(r"[1-9][+\-*][1-9][+\-*][1-9][+\-*][1-9]")  # fullmatch: "$" would let a final "\n" through
KS = list(range(1, 33))


def canonical(expr: str) -> tuple:
    """Rearrangements of terms and factors map to one form: sorted (sign, sorted factors)."""
    terms = re.findall(r"([+-]?)([^+-]+)", expr)
    return tuple(sorted((sign or "+", tuple(sorted(term.split("*")))) for sign, term in terms))


def all_problems() -> list[dict]:
    out = []
    for numbers in itertools.combinations(range(1, 10), 4):
        solutions: dict[int, list[str]] = {}
        for perm in itertools.permutations(numbers):
            for ops in itertools.product("+-*", repeat=3):
                expr = "".join(str(n) + o for n, o in zip(perm, ops)) + str(perm[3])
                value = eval(expr)  # digits and + - * only
                if 0 <= value <= 99:
                    solutions.setdefault(value, []).append(expr)
        for target, exprs in sorted(solutions.items()):
            out.append({"prompt": ",".join(map(str, numbers)) + f"={target}", "numbers": sorted(numbers),
                        "target": target, "solutions": exprs})
    return out


class CountdownTask:
    """The experiment's task for ``fastrl.trainer`` (see ``fastrl.trainer.task.MaxTask``)."""

    name = "countdown"

    def __init__(self, held_out: int = 300):
        problems = all_problems()
        random.Random("countdown-split").shuffle(problems)
        self.test, self.train = problems[:held_out], problems[held_out:]

    def tokenizer(self):
        return task_lib.char_tokenizer(SYMBOLS)

    def problem(self, rng: random.Random) -> dict:
        return rng.choice(self.train)

    def problems(self, seed: int, step: int, count: int) -> list[dict]:
        rng = random.Random(f"fastrl-countdown:{seed}:{step}")
        return [self.problem(rng) for _ in range(count)]

    def solution(self, row: dict, rng: random.Random) -> str:
        return rng.choice(row["solutions"])

    def well_formed(self, row: dict, response: str) -> bool:
        return bool(FORM.fullmatch(response)) and sorted(int(c) for c in response[::2]) == row["numbers"]

    def outcome_reward(self, row: dict, response: str) -> float:
        return float(self.well_formed(row, response) and eval(response) == row["target"])


METHODS = {
    "grpo": {"algo.name": "grpo"},
    "riskpo_group": {"algo.name": "riskpo", "algo.riskpo_bundle_size": 1},
    "riskpo_bundle5": {"algo.name": "riskpo", "algo.riskpo_bundle_size": 5},
    "rover": {"algo.name": "rover"},
}
EXPERIMENTS = {  # (command, setting) -> methods
    ("riskpo", "A"): ("grpo", "riskpo_group", "riskpo_bundle5"),
    ("rover", "A"): ("grpo", "rover"),
    ("rover", "D"): ("grpo", "rover"),
}
SETTINGS = {"A": {"steps": 300, "epochs": 2, "seeds": (0, 1, 2)}, "D": {"steps": 150, "epochs": 8, "seeds": (0, 1)}}


@dataclass
class Plan:
    settings: dict = field(default_factory=lambda: dict(SETTINGS))
    warmup_steps: int = 1500
    eval_every: int = 100
    samples: int = 32
    held_out: int = 300
    smoke: bool = False

    @classmethod
    def smoke_plan(cls) -> "Plan":
        return cls(settings={"A": {"steps": 2, "epochs": 2, "seeds": (0,)}, "D": {"steps": 2, "epochs": 2, "seeds": (0,)}},
                   warmup_steps=5, eval_every=1, samples=4, held_out=8, smoke=True)


def evaluate(model, tokenizer, task: CountdownTask, rows: list[dict], n: int, seed: int) -> dict:
    prompts = [r["prompt"] for r in rows for _ in range(n)]
    texts, _, surprise = sample(model, tokenizer, prompts, 8, seed=seed)
    correct = np.array([task.outcome_reward(rows[i // n], t) for i, t in enumerate(texts)]).reshape(len(rows), n)
    formed = np.mean([task.well_formed(rows[i // n], t) for i, t in enumerate(texts)])
    right = [[t for t, ok in zip(texts[i * n:(i + 1) * n], correct[i]) if ok] for i in range(len(rows))]
    c = correct.sum(1)
    return {"pass@k": {k: float(pass_at_k(n, c, k).mean()) for k in KS if k <= n},
            "entropy": float(surprise[:, 0].sum() / surprise[:, 1].sum().clamp_min(1)),
            "distinct_correct": float(np.mean([len(set(r)) for r in right])),
            "distinct_structures": float(np.mean([len({canonical(t) for t in r}) for r in right])),
            "well_formed": float(formed)}


def warm_model(task, seed: int, out: Path, plan: Plan, rows: list[dict]) -> tuple[Path, dict, str]:
    """The seed's warmed-up model (made, or reused from ``out`` when the recipe there is
    this one: the commands share it), its evaluation and a log line."""
    from transformers import AutoModelForCausalLM

    tokenizer = task.tokenizer()
    recipe = {"seed": seed, "steps": plan.warmup_steps, "batch": 128, "lr": 3e-3, "schedule": "cosine"}
    marker = out / "warmup.json"
    out.mkdir(parents=True, exist_ok=True)
    # another command may share the folder: one makes the model while the others wait, then reuse it
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and json.loads(marker.read_text()) == recipe:
            line = f"  warm-up seed {seed}: reused {out}"
        else:
            marker.unlink(missing_ok=True)  # written last: a run stopped while saving leaves no valid marker
            model = task_lib.tiny_model(len(tokenizer), hidden_size=64, num_layers=2, seed=seed)
            started = time.perf_counter()
            warm_up(model, tokenizer, task, random.Random(f"countdown-warmup:{seed}"), recipe["batch"], recipe["lr"],
                    plan.warmup_steps, plan.warmup_steps, lambda step, loss: True, cosine=True)
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            marker.write_text(json.dumps(recipe))
            line = f"  warm-up seed {seed}: {plan.warmup_steps} steps in {time.perf_counter() - started:.0f} s"
        model = AutoModelForCausalLM.from_pretrained(out)
    start = evaluate(model, tokenizer, task, rows, plan.samples, 7)
    return out, start, line


def train_method(task, setting: str, method: str, seed: int, warm: Path, out: Path, plan: Plan,
                 rows: list[dict]) -> tuple[list[dict], float]:
    """One method's run from the seed's warm model: the evaluations along it (the last at
    the end) and its seconds."""
    from fastrl.trainer.config import TrainConfig
    from fastrl.trainer.train import train

    spec, tokenizer, along = plan.settings[setting], task.tokenizer(), []

    def on_step(trainer, metrics, batch):
        if metrics["step"] % plan.eval_every == 0 or metrics["step"] == spec["steps"]:
            along.append({"step": metrics["step"], **evaluate(trainer.policy.causal_lm(), tokenizer, task, rows,
                                                               plan.samples, 7)})
        return {}

    values = {"model": {"path": str(warm)}, "data": {"prompts_per_step": 60},
              "rollout": {"group_size": 8, "max_new_tokens": 8},
              "algo": {"epochs": spec["epochs"], "mini_batches": 4},
              "optim": {"lr": 1e-4, "max_grad_norm": 1.0},
              "run": {"steps": spec["steps"], "seed": seed, "progress": False, "checkpoint_every": 0,
                      "output_dir": str(out)}}
    config = TrainConfig.from_dict(values, [f"{k}={json.dumps(v)}" for k, v in METHODS[method].items()])
    started = time.perf_counter()
    train(config, overwrite=True, task=task, on_step=on_step)
    return along, time.perf_counter() - started


def outputs(name: str, setting: str) -> tuple[str, ...]:
    """The names run(name, setting, ...) writes in its output folder: the summary, its plot
    and its setting's folder of runs."""
    return r"summary\.json", re.escape(f"{name}_{setting}.png"), re.escape(setting)


def run(name: str, setting: str, output_dir: str | Path, plan: Plan | None = None, log=print,
        warm_dir: str | Path | None = None) -> dict:
    """One command's setting: its methods on its seeds, in worker processes (one per
    core); writes summary.json and a PNG. The warmed-up models go to ``warm_dir``
    (default: a ``countdown_warm`` folder next to output_dir), where the other commands
    find them (delete it to warm up again)."""
    plan = plan or Plan()
    if (name, setting) not in EXPERIMENTS:
        raise ValueError(f"{name} has settings {[s for n, s in EXPERIMENTS if n == name]}, not {setting!r}")
    task = CountdownTask()
    rows = task.test[:plan.held_out]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # (out resolved: "." and its full path are one folder, with one warm-up beside it)
    warm_root = Path(warm_dir) if warm_dir else out.resolve().parent / f"countdown_warm{'_smoke' if plan.smoke else ''}"
    spec, methods = plan.settings[setting], EXPERIMENTS[name, setting]
    check_seeds(spec["seeds"])
    summary = {"experiment": name, "smoke": plan.smoke, "runs": {},
               "settings": {setting: {**spec, "seeds": list(spec["seeds"]), "methods": list(methods)}}}
    started = time.perf_counter()
    start, runs = {}, {}
    with Workers() as workers:  # a seed's runs start as soon as its warm-up is done
        for seed in spec["seeds"]:
            workers.submit(warm_model, task, seed, warm_root / f"seed{seed}", plan, rows)
        for fn, args, result in workers.finished():
            if fn is warm_model:
                seed, (warm, start[seed], line) = args[1], result
                log(line)
                for method in methods:
                    workers.submit(train_method, task, setting, method, seed, warm, out / setting / f"{method}_seed{seed}",
                                   plan, rows)
                continue
            (_, _, method, seed, *_), (along, seconds) = args, result
            s, e = start[seed], along[-1]
            runs[method, seed] = {"setting": setting, "method": method, "seed": seed, "start": s, "end": e, "along": along}
            log(f"  {setting} {method:<15} seed {seed}: pass@1 {s['pass@k'][1]:.3f} -> {e['pass@k'][1]:.3f}, "
                f"{_top_name(s)} {_top(s):.3f} -> {_top(e):.3f}, entropy {s['entropy']:.3f} -> {e['entropy']:.3f}, "
                f"distinct {s['distinct_correct']:.2f} -> {e['distinct_correct']:.2f}, well-formed "
                f"{e['well_formed']:.3f} ({seconds:.0f} s)")
    summary["runs"] = {f"{setting}/{method}/seed{seed}": runs[method, seed] for seed in spec["seeds"] for method in methods}
    summary["seconds"] = time.perf_counter() - started
    summary["criteria"] = criteria(summary)
    summary["plots"] = [path.name for path in plot(summary, out)]
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _top(d):
    """pass@k at the largest k evaluated (the plan's samples: 32 but in a smoke run)."""
    return d["pass@k"][max(d["pass@k"])]


def _top_name(d):
    return f"pass@{max(d['pass@k'])}"


def load_summary(path) -> dict:
    """A summary.json as ``run`` returned it: JSON made the pass@k keys strings ("9" > "32"),
    so they are ints again, and ``criteria``, ``report`` and ``plot`` read it as they read run's."""
    summary = json.loads(Path(path).read_text())
    for r in summary["runs"].values():
        for point in [r["start"], r["end"], *r["along"]]:
            point["pass@k"] = {int(k): v for k, v in point["pass@k"].items()}
    return summary


def criteria(summary: dict) -> list[dict]:
    runs, rows = summary["runs"], []
    for setting, spec in summary["settings"].items():
        for seed in spec["seeds"]:
            g = runs[f"{setting}/grpo/seed{seed}"]
            s, e = g["start"], g["end"]
            measured = (f"pass@1 {s['pass@k'][1]:.3f} -> {e['pass@k'][1]:.3f}, {_top_name(s)} {_top(s):.3f} -> {_top(e):.3f}, "
                        f"entropy {s['entropy']:.3f} -> {e['entropy']:.3f}, distinct {s['distinct_correct']:.2f} -> "
                        f"{e['distinct_correct']:.2f}")
            held = (e["pass@k"][1] >= s["pass@k"][1] + 0.10 and _top(e) <= _top(s) - 0.20
                    and e["entropy"] <= 0.4 * s["entropy"] and e["distinct_correct"] <= 0.5 * s["distinct_correct"])
            if setting == "A":
                rows.append({"criterion": f"sanity, GRPO (setting {setting}, seed {seed}): pass@1 +0.10, {_top_name(s)} "
                                          "-0.20, entropy -60%, distinct -50%", "measured": measured, "held": bool(held)})
        for method in spec["methods"]:
            if method == "grpo":
                continue
            pairs = [(runs[f"{setting}/{method}/seed{s}"]["end"], runs[f"{setting}/grpo/seed{s}"]["end"])
                     for s in spec["seeds"]]
            ok = [(m, g) for m, g in pairs if m["well_formed"] >= 0.95 and g["well_formed"] >= 0.95]
            beats = [_top(m) >= _top(g) + 0.05 and m["distinct_correct"] >= 1.3 * g["distinct_correct"]
                     and m["entropy"] >= 1.3 * g["entropy"] and m["pass@k"][1] >= g["pass@k"][1] - 0.02 for m, g in ok]
            top = _top_name(pairs[0][0])
            rows.append({"criterion": f"claim, {method} beats GRPO (setting {setting}; >= 3 paired seeds with >= 95% "
                                      f"well-formed: +0.05 {top}, 1.3x distinct, 1.3x entropy, pass@1 >= -0.02)",
                         "measured": f"{sum(beats)} of {len(ok)} eligible seed pairs (of {len(pairs)}); end {top} "
                                     + ", ".join(f"{_top(m):.3f} vs {_top(g):.3f}" for m, g in pairs),
                         "held": None if len(spec["seeds"]) < 3 else bool(len(ok) >= 3 and all(beats))})
    return rows


def plot(summary: dict, out: Path) -> list[Path]:
    """The PNGs written (none without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return []
    written = []
    for setting, spec in summary["settings"].items():
        fig, axes = plt.subplots(1, 5, figsize=(20, 3.6))
        colors = dict(zip(METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
        for method in spec["methods"]:
            runs = [summary["runs"][f"{setting}/{method}/seed{s}"] for s in spec["seeds"]]
            ks = sorted(map(int, runs[0]["end"]["pass@k"]))
            end = np.array([[r["end"]["pass@k"][k] for k in ks] for r in runs])
            axes[0].plot(ks, end.mean(0), color=colors[method], label=f"{method} (end)")
            axes[0].fill_between(ks, end.min(0), end.max(0), color=colors[method], alpha=0.15)
            for ax, key in zip(axes[1:], ("entropy", "distinct_correct", "pass@1", "well_formed")):
                steps = [0] + [a["step"] for a in runs[0]["along"]]
                values = np.array([[(p["pass@k"][1] if key == "pass@1" else p[key]) for p in [r["start"]] + r["along"]]
                                   for r in runs])
                ax.plot(steps, values.mean(0), color=colors[method], label=method)
                ax.fill_between(steps, values.min(0), values.max(0), color=colors[method], alpha=0.15)
                ax.set_title(key, fontsize=9)
                ax.set_xlabel("RL step", fontsize=8)
        start = np.array([[summary["runs"][f"{setting}/grpo/seed{s}"]["start"]["pass@k"][k] for k in ks]
                          for s in spec["seeds"]])
        axes[0].plot(ks, start.mean(0), color="gray", ls="--", label="start")
        axes[0].set_xscale("log", base=2)
        axes[0].set_title("pass@k (mean, band: min-max over seeds)", fontsize=9)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"countdown-4, setting {setting}: {summary['experiment']}", fontsize=10)
        fig.tight_layout()
        fig.savefig(path := out / f"{summary['experiment']}_{setting}.png", dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def report(summary: dict) -> str:
    first = next(iter(summary["runs"].values()))
    lines = [f"{summary['experiment']} experiment on countdown-4{' (SMOKE)' if summary['smoke'] else ''}: "
             f"{summary['seconds']:.0f} s", "",
             f"{'setting':<8}{'method':<16}{'seed':>5}  {'pass@1':>15}  {_top_name(first['start']):>15}  {'entropy':>15}  "
             f"{'distinct':>13}  {'well-formed':>11}"]
    for r in summary["runs"].values():
        s, e = r["start"], r["end"]
        lines.append(f"{r['setting']:<8}{r['method']:<16}{r['seed']:>5}  {s['pass@k'][1]:>6.3f} -> {e['pass@k'][1]:<5.3f}  "
                     f"{_top(s):>6.3f} -> {_top(e):<5.3f}  {s['entropy']:>6.3f} -> {e['entropy']:<5.3f}  "
                     f"{s['distinct_correct']:>5.2f} -> {e['distinct_correct']:<4.2f}  {e['well_formed']:>11.3f}")
    return "\n".join(lines + [""] + verdicts(summary["criteria"]))
