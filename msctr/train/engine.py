"""The shared training engine: fit with early stopping on validation, restore the best
checkpoint, predict the test split; one run per model and seed.

Run folder layout (design.md): runs/<recipe>/<model>/seed_<k>/ holding the resolved recipe,
log.jsonl, best.pt, predictions.parquet and metrics.json; runs/<recipe>/ holds the summary.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import io
import json
import math
import random
import re
import sys
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

from msctr.data.batch import Batch
from msctr.data.loader import Columns, load_columns, load_eval_columns, stream_batches
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.evaluate.metrics import auc, logloss
from msctr.io import atomic_path, sweep_stale, write_text
from msctr.models.layers import FeatureEmbedding
from msctr.models.registry import build, parse_params, split_output, training_loss
from msctr.recipe import ModelEntry, Recipe, TrainConfig


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

    Every training step allocates and frees the same large activation tensors. By default
    glibc serves those with fresh mmap pages, and touching fresh pages costs a page fault
    per 4 KiB: up to 7x the cost of a ReLU over the tensor, about 10 % of an MMoE bf16 step.
    Process-wide and idempotent; does nothing where malloc is not glibc's.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)  # serve big blocks from the heap ...
    libc.mallopt(m_trim_threshold, (1 << 31) - 1)  # ... and keep them once freed


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device is '{name}' but no CUDA device is available; use cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast runs matmuls in bfloat16 and keeps weights, losses and reductions in fp32
    (on CPUs with AMX or AVX-512 BF16 and on recent GPUs the matmuls are several times faster)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -- optimizer: dense Adam for the network, lazy Adam for large embedding tables -------------

# `sparse_embeddings: auto` switches a table to row-sparse updates from this many rows: below,
# a dense step over the whole table costs less than finding the touched rows (a sort of the
# batch's ids); above, the dense step's O(rows) work dominates. Measured crossover for a DNN
# step at batch 2000, d 16 on one CPU core: about 100k rows (docs/recipes.md, docs/bench.md).
SPARSE_AUTO_ROWS = 100_000


class LazyAdam(torch.optim.Optimizer):
    """Adam for embedding tables with row-sparse gradients: a step reads and writes the rows
    the batch touched and nothing else, so it costs O(touched rows), not O(table rows).

    For the touched rows the update is exactly Adam's (L2 weight decay added to the gradient,
    bias correction by the optimizer's global step count, as in TF's LazyAdam and torch's
    SparseAdam); untouched rows keep their value and moments, where dense Adam would keep
    moving them with decayed momentum. When every row is touched every step the two are the
    same (tests/test_bench.py checks both). A dense gradient gets the ordinary dense update.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @staticmethod
    def _rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unique row ids [U], summed gradient rows [U, d]) of a sparse COO gradient."""
        ids, values = grad._indices()[0], grad._values()
        if grad.is_coalesced():
            return ids, values
        # torch's coalesce() is several times slower on CPU than unique + index_add, and
        # int32 ids sort about twice as fast as int64
        small = grad.shape[0] < 2**31
        rows, inverse = torch.unique(ids.int() if small else ids, return_inverse=True)
        summed = values.new_zeros(rows.shape[0], values.shape[1]).index_add_(0, inverse, values)
        return rows.long(), summed

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                step_size = lr / (1 - b1**t)
                bc2_sqrt = math.sqrt(1 - b2**t)
                m_all, v_all = state["exp_avg"], state["exp_avg_sq"]
                if p.grad.is_sparse:
                    rows, g = self._rows(p.grad)
                    if wd:
                        g = g + wd * p.index_select(0, rows)
                    m = m_all.index_select(0, rows).lerp_(g, 1 - b1)
                    v = v_all.index_select(0, rows).mul_(b2).addcmul_(g, g, value=1 - b2)
                    m_all.index_copy_(0, rows, m)
                    v_all.index_copy_(0, rows, v)
                    update = m.div_(v.sqrt_().div_(bc2_sqrt).add_(eps)).mul_(-step_size)
                    p.index_add_(0, rows, update)  # rows are unique: adds to each row once
                else:
                    g = p.grad if not wd else p.grad + wd * p
                    m_all.lerp_(g, 1 - b1)
                    v_all.mul_(b2).addcmul_(g, g, value=1 - b2)
                    p.addcdiv_(m_all, v_all.sqrt().div_(bc2_sqrt).add_(eps), value=-step_size)


class Optimizers:
    """Several optimizers stepped as one (dense Adam for the network, lazy Adam for tables)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()


