"""`msctr train --nproc N`: the torchrun it starts, and processes that end with their launcher;
and the command line that continues an interrupted command (`resumable`).

Three levels of processes: the launcher (the `msctr train ... --nproc N` the user started),
torchrun's agent (`python -m msctr.train.launch`: torch's own agent, run quietly), and the N
training processes (workers), which the agent starts each in a session of its own.

- **Ctrl-C, SIGTERM.** The agent runs in a session of its own, so a terminal's Ctrl-C reaches
  the launcher alone, and a signal sent to the launcher's pid alone does the same: the
  launcher hands it to the agent, the agent to every worker, and the workers stop together at
  the next step boundary. The launcher then prints the one `interrupted (...)` line (rank 0
  leaves it to the launcher) and exits 128 + the signal. A second signal makes the launcher
  SIGKILL the agent and the workers at once.
- **SIGKILL of the launcher** (or of the agent). No process can act on its own SIGKILL, so
  each level asks the kernel to SIGKILL it when its parent ends (Linux's PR_SET_PDEATHSIG):
  the agent dies with the launcher, each worker with the agent, and the run folder's lock
  (held by rank 0) goes with them. The same command resumes. Without PR_SET_PDEATHSIG (not
  Linux) the workers of a killed launcher run on; docs/distributed.md says how to stop them.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from msctr.errors import Interrupted, UserError

LAUNCHER_PID = "MSCTR_LAUNCHER_PID"  # set by the launcher for the agent and the workers
AGENT_PID = "MSCTR_AGENT_PID"  # set by the agent for its workers
# the signals that stop a run (torch's agent also handles SIGHUP and SIGQUIT and exits
# 128 + the signal for those too)
STOPS = (signal.SIGINT, signal.SIGTERM)
_AGENT_STOPS = (*STOPS, signal.SIGHUP, signal.SIGQUIT)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _env_pid(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None


def launched_by_msctr() -> bool:
    """A worker of `msctr train --nproc N`: its launcher, not rank 0, reports an interrupt."""
    return _env_pid(LAUNCHER_PID) is not None


def user_pid() -> int:
    """The process the user started for this run, the one to stop: the launcher of
    `--nproc N`, else this process (rank 0 under a torchrun of one's own stops every rank)."""
    return _env_pid(LAUNCHER_PID) or os.getpid()


def die_with_parent(parent: int | None) -> None:
    """Have the kernel SIGKILL this process when its parent ends, in any way (Linux's
    PR_SET_PDEATHSIG). `parent`, when known, is the pid of the parent that started this
    process: if it ended before the request was made, this process was handed to another
    parent already and ends now. Elsewhere than Linux: nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):  # no usable libc: as elsewhere
        return
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def end_with_agent() -> None:
    """A worker started by a torchrun agent (`--nproc N`'s or one's own torchrun) ends with
    it: a killed agent leaves no worker training and holding the run folder's lock. The
    agent passes its pid down for the check against the start-up race: the workers ask only
    after their imports, seconds after they started."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_parent(_env_pid(AGENT_PID))


def wait(procs: list[subprocess.Popen]) -> list[int]:
    """The exit statuses of `procs`, once all have ended. Waited for in short sleeps, not in
    waitpid: a signal the kernel hands to another of this process's threads (torch's,
    SQLite's) would not end a blocking waitpid, and its handler would run only when the
    processes had ended on their own."""
    while any(p.poll() is None for p in procs):
        time.sleep(0.05)
    return [p.returncode for p in procs]


def torchrun(nproc: int, args: list[str], worker: tuple[str, ...] = ("-m", "msctr")) -> int:
    """Run `torchrun --standalone --nproc-per-node N -m msctr ARGS` as the agent below; its
    exit status. Raises `Interrupted` when the run was stopped by a signal (sent to this
    process, its process group, the agent or the workers), once every process has ended.
    `worker`: what each worker runs in place of `-m msctr` (tests run a script that installs
    their hooks first)."""
    cmd = [sys.executable, "-m", "msctr.train.launch", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", *worker, *args]
    got: list[int] = []  # the signals this process received, in order
    unsent: list[int] = []  # those that came before the agent existed
    proc: subprocess.Popen | None = None

    def hand_on(signum: int, first: bool) -> None:
        if first:  # the agent stops the workers at their next step boundary
            proc.send_signal(signum)
        else:  # a second signal stops at once: every file is written atomically anyway
            _kill([*_descendants(proc.pid), proc.pid])

    def forward(signum: int, frame) -> None:
        got.append(signum)
        if proc is None:
            unsent.append(signum)
        else:
            hand_on(signum, first=len(got) == 1)

    old = {s: signal.signal(s, forward) for s in STOPS}
    try:
        env = {**os.environ, LAUNCHER_PID: str(os.getpid())}
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        for i, s in enumerate(unsent):
            hand_on(s, first=i == 0)
        (code,) = wait([proc])
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if proc is not None and proc.poll() is None:  # only when this process fails itself
            _kill([*_descendants(proc.pid), proc.pid])
            proc.wait()
    if got:
        raise Interrupted(got[0])
    if code < 0:  # the agent was killed (its workers died with it)
        raise Interrupted(-code)
    if code - 128 in _AGENT_STOPS:  # the agent or a worker was stopped by a signal
        raise Interrupted(code - 128)
    return code


def resume_command() -> str:
    """The command line that continues this one: the same arguments, never --fresh (under
    torchrun on one machine, with --nproc; across machines, the same torchrun commands)."""
    line = "msctr " + shlex.join(a for a in sys.argv[1:] if a != "--fresh")
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1:
        if int(os.environ.get("LOCAL_WORLD_SIZE", processes)) != processes:
            return "the same torchrun command on every machine"
        if "--nproc" not in sys.argv:
            line += f" --nproc {processes}"
    return line


@contextmanager
def resumable() -> Iterator[None]:
    """A command that resumes: when it is interrupted, main()'s message gives the command
    line that continues it."""
    try:
        yield
    except Interrupted as e:
        e.resume = resume_command()
        raise


def launch_workers(nproc: int) -> int:
    """`msctr train ... --nproc N` in the process the user started: the same command under
    torchrun in N workers; their exit status."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--nproc is for starting torchrun; under torchrun, leave it out")
    return torchrun(nproc, without_nproc(sys.argv[1:]))


def without_nproc(args: list[str]) -> list[str]:
    """The launcher's arguments as the workers get them: without --nproc N (under torchrun,
    --nproc is refused)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _stop(signum: int, frame) -> None:
    raise Interrupted(signum)


def _agent(argv: list[str]) -> int:
    """torch's elastic agent (torchrun) with `argv`, quiet: rank 0 and the launcher say what
    happened in one line, instead of torch's log lines and tracebacks. Returns the exit
    status: 0, the first failed worker's status, or 128 + the signal that stopped the run."""
    die_with_parent(_env_pid(LAUNCHER_PID))
    os.environ[AGENT_PID] = str(os.getpid())  # for the workers' start-up check
    for s in _AGENT_STOPS:  # torch's own handlers replace these once the workers start
        signal.signal(s, _stop)
    logging.disable(logging.CRITICAL)  # this process runs torch's agent alone
    try:
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.run import parse_args, run

        try:
            run(parse_args(argv))
        except SignalException as e:  # torch's agent stopped the workers with it, and waited
            return 128 + int(e.sigval)
        except ChildFailedError as e:
            return _failed(e)
        return 0
    except Interrupted as e:  # before the workers started
        return 128 + e.signum
    finally:
        for s in _AGENT_STOPS:  # ending already: a further signal must not cut that short
            signal.signal(s, signal.SIG_IGN)
        _kill(_descendants(os.getpid()))  # left only if torch's agent failed itself


def _failed(e) -> int:
    """A worker failed: its exit status, when it said why itself (a one-line error or a
    traceback); killed by a signal from outside (say, out of memory), one line here."""
    rank, failure = e.get_first_failure()
    if failure.exitcode > 0:
        return failure.exitcode
    name = signal.Signals(-failure.exitcode).name
    print(
        f"error: training process {rank} (pid {failure.pid}) was killed by {name} from outside "
        "msctr (out of memory?) and the others were stopped; run the same command to resume",
        file=sys.stderr,
    )
    return 1


def _stat(path: str) -> list[str]:
    """The fields of a /proc `path`/stat after the command name (state, ppid, ...); [] if
    there is none (the process or thread is gone)."""
    try:
        with open(f"{path}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()  # the name may hold ") "
    except (OSError, IndexError):
        return []


def _running(pid: int) -> bool:
    """Whether any thread of `pid` still runs. Not the first thread's state alone: when a
    process is killed, that thread can be a zombie while others still exit, and the open
    files (the run folder's lock) are closed only with the last."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any(_stat(f"/proc/{pid}/task/{t}")[:1] not in ([], ["Z"], ["X"]) for t in threads)


def _descendants(root: int) -> list[int]:
    """Every process below `root`, by parent pid (Linux's /proc; elsewhere none): the agent's
    workers run in sessions of their own, so no process group holds them all."""
    if not os.path.isdir("/proc"):
        return []
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(f"/proc/{entry}")):
            parent[int(entry)] = int(fields[1])
    found, frontier = [], {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier}
        found += sorted(frontier)
    return found


def _kill(pids: list[int], seconds: float = 5.0) -> None:
    """SIGKILL `pids`, each with its process group (a worker leads a session of its own,
    with whatever it started), and wait until none runs, for at most `seconds`: a process
    whose threads have all exited holds no lock, reaped or not (its parent, or init, reaps
    it)."""
    for pid in pids:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
                break
            except OSError:  # not a group leader, or gone already
                pass
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_running(p) for p in pids):
            return
        time.sleep(0.02)


if __name__ == "__main__":
    code = _agent(sys.argv[1:])
    # out without the interpreter's teardown, where nothing is left to do: one test run of
    # 14 printed a C++ "terminate called without an active exception" after the interrupted
    # line, from a process not traced; an agent that ends so cannot be its source (none in
    # 18 runs since)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
