"""The harness every benchmarks/bench_<family>.py shares (DESIGN 5).

A benchmark is a list of ``Case``s: one op at one shape by one provider (the
fastrl op, or what a user would otherwise run). Time is the median of repeated
runs after warm-up. On a GPU: CUDA events around the call, with the L2 cache
flushed before each run (the inputs come from memory, as a fresh batch's would)
and the GPU held busy while the host queues the call, so the time is the GPU's
and not the host's launch overhead (as triton.testing.do_bench measures). The
flush reads a buffer larger than the L2 (``--l2-flush clean``, the default), so
the call finds the L2 holding clean lines; ``dirty`` flushes by writing it, as
do_bench does, and the call then also pays for writing those lines back to
memory as its reads evict them (up to the L2's size: tens of MB on an H100). Peak memory: on a GPU,
torch.cuda.max_memory_allocated beyond what was allocated before the call; on
the CPU (with ``--memory``), growth of the peak resident set in a fresh
subprocess per case (VmHWM, reset after the case's setup; ru_maxrss where /proc
is missing, which never goes down within a process).
Rows go to benchmarks/results/<device>/bench_<family>.json once every case has run (until then to
bench_<family>.running.json), a partial run's to bench_<family>.partial.json.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import json
import os
import platform
import re
import statistics
import tempfile
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from fastrl import memory

RESULTS = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass
class Case:
    op: str
    shape: dict
    provider: str
    # Builds the inputs and returns the zero-argument call to time. A call that overwrites its
    # inputs carries a ``reset`` attribute, run untimed before each run to restore them; one
    # whose result can be checked against its fastrl row's carries ``comparable``: result ->
    # tensor (e.g. the advantages at valid tokens), compared before timing (see ``disagreement``).
    setup: Callable[[], Callable[[], object]]
    note: str = ""
    # Bytes one call must read and write at the least: on a GPU the row then
    # gets the bandwidth floor (bytes over a measured device copy rate).
    bytes_moved: Optional[int] = None
    # The fastrl provider a baseline is compared with (default: the first fastrl row).
    compare_to: Optional[str] = None
    # Time on the host, from the call to the GPU done: for calls with host work before their
    # first kernel (mapping string uids), which the GPU's queued sleep would otherwise hide.
    wall_clock: bool = False


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} ({os.cpu_count()} cores)"


def device_slug(device: torch.device) -> str:
    if device.type == "cpu":
        return f"cpu-{os.cpu_count()}core"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", device_name(device)).strip("-")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


L2_FLUSH_BYTES = 256 * 2**20  # more than any GPU's L2
QUEUE_AHEAD_CYCLES = 2_000_000  # about 1 ms of GPU time to queue the call behind


L2_FLUSHES = ("clean", "dirty")


def time_ms(call: Callable, device: torch.device, warmup: int, repeat: int, l2_flush: str = "clean",
            wall_clock: bool = False) -> list[float]:
    if l2_flush not in L2_FLUSHES:
        raise ValueError(f"l2_flush must be one of {L2_FLUSHES}, got {l2_flush!r}")
    reset = getattr(call, "reset", lambda: None)
    for _ in range(warmup):
        reset()
        call()
    _sync(device)
    flush = torch.zeros(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device) if device.type == "cuda" else None
    times = []
    for _ in range(repeat):
        reset()
        if device.type == "cuda":
            if l2_flush == "clean":
                flush.max()
            else:
                flush.zero_()
            if wall_clock:
                torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                call()
                torch.cuda.synchronize(device)
                times.append((time.perf_counter() - t0) * 1e3)
                continue
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(QUEUE_AHEAD_CYCLES)
            start.record()
            call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def gpu_peak_bytes(call: Callable, device: torch.device) -> int:
    _sync(device)
    memory.reset_peak(device)
    before = torch.cuda.memory_allocated(device)
    call()
    _sync(device)
    return memory.peak_bytes(device) - before


def copy_rate_bytes_per_ms(device: torch.device, l2_flush: str = "clean") -> float:
    """Device copy rate, counting bytes read plus written (a 1 GiB clone)."""
    x = torch.empty(2**28, dtype=torch.float32, device=device)
    ms = statistics.median(time_ms(lambda: x.clone(), device, 3, 10, l2_flush))
    return 2 * x.numel() * 4 / ms


def kernels_per_call(call: Callable) -> int:
    """GPU kernels one call launches (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and "memcpy" not in e.name.lower() and "memset" not in e.name.lower())


