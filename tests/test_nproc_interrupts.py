"""`msctr train --nproc 2` stopped from outside (docs/distributed.md, msctr/train/launch.py):
a Ctrl-C to the process group as a terminal sends it, SIGTERM or two SIGINTs to the launcher
alone, and SIGKILL of the launcher. Each ends every process of the run (the launcher, the
torchrun agent and both workers, each worker in a session of its own), says so in one line
where anyone is left to say it, and leaves the run folder unlocked and resumable.

Through the real entry point, `python -m msctr`, with this checkout first on PYTHONPATH
(the agent and the workers inherit it). Each launch is three Python processes importing
torch: 10-30 s on a loaded 2-core machine, so these are marked slow."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from train_hooks import HOOKS

ROOT = Path(__file__).resolve().parents[1]
WAIT = 180  # seconds any one wait may take (start-up under load), never more

# No early stop (patience), so a run is still training whenever a test stops it.
RECIPE = """
name: nproc
data: {data}
out: {out}
models:
  - {{name: dnn, label: DNN, params: {{hidden: [16], dropout: 0.0, batch_norm: false}}}}
train:
  batch_size: 256
  epochs: {epochs}
  seeds: [0]
  threads: 1
  early_stopping: {{patience: 1000}}
"""

# each worker stops itself (SIGSTOP) before the first step of epoch 2, after epoch 1's
# last.pt: the run is frozen mid-training at a known place (the test hook of docs/testing.md)
FREEZE = "STOP:DNN:0:2:1"

pytestmark = pytest.mark.slow


def recipe(tmp: Path, data: Path, epochs: int) -> Path:
    path = tmp / "r.yaml"
    path.write_text(RECIPE.format(data=data, out=tmp / "run", epochs=epochs))
    return path


def start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (so that a reused pid is not taken for it); None when
    no thread of it runs. A killed process's first thread can be a zombie while the others
    still exit and hold its files (the run folder's lock): those count."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            started = int(fh.read().rsplit(")", 1)[1].split()[19])
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    return started if any(state(f"{pid}/task/{t}") not in "ZX" for t in threads) else None


def state(pid: int | str) -> str:
    """The state letter of /proc/`pid`/stat (`pid` may be 'PID/task/TID'); X when gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def descendants(root: int) -> dict[int, int]:
    """Every process below `root` (by parent pid, across sessions): pid -> start time."""
    parent = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parent[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = {}, [root]
    while frontier:
        below = [p for p, pp in parent.items() if pp in frontier]
        found.update({p: start_time(p) for p in below})
        frontier = below
    return {p: t for p, t in found.items() if t is not None}


def until(done: Callable[[], object], what: str, seconds: float = WAIT) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = done()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}")


def alive(procs: dict[int, int]) -> list[int]:
    return [p for p, t in procs.items() if start_time(p) == t]


