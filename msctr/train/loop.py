"""The training loop: one step, one epoch, early stopping, one (model, seed) run, a recipe.

Each run trains with early stopping on the validation split, restores the best epoch's
weights and scores the test split; where the files go is `msctr.runs`' business, what a
run's resume state holds `msctr.train.resume`'s.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import polars as pl
import torch
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from msctr.cores import AdaptiveThreads
from msctr.data.batch import Batch
from msctr.data.loader import Columns
from msctr.data.schema import LABEL, Schema
from msctr.errors import Diverged, UserError
from msctr.evaluate.metrics import auc, check_test_labels, logloss, one_class
from msctr.io import atomic_path, exclusive_lock, sweep_stale, write_text
from msctr.models.blocks import BatchShare, share_batch
from msctr.models.registry import (
    TRAIN_COPIES,
    build,
    check_memory,
    check_model,
    split_output,
    training_loss,
)
from msctr.recipe import ModelEntry, Recipe, TrainConfig, run_fingerprint
from msctr.resources import check_threads
from msctr.runs import RunFolder, SeedRun, check_labels, check_run_folder, model_folder
from msctr.track import check_available
from msctr.train import distributed as dist
from msctr.train.distributed import ALONE, World
from msctr.train.history import History
from msctr.train.launch import user_pid
from msctr.train.optim import Optimizers, learning_rate, make_optimizer
from msctr.train.resume import (
    ResumeState,
    check_folder,
    clear_folder,
    open_run,
    save_checkpoint,
)
from msctr.train.runtime import (
    StepBoundaryStop,
    autocast,
    keep_freed_memory,
    resolve_device,
    rng_state,
    seed_everything,
    stop_at_step_boundaries,
)
from msctr.train.splits import SplitData


def forward_loss(
    run: Callable[[Batch], object], batch: Batch, device: torch.device, precision: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """A step's forward (under autocast for bf16) and its (BCE, training objective)."""
    with autocast(device, precision):
        out = run(batch)
    return training_loss(out, batch.label)


def backward(
    total: torch.Tensor,
    optimizer: Optimizers,
    weight: float = 1.0,
    after_backward: Callable[[], None] | None = None,
) -> None:
    """A step's gradients: `weight` scales this process's loss (`distributed.Shares`),
    `after_backward` synchronises what DDP does not (the row-sparse tables)."""
    optimizer.zero_grad(set_to_none=True)
    (total if weight == 1.0 else total * weight).backward()
    if after_backward is not None:
        after_backward()


def train_step(
    run: Callable[[Batch], object],
    batch: Batch,
    optimizer: Optimizers,
    device: torch.device,
    precision: str,
    weight: float = 1.0,
    after_backward: Callable[[], None] | None = None,
) -> torch.Tensor:
    """One optimisation step: `forward_loss`, `backward`, the optimizer's step. Returns the
    BCE part of the loss (what the log reports). The benchmarks time the three phases by
    calling them in turn."""
    loss, total = forward_loss(run, batch, device, precision)
    backward(total, optimizer, weight, after_backward)
    optimizer.step()
    return loss


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    data: Columns,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    stop: StepBoundaryStop | None = None,
    pace: Callable[[], None] | None = None,
) -> np.ndarray:
    """Click probabilities for every row of `data`, in row order; a pending Ctrl-C (`stop`)
    stops between two batches (predict_shared's processes stop together instead). `pace`
    runs before each batch (AdaptiveThreads.tick)."""
    model.eval()
    out = []
    with autocast(device, precision):
        for batch in data.batches(batch_size):
            if stop is not None:
                stop.check()
            if pace is not None:
                pace()
            logit, _ = split_output(model(batch.to(device)))
            out.append(torch.sigmoid(logit.float()).cpu())
    return torch.cat(out).double().numpy()


