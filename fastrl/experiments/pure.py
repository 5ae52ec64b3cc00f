"""PURE at toy scale: sum-form credit for a process reward is hacked, min-form is not
(``fastrl experiment pure --setting A|B``).

Task: left-to-right arithmetic mod 10 on four digits joined by + or -, ``3+5-2+9``. The
response writes one step per line, ``x o y=z``, then ``Az`` and EOS:
``3+5=8\\n\\n8-2=6\\n\\n6+9=5\\n\\nA5``; at most 40 response tokens, 17 symbols.

Process reward (programmatic, and hackable as PRMs are): +1 for a correct step that makes
progress (the correct answer, the first time, included), ``r_triv`` for a valid restatement
that makes none (``=z``, or the correct answer again), -1 for an arithmetic error, a
malformed step, a wrong or premature answer; a missing answer and a last step that looks
unfinished score 0 (the response may have been cut there; the grader sees no EOS, so a
response that stopped after such a step gets 0 too: it costs no more than stopping).

Policy (``POLICIES``): a GRU of two layers of 128 followed by one attention layer over its
states (``fastrl.experiments.recurrent``, about 268k parameters; ``policy="llama"``: a
Llama of 3 layers of 96, 280k; ``policy="gru"``: the plain GRU, 2 layers of 144, 250k, the
prototype's kind of policy), warmed up by supervised learning on correct solutions in which
a restatement follows a step with probability 0.15 (any step, a restatement too, so
restatements sometimes come two in a row), until its sampled accuracy, checked every 10
steps, reaches 0.5. Then RL through ``fastrl.trainer`` (16 prompts x 8 samples, Adam 2e-4,
clip 1, temperature 1, no KL, one on-policy update per batch) with five credit
assignments: the PRM's sum-form, PURE's soft and strict min-form (token-mode leave-one-out
baseline), the verifiable reward alone (RLOO) and soft min-form + 0.1 x verifiable reward.

Why this policy (README, "Experiments", has the runs): the sum form's hack that the
criteria describe (at least 10 steps per response) restates before the work is done, which
a policy does only if a restatement does not make its next step much likelier to be wrong.
The Llama's next step is wrong after 33% of its restatements against 15% after progress,
so it first restates less and hacks late (after step 100) and only after the work (at most
10 steps in 40 tokens); the plain GRU restates from the start (12 steps) but copies the
prompt's digits from its state and RL barely improves it (min forms and verifiable reward
end at 0.53-0.67). With attention over its states the GRU hacks the sum form within 40
steps and its min forms learn as the Llama's do. The learning rate 2e-4 (the prototype's
5e-4 was for its recurrent net): at 3e-4 soft min in A seed 0 ended 0.20 below the
verifiable reward, at 5e-4 strict min collapsed in A seed 0.
"""
from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastrl.experiments import recurrent  # noqa: F401 (registers the GRU policy with AutoModelForCausalLM)
from fastrl.experiments.common import Workers, check_seeds, sample, smoothed, verdicts
from fastrl.experiments.common import warm_up as warm_up_steps
from fastrl.plotting import pyplot
from fastrl.trainer import task as task_lib

SYMBOLS = [task_lib.PAD, task_lib.EOS, *"0123456789", "+", "-", "=", "A", task_lib.SEPARATOR]
STEP = re.compile(r"^(\d)([+-])(\d)=(\d)$")
RESTATE = re.compile(r"^=(\d)$")
ANSWER = re.compile(r"^A(\d)$")
# what an unfinished step can look like when the length limit cuts it
PARTIAL = re.compile(r"^(|\d|\d[+-]|\d[+-]\d|\d[+-]\d=|=|A)$")


def solve(digits: list[int], ops: list[str]) -> list[int]:
    value, out = digits[0], []
    for op, d in zip(ops, digits[1:]):
        value = (value + d if op == "+" else value - d) % 10
        out.append(value)
    return out