@contextmanager
def launch(recipe_path: Path, *args: str, env: dict | None = None) -> Iterator[tuple]:
    """`msctr train RECIPE --nproc 2 ARGS` in a process group of its own, as a terminal
    starts a command; yields (launcher, the two workers once running: pid -> start time).
    Whatever still runs at the end is SIGKILLed, by process group and by worker."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    if "MSCTR_TEST_SIGNAL_AT" not in (env or {}):
        full.pop("MSCTR_TEST_SIGNAL_AT", None)
    cmd = [sys.executable, HOOKS, "train", str(recipe_path), "--nproc", "2", *args]
    proc = subprocess.Popen(
        cmd, env=full, cwd=ROOT, start_new_session=True, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    seen: dict[int, int] = {}
    try:

        def running() -> dict[int, int]:
            """Every process of the run (agent, workers, helpers) once both workers run."""
            below = descendants(proc.pid)
            seen.update(below)
            return below if len(workers(below)) == 2 else {}

        yield proc, running
    finally:
        for pgid in (proc.pid, *alive(seen)):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        proc.kill()
        proc.wait(timeout=WAIT)
        proc.stdout.close()
        proc.stderr.close()


def workers(procs: dict[int, int]) -> list[int]:
    """The training processes among `procs` (`train_hooks.py train`, the test's stand-in for
    `-m msctr train`; not the agent's `-m msctr.train.launch ... train_hooks.py train`)."""
    return [p for p in procs if f"{HOOKS} train" in (c := cmdline(p)) and ".launch" not in c]


def frozen(running: Callable[[], dict[int, int]]) -> dict[int, int]:
    """The run's processes once both workers have stopped themselves (FREEZE), else {}."""
    procs = running()
    return procs if procs and all(state(p) == "T" for p in workers(procs)) else {}


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def lock_is_free(run: Path) -> bool:
    fd = os.open(run / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def assert_one_interrupted_line(proc, err: str, name: str, recipe_path: Path) -> None:
    assert proc.returncode == 128 + signal.Signals[name], (proc.returncode, err[-3000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-3000:]
    assert lines[0] == (
        f"interrupted ({name}): no file was left half-written; "
        f"resume with: msctr train {recipe_path} --nproc 2"
    )


@pytest.mark.parametrize("name, to", [("SIGINT", "group"), ("SIGTERM", "launcher")])
def test_a_signal_ends_every_process_in_one_line(tmp_path, data_dir, name, to):
    r = recipe(tmp_path, data_dir, epochs=1000)
    run = tmp_path / "run"
    with launch(r) as (proc, running):
        until(lambda: (run / "DNN" / "seed_0" / "last.pt").is_file(), "epoch 1")
        procs = until(running, "both workers")
        sig = signal.Signals[name]
        if to == "group":  # Ctrl-C in a terminal: the whole foreground process group
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=WAIT)
        assert_one_interrupted_line(proc, err, name, r)
        assert "Traceback" not in err
        assert alive(procs) == []  # the launcher returns once every process has ended
        assert lock_is_free(run)


def test_a_second_sigint_ends_every_process_at_once(tmp_path, data_dir):
    # the workers are frozen, so the first SIGINT cannot stop them at a step boundary: the
    # agent waits for them until the second one ends it, and the workers with it
    r = recipe(tmp_path, data_dir, epochs=3)
    with launch(r, env={"MSCTR_TEST_SIGNAL_AT": FREEZE}) as (proc, running):
        procs = until(lambda: frozen(running), "both workers frozen")
        os.kill(proc.pid, signal.SIGINT)
        # the agent handed it on: both frozen workers hold a pending SIGINT
        until(lambda: all(pending(p, signal.SIGINT) for p in workers(procs)), "SIGINT handed on")
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=WAIT)
        assert_one_interrupted_line(proc, err, "SIGINT", r)
        assert alive(procs) == []
        assert lock_is_free(tmp_path / "run")


def pending(pid: int, sig: int) -> bool:
    """Whether `sig` waits to be delivered to process `pid` (its shared pending set)."""
    with open(f"/proc/{pid}/status") as fh:
        mask = next(int(x.split()[1], 16) for x in fh if x.startswith("ShdPnd:"))
    return bool(mask >> (sig - 1) & 1)


def test_killing_the_launcher_ends_the_workers_and_frees_the_run(tmp_path, data_dir):
    r = recipe(tmp_path, data_dir, epochs=3)
    run = tmp_path / "run"
    with launch(r, "--no-eval", env={"MSCTR_TEST_SIGNAL_AT": FREEZE}) as (proc, running):
        procs = until(lambda: frozen(running), "both workers frozen")
        assert not lock_is_free(run)  # rank 0 holds it
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=WAIT)
        # the agent dies with the launcher, each worker with the agent (PR_SET_PDEATHSIG)
        until(lambda: alive(procs) == [], "the agent and the workers to end", seconds=10)
        assert lock_is_free(run)
    with launch(r, "--no-eval") as (proc, _):
        out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, err[-3000:]
        assert "resumed and trained DNN seed 0" in out