def predict_shared(
    model: torch.nn.Module,
    data: Columns,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    world: World = ALONE,
    stop: StepBoundaryStop | None = None,
    pace: Callable[[], None] | None = None,
) -> np.ndarray:
    """`predict`, with the rows split among the training processes: each scores its
    contiguous share and every process gets all probabilities back in row order. A pending
    Ctrl-C stops all processes before the pass (`World.stop_together`), not between its
    batches: the shares' batch counts may differ, and a process must not stop alone."""
    if not world.parallel:
        return predict(model, data, batch_size, device, precision, stop=stop, pace=pace)
    world.stop_together(stop or StepBoundaryStop())
    lo, hi = dist.part_bounds(len(data), world.rank, world.size)
    mine = np.zeros(0)
    if hi > lo:
        mine = predict(model, data.take(slice(lo, hi)), batch_size, device, precision, pace=pace)
    return world.gather_rows(torch.from_numpy(mine)).numpy()


class EarlyStopping:
    """The best epoch so far by a validation metric (AUC up, logloss down), and whether
    `patience` epochs in a row have passed without improving on it."""

    def __init__(
        self, metric: str, patience: int, best_score=None, best_epoch: int = -1, waited: int = 0
    ):
        self.metric, self.patience = metric, patience
        self.best_score: float | None = best_score
        self.best_epoch = best_epoch
        self.waited = waited

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

    @property
    def state(self) -> tuple[float | None, int, int]:
        return self.best_score, self.best_epoch, self.waited


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


class Trainee:
    """The model being trained: `model` itself (checkpoints come from it, and its best
    weights so far, `best`), its optimizers, `scorer` (what scores val and test: the model,
    compiled under `train.compile`, never the DDP wrapper, whose forward is a collective) and
    `forward` (what a training step runs: under torchrun the DDP wrapper), and, data
    parallel, this process's share of every batch (`shares`), which the model's randomness
    reads through `batch_share`."""

    def __init__(self, model: torch.nn.Module, t: TrainConfig, device: torch.device):
        self.model, self.device, self.precision = model, device, t.precision
        self.optimizer = make_optimizer(model, t)
        self.scorer: torch.nn.Module = model
        self.forward: Callable[[Batch], object] = model
        self.shares: dist.Shares | None = None
        self.batch_share = BatchShare()
        self.after_backward: Callable[[], None] | None = None
        self.best: dict | None = None
        self.threads = AdaptiveThreads(t.threads)  # follows the load unless t.threads pins it

    @classmethod
    def build(cls, entry: ModelEntry, schema: Schema, t: TrainConfig, device) -> Trainee:
        model = build(entry.name, schema, entry.model_params).to(device)
        return cls(model, t, device)

    def wrap(self, compile: bool, world: World, train_rows: int, batch_size: int) -> None:
        """Compiled (`compile`); under torchrun, DDP and this process's share of each batch.
        The compiled module shares the model's parameters."""
        self.scorer = torch.compile(self.model) if compile else self.model
        tables = self.optimizer.sparse_tables
        trained = world.wrap(self.model, self.device, tables)
        if trained is not self.model:  # the DDP wrapper, compiled apart
            self.forward = torch.compile(trained) if compile else trained
        else:
            self.forward = self.scorer
        if world.parallel:
            self.after_backward = dist.SparseRows(tables, world).sync
            self.shares = dist.Shares(train_rows, batch_size, world.rank, world.size)
            share_batch(self.model, self.batch_share)

    def step(self, batch: Batch, step: int) -> tuple[int, torch.Tensor]:
        """Step `step` of an epoch: (rows this process trained on, their mean BCE)."""
        self.threads.tick()
        rows, weight = len(batch), 1.0
        if self.shares is not None:
            rows, weight = self.shares.at(step)  # rows 0: a stand-in row, weight 0
            # dropout masks: this share's rows of the whole batch's (as one process draws)
            self.batch_share.window = self.shares.window(step)
        batch = batch.to(self.device)
        loss = train_step(
            self.forward,
            batch,
            self.optimizer,
            self.device,
            self.precision,
            weight=weight,
            after_backward=self.after_backward,
        )
        return rows, loss

    def keep_best(self, checkpoint: Path | None) -> None:
        """The weights now are the best so far: kept, and written to `checkpoint` (best.pt;
        None: by another rank)."""
        self.best = copy.deepcopy(self.model.state_dict())
        if checkpoint is not None:
            save_checkpoint(checkpoint, self.best)

    def score(self, data: Columns, t: TrainConfig, world: World, stop) -> np.ndarray:
        return predict_shared(self.scorer, data, t.eval_batch_size, self.device, t.precision,
                              world, stop, self.threads.tick)  # fmt: skip