class ArithTask:
    """The experiment's task for ``fastrl.trainer`` (see ``fastrl.trainer.task.MaxTask``)."""

    name = "arith"

    def __init__(self, r_triv: float = 1.0, operands: int = 4):
        self.r_triv, self.operands = r_triv, operands

    def tokenizer(self):
        return task_lib.char_tokenizer(SYMBOLS)

    def problem(self, rng: random.Random) -> dict:
        digits = [rng.randrange(10) for _ in range(self.operands)]
        ops = [rng.choice("+-") for _ in range(self.operands - 1)]
        prompt = str(digits[0]) + "".join(o + str(d) for o, d in zip(ops, digits[1:]))
        return {"prompt": prompt, "digits": digits, "ops": ops, "answer": str(solve(digits, ops)[-1])}

    def problems(self, seed: int, step: int, count: int) -> list[dict]:
        rng = random.Random(f"fastrl-arith:{seed}:{step}")
        return [self.problem(rng) for _ in range(count)]

    def solution(self, row: dict, rng: random.Random, restate: float = 0.15) -> str:
        steps, value = [], row["digits"][0]
        for op, d, z in zip(row["ops"], row["digits"][1:], solve(row["digits"], row["ops"])):
            steps.append(f"{value}{op}{d}={z}")
            while rng.random() < restate:  # after every step, a restatement's too
                steps.append(f"={z}")
            value = z
        return task_lib.SEPARATOR.join(steps + [f"A{row['answer']}"])

    def outcome_reward(self, row: dict, response: str) -> float:
        return float(response.split(task_lib.SEPARATOR)[-1] == f"A{row['answer']}")

    def grade(self, row: dict, steps: list[str]) -> list[tuple[str, float]]:
        """(kind, score) per step: kind is progress, restate, error, answer, wrong_answer or
        unfinished."""
        values = solve(row["digits"], row["ops"])
        value, done, answered, out = row["digits"][0], 0, False, []
        for i, s in enumerate(steps):
            last = i == len(steps) - 1
            m = STEP.match(s)
            if m and done < len(values) and int(m[1]) == value and m[2] == row["ops"][done] \
                    and int(m[3]) == row["digits"][done + 1] and int(m[4]) == values[done]:
                value, done = values[done], done + 1
                out.append(("progress", 1.0))
            elif RESTATE.match(s) and int(s[1]) == value:
                out.append(("restate", self.r_triv))
            elif ANSWER.match(s):
                right = done == len(values) and int(s[1]) == value
                # the answer again makes no progress: a restatement (it scored +1 each time)
                out.append(("wrong_answer", -1.0) if not right else ("restate", self.r_triv) if answered
                           else ("answer", 1.0))
                answered = answered or right
            elif last and PARTIAL.match(s):
                out.append(("unfinished", 0.0))
            else:
                out.append(("error", -1.0))
        return out

    def step_scores(self, row: dict, steps: list[str]) -> list[float]:
        return [score for _, score in self.grade(row, steps)]


VARIANTS = {
    "sum": {"algo.name": "pure", "algo.pure_min_form": "sum", "algo.pure_verifiable_coef": 0.0},
    "soft_min": {"algo.name": "pure", "algo.pure_min_form": "soft", "algo.pure_verifiable_coef": 0.0},
    "strict_min": {"algo.name": "pure", "algo.pure_min_form": "strict", "algo.pure_verifiable_coef": 0.0},
    "verifiable": {"algo.name": "rloo"},
    "soft_min+0.1vr": {"algo.name": "pure", "algo.pure_min_form": "soft", "algo.pure_verifiable_coef": 0.1},
}
# policy name -> (vocab_size, seed) -> a randomly initialised model; the module docstring describes each
POLICIES = {
    "gru_attention": lambda vocab, seed: recurrent.tiny_gru(vocab, hidden_size=128, num_layers=2, seed=seed,
                                                            attention_heads=4),
    "llama": lambda vocab, seed: task_lib.tiny_model(vocab, hidden_size=96, num_layers=3, seed=seed),
    "gru": lambda vocab, seed: recurrent.tiny_gru(vocab, hidden_size=144, num_layers=2, seed=seed),
}
SETTINGS = {"A": {"r_triv": 1.0, "steps": 120}, "B": {"r_triv": 0.8, "steps": 150}}


