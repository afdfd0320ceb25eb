"""The shared training engine: fit with early stopping on validation, restore the best
checkpoint, predict the test split; one run per model and seed.

Run folder layout (design.md): runs/<recipe>/<model>/seed_<k>/ holding the resolved recipe,
log.jsonl, best.pt, predictions.parquet and metrics.json; runs/<recipe>/ holds the summary.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from msctr.data import schema as S
from msctr.data.batch import Batch
from msctr.data.loader import Columns, load_columns, load_eval_columns, stream_batches
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.evaluate.metrics import auc, logloss
from msctr.io import atomic_path, write_text
from msctr.models.registry import build, parse_params, split_output
from msctr.recipe import ModelEntry, Recipe


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device is '{name}' but no CUDA device is available; use cpu")
    return torch.device(name)


@torch.inference_mode()
def predict(
    model: torch.nn.Module, data: Columns, batch_size: int, device: torch.device
) -> np.ndarray:
    """Click probabilities for every row of `data`, in row order."""
    model.eval()
    out = []
    for batch in data.batches(batch_size):
        logit, _ = split_output(model(batch.to(device)))
        out.append(torch.sigmoid(logit.float()).cpu())
    return torch.cat(out).double().numpy()


@dataclass
class SplitData:
    """What training needs of a prepared dataset, read once and shared by every run."""

    schema: Schema
    folder: Path
    train: Columns | None  # None in streamed mode
    val: Columns
    test: Columns
    val_labels: np.ndarray
    test_frame: pl.DataFrame  # label, scenario, groups and true probabilities of the test rows

    @classmethod
    def load(cls, recipe: Recipe) -> SplitData:
        folder = Path(recipe.data)
        if not folder.is_dir():
            raise UserError(
                f"data folder '{folder}' does not exist; run `msctr prepare ... --out {folder}` "
                "or fix the recipe's `data:`"
            )
        schema = Schema.load(folder)
        t = recipe.train
        train = load_columns(folder, "train", schema) if t.loader == "memory" else None
        val = load_columns(folder, "val", schema, limit=t.eval_rows)
        test = load_columns(folder, "test", schema, limit=t.eval_rows)
        return cls(
            schema,
            folder,
            train,
            val,
            test,
            val.label.numpy().astype(np.int8),
            load_eval_columns(folder, "test", schema, limit=t.eval_rows),
        )

    def train_batches(self, recipe: Recipe, seed: int, epoch: int) -> Iterator[Batch]:
        t = recipe.train
        if self.train is not None:
            return self.train.batches(t.batch_size, shuffle=True, seed=seed, epoch=epoch)
        return stream_batches(
            self.folder,
            "train",
            self.schema,
            t.batch_size,
            True,
            seed,
            epoch,
            buffer_rows=t.shuffle_buffer,
        )

    @property
    def train_rows(self) -> int:
        return self.schema.rows["train"]


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
    device = resolve_device(t.device)
    seed_everything(seed)
    params = parse_params(entry.name, entry.params)
    model = build(entry.name, data.schema, params).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "log.jsonl"
    log_path.write_text("")
    steps_per_epoch = -(-data.train_rows // t.batch_size)
    if t.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    es = t.early_stopping
    best_score, best_epoch, best_state, waited = None, -1, None, 0
    start = time.perf_counter()
    for epoch in range(t.epochs):
        model.train()
        task = None
        if progress is not None:
            task = progress.add_task(
                f"{entry.key} seed {seed} epoch {epoch + 1}",
                total=steps_per_epoch,
                loss=0.0,
                rate=0.0,
            )
        seen, loss_sum, tick = 0, 0.0, time.perf_counter()
        for step, batch in enumerate(data.train_batches(recipe, seed, epoch)):
            if step >= steps_per_epoch:
                break
            batch = batch.to(device)
            logit, aux = split_output(model(batch))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, batch.label)
            total = loss if aux is None else loss + aux
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            seen += len(batch)
            loss_sum += loss.item() * len(batch)
            if task is not None:
                rate = seen / max(time.perf_counter() - tick, 1e-9)
                progress.update(task, advance=1, loss=loss_sum / seen, rate=rate)
        train_seconds = time.perf_counter() - tick
        if task is not None:
            progress.remove_task(task)
        if not np.isfinite(loss_sum):
            raise UserError(
                f"{entry.key} seed {seed}: the training loss became NaN/inf in epoch {epoch + 1}; "
                "lower train.lr"
            )
        val_p = predict(model, data.val, t.eval_batch_size, device)
        val = {"auc": auc(data.val_labels, val_p), "logloss": logloss(data.val_labels, val_p)}
        score = val[es.metric] if es.metric == "auc" else -val[es.metric]
        improved = best_score is None or score > best_score
        if improved:
            best_score, best_epoch, waited = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
            with atomic_path(run_dir / "best.pt") as tmp:
                torch.save(best_state, tmp)
        else:
            waited += 1
        line = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "samples": seen,
            "samples_per_s": seen / max(train_seconds, 1e-9),
            "val_auc": val["auc"],
            "val_logloss": val["logloss"],
            "best": improved,
        }
        with log_path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        if waited >= es.patience:
            break
    model.load_state_dict(best_state)
    test_p = predict(model, data.test, t.eval_batch_size, device)
    write_predictions(run_dir / "predictions.parquet", data.test_frame, test_p)
    summary = {
        "model": entry.key,
        "seed": seed,
        "best_epoch": best_epoch + 1,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": time.perf_counter() - start,
    }
    extra = getattr(model, "report", None)  # a model may expose extra facts (head weights, codes)
    if callable(extra):
        summary["model_report"] = extra()
    write_text(run_dir / "run.json", json.dumps(summary, indent=2) + "\n")
    return summary


def write_predictions(path: Path, test_frame: pl.DataFrame, prob: np.ndarray) -> None:
    frame = test_frame.with_columns(pl.Series("prob", prob, dtype=pl.Float64))
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, statistics=False)


def model_dir(run_root: Path, key: str) -> Path:
    return run_root / key


def train_recipe(
    recipe: Recipe, console: Console | None = None, show_progress: bool = True
) -> Path:
    """Train every model of the recipe over its seeds; return the run folder."""
    console = console or Console()
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    data = SplitData.load(recipe)
    for entry in recipe.models:  # fail on a bad model before any training starts
        build(entry.name, data.schema, parse_params(entry.name, entry.params))
    root = recipe.run_dir
    root.mkdir(parents=True, exist_ok=True)
    write_text(root / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    progress = make_progress(console) if show_progress else None
    if progress is not None:
        progress.start()
    try:
        for entry in recipe.models:
            for seed in recipe.train.seeds:
                summary = fit_one(
                    recipe, entry, seed, data, model_dir(root, entry.key) / f"seed_{seed}", progress
                )
                console.print(
                    f"[green]trained[/] {entry.key} seed {seed}: "
                    f"best epoch {summary['best_epoch']}, {summary['train_seconds']:.1f}s"
                )
    finally:
        if progress is not None:
            progress.stop()
    return root


__all__ = ["train_recipe", "fit_one", "predict", "SplitData", "S"]