def train_epoch(
    trainee: Trainee,
    batches: Iterable[Batch],
    world: World = ALONE,
    stop: StepBoundaryStop | None = None,
    progress: Progress | None = None,
    title: str = "",
    before_step: Callable[[int], None] | None = None,
) -> tuple[int, float, float]:
    """The epoch's training steps over `batches` (`len`: their count): (rows seen, summed
    BCE, seconds) of this process (data parallel: its shares).

    Between two steps a pending Ctrl-C/SIGTERM (`stop`) stops training; data parallel,
    every process stops at the same step (a stop on one is agreed by all)."""
    stop = stop or StepBoundaryStop()
    task = None
    if progress is not None:
        task = progress.add_task(title, total=len(batches), loss=0.0, rate=0.0)
    seen, loss_sum, tick = 0, 0.0, time.perf_counter()
    try:
        for step, batch in enumerate(batches):
            if before_step is not None:
                before_step(step)
            world.stop_together(stop)
            rows, loss = trainee.step(batch, step)
            seen += rows
            loss_sum += loss.item() * rows
            if task is not None:
                done = seen * world.size  # about, for the progress bar
                rate = done / max(time.perf_counter() - tick, 1e-9)
                progress.update(task, advance=1, loss=loss_sum / max(seen, 1), rate=rate)
    finally:
        trainee.batch_share.window = None
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
    fingerprint: dict | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    tracking: Path | None = None,
    track_as: str | None = None,
    world: World = ALONE,
    stop: StepBoundaryStop | None = None,
    before_step: Callable[[int, int], None] | None = None,
) -> dict:
    """Train one model with one seed; write checkpoint, predictions and log; return a summary.

    `on_epoch(epoch, val)`, if given, is called after each epoch (counted from 1) has been
    scored and recorded, with its validation figures (`auc`, `logloss`): `msctr tune` reports
    them to Optuna's pruner there, and an exception it raises ends the run. Each epoch's
    figures go to history.jsonl, and to `train.log`'s trackers in the `tracking` folder's
    stores (the run folder; None: no trackers), as the run `track_as` (default: the seed
    folder's path there). `stop`: the Ctrl-C/SIGTERM that stops the run at the next step
    boundary (`stop_at_step_boundaries`; None: nothing stops it); `before_step(epoch, step)`
    (both from 0) is called before every training step.

    After each epoch the whole training state (`ResumeState`) goes to `last.pt`; a run that
    finds one continues from it and ends with the same metrics as if it had never stopped.

    Data parallel (under torchrun, `world`, docs/distributed.md): every process trains on its
    share of each batch, scores its share of val and test, and takes the same early-stopping
    decision; rank 0 alone reads and writes the run's files and hands the resume state to
    the others."""
    t, files, stop = recipe.train, SeedRun(Path(run_dir)), stop or StepBoundaryStop()
    fingerprint = fingerprint or run_fingerprint(recipe, entry, data.schema)
    seed_everything(seed)
    trainee = Trainee.build(entry, data.schema, t, resolve_device(world.local_device(t.device)))
    resumed = world.on_main(lambda: open_run(files, fingerprint, world.size))
    if resumed is not None:
        trainee.best = resumed.restore(trainee.model, trainee.optimizer.optimizers, world.rank,
                                       trainee.device)  # fmt: skip
    state = resumed or ResumeState(fingerprint)
    stopping = EarlyStopping(t.early_stopping.metric, t.early_stopping.patience, *state.stopping)
    history = History(files, recipe, entry, data.schema, fingerprint,
                      resumed and resumed.history, world.main, tracking, track_as)  # fmt: skip
    trainee.wrap(t.compile, world, data.train_rows, t.batch_size)
    start = time.perf_counter() - state.seconds
    for epoch in range(state.epoch, t.epochs):
        if stopping.stop:
            break
        lr = learning_rate(t, epoch)
        trainee.optimizer.set_lr(lr)
        hook = None if before_step is None else functools.partial(before_step, epoch)
        seen, loss_sum, seconds = _train(trainee, data, t, entry, seed, epoch, world, stop,
                                         progress, hook)  # fmt: skip
        val_p, val = _validate(trainee, data, t, world, stop)
        improved = stopping.update(epoch, val)
        if improved:
            trainee.keep_best(files.checkpoint if world.main else None)
        line = _epoch_line(epoch, seen, loss_sum, seconds, lr, val, improved, world,
                           trainee.threads)  # fmt: skip
        history.add(line, {"train_seconds": seconds}, data.val_labels, val_p, data.val.scenario)
        state.end_epoch(line, stopping.state, history.lines, time.perf_counter() - start)
        _save_resume(state, trainee, world, files)
        history.commit()
        if on_epoch is not None:
            on_epoch(epoch + 1, val)
    world.stop_together(stop)
    history.close()
    return _finish(trainee, data, t, entry, seed, stopping, state, start, files, world, stop)


