"""What the experiments share: worker processes, running means, verdict lines."""
import os
import signal
import time

import pytest

import torch

from fastrl.experiments.common import Workers, smoothed, verdicts


def test_workers_run_jobs_in_one_thread_processes_and_take_follow_ups():
    seen = []
    with Workers(workers=2) as workers:
        workers.submit(torch.get_num_threads)
        for fn, args, result in workers.finished():
            seen.append((fn, args, result))
            if fn is torch.get_num_threads:
                workers.submit(os.getpid)
    assert [(fn, args) for fn, args, _ in seen] == [(torch.get_num_threads, ()), (os.getpid, ())]
    assert seen[0][2] == 1 and seen[1][2] != os.getpid()


def test_workers_without_sched_getaffinity(monkeypatch):
    """macOS and Windows have no os.sched_getaffinity: Workers raised AttributeError there."""
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    with Workers() as workers:
        assert workers.pool._max_workers == (os.cpu_count() or 1)


def ctrl_c_state():
    return signal.getsignal(signal.SIGINT), signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set())


def test_a_ctrl_c_while_a_job_is_submitted_stops_the_workers(monkeypatch):
    """Ctrl-C was ignored while submit started a worker: pressed then, it was lost. It raises,
    and leaving the block stops the worker; workers ignore Ctrl-C and do not keep it blocked."""
    with Workers(workers=1) as workers:
        workers.submit(ctrl_c_state)
        assert [result for *_, result in workers.finished()] == [(signal.SIG_IGN, False)]
    started = []
    with pytest.raises(KeyboardInterrupt):
        with Workers(workers=1) as workers:
            submit = workers.pool.submit

            def pressed_as_the_worker_starts(*args):
                future = submit(*args)
                started.extend(workers.pool._processes.values())
                os.kill(os.getpid(), signal.SIGINT)
                return future

            monkeypatch.setattr(workers.pool, "submit", pressed_as_the_worker_starts)
            workers.submit(time.sleep, 60)
    assert started and not any(process.is_alive() for process in started)
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())


def test_smoothed_and_verdicts():
    assert smoothed([0, 10, 20], window=2) == [0.0, 5.0, 15.0]
    lines = verdicts([{"criterion": "a", "measured": "1", "held": True}, {"criterion": "b", "measured": "2", "held": False},
                      {"criterion": "c", "measured": "3", "held": None}])
    assert lines == ["[HELD] a: 1", "[NOT HELD] b: 2", "[reported] c: 3"]


def test_workers_take_the_number_asked_for():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with Workers(workers=cores + 1) as workers:
        assert workers.pool._max_workers == cores + 1
    with Workers() as workers:
        assert workers.pool._max_workers == cores


def test_set_aside_finds_earlier_runs_beside_and_inside_the_folder(tmp_path):
    from fastrl.experiments.common import set_aside

    out = tmp_path / "x"
    out.mkdir()
    assert set_aside(out) == []
    for folder in (tmp_path / ".x.replaced.12", out / ".replaced.34", tmp_path / ".y.replaced.56", out / "replaced.7"):
        folder.mkdir()
    assert set_aside(out) == sorted([tmp_path / ".x.replaced.12", out / ".replaced.34"])