def cpu_peak_bytes_in_subprocess(script: str, case_index: int, argv: list[str]) -> Optional[int]:
    """Run one case in a fresh interpreter; it prints its peak RSS growth."""
    cmd = [sys.executable, script, *argv, "--_probe", str(case_index)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    for line in done.stdout.splitlines():
        if line.startswith("PEAK_BYTES "):
            return int(line.split()[1])
    print(f"memory probe of case {case_index} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
    return None


def probe(case: Case):
    """Entry point of the memory subprocess: one call, its peak RSS growth."""
    call = case.setup()
    # what setup freed goes back to the OS: with heap trimming off the call reused it unseen
    # (gae's two 4 MiB outputs measured 5 MiB in all)
    libc = ctypes.util.find_library("c")
    trim = libc and getattr(ctypes.CDLL(libc), "malloc_trim", None)  # (glibc's; musl and macOS lack it)
    if trim:
        trim(0)
    cpu = torch.device("cpu")
    memory.reset_peak(cpu)
    before = memory.peak_bytes(cpu)
    call()
    print(f"PEAK_BYTES {memory.peak_bytes(cpu) - before}")


def versions() -> dict:
    found = {"python": platform.python_version(), "torch": torch.__version__}
    if torch.version.cuda:
        found["cuda"] = torch.version.cuda
    for name in ("fastrl", "triton", "verl", "trl", "liger_kernel", "math_verify"):
        try:
            module = __import__(name)
            found[name] = getattr(module, "__version__", "installed")
        except Exception:
            pass
    return found


def parse_args(description: str, shape: str, argv=None, extra: Optional[Callable] = None,
               repeat: Optional[dict] = None, warmup: Optional[dict] = None):
    """The common options (plus ``extra(parser)``'s). shape: the names of a shape's sizes
    ("B,T"), for --shape. repeat / warmup: the defaults per device type (default 10 and
    2 runs; --quick repeats 3 times)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", action="append", default=None,
                        help=f"{shape} (repeatable; default: the device's ladder)")
    parser.add_argument("--quick", action="store_true", help="smallest shapes, few repeats (smoke test)")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per case (default by device, quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per case (default by device)")
    parser.add_argument("--memory", action="store_true",
                        help="on the CPU also measure peak RSS growth (a subprocess per case; slow)")
    parser.add_argument("--only", default=None, help="regex on 'op/provider' to run a subset")
    parser.add_argument("--out", default=None, help="JSON path (default results/<device>/bench_<family>.json)")
    parser.add_argument("--malloc-default", action="store_true",
                        help="on the CPU, keep glibc's heap trimming (see no_trim_malloc)")
    parser.add_argument("--l2-flush", choices=L2_FLUSHES, default="clean",
                        help="GPU: empty the L2 before each timed run by reading a 256 MiB buffer (clean) or by "
                             "writing it (dirty: the call also pays the write-back of what its reads evict)")
    parser.add_argument("--_probe", type=int, default=None, help=argparse.SUPPRESS)
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: {args.device!r} is no torch device (cpu, cuda, cuda:1, ...)")
    if args.device.type not in ("cpu", "cuda"):
        parser.error(f"--device: the benchmarks run on cpu or cuda, got {args.device}")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch sees no CUDA GPU (torch {torch.__version__})")
    if args.repeat is not None and args.repeat < 1:
        parser.error(f"--repeat: at least 1 timed run, got {args.repeat}")
    if args.warmup is not None and args.warmup < 0:
        parser.error(f"--warmup: 0 or more untimed runs, got {args.warmup}")
    if args.only is not None:
        try:
            re.compile(args.only)
        except re.error as e:
            parser.error(f"--only: {args.only!r} is no regular expression ({e})")
    if args.out:
        writable(args.out, "--out")  # before any work
    full_repeat = {"cpu": 10, "cuda": 10, **(repeat or {})}[args.device.type]
    if args.repeat is None:
        args.repeat = 3 if args.quick else full_repeat
    if args.warmup is None:
        args.warmup = {"cpu": 2, "cuda": 2, **(warmup or {})}[args.device.type]
    # a run that picks cases (--quick, --only, --providers, ...) or measures otherwise (--l2-flush,
    # --dtype) is partial: by default its rows do not replace the committed results
    args._partial = [f"--{k.replace('_', '-')}" for k, v in sorted(vars(args).items())
                     if k not in FULL_RUN_OPTIONS and v != parser.get_default(k)]
    if args.repeat < full_repeat and "--quick" not in args._partial:
        args._partial.append("--repeat")  # a median of fewer runs
    if args.device.type == "cpu" and not args.malloc_default and args._probe is None:
        if argv is None or TYPED_COMMAND:
            no_trim_malloc()
        elif not _heap_trimming_off():
            # a Python caller's process is not re-run: it measures with glibc's defaults
            print("malloc: called from Python, so glibc's defaults (run it from a shell for no heap trimming)")
            args.malloc_default = True
            args._partial.append("--malloc-default")
    return args


# options that leave a run's cases and what they measure as they are (--shape: shapes() says
# whether they are the device's ladder, as `make bench` names them)
FULL_RUN_OPTIONS = {"device", "shape", "repeat", "warmup", "memory", "out", "compile_budget", "_probe", "_skip"}
# set by `fastrl bench` when its command was typed in a shell: only that process is re-run
TYPED_COMMAND = False


def usage_error(message: str):
    """A bad command line: the message and exit status 2 (1 is a fastrl row that failed)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def wanted_providers(option: str, known) -> set:
    """--providers' comma-separated names, refused unless each is one of ``known``."""
    wanted, known = set(option.split(",")), set(known)
    if wanted - known:
        usage_error(f"--providers: unknown {', '.join(sorted(wanted - known))}; known: {', '.join(sorted(known))}")
    return wanted


def shapes(args, quick: list, cpu: list, cuda: list) -> list[tuple]:
    """The shapes to run: --shape's (comma-separated integers), else the --quick ladder,
    else the device's."""
    if args.shape:
        found = [tuple(int(v) for v in s.split(",") if re.fullmatch(r"\s*[1-9]\d*\s*", v)) for s in args.shape]
        for text, shape in zip(args.shape, found):
            if len(shape) != len(cpu[0]) or len(text.split(",")) != len(shape):
                usage_error(f"--shape {text!r}: expected {len(cpu[0])} comma-separated positive integers, "
                            f"as in {','.join(map(str, cpu[0]))}")
        ladder = cuda if args.device.type == "cuda" else cpu
        if set(found) != set(map(tuple, ladder)) and "--shape" not in args._partial:
            args._partial.append("--shape")  # not the committed ladder: its rows would replace the whole grid's
        return found
    return quick if args.quick else cuda if args.device.type == "cuda" else cpu


NO_TRIM = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**30)}