@dataclass
class Plan:
    setting: str
    seeds: tuple[int, ...] = (0, 1)
    rl_steps: int = 0  # 0: the setting's
    eval_problems: int = 512
    warmup_max_steps: int = 3000
    warmup_check_every: int = 10  # the warm-up stops when sampled accuracy reaches 0.5, not far past it
    lr: float = 2e-4
    policy: str = "gru_attention"  # POLICIES
    smoke: bool = False

    @classmethod
    def smoke_plan(cls, setting: str) -> "Plan":
        return cls(setting, seeds=(0,), rl_steps=3, eval_problems=32, warmup_max_steps=20, smoke=True)


def accuracy(model, tokenizer, task, rows, greedy=False, max_new_tokens=40, seed=0) -> dict:
    """Sampled (temperature 1) or greedy accuracy, with the response statistics, on rows."""
    texts, ended, _ = sample(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens, greedy, seed)
    return {"accuracy": float(np.mean([task.outcome_reward(r, t) for r, t in zip(rows, texts)])),
            **response_stats(task, rows, texts, ended)}


def response_stats(task, rows, texts, ended) -> dict:
    graded = [task.grade(r, t.split(task_lib.SEPARATOR)) for r, t in zip(rows, texts)]
    steps = [sum(k in ("progress", "restate", "error") for k, _ in g) for g in graded]
    scores = [[s for _, s in g] or [0.0] for g in graded]
    return {"steps_per_response": float(np.mean(steps)),
            "no_progress_steps": float(np.mean([sum(k == "restate" for k, _ in g) for g in graded])),
            "cut_at_limit": float(1 - ended.float().mean()),
            "prm_sum": float(np.mean([sum(s) for s in scores])),
            "prm_min": float(np.mean([min(s) for s in scores]))}


def warm_up(task, seed: int, out: Path, plan: Plan, evaluation: list[dict]) -> tuple[Path, dict, list[str]]:
    """Supervised warm-up on correct solutions until sampled accuracy reaches 0.5; the
    model and tokenizer are saved to ``out`` (a Hugging Face folder the RL runs load).
    Returns it, its sampled and greedy accuracy on ``evaluation`` and the log lines."""
    tokenizer = task.tokenizer()
    model = POLICIES[plan.policy](len(tokenizer), seed)
    check = task.problems(seed + 1000, 0, 256 if not plan.smoke else 16)
    lines = []

    def done(step, loss):
        acc = accuracy(model, tokenizer, task, check, seed=step)["accuracy"]
        lines.append(f"  warm-up seed {seed} step {step}: loss {loss:.3f}, sampled accuracy {acc:.3f}")
        return acc >= 0.5

    warm_up_steps(model, tokenizer, task, random.Random(f"warmup:{seed}"), 64, 1e-3, plan.warmup_max_steps,
                  plan.warmup_check_every, done)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    start = {"sampled": accuracy(model, tokenizer, task, evaluation, seed=1),
             "greedy": accuracy(model, tokenizer, task, evaluation, greedy=True)}
    return out, start, lines


