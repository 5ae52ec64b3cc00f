"""The package: install without the extension, `fastrl info`, extension loading."""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import fastrl
from fastrl import _extension
from fastrl.ops import _registry

ROOT = Path(__file__).resolve().parent.parent
SCANS = ("discounted_returns", "gae", "min_form_returns")


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


def test_install_without_extension_still_serves_every_op(tmp_path):
    """FASTRL_SKIP_EXT=1 installs no fastrl._C; the ops exist and run their references."""
    target = tmp_path / "site"
    env = {**os.environ, "FASTRL_SKIP_EXT": "1"}
    done = run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                "--target", str(target), str(ROOT)], env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(target.glob("fastrl/_C*")), "an extension was built despite FASTRL_SKIP_EXT=1"
    assert (target / "fastrl" / "kernels" / "__init__.py").exists()
    code = (
        # An editable install of this checkout hooks sys.meta_path ahead of PYTHONPATH: unhook it.
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in repr(f)]\n"
        "import warnings; warnings.simplefilter('error')\n"
        "import fastrl, torch\n"
        "print(torch.ops.fastrl.min_form_returns)\n"
        "from fastrl import _extension; assert _extension.status == 'not built', _extension.status\n"
        "r = torch.ones(2, 3); m = torch.ones(2, 3)\n"
        "assert torch.ops.fastrl.discounted_returns(r, m, 1.0).tolist() == [[3.0, 2.0, 1.0]] * 2\n"
        "assert fastrl.ops.discounted_returns(r, m).tolist() == [[3.0, 2.0, 1.0]] * 2\n"
        "assert fastrl.ops.backend_for('gae', 'cpu') == 'reference'\n"
    )
    done = run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fastrl.min_form_returns" in done.stdout
    assert str(target) in run([sys.executable, "-c", code.split("import warnings")[0] +
                               "import fastrl; print(fastrl.__file__)"], cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(target)}).stdout


def test_info_shows_the_cpp_backend_for_the_scans():
    if _extension.module is None:
        pytest.skip(f"extension {_extension.status}")
    done = run([sys.executable, "-m", "fastrl.cli", "info"], cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.split()}
    for op in SCANS:
        assert lines[op][1] == "cpp", done.stdout
    assert "extension fastrl._C: loaded" in done.stdout
    assert "WARNING" not in done.stdout


def test_every_scan_has_a_cpu_kernel_when_built():
    if _extension.module is None:
        pytest.skip(f"extension {_extension.status}")
    for op in SCANS:
        assert _registry.OPS[op].compiled["CPU"]
        assert _registry.backend_for(op, "cpu") == "cpp"


def test_a_broken_extension_is_a_warning(monkeypatch):
    def broken(name):
        raise ImportError("undefined symbol: _ZN3c10")

    monkeypatch.setattr(_extension.importlib, "import_module", broken)
    monkeypatch.setattr(_extension, "module", None)
    monkeypatch.setattr(_extension, "status", "not built")
    monkeypatch.setattr(_extension.importlib.util, "find_spec", lambda name: object())
    with pytest.warns(RuntimeWarning, match="failed to load"):
        assert _extension.load() is None
    assert _extension.status.startswith("failed to load")


def test_build_mismatch_is_reported(monkeypatch):
    fake = types.SimpleNamespace(built_with_torch="2.0.0", built_with_cuda="", with_cuda=0)
    monkeypatch.setattr(_extension, "module", fake)
    assert "built with torch 2.0.0" in _extension.build_mismatch()
    fake.built_with_torch = _extension._running_torch()
    assert _extension.build_mismatch() is None


def test_forced_backend_from_environment():
    code = "import fastrl.ops as o; print(o.backend_for('gae', 'cpu'))"
    env = {**os.environ, "FASTRL_BACKEND": "reference"}
    done = run([sys.executable, "-c", code], env=env, cwd=ROOT)
    assert done.stdout.strip() == "reference", done.stderr
    done = run([sys.executable, "-c", code], env={**os.environ, "FASTRL_BACKEND": "nope"}, cwd=ROOT)
    assert done.returncode != 0 and "FASTRL_BACKEND must be one of" in done.stderr