def _heap_trimming_off() -> bool:
    return all(os.environ.get(k) == v for k, v in NO_TRIM.items())


def no_trim_malloc():
    """Re-run this process with glibc keeping freed memory (allocations under 32 MiB).

    torch's CPU allocator is plain malloc: by default glibc hands a freed
    multi-MiB block back to the OS and the next call page-faults it in again
    (about 2 us per 4 KiB page here), so a provider's time would depend on what
    ran before it and be dominated by faults on its outputs. Like a caching
    allocator, these settings let every provider reuse its memory; pass
    --malloc-default to measure with glibc's defaults instead.
    """
    if _heap_trimming_off():
        return
    os.environ.update(NO_TRIM)
    sys.stdout.flush()
    # the command as typed (sys.argv[0] may be renamed for a usage line: "fastrl bench scans")
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def run(family: str, cases: list[Case], args, script: str, argv: list[str]) -> list[dict]:
    """Time every case, print a table, write the JSON rows; returns the rows."""
    if args.only:
        pattern = re.compile(args.only)
        cases = [c for c in cases if pattern.search(f"{c.op}/{c.provider}")]
    if args._probe is not None:
        probe(cases[args._probe])
        return []
    device = args.device
    rows, env = [], versions()
    outputs = {}  # (op, shape, provider) -> a fastrl row's comparable output
    copy_rate = copy_rate_bytes_per_ms(device, args.l2_flush) if device.type == "cuda" else None
    if copy_rate:
        print(f"device copy rate {copy_rate / 1e9:.2f} TB/s (read + written); L2 flushed {args.l2_flush}")
    print(f"bench {family} on {device_name(device)}; torch {torch.__version__}; "
          f"{torch.get_num_threads()} threads; median of {args.repeat} after {args.warmup} warm-up")
    if device.type == "cpu":
        trimmed = "glibc defaults" if args.malloc_default else "no heap trimming (" + ", ".join(
            f"{k}={v}" for k, v in NO_TRIM.items()) + ")"
        print(f"malloc: {trimmed}")
    if args.out:
        out = Path(args.out)
    else:
        out = RESULTS / device_slug(device) / f"bench_{family}{'.partial' if args._partial else ''}.json"
        if args._partial:
            print(f"a partial run ({', '.join(args._partial)}): its rows go to {out.name}, not bench_{family}.json")
    if not cases:
        usage_error(f"no case to run: --only {args.only!r} or the options picked none")
    writable(out, "--out")
    # rows go to a .running file as they come, so a run cut short (Ctrl-C, a time limit) keeps what it
    # measured there; out is replaced only once every case has run (a partial run's out is its own)
    partial = out.stem.endswith(".partial")
    progress = out if partial else out.with_name(f"{out.stem}.running{out.suffix}")
    if out.exists():
        print(f"replacing {out}" + ("" if partial else f" once every case has run (rows go to {progress.name} "
                                                       "until then)"))
    try:
        for index, case in enumerate(cases):
            disagrees = None
            try:
                call = case.setup()
                disagrees = check_output(case, call, outputs, cases)
                times = time_ms(call, device, args.warmup, args.repeat, args.l2_flush, case.wall_clock)
                peak = gpu_peak_bytes(call, device) if device.type == "cuda" else None
                error = None
            except Exception as exc:  # a baseline that cannot run at this shape is reported, not fatal
                times, peak, error = [], None, f"{type(exc).__name__}: {exc}"[:300]
            if device.type == "cpu" and args.memory and error is None:
                peak = cpu_peak_bytes_in_subprocess(script, index, argv)
            floor_ms = launches = None
            if copy_rate and case.bytes_moved and error is None:
                floor_ms = case.bytes_moved / copy_rate
                launches = kernels_per_call(call)
            row = {
                "family": family, "op": case.op, "shape": case.shape, "provider": case.provider,
                "median_ms": statistics.median(times) if times else None,
                "min_ms": min(times) if times else None, "repeat": len(times),
                "peak_memory_bytes": peak, "device": device_name(device), "versions": env,
                "note": case.note, "error": error, "disagrees": disagrees,
                "bandwidth_floor_ms": floor_ms, "kernels_per_call": launches, "compare_to": case.compare_to,
                "malloc": None if device.type != "cpu" else ("default" if args.malloc_default else "no-trim"),
                "wall_clock": case.wall_clock,
                "l2_flush": args.l2_flush if device.type == "cuda" else None,
            }
            rows.append(row)
            print(format_row(row), flush=True)
            write_json(progress, rows)
    except KeyboardInterrupt:
        kept = f"their rows are in {progress}" if rows else "nothing written"
        if not partial and out.exists():
            kept += f"; {out} is left as it was"
        print(f"\ninterrupted after {len(rows)} of {len(cases)} cases: {kept}", file=sys.stderr, flush=True)
        raise
    # a run without a provider the committed results have (its library missing, failing here) keeps
    # them (an --out the caller named is replaced as asked)
    lost = sorted(_measured(_rows(out)) - _measured(rows)) if not (partial or args.out) else []
    if lost:
        kept = out.with_name(f"{out.stem}.partial{out.suffix}")
        os.replace(progress, kept)
        print(f"\n{out.name} has timings of {', '.join(lost)}, which this run has not: it is left as it was; "
              f"this run's {len(rows)} rows are in {kept}")
    else:
        if not partial:
            write_json(out, rows)
            progress.unlink(missing_ok=True)
        print(f"\nwrote {len(rows)} rows to {out}")
    print_speedups(rows)
    return rows


