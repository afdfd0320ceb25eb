"""Test-only hooks into training: a signal at an exact step of a run, and a record of the rows
each process trains on. msctr itself has no test switches; these wrap what it exposes
(`fit_one`'s `before_step`, `SplitData.train_batches`, the worker command of `train --nproc`).

- In the test's own process: `install(monkeypatch, signal_at=..., shards=...)`.
- In a child process: run this file in place of `python -m msctr`
  (`[sys.executable, HOOKS, "train", ...]`, or as torchrun's script). It reads the hooks from
  MSCTR_TEST_SIGNAL_AT and MSCTR_TEST_SHARDS, installs them, runs msctr's command line, and
  `train --nproc N` starts its workers through this file too.

signal_at, "SIG:model label:seed:epoch:step" (e.g. KILL:MMoE:0:2:3; epoch and step counted
from 1; a label may hold ':'): the process sends itself SIG (KILL, INT, TERM, STOP) just before
that step of that epoch of that run. shards, a folder: each process appends the training rows
of every batch it trains on (in-memory loader), one JSON line (epoch, step, row positions), to
<folder>/part_<r>_of_<n>.jsonl.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOOKS = str(Path(__file__).resolve())
SIGNAL_AT, SHARDS = "MSCTR_TEST_SIGNAL_AT", "MSCTR_TEST_SHARDS"


def signal_hook(spec: str):
    """`fit_one` wrapped so that the run `spec` names gets a `before_step` sending the signal."""
    sig, rest = spec.split(":", 1)
    label, at_seed, at_epoch, at_step = rest.rsplit(":", 3)
    signum = getattr(signal, f"SIG{sig}")

    def before_step(epoch: int, step: int) -> None:
        if (epoch + 1, step + 1) == (int(at_epoch), int(at_step)):
            os.kill(os.getpid(), signum)

    def wrap(fit_one):
        @functools.wraps(fit_one)
        def hooked(recipe, entry, seed, *args, **kwargs):
            if entry.key == label and seed == int(at_seed):
                kwargs["before_step"] = before_step
            return fit_one(recipe, entry, seed, *args, **kwargs)

        return hooked

    return wrap


def recorded_batches(folder: Path, train_batches):
    """`SplitData.train_batches` that records each batch's rows (see the module's docstring);
    the batches are those `Columns.batches` gives."""
    from msctr.train.splits import EpochBatches

    @functools.wraps(train_batches)
    def recorded(self, batch_size, seed, epoch, part=(0, 1), max_steps=None):
        batches = train_batches(self, batch_size, seed, epoch, part, max_steps)
        if self.train is None:
            return batches
        out = Path(folder) / f"part_{part[0]}_of_{part[1]}.jsonl"
        rows = self.train.batch_rows(batch_size, shuffle=True, seed=seed, epoch=epoch, part=part)

        def each():
            for step, r in enumerate(rows):
                with out.open("a") as fh:
                    fh.write(json.dumps({"epoch": epoch, "step": step, "rows": r.tolist()}) + "\n")
                yield self.train.batch(r)

        return EpochBatches(each(), len(batches))

    return recorded


def install(setattr, signal_at: str | None = None, shards: str | Path | None = None) -> None:
    """Install the hooks with `setattr(obj, name, value)` (a MonkeyPatch's, or the builtin)."""
    from msctr import tune
    from msctr.train import launch, loop
    from msctr.train.splits import SplitData

    if signal_at:
        wrap = signal_hook(signal_at)
        setattr(loop, "fit_one", wrap(loop.fit_one))
        setattr(tune, "fit_one", wrap(tune.fit_one))
    if shards:
        setattr(SplitData, "train_batches", recorded_batches(shards, SplitData.train_batches))
    setattr(launch, "torchrun", functools.partial(launch.torchrun, worker=(HOOKS,)))


def main() -> None:
    install(setattr, os.environ.get(SIGNAL_AT), os.environ.get(SHARDS))
    from msctr.cli import main as cli

    cli()


if __name__ == "__main__":
    if str(ROOT) not in sys.path:  # run as a script: msctr from this checkout, as `-m` does
        sys.path.insert(0, str(ROOT))
    main()
