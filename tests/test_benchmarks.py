"""The benchmark harness: a run cut short, a run without a comparison library and a folder
named for the results leave the committed results (bench_<family>.json) as they were; a
baseline is checked against the fastrl row it is compared with."""
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import harness  # noqa: E402

from fastrl import cli  # noqa: E402

COMMITTED = [{"committed": True}]


@pytest.fixture
def results(monkeypatch, tmp_path):
    """RESULTS under tmp_path, and a Python caller's run counted as full (heap trimming off, as
    after the harness's re-run): the folder where its bench_<family>.json goes."""
    for k, v in harness.NO_TRIM.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results")
    return tmp_path / "results" / harness.device_slug(torch.device("cpu"))


def written(folder: Path) -> dict:
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


# bench_scans.py run as a plain script (no options: a full run), sent a signal in its third case
CUT_SHORT = """
import os, runpy, signal, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
import harness
harness.RESULTS, stop, timed, calls = Path(sys.argv.pop(1)), signal.Signals[sys.argv.pop(1)], harness.time_ms, []
def time_ms(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), stop)
    return timed(*args, **kwargs)
harness.time_ms = time_ms
sys.argv[0] = "benchmarks/bench_scans.py"
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("stop, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stopped_full_run_keeps_the_committed_results(tmp_path, stop, status):
    """Rows were written to bench_scans.json after each case: Ctrl-C left 2 rows where 126 had
    been, nothing marking them incomplete, and the plain script ended in a traceback (exit 1).
    A scheduler's SIGTERM killed it outright, leaving no word of where its rows were."""
    folder = tmp_path / harness.device_slug(torch.device("cpu"))
    folder.mkdir()
    (folder / "bench_scans.json").write_text(json.dumps(COMMITTED))
    env = {**os.environ, **harness.NO_TRIM}  # (no re-run for the malloc settings: quicker)
    done = subprocess.run([sys.executable, "-c", CUT_SHORT, str(tmp_path), stop], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == status and "Traceback" not in done.stderr, done.stdout[-2000:] + done.stderr[-3000:]
    assert "once every case has run" in done.stdout  # (it said "replacing ..." and did at once)
    files = written(folder)
    assert files["bench_scans.json"] == COMMITTED and len(files["bench_scans.running.json"]) == 2, files
    line = next(s for s in done.stderr.splitlines() if s.startswith("interrupted"))
    assert "interrupted after 2 of " in line and "bench_scans.running.json" in line and "left as it was" in line


def test_fastrl_bench_cut_short_keeps_an_out_file_and_a_finished_run_replaces_it(tmp_path, monkeypatch, capsys):
    out = tmp_path / "scans.json"
    out.write_text(json.dumps(COMMITTED))
    timed, calls = harness.time_ms, []

    def interrupting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return timed(*args, **kwargs)

    monkeypatch.setattr(harness, "time_ms", interrupting)
    argv = ["bench", "scans", "--quick", "--only", "^gae/fastrl", "--repeat", "1", "--warmup", "0",
            "--malloc-default", "--out", str(out)]
    assert cli.main(argv) == 130
    assert f"their rows are in {tmp_path / 'scans.running.json'}" in capsys.readouterr().err
    assert json.loads(out.read_text()) == COMMITTED
    assert len(json.loads((tmp_path / "scans.running.json").read_text())) == 1
    monkeypatch.undo()
    assert cli.main(argv) == 0  # a finished run: out replaced at once, the .running file gone
    assert list(written(tmp_path)) == ["scans.json"] and len(json.loads(out.read_text())) == 4


def test_a_run_without_verl_keeps_the_results_with_verls_rows(results, monkeypatch, capsys):
    """Without verl bench_advantages replaced bench_advantages.json, verl's rows lost."""
    import bench_advantages

    for name, value in (("BATCHES", [16]), ("GROUP_SIZES", [4]), ("LENGTHS", [8])):  # a quick full run
        monkeypatch.setattr(bench_advantages, name, value)
    assert bench_advantages.main([]) and list(written(results)) == ["bench_advantages.json"]
    committed = written(results)["bench_advantages.json"]
    assert any(r["provider"].startswith("verl") for r in committed)
    monkeypatch.setattr(bench_advantages, "core_algos", None)
    rows = bench_advantages.main([])
    assert rows and not any(r["provider"].startswith("verl") for r in rows)
    assert "bench_advantages.json has timings of verl_" in capsys.readouterr().out
    assert written(results) == {"bench_advantages.json": committed, "bench_advantages.partial.json": rows}


@pytest.mark.parametrize("committed,failing,replaced", [
    ([], None, True), (["a"], None, True), (["a", "b"], None, False), (["c"], None, False),
    (["a"], "a", False),  # every case of a failing: its error rows would have replaced its timings
    (["a", "b!"], None, True),  # b's committed rows are errors only: no timing of it is lost
])
def test_a_full_run_replaces_results_only_with_every_provider_they_time(results, capsys, committed, failing, replaced):
    """(a library missing, a provider failing on this device: its timings would have gone)"""
    results.mkdir(parents=True)
    earlier = [{"provider": p.rstrip("!"), "error": "RuntimeError" if p.endswith("!") else None} for p in committed]
    (results / "bench_x.json").write_text(json.dumps(earlier))
    (results / "bench_x.partial.json").write_text("[]")  # a partial run's, kept by a run that replaces bench_x.json

    def setup(provider):
        if provider == failing:
            raise RuntimeError("no C compiler")
        return lambda: None

    cases = [harness.Case("op", {"i": i}, p, lambda p=p: setup(p)) for i, p in enumerate(["a", "fastrl"])]
    args = harness.parse_args("x", "i", ["--repeat", "10", "--warmup", "0", "--malloc-default"])
    args._partial = []  # (a full run: --malloc-default here only spares the re-run)
    rows = harness.run("x", cases, args, __file__, [])
    files = written(results)
    assert files["bench_x.json"] == (rows if replaced else earlier)
    assert files["bench_x.partial.json"] == ([] if replaced else rows) and "bench_x.running.json" not in files


def test_every_logprobs_provider_listed_on_the_cpu_runs_there():
    """Liger's FLCE (Triton) failed its check on every CPU: left out as failing, it would make
    every CPU run partial."""
    import bench_logprobs

    assert bench_logprobs.check_providers(torch.device("cpu"), torch.float32) == {}


@pytest.mark.parametrize("family,option,folder", [
    ("verifier", "--json", "."), ("verifier", "--json", "new/"), ("scans", "--out", "new/"), ("scans", "--out", "."),
])
def test_a_folder_for_the_results_is_refused_before_any_work(tmp_path, monkeypatch, capsys, family, option, folder):
    """fastrl bench verifier --json DIR ran the whole benchmark, then lost its results to
    IsADirectoryError; --json new/ and --out new/ wrote a file named new."""
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"ground_truth": "3", "fn_output": "3", "tn_output": "4", "split": "s"}]))
    monkeypatch.chdir(tmp_path)
    from fastrl.rewards import math as verifier

    for module, name in ((harness, "time_ms"), (verifier, "verify_batch")):
        monkeypatch.setattr(module, name, lambda *args, **kwargs: pytest.fail("the benchmark ran"))
    rest = ["--data", str(data)] if family == "verifier" else ["--quick", "--malloc-default"]
    with pytest.raises(SystemExit) as done:
        cli.main(["bench", family, *rest, option, folder])
    assert done.value.code == 2 and f"error: {option} {folder}: is a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]  # (no file named new)