def _rows(results: Path) -> list:
    try:
        rows = json.loads(results.read_text())
    except (OSError, ValueError):  # none there
        return []
    return rows if isinstance(rows, list) else []


def _measured(rows: list) -> set:
    """The providers with a timing in rows (a provider whose every case failed has none)."""
    return {row["provider"] for row in rows
            if isinstance(row, dict) and isinstance(row.get("provider"), str) and row.get("error") is None}


def writable(path, option: str):
    """Refuse, before any timing, a path the results could not be written to. ``path`` as typed:
    Path() drops a trailing separator ("--out new/" wrote a file named new)."""
    if str(path).endswith((os.sep, os.altsep or os.sep)) or Path(path).is_dir():
        usage_error(f"{option} {path}: is a folder; name a JSON file")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path.parent).close()  # (not the .part name: another run may be writing it)
    except OSError as e:
        usage_error(f"{option} {path}: cannot write there ({e.strerror or e})")


def command_line(main: Callable):
    """A script run from a shell (``python benchmarks/bench_x.py ...``): as ``fastrl bench``
    typed in one, its process is re-run without heap trimming; exits with ``exit_status``, or
    130 on Ctrl-C and 143 on SIGTERM (``run`` has said where its rows are: no traceback, as
    ``fastrl bench``)."""
    from fastrl import stopping

    global TYPED_COMMAND
    TYPED_COMMAND = True
    try:
        with stopping.sigterm_stops():
            rows = main()
    except KeyboardInterrupt as e:
        sys.exit(stopping.exit_status(e))
    sys.exit(exit_status(rows))


