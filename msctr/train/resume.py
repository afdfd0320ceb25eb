"""Resuming: which runs of a run folder belong to a recipe, the per-epoch resume state, and
starting over (`--fresh`).

A run folder holds one recipe's results. Each (model, seed) run records what its results
depend on (`fingerprint.json`, see `msctr.recipe.run_fingerprint`) when it starts. Before
`msctr train` writes anything, every run already in the folder is checked against the recipe:
a run whose fingerprint differs in a result-affecting key refuses the whole train (one line,
naming the key), so old results never sit beside a new recipe. A finished run is kept as it
is; an unfinished one continues from `last.pt`, the state after its last finished epoch.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.io import atomic_path, read_json, reading, sweep_stale, write_json, write_text
from msctr.recipe import Recipe, fingerprint_change, run_fingerprint
from msctr.runs import RunFolder, SeedRun, model_folder
from msctr.train.runtime import set_rng_state

RESUME_VERSION = 1


def _fmt(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def stored_fingerprint(run: SeedRun) -> dict | None:
    if not run.fingerprint.is_file():
        return None
    with reading(run.fingerprint, "remove that run's folder, or start over with --fresh"):
        return read_json(run.fingerprint)


@dataclass
class FolderCheck:
    """What the check found: model folders renamed to a new label (old, new)."""

    renamed: list[tuple[str, str]]


def check_folder(recipe: Recipe, folder: RunFolder, schema: Schema) -> FolderCheck:
    """Refuse, before anything is written, a recipe that the runs already in `folder` do not
    belong to; rename the folder of a model whose label alone changed.

    Allowed: eval keys, added models or seeds, a label changed on a model otherwise the same
    (its folder is renamed), models or seeds left out (their runs stay, unused). Refused: any
    result-affecting difference (data, model, params, train keys) in a run that is there."""
    wanted = {model_folder(e.key): e for e in recipe.models}
    fps = {name: run_fingerprint(recipe, e, schema) for name, e in wanted.items()}
    present: dict[str, list[tuple[SeedRun, dict]]] = {}
    for model in folder.models():
        runs = []
        for run in folder.seed_runs(model):
            fp = stored_fingerprint(run)
            if fp is None:
                if run.finished or run.resume.is_file():
                    raise UserError(
                        f"'{run.folder}' was trained by an msctr that recorded no fingerprint, "
                        "so it cannot be checked against this recipe; add --fresh to start over"
                    )
                continue  # nothing usable: the run starts from scratch
            runs.append((run, fp))
        if runs:
            present[model.name] = runs
    known = {m.name for m in folder.models()}
    for name, e in wanted.items():
        if name not in known and os.path.lexists(folder.root / name):
            # a folder of the user's (a copy of a model folder, say): training into it would
            # take its runs for this model's ("kept ... finished earlier")
            raise UserError(
                f"'{folder.root / name}' is in the run folder but msctr did not make it there "
                f"(a copy of yours?), and model '{e.key}' would train into it; move it out of "
                "the run folder, or give the model another label"
            )
    renamed = []
    for name in wanted:
        if name in present or name in known:
            continue
        for old in [o for o in present if o not in wanted]:
            same = all(fingerprint_change(fp, fps[name], name) is None for _, fp in present[old])
            if same:  # the label alone changed: the runs are this model's
                present[name] = present.pop(old)
                renamed.append((old, name))
                break
    for name, runs in present.items():
        for run, fp in runs:
            if name in wanted:
                change = fingerprint_change(fp, fps[name], wanted[name].key)
            else:  # a model the recipe no longer lists: its runs must still share data/train
                any_fp = next(iter(fps.values()))
                change = fingerprint_change(fp, any_fp, name, parts=("data", "train"))
            if change is not None:
                raise UserError(_changed(change, folder, recipe, f"{name}/{run.folder.name}"))
    if renamed:  # only once every run passed; the manifest first, so it never misses one
        folder.record_models([*(m.name for m in folder.models()), *wanted])
    for old, name in renamed:
        os.rename(folder.root / old, folder.root / name)
    return FolderCheck(renamed)


def _changed(
    change: tuple[str, object, object], folder: RunFolder, recipe: Recipe, run: str
) -> str:
    """Why the runs in the folder are not this recipe's, and what to do: for a changed data
    content, the dataset is named (prepared again, or the recipe points at other data), and
    the runs, valid for the data they were trained on, are not called a mix of recipes."""
    key, was, now = change
    again = "add --fresh to start over, or train into another folder (--set out=...)"
    if key.startswith("data"):
        return (
            f"the dataset '{recipe.data}' is not the one '{folder.root}' was trained on "
            f"(prepared_md5 {_fmt(was)} there in {run}, {_fmt(now)} in '{recipe.data}'): it was "
            "prepared again since, or the recipe points at other data; point `data:` at the "
            f"dataset those runs were trained on, or, to train on this one, {again}"
        )
    return (
        f"{key} changed since '{folder.root}' was trained ({_fmt(was)} there in {run}, "
        f"{_fmt(now)} now), so its runs are not this recipe's; {again}"
    )


def clear_folder(folder: RunFolder) -> None:
    """`--fresh`: remove what msctr wrote in the run folder, by name: the runs' files in the
    model folders it made (then those folders, when nothing else is left in them), its
    recipe.yaml, results, report and figures. Anything else stays: what the user keeps there
    (a copy of a model folder, notes, images), and bench.json, the output of another command
    (dated, naming the checkpoints it measured; the next bench-inference replaces it)."""
    if not folder.root.is_dir():
        return
    figures = folder.figures()
    for model in folder.models():
        for run in folder.seed_runs(model):
            for path in run.files:
                path.unlink(missing_ok=True)
            sweep_stale(run.folder)
            _remove_if_empty(run.folder)
        _remove_if_empty(model)
    for path in [folder.recipe, folder.results, folder.report, *figures]:
        path.unlink(missing_ok=True)
    folder.record_models(m.name for m in folder.models())  # those holding files of the user's


def _remove_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def save_checkpoint(path: Path, obj: object) -> None:
    """A checkpoint (best.pt's weights, last.pt's resume state), written whole or not at all.
    Serialized in memory first: torch's file writer reports a full disk as a RuntimeError
    about stream positions, a plain file write as the OSError it is."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getbuffer())


