"""The training loop: one step, one epoch, early stopping, one (model, seed) run, a recipe.

Each run trains with early stopping on the validation split, restores the best epoch's
weights and scores the test split; where the files go is `msctr.runs`' business.
"""

from __future__ import annotations

import copy
import io
import json
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
from msctr.io import atomic_path, sweep_stale, write_text
from msctr.models.registry import build, parse_params, split_output, training_loss
from msctr.recipe import ModelEntry, Recipe
from msctr.runs import RunFolder, SeedRun
from msctr.train.optim import Optimizers, make_optimizer
from msctr.train.runtime import autocast, keep_freed_memory, resolve_device, seed_everything
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
) -> tuple[int, float, float]:
    """Up to `steps` training steps over `batches`: (rows seen, summed BCE, seconds)."""
    task = None
    if progress is not None:
        task = progress.add_task(title, total=steps, loss=0.0, rate=0.0)
    seen, loss_sum, tick = 0, 0.0, time.perf_counter()
    for step, batch in enumerate(batches):
        if step >= steps:
            break
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


def fit_one(
    recipe: Recipe,
    entry: ModelEntry,
    seed: int,
    data: SplitData,
    run_dir: Path,
    progress: Progress | None = None,
) -> dict:
    """Train one model with one seed; write checkpoint, predictions and log; return a summary."""
    t = recipe.train
    files = SeedRun(Path(run_dir))
    device = resolve_device(t.device)
    seed_everything(seed)
    params = parse_params(entry.name, entry.params)
    model = build(entry.name, data.schema, params).to(device)
    optimizer = make_optimizer(model, t)
    # the compiled module shares the model's parameters; checkpoints come from `model`
    run = torch.compile(model) if t.compile else model
    files.folder.mkdir(parents=True, exist_ok=True)
    sweep_stale(files.folder)  # a checkpoint half-written by a killed earlier run
    files.log.write_text("")
    steps_per_epoch = -(-data.train_rows // t.batch_size)
    if t.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    stopping = EarlyStopping(t.early_stopping.metric, t.early_stopping.patience)
    best_state = None
    start = time.perf_counter()
    for epoch in range(t.epochs):
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
        with files.log.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        if stopping.stop:
            break
    model.load_state_dict(best_state)
    test_p = predict(run, data.test, t.eval_batch_size, device, t.precision)
    write_predictions(files.predictions, data.test_frame, test_p)
    summary = {
        "model": entry.key,
        "seed": seed,
        "best_epoch": stopping.best_epoch + 1,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": time.perf_counter() - start,
    }
    extra = getattr(model, "report", None)  # a model may expose extra facts (head weights, codes)
    if callable(extra):
        summary["model_report"] = extra()
    write_text(files.summary, json.dumps(summary, indent=2) + "\n")
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
    recipe: Recipe, console: Console | None = None, show_progress: bool = True
) -> Path:
    """Train every model of the recipe over its seeds; return the run folder."""
    console = console or Console()
    # everything that can refuse the recipe runs before the run folder is touched
    resolve_device(recipe.train.device)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    keep_freed_memory()
    data = SplitData.load(recipe)
    for entry in recipe.models:
        build(entry.name, data.schema, parse_params(entry.name, entry.params))
    folder = RunFolder(recipe.run_dir)
    folder.root.mkdir(parents=True, exist_ok=True)
    sweep_stale(folder.root)
    # the data path is recorded absolute, so `msctr eval` works from any folder
    resolved = {**recipe.to_dict(), "data": str(Path(recipe.data).resolve())}
    write_text(folder.recipe, yaml.safe_dump(resolved, sort_keys=False))
    progress = make_progress(console) if show_progress else None
    if progress is not None:
        progress.start()
    try:
        for entry in recipe.models:
            for seed in recipe.train.seeds:
                summary = fit_one(
                    recipe, entry, seed, data, folder.seed(entry.key, seed).folder, progress
                )
                console.print(
                    f"[green]trained[/] {entry.key} seed {seed}: "
                    f"best epoch {summary['best_epoch']}, {summary['train_seconds']:.1f}s"
                )
    finally:
        if progress is not None:
            progress.stop()
    return folder.root