def test_a_row_reports_the_median_and_the_minimum_of_its_timed_runs(results, monkeypatch):
    """Time is the median of the repeated runs (not their mean): one slow run does not move it."""
    monkeypatch.setattr(harness, "time_ms", lambda *args, **kwargs: [3.0, 1.0, 50.0, 2.0, 4.0])
    cases = [harness.Case("op", {"i": 0}, "fastrl", lambda: (lambda: None))]
    args = harness.parse_args("x", "i", ["--repeat", "10", "--warmup", "0", "--malloc-default"])
    args._partial = []
    (row,) = harness.run("x", cases, args, __file__, [])
    assert (row["median_ms"], row["min_ms"], row["repeat"]) == (3.0, 1.0, 5)


def test_an_out_file_the_caller_named_is_replaced_even_without_a_provider_it_times(tmp_path, capsys):
    """Only the committed results are kept from a run that lacks one of their providers: an --out
    named by the caller is replaced as asked, and no .partial file is made beside it."""
    out = tmp_path / "mine.json"
    out.write_text(json.dumps([{"provider": "a", "error": None}, {"provider": "fastrl", "error": None}]))
    cases = [harness.Case("op", {"i": 0}, "fastrl", lambda: (lambda: None))]
    args = harness.parse_args("x", "i", ["--repeat", "10", "--warmup", "0", "--malloc-default", "--out", str(out)])
    args._partial = []
    rows = harness.run("x", cases, args, __file__, [])
    assert written(tmp_path) == {"mine.json": rows}


