"""The training loop: one step, one epoch, early stopping, one (model, seed) run, a recipe.

Each run trains with early stopping on the validation split, restores the best epoch's
weights and scores the test split; where the files go is `msctr.runs`' business.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from msctr.data.batch import Batch
from msctr.data.loader import Columns
from msctr.errors import UserError
from msctr.evaluate.metrics import auc, logloss
from msctr.io import atomic_path, exclusive_lock, sweep_stale, write_json, write_text
from msctr.models.registry import build, parse_params, split_output, training_loss
from msctr.recipe import ModelEntry, Recipe, run_fingerprint
from msctr.runs import RunFolder, SeedRun
from msctr.train.optim import Optimizers, make_optimizer
from msctr.train.resume import RESUME_VERSION, check_folder, clear_folder, load_state, save_state
from msctr.train.runtime import (
    autocast,
    check_stop,
    keep_freed_memory,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    stop_at_step_boundaries,
)
from msctr.train.splits import SplitData


def _no_mark(phase: str) -> None:
    pass


def train_step(
    run: Callable[[Batch], object],
    batch: Batch,
    optimizer: Optimizers,
    device: torch.device,
    precision: str,
    mark: Callable[[str], None] = _no_mark,
) -> torch.Tensor:
    """One optimisation step: forward (under autocast for bf16), the training objective,
    backward, the optimizer's step. Returns the BCE part of the loss (what the log reports).

    `mark` is told where the phases begin ("fwd", "bwd", "opt") and where the step ends
    ("end"): the benchmarks time the phases through it; training passes nothing.
    """
    mark("fwd")
    with autocast(device, precision):
        out = run(batch)
    loss, total = training_loss(out, batch.label)
    optimizer.zero_grad(set_to_none=True)
    mark("bwd")
    total.backward()
    mark("opt")
    optimizer.step()
    mark("end")
    return loss


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    data: Columns,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
) -> np.ndarray:
    """Click probabilities for every row of `data`, in row order."""
    model.eval()
    out = []
    with autocast(device, precision):
        for batch in data.batches(batch_size):
            check_stop()
            logit, _ = split_output(model(batch.to(device)))
            out.append(torch.sigmoid(logit.float()).cpu())
    return torch.cat(out).double().numpy()


class EarlyStopping:
    """The best epoch so far by a validation metric (AUC up, logloss down), and whether
    `patience` epochs in a row have passed without improving on it."""

    def __init__(self, metric: str, patience: int):
        self.metric, self.patience = metric, patience
        self.best_score: float | None = None
        self.best_epoch = -1
        self.waited = 0

    def update(self, epoch: int, val: dict[str, float]) -> bool:
        """Record an epoch's validation metrics; True when it is the best so far."""
        score = val[self.metric] if self.metric == "auc" else -val[self.metric]
        improved = self.best_score is None or score > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.waited = score, epoch, 0
        else:
            self.waited += 1
        return improved

    @property
    def stop(self) -> bool:
        return self.waited >= self.patience


def make_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[rate]:,.0f} samples/s"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def train_epoch(
    run: Callable[[Batch], object],
    batches,
    steps: int,
    optimizer: Optimizers,
    device: torch.device,
    precision: str,
    progress: Progress | None = None,
    title: str = "",
    before_step: Callable[[int], None] | None = None,
) -> tuple[int, float, float]:
    """Up to `steps` training steps over `batches`: (rows seen, summed BCE, seconds).

    Between two steps a pending Ctrl-C/SIGTERM stops training (`check_stop`)."""
    task = None
    if progress is not None:
        task = progress.add_task(title, total=steps, loss=0.0, rate=0.0)
    seen, loss_sum, tick = 0, 0.0, time.perf_counter()
    for step, batch in enumerate(batches):
        if step >= steps:
            break
        if before_step is not None:
            before_step(step)
        check_stop()
        batch = batch.to(device)
        loss = train_step(run, batch, optimizer, device, precision)
        seen += len(batch)
        loss_sum += loss.item() * len(batch)
        if task is not None:
            rate = seen / max(time.perf_counter() - tick, 1e-9)
            progress.update(task, advance=1, loss=loss_sum / seen, rate=rate)
    seconds = time.perf_counter() - tick
    if task is not None:
        progress.remove_task(task)
    return seen, loss_sum, seconds