def test_a_bad_forced_backend_is_one_line_from_the_cli():
    done = run([sys.executable, "-m", "fastrl.cli", "info"], env={**os.environ, "FASTRL_BACKEND": "nope"}, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("fastrl: FASTRL_BACKEND must be one of reference, cpp, cuda, triton, torch or unset, "
                                   "got 'nope'"), done.stderr


def test_the_sdist_holds_every_source_the_extension_builds_from(tmp_path):
    """Without MANIFEST.in the sdist held the .cpp files only: building from it failed on
    the first header ("fastrl/advantages.h: No such file or directory")."""
    import tarfile

    done = run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=ROOT,
               env={**os.environ, "FASTRL_SKIP_EXT": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    (sdist,) = tmp_path.glob("fastrl-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.suffix in (".h", ".cpp", ".cu")}
    assert sources and sources <= names, sorted(sources - names)
    assert {"pyproject.toml", "setup.py", "kernels/sampling.py", "fastrl/cli.py"} <= names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


@pytest.mark.parametrize("nvcc, refused", [("13.0", True), ("12.8", False)])
def test_an_nvcc_of_another_cuda_major_than_torchs_is_refused_with_the_way_out(tmp_path, nvcc, refused):
    """torch 2.6 (CUDA 12.4) beside CUDA 13's nvcc: torch's build failed on a mismatch without
    naming FASTRL_NO_CUDA; setup.py now names both ways out before compiling anything. (torch
    reports CUDA 12.4 here through a stand-in; CUDA_HOME's nvcc is a script.)"""
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "nvcc"
    fake.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {nvcc}, V{nvcc}.1'\n")
    fake.chmod(0o755)
    as_cuda_124 = ("import runpy, sys, torch; torch.version.cuda = '12.4'; torch.cuda._is_compiled = lambda: True; "
                   "torch.cuda.is_available = lambda: False; sys.argv = ['setup.py', '--name']; "
                   "runpy.run_path('setup.py', run_name='__main__')")
    env = {k: v for k, v in os.environ.items() if k not in ("FASTRL_SKIP_EXT", "FASTRL_NO_CUDA")}
    done = run([sys.executable, "-c", as_cuda_124], cwd=ROOT, env={**env, "CUDA_HOME": str(tmp_path)})
    if refused:
        assert done.returncode == 1
        assert (f"fastrl: torch is built with CUDA 12.4 but the nvcc in CUDA_HOME ({tmp_path}) is CUDA 13.0"
                in done.stderr), done.stderr
        assert "CUDA 12.x toolkit, or set FASTRL_NO_CUDA=1" in done.stderr
    else:
        assert done.returncode == 0 and done.stdout.split() == ["fastrl"], (done.stdout, done.stderr)


def test_a_reader_that_leaves_early_is_no_traceback():
    """`fastrl info | head -1` ended in a BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "fastrl.cli", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before it prints: importing torch takes it far longer
    err = proc.stderr.read()
    assert proc.wait(timeout=600) == 141 and "Traceback" not in err, err


def test_version():
    assert fastrl.__version__


@pytest.mark.parametrize("family", sorted(p.stem[len("bench_"):] for p in (ROOT / "benchmarks").glob("bench_*.py")))
def test_every_benchmark_takes_its_options_from_fastrl_bench(family, capsys):
    from fastrl import cli

    with pytest.raises(SystemExit) as done:
        cli.main(["bench", family, "--help"])
    assert done.value.code == 0
    assert f"usage: fastrl bench {family} " in capsys.readouterr().out  # (it named the command "fastrl")


def test_fastrl_bench_without_a_family_lists_the_families(capsys):
    from fastrl import cli

    assert cli.main(["bench"]) == 2
    assert "name a benchmark family: advantages, logprobs, rollout, sampling, scans" in capsys.readouterr().err
    assert cli.main(["bench", "nope"]) == 2
    assert "unknown benchmark 'nope'; known: advantages," in capsys.readouterr().err


def test_fastrl_bench_runs_on_the_cpu_through_its_malloc_restart(tmp_path):
    """On the CPU the harness restarts Python with other malloc settings: it restarted with
    sys.argv, whose [0] the CLI had renamed for the usage line ("can't open file 'fastrl
    bench scans'"); its tests all passed --malloc-default, which skips the restart."""
    out = tmp_path / "scans.json"
    done = run([sys.executable, "-m", "fastrl.cli", "bench", "scans", "--quick", "--only", "^gae/fastrl",
                "--repeat", "1", "--warmup", "0", "--out", str(out)], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "malloc: no heap trimming" in done.stdout
    assert len(__import__("json").loads(out.read_text())) == 4


@pytest.mark.parametrize("cmd,message", [
    (["bash", "benchmarks/gpu_check.sh", "sample"], "no stage 'sample' (all, sampling, rest or sweep)"),
    (["bash", "benchmarks/gpu_check.sh", "rest"], "REST_BENCHMARKS: no benchmark 'scan'"),
    ([sys.executable, "benchmarks/sampling_ablation.py", "--shape", "256"], "--shape '256': expected B,V"),
    ([sys.executable, "benchmarks/sampling_sass.py", "--config", "foo"], "--config 'foo': expected BLOCKxWARPS"),
])
def test_gpu_scripts_refuse_bad_arguments_before_any_work(cmd, message):
    """A mistyped stage ran nothing and exited 0; bad shapes and configs were tracebacks."""
    done = run(cmd, cwd=ROOT, env={**os.environ, "REST_BENCHMARKS": "scan", "PYTHON": sys.executable})
    assert done.returncode == 2 and message in done.stdout + done.stderr, done.stdout + done.stderr


def harness_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import harness

    return harness


def test_a_failing_fastrl_row_fails_the_benchmark(tmp_path, monkeypatch, capsys):
    """A baseline that cannot run is reported; a fastrl row that fails makes the exit status 1
    (gpu_check.sh counted such a run as passed)."""
    from fastrl import cli, ops

    def broken(*args, **kwargs):
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(ops, "gae", broken)
    argv = ["bench", "scans", "--quick", "--only", "^gae/", "--repeat", "1", "--warmup", "0", "--malloc-default",
            "--out", str(tmp_path / "scans.json")]
    assert cli.main(argv) == 1
    assert "FAILED: gae fastrl_" in capsys.readouterr().err
    monkeypatch.undo()
    assert cli.main(argv) == 0


def test_partial_benchmark_runs_keep_the_committed_results(tmp_path, monkeypatch, capsys):
    """--quick, --only, --providers ... without --out write bench_<family>.partial.json (a
    smoke run replaced the committed results the README cites); rows are written as they
    come to a .running.json name, so a run cut short keeps them there."""
    from fastrl import cli

    harness = harness_module()
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    assert cli.main(["bench", "scans", "--quick", "--only", "^gae/fastrl", "--repeat", "1", "--warmup", "0",
                     "--malloc-default"]) == 0
    assert [p.name for p in tmp_path.rglob("*.json")] == ["bench_scans.partial.json"]
    assert "a partial run (--malloc-default, --only, --quick)" in capsys.readouterr().out
    # shapes off the device's ladder, fewer timed runs than a full run's, or glibc's malloc
    # (a Python caller's process is not re-run without heap trimming) are partial too
    for extra, why in ((["--shape", "4,8", "--malloc-default"], "--shape"), (["--repeat", "1"], "--repeat"),
                       ([], "--malloc-default")):
        args = harness.parse_args("test", "B,T", extra)
        harness.shapes(args, [(1, 2)], [(256, 1024)], [(256, 1024)])
        assert why in args._partial, (extra, args._partial)
    assert "malloc: called from Python, so glibc's defaults" in capsys.readouterr().out
    args = harness.parse_args("test", "B,T", ["--shape", "256,1024", "--malloc-default"])
    harness.shapes(args, [(1, 2)], [(256, 1024)], [(256, 1024)])
    assert "--shape" not in args._partial  # the whole ladder, named
    # a subset of the ladder is partial too: its rows replaced the whole grid's (60 rows -> 10)
    args = harness.parse_args("test", "B,T", ["--shape", "256,1024", "--malloc-default"])
    harness.shapes(args, [(1, 2)], [(256, 1024), (64, 1024)], [(256, 1024)])
    assert "--shape" in args._partial
    # a run of no case is an error, not "wrote 0 rows"; a file replaced is said to be
    with pytest.raises(SystemExit) as done:
        cli.main(["bench", "scans", "--quick", "--only", "nomatch", "--malloc-default"])
    assert done.value.code == 2 and "error: no case to run: --only 'nomatch'" in capsys.readouterr().err
    argv = ["bench", "scans", "--quick", "--only", "^gae/fastrl", "--repeat", "1", "--warmup", "0",
            "--malloc-default", "--out", str(tmp_path / "again.json")]
    assert cli.main(argv) == 0 and "replacing" not in capsys.readouterr().out
    assert cli.main(argv) == 0 and f"replacing {tmp_path / 'again.json'}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        cli.main([*argv[:-1], str(tmp_path)])
    assert done.value.code == 2 and "is a folder" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")  # a folder that cannot be made: refused before timing, not a traceback
    with pytest.raises(SystemExit) as done:
        cli.main([*argv[:-1], str(tmp_path / "a_file" / "x.json")])
    assert done.value.code == 2 and "--out " in (err := capsys.readouterr().err) and "cannot write there" in err

    calls = []

    def interrupted():
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt

        return lambda: None

    cases = [harness.Case("op", {"i": i}, "fastrl_x", interrupted) for i in range(3)]
    args = harness.parse_args("test", "B,T", ["--repeat", "1", "--warmup", "0", "--malloc-default",
                                       "--out", str(tmp_path / "cut.json")])
    with pytest.raises(KeyboardInterrupt):
        harness.run("test", cases, args, __file__, [])
    assert [r["shape"] for r in json.loads((tmp_path / "cut.running.json").read_text())] == [{"i": 0}]
    assert not (tmp_path / "cut.json").exists()  # (replaced only once every case has run)


def test_speedups_keep_three_significant_digits(capsys):
    harness = harness_module()
    rows = [{"op": "op", "shape": {"B": 4}, "provider": p, "median_ms": ms}
            for p, ms in (("fastrl_x", 2.0), ("slow", 500.0), ("fast", 0.05), ("close", 2.1), ("slower", 2468.0))]
    harness.print_speedups(rows)
    assert ("slow 250x vs fastrl_x, fast 0.025x vs fastrl_x, close 1.05x vs fastrl_x, slower 1234x vs fastrl_x"
            in capsys.readouterr().out)


@pytest.mark.parametrize("family,shape", [("scans", "8,16"), ("advantages", "16,4,8")])
def test_every_family_takes_a_shape(tmp_path, monkeypatch, capsys, family, shape):
    from fastrl import cli

    harness = harness_module()
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    assert cli.main(["bench", family, "--shape", shape, "--only", "fastrl", "--repeat", "1", "--warmup", "0",
                     "--malloc-default"]) == 0
    rows = json.loads(next(tmp_path.rglob("*.json")).read_text())
    sizes = dict(zip(("B", "group", "T") if family == "advantages" else ("B", "T"), map(int, shape.split(","))))
    assert rows and all({k: r["shape"][k] for k in sizes} == sizes for r in rows), rows


def test_the_inplace_logprob_row_runs_every_time_on_the_same_logits():
    """inplace_backward writes the gradient over the logits: each later warm-up and timed run
    computed on the previous run's gradient, not on the inputs the other rows get."""
    import torch

    harness = harness_module()
    import bench_logprobs

    cpu = torch.device("cpu")
    case = next(c for c in bench_logprobs.cases([(8, 4, 32)], cpu, torch.float32) if c.provider.endswith("_inplace"))
    call = case.setup()
    logits = bench_logprobs._LIVE[-1]["logits"]
    before, seen = logits.detach().clone(), []

    def spy():
        seen.append(logits.detach().clone())
        return call()

    spy.reset = getattr(call, "reset", None)
    harness.time_ms(spy, cpu, warmup=1, repeat=2)
    assert len(seen) == 3 and all(torch.equal(s, before) for s in seen)
    assert not torch.equal(logits, before)  # (the last run's gradient is there: the row does write in place)


@pytest.mark.parametrize("argv,message", [
    (["scans", "--device", "gpu"], "--device: 'gpu' is no torch device"),
    (["logprobs", "--shape", "1,2"], "--shape '1,2': expected 3 comma-separated positive integers"),
    (["logprobs", "--shape", "4,0,8"], "--shape '4,0,8': expected 3"),
    (["advantages", "--repeat", "0"], "--repeat: at least 1 timed run, got 0"),
    (["scans", "--warmup", "-1"], "--warmup: 0 or more untimed runs, got -1"),
    (["scans", "--only", "("], "--only: '(' is no regular expression"),
    (["sampling", "--providers", "nope"], "--providers: unknown nope; known:"),
    (["logprobs", "--providers", "fastrl"], "--providers: unknown fastrl; known:"),
    (["sampling", "--logit-scale", "nan"], "--logit-scale: a finite number > 0, got nan"),
    (["sampling", "--logit-scale", "-2"], "--logit-scale: a finite number > 0, got -2.0"),
    (["sampling", "--compile-budget", "-1"], "--compile-budget: seconds >= 0, got -1.0"),
    (["advantages", "--shape", "8,4"], "--shape '8,4': expected 3 comma-separated positive integers"),
] + ([] if __import__("torch").cuda.is_available() else [(["scans", "--device", "cuda"], "sees no CUDA GPU"),
                                                         (["sampling", "--configs", "4096x8"], "on a CUDA device")]))
def test_bad_benchmark_options_are_refused_with_the_option_named(argv, message, capsys):
    from fastrl import cli

    with pytest.raises(SystemExit) as done:
        cli.main(["bench", *argv, "--quick", "--malloc-default", "--out", "unused.json"])  # no re-exec
    assert done.value.code == 2 and message in capsys.readouterr().err  # (1: a fastrl row failed)


def test_a_missing_train_extra_is_named_not_a_traceback(monkeypatch, tmp_path, capsys):
    """Without the train extra the built-in task's tokenizer is the first import to fail
    (tokenizers, before transformers): the CLI names the extra and exits 2."""
    pytest.importorskip("transformers")
    from fastrl import cli
    from fastrl.trainer import task

    def missing(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'tokenizers'", name="tokenizers")

    monkeypatch.setattr(task, "char_tokenizer", missing)
    assert cli.main(["train", "--steps", "1", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "needs tokenizers" in err and "pip install 'fastrl[train]'" in err, err
    with pytest.raises(ModuleNotFoundError):  # not the extra's: a bug, raised as it is
        cli._missing_extra("fastrl train", ModuleNotFoundError("No module named 'nope'", name="nope"))


def test_verifier_benchmark_checks_its_data_and_keeps_the_committed_results(tmp_path, monkeypatch, capsys):
    """The splits are the file's (a file without "big_math" printed 0.0% for it, and one of
    other splits nothing); other data, --workers or no math-verify write
    bench_verifier.partial.json (a smoke run replaced the committed file)."""
    harness_module()
    import bench_verifier

    monkeypatch.setattr(bench_verifier, "RESULTS", tmp_path)
    items = [{"ground_truth": "$3$", "fn_output": "3.0", "tn_output": "4", "split": "benchmarks"},
             {"ground_truth": "\\frac12", "fn_output": "0.5", "tn_output": "0.6", "split": "mine"}]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(items))
    rows = bench_verifier.main(["--data", str(data), "--no-math-verify", "--workers", "1"])
    assert [(r["split"], r["accepted"], r["rejected"], r["n_fn"]) for r in rows] == [
        ("benchmarks", 1.0, 1.0, 1), ("mine", 1.0, 1.0, 1)]
    printed = capsys.readouterr().out
    assert "a partial run (--data, --workers, --no-math-verify)" in printed
    assert [p.name for p in tmp_path.glob("*.json") if p != data] == ["bench_verifier.partial.json"]
    for bad, says in ((items[:1] + [{"ground_truth": 3}], "item 1 of"), ({"a": 1}, "non-empty JSON list"),
                      ([], "non-empty JSON list")):
        data.write_text(json.dumps(bad))
        with pytest.raises(SystemExit) as done:
            bench_verifier.main(["--data", str(data), "--no-math-verify", "--json", ""])
        assert done.value.code == 2 and says in capsys.readouterr().err
    data.write_text("{not json")
    with pytest.raises(SystemExit):
        bench_verifier.main(["--data", str(data), "--json", ""])
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        bench_verifier.main(["--workers", "0", "--json", ""])
    assert done.value.code == 2 and "--workers: at least 1, got 0" in capsys.readouterr().err
    assert bench_verifier.share([]) is None and bench_verifier.share([True, False]) == 0.5


def test_use_backend_is_scoped_to_its_thread_and_the_backward_follows_the_forward():
    """use_backend was one process-wide variable: a block in one thread forced the ops of
    every other; a forward's backward now runs on the forward's backend wherever autograd
    runs it (a CUDA backward runs on autograd's own thread)."""
    import threading

    import torch

    import fastrl.ops as ops
    from fastrl.ops import _registry

    inside, release, seen = threading.Event(), threading.Event(), []

    def hold_reference():
        with ops.use_backend("reference"):
            seen.append(ops.backend_for("gae", "cpu"))
            inside.set()
            release.wait()

    default = ops.backend_for("gae", "cpu")
    thread = threading.Thread(target=hold_reference)
    thread.start()
    inside.wait()
    try:
        assert ops.backend_for("gae", "cpu") == default and seen == ["reference"]
    finally:
        release.set()
        thread.join()

    used = []
    real = _registry.backend_for

    def spy(name, device_type):
        used.append((name, _registry.forced()))
        return real(name, device_type)

    hidden, weight = torch.randn(6, 4, requires_grad=True), torch.randn(9, 4)
    try:
        _registry.backend_for = spy
        with ops.use_backend("reference"):
            out = ops.linear_logprobs(hidden, weight, torch.randint(0, 9, (6,)))
        out.logprob.sum().backward()  # outside the block
    finally:
        _registry.backend_for = real
    assert ("linear_logprobs_backward", "reference") in used, used
    assert all(backend == "reference" for name, backend in used if name.startswith("linear_logprobs")), used


@pytest.mark.parametrize("op", ["linear_logprobs", "logprobs_from_logits"])
def test_a_compiled_backward_follows_its_forwards_backend(op):
    """In a torch.compile'd graph too: the backward op read the backend forced in the thread
    that ran it when it ran (here none: the default), not the forward's."""
    import torch

    import fastrl.ops as ops
    from fastrl.ops import _registry

    torch._dynamo.reset()
    hidden, weight, labels = torch.randn(6, 4, requires_grad=True), torch.randn(9, 4), torch.randint(0, 9, (6,))
    call = (lambda h: ops.linear_logprobs(h, weight, labels).logprob.sum()) if op == "linear_logprobs" else (
        lambda h: ops.logprobs_from_logits(h @ weight.T, labels).logprob.sum())
    used, real = [], _registry.backend_for

    def spy(name, device_type):
        used.append((name, _registry.forced()))
        return real(name, device_type)

    try:
        _registry.backend_for = spy
        # (torch's compile caches do not key on a custom op's backward: one from older code would run)
        with ops.use_backend("reference"), torch._inductor.config.patch(force_disable_caches=True):
            loss = torch.compile(call, fullgraph=True)(hidden)
        loss.backward()  # outside the block
    finally:
        _registry.backend_for = real
    backward = [backend for name, backend in used if name.endswith("_backward")]
    assert backward == ["reference"], used
    # a graph compiled before the backward ops took a backend calls them without one: the defaults
    args = [torch.ones(6), torch.empty(0), torch.randn(6, 9), labels, torch.zeros(6), torch.empty(0), 1.0, -100]
    if op == "linear_logprobs":
        args[2:3] = [hidden.detach(), weight]
        args.insert(5, None)
        args.append(True)
    backward_op = getattr(torch.ops.fastrl, f"{op}_backward")
    torch.testing.assert_close(backward_op(*args), backward_op(*args, None))