def returning(fn, x):
    """A case's setup: a call of fn(x) whose result the harness compares across providers."""
    def setup():
        call = lambda: fn(x)  # noqa: E731
        call.comparable = lambda out: out
        return call
    return setup


def test_a_baseline_is_compared_with_the_fastrl_row_it_names(tmp_path, capsys):
    """compare_to picks the fastrl row a baseline's result (and its speed-up) is measured against,
    not the first fastrl row of its op and shape."""
    x = torch.randn(4, 8, dtype=torch.float64)
    provider = functools.partial(returning, x=x)

    cases = [harness.Case("op", {"B": 4}, "fastrl_a", provider(lambda v: v * 2)),
             harness.Case("op", {"B": 4}, "fastrl_b", provider(lambda v: v * 3)),
             harness.Case("op", {"B": 4}, "like_b", provider(lambda v: v * 3), compare_to="fastrl_b"),
             harness.Case("op", {"B": 4}, "like_a", provider(lambda v: v * 2))]
    args = harness.parse_args("x", "B", ["--repeat", "1", "--warmup", "0", "--malloc-default",
                                         "--out", str(tmp_path / "rows.json")])
    rows = harness.run("x", cases, args, __file__, [])
    assert {r["provider"]: r["disagrees"] for r in rows} == dict.fromkeys(["fastrl_a", "fastrl_b", "like_b", "like_a"])
    capsys.readouterr()
    timed = [{"op": "op", "shape": {"B": 4}, "provider": p, "median_ms": ms, "compare_to": to}
             for p, ms, to in (("fastrl_a", 1.0, None), ("fastrl_b", 4.0, None), ("like_b", 8.0, "fastrl_b"),
                               ("like_a", 8.0, None))]
    harness.print_speedups(timed)
    assert "like_b 2x vs fastrl_b, like_a 8x vs fastrl_a" in capsys.readouterr().out


def test_disagreement_tolerance_is_relative_to_at_least_one():
    """|value - ours| <= tolerance * max(1, max |ours|): near-zero results are compared absolutely,
    large ones relatively; NaN where both are NaN agrees, NaN on one side only does not."""
    tiny = torch.full((3,), 1e-6, dtype=torch.float64)
    assert harness.disagreement(tiny + 5e-5, tiny, "f", 1e-4) is None
    assert harness.disagreement(tiny + 2e-4, tiny, "f", 1e-4) is not None
    big = torch.full((3,), 1e4, dtype=torch.float64)
    assert harness.disagreement(big + 0.5, big, "f", 1e-4) is None
    assert harness.disagreement(big + 2.0, big, "f", 1e-4) is not None
    nan = torch.tensor([1.0, float("nan")], dtype=torch.float64)
    assert harness.disagreement(nan.clone(), nan, "f", 1e-4) is None
    assert harness.disagreement(torch.tensor([1.0, 2.0], dtype=torch.float64), nan, "f", 1e-4) is not None