def train_variant(task, name: str, seed: int, warm: Path, out: Path, plan: Plan, steps: int,
                  evaluation: list[dict]) -> tuple[list[dict], dict]:
    """One variant's RL run from the seed's warm model: its per-step curve and its end
    accuracy (sampled and greedy) on ``evaluation``."""
    from transformers import AutoModelForCausalLM

    from fastrl.trainer.config import TrainConfig
    from fastrl.trainer.train import train

    def on_step(trainer, metrics, batch):
        return response_stats(task, batch.rows, batch.texts, batch.ended.cpu())

    process = {"process": "task"} if VARIANTS[name]["algo.name"] == "pure" else {}  # (only pure reads it)
    values = {"model": {"path": str(warm)}, "data": {"prompts_per_step": 16},
              "rollout": {"group_size": 8, "max_new_tokens": 40, "temperature": 1.0},
              "reward": process, "optim": {"lr": plan.lr, "max_grad_norm": 1.0},
              "run": {"steps": steps, "seed": seed, "output_dir": str(out), "progress": False, "checkpoint_every": 0}}
    config = TrainConfig.from_dict(values, [f"{k}={json.dumps(v)}" for k, v in VARIANTS[name].items()])
    result = train(config, overwrite=True, task=task, on_step=on_step)
    final, tokenizer = AutoModelForCausalLM.from_pretrained(result.final_model), task.tokenizer()
    end = {"sampled": accuracy(final, tokenizer, task, evaluation, seed=2),
           "greedy": accuracy(final, tokenizer, task, evaluation, greedy=True)}
    curve = [{k: m[k] for k in ("step", "accuracy", "steps_per_response", "no_progress_steps",
                                 "cut_at_limit", "prm_sum", "prm_min")} for m in result.metrics]
    return curve, end


OUTPUTS = (r"summary\.json", r"pure_[AB]\.png", r"seed\d+")  # the names run() writes in output_dir


def run(setting: str, output_dir: str | Path, plan: Plan | None = None, log=print) -> dict:
    """Every variant on every seed, in worker processes (one per core); writes
    summary.json and PNGs under output_dir and returns the summary (criteria included)."""
    plan = plan or Plan(setting)
    if plan.policy not in POLICIES:
        raise ValueError(f"plan.policy must be one of {', '.join(POLICIES)}, got {plan.policy!r}")
    check_seeds(plan.seeds)
    spec = SETTINGS[setting]
    steps = plan.rl_steps or spec["steps"]
    task = ArithTask(r_triv=spec["r_triv"])
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    evaluation = task.problems(12345, 0, plan.eval_problems)
    summary = {"setting": setting, "r_triv": spec["r_triv"], "rl_steps": steps, "lr": plan.lr, "policy": plan.policy,
               "seeds": list(plan.seeds), "smoke": plan.smoke, "runs": {}}
    started = time.perf_counter()
    start, runs = {}, {}
    with Workers() as workers:  # a seed's runs start as soon as its warm-up is done
        for seed in plan.seeds:
            workers.submit(warm_up, task, seed, out / f"seed{seed}" / "warm", plan, evaluation)
        for fn, args, result in workers.finished():
            if fn is warm_up:
                seed, (warm, start[seed], lines) = args[1], result
                for line in lines:
                    log(line)
                for name in VARIANTS:
                    workers.submit(train_variant, task, name, seed, warm, out / f"seed{seed}" / name, plan, steps,
                                   evaluation)
                continue
            (_, name, seed, *_), (curve, end) = args, result
            runs[name, seed] = {"variant": name, "seed": seed, "start": start[seed], "end": end, "curve": curve}
            log(f"  {name:<15} seed {seed}: sampled accuracy {start[seed]['sampled']['accuracy']:.3f} -> "
                f"{end['sampled']['accuracy']:.3f}, greedy {start[seed]['greedy']['accuracy']:.3f} -> "
                f"{end['greedy']['accuracy']:.3f}, steps/response {end['sampled']['steps_per_response']:.1f}")
    summary["runs"] = {f"{name}/seed{seed}": runs[name, seed] for seed in plan.seeds for name in VARIANTS}
    summary["seconds"] = time.perf_counter() - started
    summary["criteria"] = criteria(summary)
    summary["plots"] = [path.name for path in plot(summary, out)]
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def criteria(summary: dict) -> list[dict]:
    """The issue's criteria, each with what was measured and whether it held."""
    runs = summary["runs"]
    seeds = summary["seeds"]
    rows = []

    def end(name, seed, key="accuracy"):
        return runs[f"{name}/seed{seed}"]["end"]["sampled"][key]

    def start(name, seed):
        return runs[f"{name}/seed{seed}"]["start"]["sampled"]["accuracy"]

    if summary["setting"] == "A":
        for seed in seeds:
            curve = runs[f"sum/seed{seed}"]["curve"]
            acc = smoothed([c["accuracy"] for c in curve])
            by_100 = min(acc[:100]) if acc else float("nan")
            spr = curve[min(99, len(curve) - 1)]["steps_per_response"] if curve else float("nan")
            rows.append({"criterion": f"sum-form accuracy < 0.1 by step 100 with >= 10 steps/response (seed {seed})",
                         "measured": f"lowest smoothed accuracy {by_100:.3f}, {spr:.1f} steps/response at step "
                                     f"{min(100, len(curve))}",
                         "held": bool(by_100 < 0.1 and spr >= 10)})
            for name in ("soft_min", "strict_min"):
                s, e, vr = start(name, seed), end(name, seed), end("verifiable", seed)
                spr = end(name, seed, "steps_per_response")
                rows.append({"criterion": f"{name}: end >= start + 0.1, within 0.05 of verifiable, <= 6 "
                                          f"steps/response (seed {seed})",
                             "measured": f"{s:.3f} -> {e:.3f} (verifiable {vr:.3f}), {spr:.1f} steps/response",
                             "held": bool(e >= s + 0.1 and abs(e - vr) <= 0.05 and spr <= 6)})
    else:
        for seed in seeds:
            e = end("strict_min", seed)
            rows.append({"criterion": f"strict_min ends >= 0.7 (seed {seed})", "measured": f"{e:.3f}",
                         "held": bool(e >= 0.7)})
            rows.append({"criterion": f"soft_min, reported as measured (seed {seed})",
                         "measured": f"{start('soft_min', seed):.3f} -> {end('soft_min', seed):.3f}", "held": None})
    return rows