@dataclass
class ResumeState:
    """A run after its last finished epoch, as `last.pt` holds it: the model's weights, every
    optimizer's state, early stopping's (best score, best epoch, epochs waited), the log and
    history lines, the time spent, and every process's random state. `best` (not in last.pt)
    is best.pt's weights, read beside it. The loop records each finished epoch (`end_epoch`);
    `save` captures the weights and random states and writes last.pt, `load` reads it,
    `restore` puts it back into a run."""

    fingerprint: dict
    epoch: int = 0  # epochs finished
    model: dict | None = None
    optimizers: list[dict] = field(default_factory=list)
    stopping: tuple[float | None, int, int] = (None, -1, 0)
    log: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    rngs: list[dict] = field(default_factory=list)  # per rank, in rank order
    best: dict | None = None

    def restore(
        self, model: torch.nn.Module, optimizers, rank: int, device: torch.device
    ) -> dict | None:
        """Put the weights, the optimizers' state and `rank`'s random state back; the best
        epoch's weights on `device` (None before a best epoch)."""
        model.load_state_dict(self.model)
        for opt, saved in zip(optimizers, self.optimizers, strict=True):
            opt.load_state_dict(saved)
        set_rng_state(self.rngs[rank])
        return None if self.best is None else {k: v.to(device) for k, v in self.best.items()}

    def end_epoch(self, line: dict, stopping: tuple, history: list[dict], seconds: float) -> None:
        """One more epoch finished: its log line, early stopping's state after it, the
        history lines so far, the seconds spent since the run's start."""
        self.epoch += 1
        self.log.append(json.dumps(line))
        self.stopping, self.history, self.seconds = tuple(stopping), history, seconds

    def save(self, path: Path, model: torch.nn.Module, optimizers, rngs: list[dict]) -> None:
        """Capture the weights, the optimizers' state and every rank's random state (`rngs`,
        in rank order), and write last.pt."""
        self.model, self.rngs = model.state_dict(), rngs
        self.optimizers = [o.state_dict() for o in optimizers]
        state = {
            "version": RESUME_VERSION,
            "fingerprint": self.fingerprint,
            "epoch": self.epoch,
            "model": self.model,
            "optimizers": self.optimizers,
            "stopping": list(self.stopping),
            "log": self.log,
            "history": self.history,
            "seconds": self.seconds,
            "checkpoint_seconds": self.checkpoint_seconds,
            "rng": self.rngs[0],
        }
        if len(self.rngs) > 1:
            state["processes"] = len(self.rngs)
            state["rng_ranks"] = self.rngs
        save_checkpoint(path, state)

    @classmethod
    def load(cls, path: Path, fingerprint: dict) -> ResumeState:
        """A run's resume state; refused (one line) when unreadable or another run's."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated or not a checkpoint
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise UserError(
                f"'{path}' is not a readable resume state ({first}); remove it to retrain "
                "that run from its first epoch, or start over with --fresh"
            ) from None
        if state.get("version") != RESUME_VERSION or state.get("fingerprint") != fingerprint:
            raise UserError(
                f"'{path}' is the resume state of another recipe or msctr version; remove it "
                "to retrain that run from its first epoch, or start over with --fresh"
            )
        return cls(
            fingerprint,
            state["epoch"],
            state["model"],
            state["optimizers"],
            tuple(state["stopping"]),
            list(state["log"]),
            # a state from before history.jsonl: its log lines, the same epochs
            list(state.get("history") or [json.loads(x) for x in state["log"]]),
            state["seconds"],
            state["checkpoint_seconds"],
            state.get("rng_ranks") or [state["rng"]],
        )

    @property
    def processes(self) -> int:
        return len(self.rngs)


def open_run(files: SeedRun, fingerprint: dict, processes: int) -> ResumeState | None:
    """(rank 0) Make the run's folder ready; its resume state, best weights included, if it
    has one. A run interrupted under N processes resumes under N: each one's dropout stream
    is in it."""
    files.folder.mkdir(parents=True, exist_ok=True)
    sweep_stale(files.folder)  # a checkpoint half-written by a killed earlier run
    if not files.resume.is_file():
        write_json(files.fingerprint, fingerprint)
        write_text(files.log, "")
        return None
    state = ResumeState.load(files.resume, fingerprint)
    if state.processes != processes:
        was = state.processes
        raise UserError(
            f"'{files.resume}' was written by a run of {was} process(es), this one has "
            f"{processes}; resume it with the same number (msctr train --nproc {was}), or remove "
            "last.pt to retrain that run from its first epoch"
        )
    if state.stopping[1] >= 0:  # best.pt holds the best epoch's weights (see docs)
        if not files.checkpoint.is_file():
            raise UserError(
                f"'{files.checkpoint}' is missing, so '{files.resume}' cannot be resumed; "
                "remove last.pt to retrain that run from its first epoch, or use --fresh"
            )
        state.best = torch.load(files.checkpoint, map_location="cpu", weights_only=True)
    write_text(files.log, "".join(line + "\n" for line in state.log))
    return state