def test_only_a_fastrl_row_that_fails_fails_the_run(capsys):
    row = {"op": "op", "shape": {"B": 4}, "disagrees": None}
    failing_baseline = {**row, "provider": "verl", "error": "RuntimeError: no GPU"}
    failing_fastrl = {**row, "provider": "fastrl_x", "error": "RuntimeError: boom"}
    assert harness.exit_status([failing_baseline, {**row, "provider": "fastrl_x", "error": None}]) == 0
    assert harness.exit_status([failing_baseline, failing_fastrl]) == 1
    assert "FAILED: op fastrl_x" in capsys.readouterr().err


def test_warm_up_runs_are_untimed_and_each_run_is_reset_first():
    calls = []

    def call():
        calls.append("call")
    call.reset = lambda: calls.append("reset")
    times = harness.time_ms(call, torch.device("cpu"), warmup=2, repeat=3)
    assert len(times) == 3 and all(t >= 0 for t in times)
    assert calls == ["reset", "call"] * 5


def test_a_partial_run_writes_its_rows_to_its_own_file_only(results, monkeypatch):
    """A partial run's rows go to bench_<family>.partial.json as they come and stay there, whatever
    providers an earlier partial run had there (that file is no committed result to keep)."""
    results.mkdir(parents=True)
    (results / "bench_x.partial.json").write_text(json.dumps([{"provider": "a", "error": None}]))
    seen = []
    timed = harness.time_ms

    def time_ms(*args, **kwargs):
        seen.append(sorted(p.name for p in results.iterdir()))
        return timed(*args, **kwargs)

    monkeypatch.setattr(harness, "time_ms", time_ms)
    cases = [harness.Case("op", {"i": i}, "fastrl", lambda: (lambda: None)) for i in range(2)]
    args = harness.parse_args("x", "i", ["--repeat", "10", "--warmup", "0", "--malloc-default"])
    args._partial = ["--only"]
    rows = harness.run("x", cases, args, __file__, [])
    assert seen == [["bench_x.partial.json"]] * 2
    assert written(results) == {"bench_x.partial.json": rows}


def test_a_baseline_that_computes_something_else_fails_the_benchmark(tmp_path, capsys):
    """Nothing compared the providers' results: a baseline given another gamma (or a fastrl op
    returning wrong values fast) was timed and reported as a ratio like any other."""
    x = torch.randn(4, 8)
    provider = functools.partial(returning, x=x)
    cases = [harness.Case("op", {"B": 4}, "fastrl_x", provider(lambda v: v.cumsum(-1))),
             harness.Case("op", {"B": 4}, "same", provider(lambda v: v.cumsum(-1) + 1e-7)),
             harness.Case("op", {"B": 4}, "other", provider(lambda v: 0.99 * v.cumsum(-1))),
             harness.Case("op", {"B": 4}, "wider", provider(lambda v: v)),
             harness.Case("op", {"B": 4}, "shaped", provider(lambda v: v[:, :2]))]
    args = harness.parse_args("test", "B,T", ["--repeat", "1", "--warmup", "0", "--malloc-default",
                                       "--out", str(tmp_path / "rows.json")])
    rows = harness.run("test", cases, args, __file__, [])
    verdicts = {r["provider"]: r["disagrees"] for r in rows}
    assert verdicts["fastrl_x"] is None and verdicts["same"] is None
    assert verdicts["other"].startswith("differs from fastrl_x by up to") and verdicts["wider"]
    assert verdicts["shaped"] == "shape (4, 2), fastrl_x's (4, 8)"
    assert "DISAGREES" in capsys.readouterr().out
    assert harness.exit_status(rows) == 1 and harness.exit_status(rows[:2]) == 0
