"""The PURE experiment's task and process reward, and its smoke run through the CLI."""
import json
import random

import pytest

pytest.importorskip("transformers")

from fastrl.cli import main  # noqa: E402
from fastrl.experiments import pure  # noqa: E402
from fastrl.experiments.common import verdicts  # noqa: E402
from fastrl.experiments.pure import ArithTask, Plan, run, solve  # noqa: E402

ROW = {"prompt": "3+5-2+9", "digits": [3, 5, 2, 9], "ops": ["+", "-", "+"], "answer": "5"}


def test_solve_is_left_to_right_mod_10():
    assert solve([3, 5, 2, 9], ["+", "-", "+"]) == [8, 6, 5]
    assert solve([0, 7], ["-"]) == [3]


@pytest.mark.parametrize("steps, expected", [
    (["3+5=8", "8-2=6", "6+9=5", "A5"], [1, 1, 1, 1]),
    (["3+5=8", "=8", "=8", "8-2=6", "6+9=5", "A5"], [1, 0.8, 0.8, 1, 1, 1]),  # restatements: r_triv
    (["3+5=9", "9-2=7"], [-1, -1]),  # an arithmetic error; the next step is off the true path
    (["3+5=8", "A8"], [1, -1]),  # a premature answer
    (["3+5=8", "8-2=6", "6+9=5", "A4"], [1, 1, 1, -1]),  # a wrong answer
    (["3+5=8", "=7"], [1, -1]),  # a false restatement
    (["3+5=8", "8-2=6", "6+"], [1, 1, 0]),  # cut by the length limit: not penalised
    (["3+5=8", "8*2"], [1, -1]),  # malformed
    (["3+5=8", "8-2=6"], [1, 1]),  # a missing answer costs nothing
    (["3+5=8", "8-2=6", "6+9=5", "A5", "A5", "=5", "A5"], [1, 1, 1, 1, 0.8, 0.8, 0.8]),  # the answer again: r_triv
    (["3+5=8", "8-2=6", "6+9=5", "A5", "A4"], [1, 1, 1, 1, -1]),
])
def test_process_reward(steps, expected):
    assert ArithTask(r_triv=0.8).step_scores(ROW, steps) == expected


def test_outcome_reward_reads_the_final_answer():
    task = ArithTask()
    assert task.outcome_reward(ROW, "3+5=8\n\n8-2=6\n\n6+9=5\n\nA5") == 1.0
    assert task.outcome_reward(ROW, "A5\n\n3+5=8") == 0.0
    assert task.outcome_reward(ROW, "3+5=8\n\n8-2=6\n\n6+9=5\n\nA6") == 0.0


def test_warm_up_solutions_are_correct_and_score_well():
    task, rng = ArithTask(r_triv=0.8), random.Random(0)
    for row in task.problems(0, 0, 50):
        text = task.solution(row, rng)
        assert task.outcome_reward(row, text) == 1.0
        assert all(s in (1.0, 0.8) for s in task.step_scores(row, text.split("\n\n")))
    assert all(len(task.tokenizer().encode(task.solution(r, rng))) < 40 for r in task.problems(1, 0, 50))


@pytest.mark.parametrize("setting,lr,policy", [("A", ["--lr", "3e-4"], "llama"), ("B", [], "gru"),
                                               ("A", [], None)])
def test_smoke_run(tmp_path, capsys, setting, lr, policy):
    assert main(["experiment", "pure", "--setting", setting, "--smoke", "--output-dir", str(tmp_path), *lr,
                 *(["--policy", policy] if policy else [])]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["runs"]) == 5 and summary["smoke"]
    assert summary["lr"] == (3e-4 if lr else 2e-4) and summary["policy"] == (policy or "gru_attention")
    warm = json.loads((tmp_path / "seed0" / "warm" / "config.json").read_text())
    assert warm["model_type"] == {"llama": "llama", "gru": "fastrl_gru", None: "fastrl_gru"}[policy]
    assert warm.get("attention_heads") == {"llama": None, "gru": 0, None: 4}[policy]
    assert all(len(run["curve"]) == 3 for run in summary["runs"].values())
    assert (tmp_path / f"pure_{setting}.png").exists()
    assert summary["criteria"] == pure.criteria(summary)
    assert all(line in printed for line in verdicts(summary["criteria"]))


def _run(curve_acc, start, end, steps, spr_curve=3.0):
    curve = [{"accuracy": a, "steps_per_response": spr_curve} for a in curve_acc]
    return {"curve": curve, "start": {"sampled": {"accuracy": start}},
            "end": {"sampled": {"accuracy": end, "steps_per_response": steps}}}