def set_sparse_embeddings(model: torch.nn.Module, mode: bool | str) -> list[torch.nn.Parameter]:
    """Switch every FeatureEmbedding table to row-sparse gradients (True), to dense (False), or
    by size ("auto"); return the tables now giving sparse gradients. Models need no change:
    their look-ups all go through the table module, which reads its `sparse` flag per call."""
    sparse = []
    for m in model.modules():
        if isinstance(m, FeatureEmbedding):
            on = mode is True or (mode == "auto" and m.table.num_embeddings >= SPARSE_AUTO_ROWS)
            m.table.sparse = on
            if on:
                sparse.append(m.table.weight)
    return sparse


def make_optimizer(model: torch.nn.Module, t: TrainConfig) -> Optimizers:
    """Adam as the recipe asks: fused dense Adam (one kernel for all tensors; several times
    faster than the per-tensor loop on CPU) for the network, LazyAdam for sparse tables."""
    sparse = set_sparse_embeddings(model, t.sparse_embeddings)
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids and p.requires_grad]
    opts: list[torch.optim.Optimizer] = []
    if dense:
        fused = all(p.dtype == torch.float32 for p in dense)
        opts.append(
            torch.optim.Adam(dense, lr=t.lr, weight_decay=t.weight_decay, fused=fused or None)
        )
    if sparse:
        opts.append(LazyAdam(sparse, lr=t.lr, weight_decay=t.weight_decay))
    return Optimizers(opts)


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
        test_frame = load_eval_columns(folder, "test", schema, limit=t.eval_rows)
        return cls(schema, folder, train, val, test, val.label.numpy().astype(np.int8), test_frame)

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
    optimizer = make_optimizer(model, t)
    # the compiled module shares the model's parameters; checkpoints come from `model`
    run = torch.compile(model) if t.compile else model
    run_dir.mkdir(parents=True, exist_ok=True)
    sweep_stale(run_dir)  # a checkpoint half-written by a killed earlier run
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
            with autocast(device, t.precision):
                out = run(batch)
            loss, total = training_loss(out, batch.label)
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
        val_p = predict(run, data.val, t.eval_batch_size, device, t.precision)
        val = {"auc": auc(data.val_labels, val_p), "logloss": logloss(data.val_labels, val_p)}
        score = val[es.metric] if es.metric == "auc" else -val[es.metric]
        improved = best_score is None or score > best_score
        if improved:
            best_score, best_epoch, waited = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
            save_checkpoint(run_dir / "best.pt", best_state)
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
    test_p = predict(run, data.test, t.eval_batch_size, device, t.precision)
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


def model_dir(run_root: Path, key: str) -> Path:
    """A model's run folder: its label with anything but letters, digits, '.', '_', '-', '(',
    ')' replaced (labels like "HierRec w/o mi" must not create sub-folders)."""
    return run_root / re.sub(r"[^A-Za-z0-9_.()-]+", "_", key)


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
    root = recipe.run_dir
    root.mkdir(parents=True, exist_ok=True)
    sweep_stale(root)
    # the data path is recorded absolute, so `msctr eval` works from any folder
    resolved = {**recipe.to_dict(), "data": str(Path(recipe.data).resolve())}
    write_text(root / "recipe.yaml", yaml.safe_dump(resolved, sort_keys=False))
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
