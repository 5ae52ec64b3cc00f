import importlib.util
import json
import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from fastrl.cli import _last_boxed, main
from fastrl.metrics import majority, pass_at_k

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "eval_samples.jsonl"
# written by hand from the file: correct answers and answer+CoT-correct samples per problem;
# the completions box either the gold verbatim or a plainly wrong value, so any verifier agrees
C = {"gsm-0017": 6, "math-0203": 3, "aime-1999-07": 1, "amc-0311": 0}
D = {"gsm-0017": 5, "math-0203": 2, "aime-1999-07": 0, "amc-0311": 0}


def parse_table(out):
    rows = re.findall(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+|n/a)\s*$", out, re.M)
    return {int(k): (float(p), None if q == "n/a" else float(q)) for k, p, q in rows}


def test_example_file_counts():
    rows = [json.loads(line) for line in SAMPLES.read_text().splitlines() if line.strip()]
    groups = defaultdict(list)
    for r in rows:
        groups[r["problem_id"]].append(r)
    assert set(groups) == set(C) and all(len(g) == 8 for g in groups.values())
    for pid, g in groups.items():
        ok = [_last_boxed(r["completion"]) == r["gold"] for r in g]
        cot = [r["cot_correct"] if isinstance(r["cot_correct"], bool) else majority(r["cot_correct"])
               for r in g]
        assert sum(ok) == C[pid] and sum(a and b for a, b in zip(ok, cot)) == D[pid]


def test_eval_prints_pass_at_k_table(capsys):
    assert main(["eval", str(SAMPLES)]) == 0
    out = capsys.readouterr().out
    assert "verifier" in out.splitlines()[0]
    table = parse_table(out)
    assert sorted(table) == [1, 2, 4, 8]
    n = np.full(4, 8)
    c, d = np.array(list(C.values())), np.array(list(D.values()))
    for k, (p, q) in table.items():
        assert p == pytest.approx(pass_at_k(n, c, k).mean(), abs=6e-5)
        assert q == pytest.approx(pass_at_k(n, d, k).mean(), abs=6e-5)