@pytest.mark.parametrize("change, held", [
    ({}, [True, True, True]),
    ({"sum": _run([0.5] * 100, 0.5, 0.5, 12, spr_curve=12)}, [False, True, True]),  # sum form never collapsed
    ({"sum": _run([0.05] * 100, 0.5, 0.05, 8, spr_curve=8)}, [False, True, True]),  # collapsed, but short answers
    ({"soft_min": _run([], 0.5, 0.59, 4)}, [True, False, True]),  # gained < 0.1
    ({"strict_min": _run([], 0.5, 0.7, 7)}, [True, True, False]),  # too many steps per response
    ({"verifiable": _run([], 0.5, 0.9, 4)}, [True, False, False]),  # both 0.1 below verifiable
])
def test_setting_a_criteria(change, held):
    runs = {"sum": _run([0.5] * 20 + [0.02] * 80, 0.5, 0.0, 12, spr_curve=12), "soft_min": _run([], 0.5, 0.8, 4),
            "strict_min": _run([], 0.5, 0.78, 6), "verifiable": _run([], 0.5, 0.82, 4), **change}
    rows = pure.criteria({"setting": "A", "seeds": [3], "runs": {f"{k}/seed3": v for k, v in runs.items()}})
    assert [r["held"] for r in rows] == held
    if not change:
        assert [r["measured"] for r in rows] == [
            "lowest smoothed accuracy 0.020, 12.0 steps/response at step 100",
            "0.500 -> 0.800 (verifiable 0.820), 4.0 steps/response", "0.500 -> 0.780 (verifiable 0.820), 6.0 steps/response"]


def test_setting_b_criteria():
    runs = {f"{name}/seed{seed}": _run([], 0.4, end, 4) for seed, end in ((0, 0.7), (1, 0.69))
            for name in ("strict_min", "soft_min")}
    rows = pure.criteria({"setting": "B", "seeds": [0, 1], "runs": runs})
    assert [r["held"] for r in rows] == [True, None, False, None]
    assert rows[1]["measured"] == "0.400 -> 0.700"


def test_unknown_policy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="plan.policy must be one of gru_attention, llama, gru"):
        run("A", tmp_path, Plan("A", policy="lstm"))
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize("args,says", [(["pure", "--lr", "0"], "must be a finite number > 0"),
                                       (["pure", "--lr", "nan"], "must be a finite number > 0, got nan"),
                                       (["pure", "--lr", "inf"], "got inf"),
                                       (["rover", "--lr", "1e-3"], "pure only"),
                                       (["riskpo", "--policy", "gru"], "pure only")])
def test_bad_options_are_refused(tmp_path, capsys, args, says):
    assert main(["experiment", *args, "--smoke", "--output-dir", str(tmp_path)]) == 2
    assert says in capsys.readouterr().err and not (tmp_path / "summary.json").exists()


def test_a_file_as_output_dir_is_refused(tmp_path, capsys):
    (tmp_path / "afile").touch()
    assert main(["experiment", "pure", "--smoke", "--output-dir", str(tmp_path / "afile")]) == 2
    assert "--output-dir" in (err := capsys.readouterr().err) and "is a file" in err, err


def test_a_seed_twice_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(pure, "Workers", None)  # refused before any job starts
    with pytest.raises(ValueError, match=r"seeds must differ, got \[0, 0\]"):
        run("A", tmp_path, Plan("A", seeds=(0, 0)))
    assert not (tmp_path / "summary.json").exists()


def test_an_earlier_run_is_refused_then_replaced(tmp_path, capsys, monkeypatch):
    for name in ("summary.json", "pure_B.png", "seed7/warm/config.json", "notes.txt", "seed_notes.txt",
                 "pure_B.png.bak"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    argv = ["experiment", "pure", "--smoke", "--output-dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} holds an earlier run (pure_B.png, seed7/, summary.json): pass --overwrite" in err, err
    assert (tmp_path / "seed7" / "warm" / "config.json").exists()

    def fake_run(setting, out, plan):  # what run() finds: the earlier run removed, the user's file kept
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "pure_B.png.bak", "seed_notes.txt"]
        return {"plots": []}

    monkeypatch.setattr(pure, "run", fake_run)
    monkeypatch.setattr(pure, "report", lambda summary: "report")
    assert main([*argv, "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert f"replacing the earlier run in {tmp_path}: pure_B.png, seed7/, summary.json" in out
    assert "plots: none (matplotlib is not installed)" in out


@pytest.mark.parametrize("stop, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stop_signal_stops_every_worker_and_says_there_is_no_resume(tmp_path, stop, status):
    """A terminal's Ctrl-C, or a scheduler's SIGTERM to the job's processes (before, it killed
    the parent at once, leaving its workers running)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "fastrl.cli", "experiment", "pure", "--smoke", "--output-dir", str(tmp_path)]
    # a terminal's Ctrl-C reaches the whole foreground process group, workers included
    proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = ""
    for line in proc.stdout:  # a worker's trainer has started
        seen += line
        if line.startswith("fastrl train:"):
            break
    os.killpg(proc.pid, signal.Signals[stop])
    rest, err = proc.communicate(timeout=60)
    printed = seen + rest + err
    assert proc.returncode == status, printed
    assert "an experiment does not resume: run it again with --overwrite" in err, printed
    assert "--resume" not in printed and "Traceback" not in printed, printed
    for _ in range(50):  # no worker outlives the command
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("a process of the experiment is still running")