def _train(
    trainee: Trainee,
    data: SplitData,
    t: TrainConfig,
    entry: ModelEntry,
    seed: int,
    epoch: int,
    world: World,
    stop: StepBoundaryStop,
    progress: Progress | None,
    before_step: Callable[[int], None] | None,
) -> tuple[int, float, float]:
    """One epoch's training on every rank: (rows, summed BCE, seconds of the slowest rank).
    Refused when a streamed dataset was prepared again before or during it, or when the loss
    became NaN/inf."""
    name = f"{entry.key} seed {seed}"
    streamed = data.train is None  # read from disk each epoch: check it is the same data
    if streamed:
        world.on_main(lambda: data.check_unchanged(f"before epoch {epoch + 1} of {name}"))
    trainee.model.train()
    part = (world.rank, world.size)
    batches = data.train_batches(t.batch_size, seed, epoch, part, t.max_steps_per_epoch)
    title = f"{name} epoch {epoch + 1}"
    seen, loss_sum, seconds = train_epoch(
        trainee, batches, world, stop, progress, title, before_step
    )
    if world.parallel:  # rows and summed loss over every process; the slowest one's time
        total_seen, loss_sum, _ = world.all_sum([seen, loss_sum, 0.0])
        seen, seconds = int(total_seen), world.all_max(seconds)
    if streamed:  # prepared again during the epoch: the epoch is not kept
        world.on_main(lambda: data.check_unchanged(f"in epoch {epoch + 1} of {name}"))
    if not np.isfinite(loss_sum):
        raise Diverged(
            f"{entry.key} seed {seed}: the training loss became NaN/inf in epoch {epoch + 1}; "
            "lower train.lr"
        )
    return seen, loss_sum, seconds


def _validate(
    trainee: Trainee, data: SplitData, t: TrainConfig, world: World, stop: StepBoundaryStop
) -> tuple[np.ndarray, dict[str, float]]:
    """The validation split's probabilities and figures (`auc`, `logloss`), on every rank."""
    world.sync_buffers(trainee.model)  # BatchNorm statistics: the same on every rank
    val_p = trainee.score(data.val, t, world, stop)
    # rank 0's figures decide for all, so every rank stops at the same epoch
    val = world.on_main(
        lambda p=val_p: {"auc": auc(data.val_labels, p), "logloss": logloss(data.val_labels, p)}
    )
    return val_p, val


def _save_resume(state: ResumeState, trainee: Trainee, world: World, files: SeedRun) -> None:
    """After an epoch: last.pt (rank 0, with every rank's random state), then the epoch's
    line in log.jsonl; the time it took goes to `state.checkpoint_seconds`."""
    tick = time.perf_counter()
    rngs = world.gather_objects(rng_state())  # every rank's dropout stream, on rank 0
    if world.main:
        state.save(files.resume, trainee.model, trainee.optimizer.optimizers, rngs)
    state.checkpoint_seconds += time.perf_counter() - tick
    if world.main:
        with files.log.open("a") as fh:
            fh.write(state.log[-1] + "\n")