def _test_signal_hook(key: str, seed: int) -> Callable[[int, int], None] | None:
    """Test hook (docs/testing.md): MSCTR_TEST_SIGNAL_AT="SIG:model label:seed:epoch:step" makes
    the process send itself SIG (KILL, INT, TERM) just before that step of that epoch (both
    counted from 1) of that run, so tests can stop a run mid-epoch at an exact place."""
    spec = os.environ.get("MSCTR_TEST_SIGNAL_AT")
    if not spec:
        return None
    sig, rest = spec.split(":", 1)
    label, at_seed, at_epoch, at_step = rest.rsplit(":", 3)  # a label may hold ':'
    if label != key or int(at_seed) != seed:
        return None
    signum = getattr(signal, f"SIG{sig}")

    def hook(epoch: int, step: int) -> None:
        if (epoch + 1, step + 1) == (int(at_epoch), int(at_step)):
            os.kill(os.getpid(), signum)

    return hook


def fit_one(
    recipe: Recipe,
    entry: ModelEntry,
    seed: int,
    data: SplitData,
    run_dir: Path,
    progress: Progress | None = None,
    fingerprint: dict | None = None,
) -> dict:
    """Train one model with one seed; write checkpoint, predictions and log; return a summary.

    After each epoch the whole training state (weights, every optimizer's state, early
    stopping, the epoch, every random state) goes to `last.pt`; a run that finds one continues
    from it and ends with the same metrics as if it had never stopped."""
    t = recipe.train
    files = SeedRun(Path(run_dir))
    fingerprint = fingerprint or run_fingerprint(recipe, entry, data.schema)
    device = resolve_device(t.device)
    seed_everything(seed)
    params = parse_params(entry.name, entry.params)
    model = build(entry.name, data.schema, params).to(device)
    optimizer = make_optimizer(model, t)
    # the compiled module shares the model's parameters; checkpoints come from `model`
    run = torch.compile(model) if t.compile else model
    files.folder.mkdir(parents=True, exist_ok=True)
    sweep_stale(files.folder)  # a checkpoint half-written by a killed earlier run
    steps_per_epoch = -(-data.train_rows // t.batch_size)
    if t.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    stopping = EarlyStopping(t.early_stopping.metric, t.early_stopping.patience)
    best_state = None
    lines: list[str] = []
    first_epoch, spent, checkpoint_seconds = 0, 0.0, 0.0
    if files.resume.is_file():
        state = load_state(files.resume, fingerprint)
        model.load_state_dict(state["model"])
        for opt, saved in zip(optimizer.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(saved)
        stopping.best_score, stopping.best_epoch, stopping.waited = state["stopping"]
        first_epoch, lines, spent = state["epoch"], list(state["log"]), state["seconds"]
        checkpoint_seconds = state["checkpoint_seconds"]
        if stopping.best_epoch >= 0:  # best.pt holds the best epoch's weights (see docs)
            if not files.checkpoint.is_file():
                raise UserError(
                    f"'{files.checkpoint}' is missing, so '{files.resume}' cannot be resumed; "
                    "remove last.pt to retrain that run from its first epoch, or use --fresh"
                )
            best_state = torch.load(files.checkpoint, map_location=device, weights_only=True)
        set_rng_state(state["rng"])
    else:
        write_json(files.fingerprint, fingerprint)
    write_text(files.log, "".join(line + "\n" for line in lines))
    hook = _test_signal_hook(entry.key, seed)
    start = time.perf_counter() - spent
    for epoch in range(first_epoch, t.epochs):
        if stopping.stop:
            break
        model.train()
        seen, loss_sum, train_seconds = train_epoch(
            run,
            data.train_batches(recipe, seed, epoch),
            steps_per_epoch,
            optimizer,
            device,
            t.precision,
            progress,
            f"{entry.key} seed {seed} epoch {epoch + 1}",
            None if hook is None else functools.partial(hook, epoch),
        )
        if not np.isfinite(loss_sum):
            raise UserError(
                f"{entry.key} seed {seed}: the training loss became NaN/inf in epoch {epoch + 1}; "
                "lower train.lr"
            )
        val_p = predict(run, data.val, t.eval_batch_size, device, t.precision)
        val = {"auc": auc(data.val_labels, val_p), "logloss": logloss(data.val_labels, val_p)}
        improved = stopping.update(epoch, val)
        if improved:
            best_state = copy.deepcopy(model.state_dict())
            save_checkpoint(files.checkpoint, best_state)
        line = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "samples": seen,
            "samples_per_s": seen / max(train_seconds, 1e-9),
            "val_auc": val["auc"],
            "val_logloss": val["logloss"],
            "best": improved,
        }
        lines.append(json.dumps(line))
        tick = time.perf_counter()
        save_state(
            files.resume,
            {
                "version": RESUME_VERSION,
                "fingerprint": fingerprint,
                "epoch": epoch + 1,  # epochs finished
                "model": model.state_dict(),
                "optimizers": [o.state_dict() for o in optimizer.optimizers],
                "stopping": [stopping.best_score, stopping.best_epoch, stopping.waited],
                "log": lines,
                "seconds": time.perf_counter() - start,
                "checkpoint_seconds": checkpoint_seconds,
                "rng": rng_state(),
            },
        )
        checkpoint_seconds += time.perf_counter() - tick
        with files.log.open("a") as fh:
            fh.write(lines[-1] + "\n")
    check_stop()
    model.load_state_dict(best_state)
    test_p = predict(run, data.test, t.eval_batch_size, device, t.precision)
    write_predictions(files.predictions, data.test_frame, test_p)
    summary = {
        "model": entry.key,
        "seed": seed,
        "best_epoch": stopping.best_epoch + 1,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": time.perf_counter() - start,
        "resume_checkpoint_seconds": checkpoint_seconds,
    }
    extra = getattr(model, "report", None)  # a model may expose extra facts (head weights, codes)
    if callable(extra):
        summary["model_report"] = extra()
    write_text(files.summary, json.dumps(summary, indent=2) + "\n")  # last: the run is done
    files.resume.unlink(missing_ok=True)
    return summary


def save_checkpoint(path: Path, state: dict) -> None:
    # serialized in memory first: torch's file writer reports a full disk as a RuntimeError
    # about stream positions, a plain file write as the OSError it is
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getbuffer())


