"""The benchmarks' results files: a run cut short, a run without a comparison library and a
folder named for the results leave the committed results (bench_<family>.json) as they were."""
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
