"""A run's history.jsonl: every figure of every epoch, one JSON line each, the plain source
of truth any tool can read (docs/tracking.md), and the trackers fed from it.

An epoch's line is made before the resume state is saved (the state holds the history, so a
resumed run rewrites the file to exactly the epochs it restored: one continuous history after
any stop, kill -9 included), and written to the file and the trackers after.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from msctr.data.schema import Schema
from msctr.evaluate.metrics import compute_all
from msctr.io import write_text
from msctr.recipe import ModelEntry, Recipe
from msctr.runs import SeedRun
from msctr.track import Target, Trackers

# compute_all's figures that the log line already has (val_auc, val_logloss) or that are
# the same every epoch (the validation rows and their click rate)
_SKIP = ("n", "ctr", "auc", "logloss")


class History:
    """One run's epochs, on rank 0 (`main`; elsewhere every call does nothing)."""

    def __init__(
        self,
        files: SeedRun,
        recipe: Recipe,
        entry: ModelEntry,
        schema: Schema,
        fingerprint: dict,
        resumed: list[dict] | None,
        main: bool = True,
        tracking: Path | None = None,
        run: str | None = None,
    ):
        """`resumed`: the history lines of the resume state the run continues from (None: it
        starts afresh); `tracking`: the folder holding the trackers' stores (the run folder;
        None: no trackers, only history.jsonl); `run`: the run's name there (default: its
        seed folder relative to `tracking`; a tune trial, whose folder is scratch, names
        itself)."""
        self.main, self.files, self.num_scenarios = main, files, schema.num_scenarios
        self.lines: list[dict] = []
        if resumed is not None:
            self.lines = list(resumed)
        self._pending: dict | None = None
        self.trackers = None
        if not main:
            return
        write_text(files.history, "".join(json.dumps(r) + "\n" for r in self.lines))
        if tracking is not None and recipe.train.log:
            run = run or files.folder.resolve().relative_to(tracking.resolve()).as_posix()
            params = {"recipe": recipe.name, "label": entry.key, "run": run, "data": recipe.data}
            target = Target(tracking, recipe.name, run, schema.scenario_names, params | fingerprint)
            self.trackers = Trackers(recipe.train.log, target, self.lines, resumed is not None)

    def add(self, line: dict, extra: dict, labels: np.ndarray, p: np.ndarray, scenario) -> None:
        """The epoch's line: the log line, `extra` (learning rate, seconds) and every figure
        the evaluator computes on the validation rows (`labels`, scores `p`, `scenario`), per
        scenario too. It joins `lines` (the resume state holds them); `commit` writes it."""
        if not self.main:
            return
        val = compute_all(labels, p, np.asarray(scenario), self.num_scenarios)
        record = {**line, **extra}
        record.update({f"val_{k}": v for k, v in val.items() if k not in _SKIP})
        self.lines.append(record)
        self._pending = record

    def commit(self) -> None:
        """After the resume state holding the epoch is on disk: the file, then the trackers."""
        if not self.main or self._pending is None:
            return
        with self.files.history.open("a") as fh:
            fh.write(json.dumps(self._pending) + "\n")
        if self.trackers is not None:
            self.trackers.epoch(self._pending)
        self._pending = None

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()