def _epoch_line(epoch: int, seen: int, loss_sum: float, seconds: float, lr: float,
                val: dict[str, float], improved: bool, world: World,
                threads: AdaptiveThreads) -> dict:  # fmt: skip
    """The epoch's line of log.jsonl."""
    line = {
        "epoch": epoch + 1,
        "train_loss": loss_sum / max(seen, 1),
        "samples": seen,
        "samples_per_s": seen / max(seconds, 1e-9),
        "lr": lr,
        "val_auc": val["auc"],
        "val_logloss": val["logloss"],
        "best": improved,
    }
    if world.parallel:
        line["processes"] = world.size
    if threads.adaptive:  # the mean count over the epoch's steps and scoring batches
        line["threads"] = round(threads.take_used(), 2)
    return line


def _finish(trainee: Trainee, data: SplitData, t: TrainConfig, entry: ModelEntry, seed: int,
            stopping: EarlyStopping, state: ResumeState, start: float, files: SeedRun,
            world: World, stop: StepBoundaryStop) -> dict:  # fmt: skip
    """The run's summary. Tuning (msctr.tune, no test split loaded): the best epoch's
    validation figures. Else the best epoch's weights score the test split, and rank 0
    writes predictions.parquet and run.json (last: the run is done) and removes last.pt."""
    if data.test is None:
        best = json.loads(state.log[stopping.best_epoch])
        return {
            "model": entry.key,
            "seed": seed,
            "best_epoch": stopping.best_epoch + 1,
            "epochs": len(state.log),  # trained, early stopping or --trial-epochs may end sooner
            "val_auc": best["val_auc"],
            "val_logloss": best["val_logloss"],
            "train_seconds": time.perf_counter() - start,
        }
    model = trainee.model
    model.load_state_dict(trainee.best)
    test_p = trainee.score(data.test, t, world, stop)
    summary = {
        "model": entry.key,
        "seed": seed,
        "best_epoch": stopping.best_epoch + 1,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": time.perf_counter() - start,
        "resume_checkpoint_seconds": state.checkpoint_seconds,
    }
    if world.parallel:
        summary["processes"] = world.size
    extra = getattr(model, "report", None)  # a model may expose extra facts (head weights, codes)
    if callable(extra):
        summary["model_report"] = extra()
    if world.main:
        write_predictions(files.predictions, data.test_frame, test_p)
        write_text(files.summary, json.dumps(summary, indent=2) + "\n")  # last: the run is done
        files.resume.unlink(missing_ok=True)
    world.barrier()  # no rank starts the next run before rank 0 has finished this one
    return summary


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
    runs are removed first). One process at a time per run folder (a lock file).

    Under torchrun every process calls this: they train each run together (data parallel);
    rank 0 alone takes the lock, checks and writes the folder and prints."""
    console = console or Console()
    # everything that can refuse the recipe runs before the run folder is touched
    resolve_device(recipe.train.device)
    check_available(recipe.train.log)
    check_labels(e.key for e in recipe.models)
    check_run_folder(recipe.run_dir, inputs=(recipe.data,))
    world, _ = dist.setup(recipe.train.device)
    try:
        if not world.main:  # rank 0 speaks for all
            console, show_progress = Console(quiet=True), False
        return _train_recipe(recipe, console, show_progress, fresh, world)
    finally:
        dist.teardown()


def load_training_data(
    recipe: Recipe, test: bool = True, train_limit: int | None = None
) -> SplitData:
    """The recipe's splits, after the checks every training makes before its first step
    (threads, a validation split AUC can rank epochs on, test labels, each model's memory).
    `test=False` (msctr tune): the test split is neither opened nor checked; `train_limit`:
    the first N train rows only (`SplitData.load`)."""
    if recipe.train.threads:
        check_threads(recipe.train.threads, "train.threads")
        torch.set_num_threads(recipe.train.threads)
    keep_freed_memory()
    data = SplitData.load(recipe, test=test, train_limit=train_limit)
    stop = recipe.train.early_stopping
    if stop.metric == "auc" and (why := one_class(data.val_labels)):
        # AUC is undefined on one class: every epoch would tie and epoch 1 would be kept
        raise UserError(
            f"the validation split has {why}, so its AUC is undefined and cannot pick the "
            "best epoch; use train.early_stopping.metric: logloss, or prepare more rows"
        )
    if data.test_frame is not None:
        check_test_labels(data.test_frame[LABEL].to_numpy(), recipe.train.eval_rows)
    for i, entry in enumerate(recipe.models):  # the data's fields, then the shape (meta)
        check_model(entry.name, data.schema, entry.model_params, f"models.{i}.params")
        check_memory(entry.name, data.schema, entry.model_params, TRAIN_COPIES, recipe.train.device)
    return data


def _train_recipe(
    recipe: Recipe, console: Console, show_progress: bool, fresh: bool, world: World
) -> Path:
    data = load_training_data(recipe)
    folder = RunFolder(recipe.run_dir)
    wanted = [model_folder(e.key) for e in recipe.models]
    with contextlib.ExitStack() as held:  # rank 0's lock on the folder, while training

        def claim() -> list[tuple[str, str]]:
            folder.root.mkdir(parents=True, exist_ok=True)
            busy = (
                f"{{holder}} is training into '{folder.root}' now; wait for it to end, or stop "
                "it: Ctrl-C where it runs, or kill -INT {pid} (it stops at the next step and "
                "says how to resume; a crashed one holds no lock)"
            )
            # the pid to stop: under --nproc its launcher, which stops every process
            held.enter_context(exclusive_lock(folder.lock, busy, owner=user_pid()))
            if fresh:
                clear_folder(folder)
            sweep_stale(folder.root)
            plan = check_folder(recipe, folder, data.schema)
            # before any model folder is made: what msctr made here, it knows by name
            folder.record_models([*(m.name for m in folder.models()), *wanted])
            # recorded only now that every run in the folder is known to be this recipe's; the
            # data path absolute, so `msctr eval` works from any folder
            resolved = {**recipe.to_dict(), "data": str(Path(recipe.data).resolve())}
            text = yaml.safe_dump(resolved, sort_keys=False)
            if not folder.recipe.is_file() or folder.recipe.read_text() != text:
                # a comparison of the recipe as it was must not pass for this one's
                folder.results.unlink(missing_ok=True)
                folder.report.unlink(missing_ok=True)
                write_text(folder.recipe, text)
            return plan.renamed

        for old, new in world.on_main(claim):
            console.print(
                f"renamed {escape(old)} -> {escape(new)}: the same model under a new label"
            )
        _train_runs(recipe, data, folder, console, show_progress, world)
    return folder.root


def _run_status(files: SeedRun) -> tuple[bool, bool]:
    """(rank 0) Whether a run is finished, and whether it has a resume state."""
    if files.finished:
        files.resume.unlink(missing_ok=True)  # left if killed right at the end
        return True, False
    return False, files.resume.is_file()


def _train_runs(
    recipe: Recipe,
    data: SplitData,
    folder: RunFolder,
    console: Console,
    show_progress: bool,
    world: World,
) -> None:
    progress = make_progress(console) if show_progress else None
    if progress is not None:
        progress.start()
    try:
        with stop_at_step_boundaries() as stop:
            for entry in recipe.models:
                fingerprint = run_fingerprint(recipe, entry, data.schema)
                for seed in recipe.train.seeds:
                    files = folder.seed(entry.key, seed)
                    finished, resumed = world.on_main(functools.partial(_run_status, files))
                    if finished:
                        console.print(
                            f"[dim]kept[/] {escape(entry.key)} seed {seed}: finished earlier"
                        )
                        continue
                    summary = fit_one(
                        recipe,
                        entry,
                        seed,
                        data,
                        files.folder,
                        progress,
                        fingerprint,
                        tracking=folder.root,
                        world=world,
                        stop=stop,
                    )
                    how = "resumed and trained" if resumed else "trained"
                    console.print(
                        f"[green]{how}[/] {escape(entry.key)} seed {seed}: "
                        f"best epoch {summary['best_epoch']}, {summary['train_seconds']:.1f}s"
                    )
    finally:
        if progress is not None:
            progress.stop()