def write_json(path: Path, rows: list[dict]):
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(rows, indent=1))
    os.replace(part, path)  # never a half-written file


def check_output(case: Case, call, outputs: dict, cases: list[Case]):
    """A baseline's result against its fastrl row's (compare_to, else the first fastrl row of
    its op and shape), where both are ``comparable``: None, or why they disagree. fastrl's
    own are kept for the baselines after them (the tests check fastrl against references)."""
    comparable = getattr(call, "comparable", None)
    if comparable is None:
        return None
    value = comparable(call()).detach().double().cpu()
    shape = json.dumps(case.shape)
    if case.provider.startswith("fastrl"):
        outputs[case.op, shape, case.provider] = value
        return None
    target = case.compare_to or next((c.provider for c in cases if c.op == case.op and c.shape == case.shape
                                      and c.provider.startswith("fastrl")), None)
    ours = outputs.get((case.op, shape, target))
    if ours is None:
        return None
    return disagreement(value, ours, target, getattr(call, "tolerance", 1e-4))


def disagreement(value: torch.Tensor, ours: torch.Tensor, name: str, tolerance: float):
    """None where |value - ours| <= tolerance * max(1, max |ours|) everywhere, else a message."""
    if value.shape != ours.shape:
        return f"shape {tuple(value.shape)}, {name}'s {tuple(ours.shape)}"
    if not ours.numel():
        return None
    diff = (value - ours).abs().masked_fill(value.isnan() & ours.isnan(), 0.0).nan_to_num(nan=float("inf"))
    allowed = tolerance * max(1.0, float(ours.abs().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).max()))
    worst = float(diff.max())
    return None if worst <= allowed else f"differs from {name} by up to {worst:.3g} (allowed {allowed:.3g})"


def exit_status(rows) -> int:
    """1 where a fastrl row failed or a row's result disagrees with its fastrl row's (a
    baseline that cannot run is only reported), else 0."""
    failed = [r for r in rows or [] if (r["error"] and r["provider"].startswith("fastrl")) or r.get("disagrees")]
    for r in failed:
        print(f"FAILED: {r['op']} {r['provider']} at {r['shape']}: {r['error'] or r['disagrees']}", file=sys.stderr)
    return 1 if failed else 0


def format_row(row: dict) -> str:
    shape = " ".join(f"{k}={v}" for k, v in row["shape"].items())
    if row["error"]:
        return f"{row['op']:<22} {shape:<36} {row['provider']:<26} error: {row['error']}"
    disagrees = f"  DISAGREES: {row['disagrees']}" if row.get("disagrees") else ""
    mem = "" if row["peak_memory_bytes"] is None else f" {row['peak_memory_bytes'] / 2**20:10.1f} MiB"
    floor = ""
    if row.get("bandwidth_floor_ms"):
        floor = (f"  {row['median_ms'] / row['bandwidth_floor_ms']:.2f}x the bandwidth floor, "
                 f"{row['kernels_per_call']} kernel(s)")
    return f"{row['op']:<22} {shape:<36} {row['provider']:<26} {row['median_ms']:10.3f} ms{mem}{floor}{disagrees}"


def _ratio(value: float) -> str:
    """3 significant digits (.1f printed 0.0x for 0.04x), without an exponent (1230, not 1.23e+03)."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def print_speedups(rows: list[dict]):
    """For each (op, shape): every provider's median over fastrl's, measured in this run."""
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["op"], json.dumps(row["shape"])), []).append(row)
    print("\nspeed-up of fastrl (provider median / fastrl median):")
    for (op, shape), group in groups.items():
        ours = {r["provider"]: r for r in group if r["provider"].startswith("fastrl") and r["median_ms"]}
        if not ours:
            continue
        first = next(iter(ours))
        ratios = []
        for r in group:
            base = ours.get(r.get("compare_to") or first)
            if r["provider"] in ours or not r["median_ms"] or base is None:
                continue
            ratios.append(f"{r['provider']} {_ratio(r['median_ms'] / base['median_ms'])}x vs {base['provider']}")
        print(f"  {op:<22} {' '.join(f'{k}={v}' for k, v in json.loads(shape).items()):<36} {', '.join(ratios)}")
