"""The countdown-4 task of the RiskPO/ROVER experiment and its smoke runs through the CLI."""
import json

import pytest

pytest.importorskip("transformers")

from fastrl.cli import main  # noqa: E402
from fastrl.experiments import countdown  # noqa: E402
from fastrl.experiments.countdown import CountdownTask, all_problems, canonical  # noqa: E402


def test_problem_set():
    problems = all_problems()
    assert len(problems) == 3729  # every solvable (4 distinct numbers from 1-9, target 0-99) pair
    for p in problems[::97]:
        assert all(eval(s) == p["target"] for s in p["solutions"])
        assert all(sorted(int(c) for c in s[::2]) == p["numbers"] for s in p["solutions"])
    task = CountdownTask()
    assert len(task.test) == 300 and len(task.train) == 3429
    assert not {t["prompt"] for t in task.test} & {t["prompt"] for t in task.train}


def test_reward_and_form():
    task = CountdownTask()
    row = {"numbers": [3, 5, 7, 9], "target": 52}
    assert task.outcome_reward(row, "9*7-5-3") == 0.0  # 55: well-formed, wrong
    assert task.outcome_reward(row, "7*9-3-5") == 0.0
    assert task.outcome_reward(row, "9*5+7") == 0.0  # a number missing
    row = {"numbers": [3, 5, 7, 9], "target": 55}
    assert task.outcome_reward(row, "9*7-5-3") == 1.0
    assert task.outcome_reward(row, "9*7-5-3+") == 0.0
    assert task.well_formed(row, "3+5+7+9") and not task.well_formed(row, "3+3+7+9")
    assert not task.well_formed(row, "3+5+7+9\n") and task.outcome_reward({**row, "target": 24}, "3+5+7+9\n") == 0.0


def test_canonical_merges_rearrangements_only():
    assert canonical("9*7-5-3") == canonical("7*9-3-5") == canonical("-5+9*7-3")
    assert canonical("9*7-5-3") != canonical("9*7-3*5")
    assert canonical("3*5+7+9") != canonical("3+5*7+9")


def test_evaluate_counts_on_fixed_samples(monkeypatch):
    """pass@k, distinct answers and structures, well-formedness and entropy of known texts."""
    import torch

    rows = [{"prompt": "a", "numbers": [3, 5, 7, 9], "target": 55}, {"prompt": "b", "numbers": [3, 5, 7, 9], "target": 24}]
    texts = ["9*7-5-3", "7*9-3-5", "5*9+7+3", "3+5+7+9",  # 3 right: 3 distinct, 2 structures; 1 wrong
             "3+5+7+9", "3+3+7+9", "9*7-5-3", "9+7+5+3"]  # 2 right: 2 distinct, 1 structure; 1 ill-formed
    surprise = torch.tensor([[1.0, 2.0]] * 4 + [[3.0, 4.0]] * 4)  # (surprisal sum, tokens) per text

    def fixed(model, tokenizer, prompts, max_new_tokens, seed):
        assert prompts == ["a"] * 4 + ["b"] * 4 and seed == 7
        return texts, None, surprise

    monkeypatch.setattr(countdown, "sample", fixed)
    got = countdown.evaluate(None, None, CountdownTask(), rows, 4, 7)
    assert got["pass@k"] == pytest.approx({1: (3 / 4 + 2 / 4) / 2, 2: (1 + 1 - 1 / 6) / 2, 3: 1.0, 4: 1.0})
    assert got["distinct_correct"] == 2.5 and got["distinct_structures"] == 1.5
    assert got["well_formed"] == 7 / 8 and got["entropy"] == pytest.approx(16 / 24)


@pytest.mark.parametrize("name, setting", [("riskpo", "A"), ("rover", "A"), ("rover", "D")])
def test_smoke_run(tmp_path, capsys, name, setting):
    out = tmp_path / f"{name}_{setting}"
    assert main(["experiment", name, "--setting", setting, "--smoke", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    loaded = countdown.load_summary(out / "summary.json")  # the committed results can be re-scored
    assert countdown.criteria(loaded) == summary["criteria"]
    methods = {"riskpo": 3, "rover": 2}[name]
    assert len(summary["runs"]) == methods
    assert (out / f"{name}_{setting}.png").exists()
    assert "sanity" in printed or setting == "D"
    top = max(loaded["runs"][next(iter(loaded["runs"]))]["end"]["pass@k"])  # the smoke plan's samples
    assert top < 32 and f"pass@{top} " in printed and "pass@32" not in printed
    assert main(["experiment", name, "--setting", "B", "--smoke", "--output-dir", str(out)]) == 2



def test_commands_sharing_a_warm_folder_make_the_model_once(tmp_path, monkeypatch):
    """Two commands warming up the same seed at once: one trains while the other waits and
    reuses its model (both trained and wrote the same files together); a warm-up stopped
    while saving leaves no marker, so a later command does not reuse half-written weights."""
    import threading
    import time

    calls = []

    def slow_warm_up(*args, **kwargs):
        calls.append(1)
        time.sleep(0.5)

    monkeypatch.setattr(countdown, "warm_up", slow_warm_up)
    monkeypatch.setattr(countdown, "evaluate", lambda *args: {})
    task, plan, out = CountdownTask(), countdown.Plan.smoke_plan(), tmp_path / "seed0"
    lines = []
    threads = [threading.Thread(target=lambda: lines.append(countdown.warm_model(task, 0, out, plan, [])[2]))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sum("reused" in line for line in lines) == 1

    other = countdown.Plan.smoke_plan()
    other.warmup_steps += 1

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(countdown.task_lib, "tiny_model", lambda *a, **k: type("M", (), {"save_pretrained": fail})())
    with pytest.raises(KeyboardInterrupt):
        countdown.warm_model(task, 0, out, other, [])
    assert not (out / "warmup.json").exists()


def test_overwrite_removes_only_this_commands_outputs(tmp_path):
    from fastrl.experiments.common import previous_run
    from fastrl.experiments.countdown import outputs

    for name in ("summary.json", "rover_D.png", "riskpo_A.png", "rover_D.png.bak"):
        (tmp_path / name).write_text("")
    for name in ("A", "D", "Data"):
        (tmp_path / name).mkdir()
    assert [p.name for p in previous_run(tmp_path, outputs("rover", "D"))] == ["D", "rover_D.png", "summary.json"]
    # the summary there is riskpo A's: replacing it takes that run's plot and folder too, not only the summary
    from fastrl.cli import summarised_outputs

    (tmp_path / "summary.json").write_text(json.dumps({"experiment": "riskpo", "settings": {"A": {}}}))
    assert [p.name for p in previous_run(tmp_path, outputs("rover", "D") + summarised_outputs(tmp_path))] == \
        ["A", "D", "riskpo_A.png", "rover_D.png", "summary.json"]
    (tmp_path / "summary.json").write_text(json.dumps({"setting": "B", "seeds": [0]}))  # pure's
    assert "summary.json" in [p.name for p in previous_run(tmp_path, summarised_outputs(tmp_path))]