def test_eval_without_cot_verdicts(tmp_path, capsys):
    f = tmp_path / "s.jsonl"
    f.write_text("\n".join(json.dumps({"problem_id": i // 3, "gold": "7", "completion": f"\\boxed{{{7 if i % 3 else 8}}}"})
                           for i in range(6)) + "\n")
    assert main(["eval", str(f)]) == 0
    table = parse_table(capsys.readouterr().out)
    assert sorted(table) == [1, 2, 3]  # powers of two up to n, then n itself
    assert table[1] == (pytest.approx(2 / 3, abs=6e-5), None)
    assert table[3][0] == 1.0


def test_eval_judge_words_and_gsm8k_golds(tmp_path, capsys):
    rows = [("Yes.", "\\boxed{72}"), (["**no**", "yes", "YES"], "The answer is 72."), ("No", "\\boxed{72}"),
            (True, "\\boxed{71}")]
    f = tmp_path / "s.jsonl"
    f.write_text("".join(json.dumps({"problem_id": "p", "gold": "She sold 72 clips.\n#### 72", "completion": c,
                                     "cot_correct": v}) + "\n" for v, c in rows))
    assert main(["eval", str(f)]) == 0
    assert parse_table(capsys.readouterr().out)[1] == (0.75, 0.5)


def test_eval_number_golds_are_scored_as_numbers(tmp_path, capsys):
    # numbers, not strings: each is checked and scored as the verifier reads a number gold
    f = tmp_path / "s.jsonl"
    f.write_text("".join(json.dumps({"problem_id": pid, "gold": gold, "completion": c}) + "\n" for pid, gold, c in
                         [(1, 1e16, "\\boxed{10000000000000000}"), (2, 0.5, "\\boxed{\\frac12}"), (3, 7, "\\boxed{7}")]))
    assert main(["eval", str(f)]) == 0
    assert parse_table(capsys.readouterr().out)[1] == (1.0, None)


def test_eval_plot(tmp_path, capsys):
    if importlib.util.find_spec("matplotlib") is None:
        assert main(["eval", str(SAMPLES), "--plot", str(tmp_path / "p.png")]) == 0
        assert "matplotlib is not installed" in capsys.readouterr().out
        pytest.skip("matplotlib not installed")
    out = tmp_path / "p.png"
    assert main(["eval", str(SAMPLES), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), ValueError("bad metadata")])
def test_eval_plot_that_cannot_be_written_after_the_work_is_one_line_exit_1(tmp_path, monkeypatch, capsys, error):
    """(exit 2, the usage error's, and a ValueError's message was an AttributeError traceback)"""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(Figure, "savefig", failing)
    assert main(["eval", str(SAMPLES), "--plot", str(tmp_path / "p.png")]) == 1
    assert capsys.readouterr().err.strip() == f"fastrl eval: cannot write {tmp_path / 'p.png'}: " + \
        ("No space left on device" if isinstance(error, OSError) else "bad metadata")


def test_eval_fallback_verifier_is_announced(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "fastrl.rewards.math", None)  # as if math.py were absent
    assert main(["eval", str(SAMPLES)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("FALLBACK verifier")
    assert parse_table(out)[1][0] == pytest.approx(10 / 32, abs=6e-5)
    assert _last_boxed("x \\boxed{1} then \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert _last_boxed("no box") is None


@pytest.mark.parametrize("content,message", [
    (None, "cannot read"),
    ('{"problem_id": 1, "gold": "3", "completion": "3"}\n{bad\n', ":2: not JSON"),
    ("[1, 2]\n", ":1: a row must be a JSON object, got list"),
    ('{"problem_id": 1, "gold": "3"}\n', ":1: missing field 'completion'"),
    ('{"problem_id": 1, "gold": "3", "completion": "3", "cot_correct": "maybe"}\n', ":1: cot_correct:"),
    ('{"problem_id": 1, "gold": "3", "completion": 3}\n', ":1: completion must be a string, got 3"),
    ('{"problem_id": 1, "gold": "3", "completion": null}\n', ":1: completion must be a string, got null"),
    ('{"problem_id": [1], "gold": "3", "completion": "3"}\n', ":1: problem_id must be a string or an integer"),
    ('{"problem_id": 1.0, "gold": "3", "completion": "3"}\n', ":1: problem_id must be a string or an integer"),
    ('{"problem_id": 1, "gold": null, "completion": "3"}\n', ":1: gold must be a string or an integer or a finite number"),
    ('{"problem_id": 1, "gold": NaN, "completion": "3"}\n', ":1: gold must be a string or an integer or a finite number"),
    ('{"problem_id": "p", "gold": "3", "completion": "3"}\n{"problem_id": "p", "gold": "4", "completion": "4"}\n',
     ':2: problem_id "p" has gold "4" here but "3" on line 1'),
    (b'{"problem_id": 1, "gold": "caf\xe9", "completion": "3"}\n', "not UTF-8 text"),
    ('{"problem_id": 1, "gold": "3", "completion": "3", "cot_correct": []}\n',
     ":1: cot_correct: an empty list of verdicts"),
    ('{"problem_id": 1, "gold": "3", "completion": "3"}\n{"problem_id": "1", "gold": "3", "completion": "3"}\n',
     ':2: problem_id "1" here but 1 on line 1'),
    # a key twice: json kept the last ("gold" 2, scored 1.0 against the box)
    ('{"problem_id": 1, "gold": "1", "gold": "2", "completion": "\\\\boxed{2}"}\n', ":1: key 'gold' given twice"),
])
def test_eval_bad_files_are_errors_not_tracebacks(tmp_path, capsys, content, message):
    path = tmp_path / "samples.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert main(["eval", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_eval_reads_a_file_with_a_byte_order_mark(tmp_path, capsys):
    """(refused: "Unexpected UTF-8 BOM"; editors on Windows write one)"""
    path = tmp_path / "samples.jsonl"
    path.write_text('{"problem_id": 1, "gold": "3", "completion": "\\\\boxed{3}"}\n', encoding="utf-8-sig")
    assert main(["eval", str(path)]) == 0
    assert parse_table(capsys.readouterr().out)[1] == (1.0, None)


@pytest.mark.parametrize("name,message", [("p.txt", "no image format 'txt'; one of "),
                                          ("p", "name the image format by its extension")])
def test_eval_plot_in_an_unknown_format_is_refused_before_scoring(tmp_path, capsys, name, message):
    pytest.importorskip("matplotlib")
    assert main(["eval", str(SAMPLES), "--plot", str(tmp_path / name)]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and not captured.out, captured  # (no table: refused first)
    assert not list(tmp_path.iterdir())


def test_eval_reads_json_lines_split_at_newlines_only(tmp_path, capsys):
    """U+2028, U+0085 and U+001E, written raw by json.dumps(ensure_ascii=False), are in a
    string; splitlines() broke the line there."""
    rows = [{"problem_id": "p", "gold": "7", "completion": f"line{c}two \\boxed{{7}}"} for c in "\u2028\x85\x1e"]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), encoding="utf-8")
    assert main(["eval", str(path)]) == 0
    assert "1 problems, 3 samples" in capsys.readouterr().out


def test_eval_plot_into_a_missing_folder_is_refused_before_scoring(tmp_path, capsys):
    assert main(["eval", str(SAMPLES), "--plot", str(tmp_path / "no" / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "--plot: no folder" in err, err


@pytest.mark.parametrize("argv,message", [
    (["experiment", "pure", "--seeds", "a,b"], "comma-separated integers >= 0, got 'a,b'"),
    (["experiment", "pure", "--seeds", "0,,1"], "got '0,,1'"),
    (["experiment", "rover", "--seeds", "0,1,0"], "each seed once, got '0,1,0'"),
])
def test_experiment_seeds_are_checked(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2 and message in capsys.readouterr().err


def test_experiment_seeds_do_not_go_with_smoke(capsys):
    assert main(["experiment", "rover", "--smoke", "--seeds", "5"]) == 2
    assert "--seeds does not go with --smoke" in capsys.readouterr().err


def earlier_pure_run(out):
    out.mkdir()
    (out / "summary.json").write_text('{"setting": "A"}')
    (out / "pure_A.png").write_text("earlier")
    (out / "seed0").mkdir()
    (out / "notes.txt").write_text("mine")


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_an_experiment_that_fails_while_overwriting_puts_the_earlier_run_back(tmp_path, monkeypatch, failure):
    """--overwrite removed the earlier run before the new one ran: Ctrl-C then lost both."""
    from fastrl.experiments import pure

    out = tmp_path / "x"
    earlier_pure_run(out)

    def stopped(setting, out, plan):
        (out / "seed0" / "new").mkdir(parents=True)
        (out / "seed1").mkdir()
        raise failure("stopped")

    monkeypatch.setattr(pure, "run", stopped)
    if failure is KeyboardInterrupt:
        assert main(["experiment", "pure", "--smoke", "--output-dir", str(out), "--overwrite"]) == 130
    else:
        with pytest.raises(RuntimeError):
            main(["experiment", "pure", "--smoke", "--output-dir", str(out), "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "pure_A.png", "seed0", "summary.json"]
    assert (out / "pure_A.png").read_text() == "earlier" and not any((out / "seed0").iterdir())


def test_an_experiment_that_succeeds_replaces_the_earlier_run(tmp_path, monkeypatch, capsys):
    from fastrl.experiments import pure

    out = tmp_path / "x"
    earlier_pure_run(out)

    def finished(setting, out, plan):
        (out / "seed1").mkdir()
        (out / "summary.json").write_text("{}")
        return {"plots": []}

    monkeypatch.setattr(pure, "run", finished)
    monkeypatch.setattr(pure, "report", lambda summary: "")
    assert main(["experiment", "pure", "--smoke", "--output-dir", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "seed1", "summary.json"]


def test_an_experiment_names_an_output_folder_it_cannot_write(tmp_path, monkeypatch, capsys):
    """A traceback (NotADirectoryError, PermissionError) before; a full disk mid-run likewise."""
    from fastrl.experiments import pure

    (tmp_path / "file").write_text("")
    assert main(["experiment", "pure", "--smoke", "--output-dir", str(tmp_path / "file" / "sub")]) == 2
    assert f"--output-dir '{tmp_path}/file/sub': cannot create or write in '{tmp_path}/file'" in capsys.readouterr().err

    def full(setting, out, plan):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pure, "run", full)
    assert main(["experiment", "pure", "--smoke", "--output-dir", str(tmp_path / "y")]) == 1
    assert capsys.readouterr().err.strip() == \
        f"fastrl experiment pure: No space left on device (writing in --output-dir {tmp_path}/y)"


def test_overwriting_an_experiment_in_the_current_folder_sets_the_earlier_run_aside_outside_it(tmp_path, monkeypatch):
    from fastrl.experiments import pure

    out = tmp_path / "x"
    earlier_pure_run(out)
    monkeypatch.chdir(out)
    seen = []

    def finished(setting, out, plan):
        seen.extend(sorted(p.name for p in out.iterdir()))
        return {"plots": []}

    monkeypatch.setattr(pure, "run", finished)
    monkeypatch.setattr(pure, "report", lambda summary: "")
    assert main(["experiment", "pure", "--smoke", "--output-dir", ".", "--overwrite"]) == 0
    assert seen == ["notes.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["x"]


@pytest.mark.parametrize("beside", ["read-only", "another file system"])
def test_an_earlier_run_waits_inside_the_folder_where_it_cannot_wait_beside_it(tmp_path, monkeypatch, capsys, beside):
    """(the output folder a mount point, its parent read-only: --overwrite failed with
    "Invalid cross-device link" and left an empty folder beside it)"""
    from pathlib import Path

    from fastrl.experiments import pure

    out = tmp_path / "x"
    earlier_pure_run(out)
    mkdir, stat = Path.mkdir, Path.stat

    def refusing_mkdir(self, *args, **kwargs):
        if self.name.startswith(".x.replaced") and beside == "read-only":
            raise PermissionError(13, "Permission denied", str(self))
        return mkdir(self, *args, **kwargs)

    def other_device(self, *args, **kwargs):
        result = stat(self, *args, **kwargs)
        if self.name.startswith(".x.replaced"):
            return os.stat_result((*result[:2], result.st_dev + 1, *result[3:]))
        return result

    monkeypatch.setattr(Path, "mkdir", refusing_mkdir)
    if beside == "another file system":
        monkeypatch.setattr(Path, "stat", other_device)
    seen = []

    def stopped(setting, out, plan):
        seen.extend(sorted(p.name for p in out.iterdir()))
        raise KeyboardInterrupt

    monkeypatch.setattr(pure, "run", stopped)
    assert main(["experiment", "pure", "--smoke", "--output-dir", str(out), "--overwrite"]) == 130
    assert seen == [f".replaced.{os.getpid()}", "notes.txt"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "pure_A.png", "seed0", "summary.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_an_earlier_run_left_aside_by_a_killed_process_is_named(tmp_path, monkeypatch, capsys):
    from fastrl.experiments import pure

    out = tmp_path / "x"
    out.mkdir()
    (tmp_path / ".x.replaced.123").mkdir()
    monkeypatch.setattr(pure, "run", lambda setting, out, plan: {"plots": []})
    monkeypatch.setattr(pure, "report", lambda summary: "")
    assert main(["experiment", "pure", "--smoke", "--output-dir", str(out)]) == 0
    assert f"note: {tmp_path / '.x.replaced.123'} holds an earlier run" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["pure", "rover", "riskpo"])
def test_experiment_seeds_reach_the_plan(tmp_path, monkeypatch, name):
    """--seeds replaces the experiment's default seeds (pure's plan, a countdown setting's)."""
    from fastrl.experiments import countdown, pure

    plans = []
    module = pure if name == "pure" else countdown
    monkeypatch.setattr(module, "run", lambda *args: plans.append(args[-1]) or {"plots": []})
    monkeypatch.setattr(module, "report", lambda summary: "")
    assert main(["experiment", name, "--seeds", "7,3", "--output-dir", str(tmp_path / "out")]) == 0
    (plan,) = plans
    assert (plan.seeds if name == "pure" else plan.settings["A"]["seeds"]) == (7, 3)
    if name != "pure":
        assert plan.settings["D"]["seeds"] == countdown.Plan().settings["D"]["seeds"]  # (another setting's kept)
    assert main(["experiment", name, "--output-dir", str(tmp_path / "default")]) == 0
    default = pure.Plan("A").seeds if name == "pure" else countdown.Plan().settings["A"]["seeds"]
    assert (plans[1].seeds if name == "pure" else plans[1].settings["A"]["seeds"]) == default


@pytest.mark.parametrize("argv,folder", [(["pure"], "pure_A"), (["pure", "--smoke"], "pure_A_smoke"),
                                         (["rover", "--setting", "D", "--smoke"], "rover_D_smoke")])
def test_the_default_experiment_folder_is_named_by_experiment_setting_and_smoke(tmp_path, monkeypatch, argv, folder):
    from fastrl.experiments import countdown, pure

    outs = []
    for module in (pure, countdown):
        monkeypatch.setattr(module, "run", lambda *args: outs.append(Path(args[-2])) or {"plots": []})
        monkeypatch.setattr(module, "report", lambda summary: "")
    monkeypatch.chdir(tmp_path)
    assert main(["experiment", *argv]) == 0
    assert outs == [Path("runs/experiments") / folder]


def test_an_earlier_run_left_inside_the_folder_by_a_killed_process_is_named(tmp_path, monkeypatch, capsys):
    """(where it could not wait beside the folder, replacing() set it aside inside it)"""
    from fastrl.experiments import pure

    out = tmp_path / "x"
    (out / ".replaced.123").mkdir(parents=True)
    monkeypatch.setattr(pure, "run", lambda setting, out, plan: {"plots": []})
    monkeypatch.setattr(pure, "report", lambda summary: "")
    assert main(["experiment", "pure", "--smoke", "--output-dir", str(out)]) == 0
    assert f"note: {out.resolve() / '.replaced.123'} holds an earlier run" in capsys.readouterr().err


@pytest.mark.parametrize("signum, status, said", [(None, 130, "interrupted"), ("SIGTERM", 143, "SIGTERM received"),
                                                  ("SIGINT", 130, "interrupted")])
def test_a_stop_signal_ends_any_command_with_its_status(monkeypatch, capsys, signum, status, said):
    """While a command runs SIGTERM raises Stopped (a KeyboardInterrupt), so each command's
    Ctrl-C clean-up runs for it too (before, SIGTERM killed the process where it stood); the
    exit status is the shell's 128 + the signal's number, and the handler is put back."""
    import signal

    import fastrl.cli as cli
    from fastrl import stopping

    def command(argv):
        assert signal.getsignal(signal.SIGTERM) is stopping.raise_stopped
        if signum == "SIGTERM":
            os.kill(os.getpid(), signal.SIGTERM)  # (through the handler the CLI installed)
        raise KeyboardInterrupt if signum is None else stopping.Stopped(signal.Signals[signum])

    monkeypatch.setattr(cli, "_main", command)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert main(["info"]) == status
    assert capsys.readouterr().err.strip() == said
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