def write_predictions(path: Path, test_frame: pl.DataFrame, prob: np.ndarray) -> None:
    frame = test_frame.with_columns(pl.Series("prob", prob, dtype=pl.Float64))
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, statistics=False)


def train_recipe(
    recipe: Recipe, console: Console | None = None, show_progress: bool = True, fresh: bool = False
) -> Path:
    """Train every model of the recipe over its seeds; return the run folder.

    Resumes by default: finished runs are kept, an interrupted one continues from its last
    finished epoch; a run folder holding runs of a different recipe is refused (`fresh`: its
    runs are removed first). One process at a time per run folder (a lock file)."""
    console = console or Console()
    # everything that can refuse the recipe runs before the run folder is touched
    resolve_device(recipe.train.device)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    keep_freed_memory()
    data = SplitData.load(recipe)
    stop = recipe.train.early_stopping
    if stop.metric == "auc" and len(np.unique(data.val_labels)) < 2:
        # AUC is undefined on one class: every epoch would tie and epoch 1 would be kept
        raise UserError(
            f"the validation split has only label {int(data.val_labels[0])}, so its AUC is "
            "undefined and cannot pick the best epoch; use train.early_stopping.metric: "
            "logloss, or prepare more rows"
        )
    for entry in recipe.models:
        build(entry.name, data.schema, parse_params(entry.name, entry.params))
    folder = RunFolder(recipe.run_dir)
    folder.root.mkdir(parents=True, exist_ok=True)
    busy = (
        f"another msctr (pid {{pid}}) is training into '{folder.root}' now; wait for it to end "
        "or stop it (a crashed one holds no lock)"
    )
    with exclusive_lock(folder.lock, busy):
        if fresh:
            clear_folder(folder)
        sweep_stale(folder.root)
        plan = check_folder(recipe, folder, data.schema)
        for old, new in plan.renamed:
            console.print(f"renamed {old} -> {new}: the same model under a new label")
        # recorded only now that every run in the folder is known to be this recipe's; the
        # data path absolute, so `msctr eval` works from any folder
        resolved = {**recipe.to_dict(), "data": str(Path(recipe.data).resolve())}
        text = yaml.safe_dump(resolved, sort_keys=False)
        if not folder.recipe.is_file() or folder.recipe.read_text() != text:
            # a comparison of the recipe as it was must not pass for this one's
            folder.results.unlink(missing_ok=True)
            folder.report.unlink(missing_ok=True)
            write_text(folder.recipe, text)
        _train_runs(recipe, data, folder, console, show_progress)
    return folder.root


def _train_runs(
    recipe: Recipe, data: SplitData, folder: RunFolder, console: Console, show_progress: bool
) -> None:
    progress = make_progress(console) if show_progress else None
    if progress is not None:
        progress.start()
    try:
        with stop_at_step_boundaries():
            for entry in recipe.models:
                fingerprint = run_fingerprint(recipe, entry, data.schema)
                for seed in recipe.train.seeds:
                    files = folder.seed(entry.key, seed)
                    if files.finished:
                        files.resume.unlink(missing_ok=True)  # left if killed right at the end
                        console.print(f"[dim]kept[/] {entry.key} seed {seed}: finished earlier")
                        continue
                    resumed = files.resume.is_file()
                    summary = fit_one(
                        recipe, entry, seed, data, files.folder, progress, fingerprint
                    )
                    how = "resumed and trained" if resumed else "trained"
                    console.print(
                        f"[green]{how}[/] {entry.key} seed {seed}: "
                        f"best epoch {summary['best_epoch']}, {summary['train_seconds']:.1f}s"
                    )
    finally:
        if progress is not None:
            progress.stop()