def plot(summary: dict, out: Path) -> list[Path]:
    """The PNGs written (none without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return []
    keys = ("accuracy", "steps_per_response", "no_progress_steps", "cut_at_limit", "prm_sum", "prm_min")
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    colors = dict(zip(VARIANTS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, key in zip(axes.flat, keys):
        for run_name, run in summary["runs"].items():
            xs = [c["step"] for c in run["curve"]]
            ax.plot(xs, smoothed([c[key] for c in run["curve"]]), color=colors[run["variant"]],
                    ls="-" if run["seed"] == summary["seeds"][0] else "--", lw=1.2,
                    label=run["variant"] if run["seed"] == summary["seeds"][0] else None)
        ax.set_title(key + " (10-step mean)", fontsize=9)
        ax.set_xlabel("RL step", fontsize=8)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"PURE toy experiment, setting {summary['setting']} (r_triv = {summary['r_triv']}); "
                 "solid/dashed: seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path := out / f"pure_{summary['setting']}.png", dpi=100)
    plt.close(fig)
    return [path]


def report(summary: dict) -> str:
    lines = [f"PURE experiment, setting {summary['setting']} (r_triv {summary['r_triv']}, {summary['rl_steps']} RL "
             f"steps, lr {summary['lr']:g}, {summary.get('policy', 'llama')} policy, seeds {summary['seeds']}"
             f"{', SMOKE' if summary['smoke'] else ''}): "
             f"{summary['seconds']:.0f} s", "",
             f"{'variant':<16}{'seed':>5}  {'sampled start -> end':>22}  {'greedy start -> end':>21}  "
             f"{'steps/resp':>10}  {'cut':>5}"]
    for run in summary["runs"].values():
        s, e = run["start"], run["end"]
        lines.append(f"{run['variant']:<16}{run['seed']:>5}  {s['sampled']['accuracy']:>10.3f} -> "
                     f"{e['sampled']['accuracy']:<8.3f}  {s['greedy']['accuracy']:>9.3f} -> "
                     f"{e['greedy']['accuracy']:<8.3f}  {e['sampled']['steps_per_response']:>10.1f}  "
                     f"{e['sampled']['cut_at_limit']:>5.2f}")
    return "\n".join(lines + [""] + verdicts(summary["criteria"]))
