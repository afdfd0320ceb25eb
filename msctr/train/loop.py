"""The training loop: one step, one epoch, early stopping, one (model, seed) run, a recipe.

Each run trains with early stopping on the validation split, restores the best epoch's
weights and scores the test split; where the files go is `msctr.runs`' business.
"""

from __future__ import annotations

import contextlib
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
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from msctr.cores import AdaptiveThreads
from msctr.data.batch import Batch
from msctr.data.loader import Columns
from msctr.data.schema import LABEL
from msctr.errors import Diverged, UserError
from msctr.evaluate.metrics import auc, check_test_labels, logloss, one_class
from msctr.io import atomic_path, exclusive_lock, sweep_stale, write_json, write_text
from msctr.models.kernels import set_batch_share
from msctr.models.registry import (
    TRAIN_COPIES,
    build,
    check_memory,
    check_model,
    split_output,
    training_loss,
)
from msctr.recipe import ModelEntry, Recipe, run_fingerprint
from msctr.resources import check_threads
from msctr.runs import RunFolder, SeedRun, check_labels, check_run_folder, model_folder
from msctr.track import check_available
from msctr.train import distributed as dist
from msctr.train.history import History
from msctr.train.launch import user_pid
from msctr.train.optim import LazyAdam, Optimizers, make_optimizer
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
    weight: float = 1.0,
    after_backward: Callable[[], None] | None = None,
) -> torch.Tensor:
    """One optimisation step: forward (under autocast for bf16), the training objective,
    backward, the optimizer's step. Returns the BCE part of the loss (what the log reports).

    `mark` is told where the phases begin ("fwd", "bwd", "opt") and where the step ends
    ("end"): the benchmarks time the phases through it; training passes nothing. Data
    parallel: `weight` scales this process's loss (`distributed.Shares`), `after_backward`
    synchronises what DDP does not (the row-sparse tables).
    """
    mark("fwd")
    with autocast(device, precision):
        out = run(batch)
    loss, total = training_loss(out, batch.label)
    optimizer.zero_grad(set_to_none=True)
    mark("bwd")
    (total if weight == 1.0 else total * weight).backward()
    if after_backward is not None:
        after_backward()
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
    stops: bool = True,
    pace: Callable[[], None] | None = None,
) -> np.ndarray:
    """Click probabilities for every row of `data`, in row order; a pending Ctrl-C stops
    between two batches (`stops`; predict_shared's processes stop together instead).
    `pace` runs before each batch (AdaptiveThreads.tick)."""
    model.eval()
    out = []
    with autocast(device, precision):
        for batch in data.batches(batch_size):
            if stops:
                check_stop()
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
    pace: Callable[[], None] | None = None,
) -> np.ndarray:
    """`predict`, with the rows split among the training processes: each scores its
    contiguous share and every process gets all probabilities back in row order. A pending
    Ctrl-C stops all processes before the pass (`dist.stop_together`), not between its
    batches: the shares' batch counts may differ, and a process must not stop alone."""
    w = dist.world()
    if not w.parallel:
        return predict(model, data, batch_size, device, precision, pace=pace)
    dist.stop_together()
    lo, hi = dist.part_bounds(len(data), w.rank, w.size)
    mine = np.zeros(0)
    if hi > lo:
        mine = predict(
            model, data.take(slice(lo, hi)), batch_size, device, precision, False, pace
        )
    return dist.gather_rows(torch.from_numpy(mine)).numpy()


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
    shares: dist.Shares | None = None,
    after_backward: Callable[[], None] | None = None,
    pace: Callable[[], None] | None = None,
) -> tuple[int, float, float]:
    """Up to `steps` training steps over `batches`: (rows seen, summed BCE, seconds) of this
    process (data parallel: its shares; `shares` weights each step's loss). `pace` runs
    before each step (AdaptiveThreads.tick).

    Between two steps a pending Ctrl-C/SIGTERM stops training (`dist.stop_together`); data
    parallel, every process stops at the same step (a stop on one is agreed by all)."""
    task = None
    if progress is not None:
        task = progress.add_task(title, total=steps, loss=0.0, rate=0.0)
    parallel = shares is not None and shares.size > 1
    seen, loss_sum, tick = 0, 0.0, time.perf_counter()
    try:
        for step, batch in enumerate(batches):
            if step >= steps:
                break
            if before_step is not None:
                before_step(step)
            if pace is not None:
                pace()
            dist.stop_together()
            rows, weight = len(batch), 1.0
            if parallel:
                rows, weight = shares.at(step)  # rows 0: a stand-in row, weight 0
                # dropout masks: this share's rows of the whole batch's (as one process draws)
                set_batch_share(shares.window(step))
            batch = batch.to(device)
            loss = train_step(
                run,
                batch,
                optimizer,
                device,
                precision,
                weight=weight,
                after_backward=after_backward,
            )
            seen += rows
            loss_sum += loss.item() * rows
            if task is not None:
                done = seen * (shares.size if parallel else 1)  # about, for the progress bar
                rate = done / max(time.perf_counter() - tick, 1e-9)
                progress.update(task, advance=1, loss=loss_sum / max(seen, 1), rate=rate)
    finally:
        set_batch_share(None)
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
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    tracking: Path | None = None,
    track_as: str | None = None,
) -> dict:
    """Train one model with one seed; write checkpoint, predictions and log; return a summary.

    `on_epoch(epoch, val)`, if given, is called after each epoch (counted from 1) has been
    scored and recorded, with its validation figures (`auc`, `logloss`): `msctr tune` reports
    them to Optuna's pruner there, and an exception it raises ends the run. Each epoch's
    figures go to history.jsonl, and to `train.log`'s trackers in the `tracking` folder's
    stores (the run folder; None: no trackers), as the run `track_as` (default: the seed
    folder's path there).

    After each epoch the whole training state (weights, every optimizer's state, early
    stopping, the epoch, every random state) goes to `last.pt`; a run that finds one continues
    from it and ends with the same metrics as if it had never stopped.

    Data parallel (under torchrun, docs/distributed.md): every process trains on its share of
    each batch, scores its share of val and test, and takes the same early-stopping decision;
    rank 0 alone reads and writes the run's files and hands the resume state to the others."""
    t = recipe.train
    w = dist.world()
    files = SeedRun(Path(run_dir))
    fingerprint = fingerprint or run_fingerprint(recipe, entry, data.schema)
    device = resolve_device(dist.local_device(t.device))
    seed_everything(seed)
    threads = AdaptiveThreads(t.threads)
    model = build(entry.name, data.schema, entry.model_params).to(device)
    optimizer = make_optimizer(model, t)
    steps_per_epoch = -(-data.train_rows // t.batch_size)
    if t.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    stopping = EarlyStopping(t.early_stopping.metric, t.early_stopping.patience)
    best_state = None
    lines: list[str] = []
    first_epoch, spent, checkpoint_seconds = 0, 0.0, 0.0
    resumed = dist.on_main(lambda: _open_run(files, fingerprint, w.size))
    if resumed is not None:
        state, best_state = resumed
        model.load_state_dict(state["model"])
        for opt, saved in zip(optimizer.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(saved)
        stopping.best_score, stopping.best_epoch, stopping.waited = state["stopping"]
        first_epoch, lines, spent = state["epoch"], list(state["log"]), state["seconds"]
        checkpoint_seconds = state["checkpoint_seconds"]
        if best_state is not None:
            best_state = {k: v.to(device) for k, v in best_state.items()}
        set_rng_state(state["rng_ranks"][w.rank] if w.parallel else state["rng"])
    restored = resumed[0] if resumed is not None else None
    history = History(
        files, recipe, entry, data.schema, fingerprint, restored, w.main, tracking, track_as
    )
    # the compiled module shares the model's parameters; checkpoints come from `model`.
    # Scoring uses the model itself, never the DDP wrapper (whose forward is a collective)
    scorer = torch.compile(model) if t.compile else model
    sparse_tables = sparse_parameters(optimizer)
    trained = dist.wrap(model, device, sparse_tables)
    run = scorer if trained is model else (torch.compile(trained) if t.compile else trained)
    sync_sparse = dist.SparseRows(sparse_tables).sync if w.parallel else None
    shares = dist.Shares(data.train_rows, t.batch_size, w.rank, w.size)
    hook = _test_signal_hook(entry.key, seed)
    start = time.perf_counter() - spent
    streamed = data.train is None  # read from disk each epoch: check it is the same data
    run_name = f"{entry.key} seed {seed}"
    for epoch in range(first_epoch, t.epochs):
        if stopping.stop:
            break
        if streamed:
            when = f"before epoch {epoch + 1} of {run_name}"
            dist.on_main(lambda when=when: data.check_unchanged(when))
        # set from the epoch, not stepped: a resumed run's rate is the one it stopped at
        lr = t.lr * t.lr_decay**epoch
        optimizer.set_lr(lr)
        model.train()
        seen, loss_sum, train_seconds = train_epoch(
            run,
            data.train_batches(recipe, seed, epoch, part=(w.rank, w.size)),
            steps_per_epoch,
            optimizer,
            device,
            t.precision,
            progress,
            f"{entry.key} seed {seed} epoch {epoch + 1}",
            None if hook is None else functools.partial(hook, epoch),
            shares,
            sync_sparse,
            threads.tick,
        )
        seen, loss_sum, train_seconds = _all_ranks(seen, loss_sum, train_seconds)
        if streamed:  # prepared again during the epoch: the epoch is not kept
            when = f"in epoch {epoch + 1} of {run_name}"
            dist.on_main(lambda when=when: data.check_unchanged(when))
        if not np.isfinite(loss_sum):
            raise Diverged(
                f"{entry.key} seed {seed}: the training loss became NaN/inf in epoch {epoch + 1}; "
                "lower train.lr"
            )
        dist.sync_buffers(model)  # BatchNorm statistics: the same on every rank from here
        val_p = predict_shared(
            scorer, data.val, t.eval_batch_size, device, t.precision, threads.tick
        )
        # rank 0's figures decide for all, so every rank stops at the same epoch
        val = dist.on_main(
            lambda p=val_p: {"auc": auc(data.val_labels, p), "logloss": logloss(data.val_labels, p)}
        )
        improved = stopping.update(epoch, val)
        if improved:
            best_state = copy.deepcopy(model.state_dict())
            if w.main:
                save_checkpoint(files.checkpoint, best_state)
        line = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "samples": seen,
            "samples_per_s": seen / max(train_seconds, 1e-9),
            "lr": lr,
            "val_auc": val["auc"],
            "val_logloss": val["logloss"],
            "best": improved,
        }
        if w.parallel:
            line["processes"] = w.size
        if threads.adaptive:  # the mean count over the epoch's steps and scoring batches
            line["threads"] = round(threads.take_used(), 2)
        lines.append(json.dumps(line))
        timing = {"train_seconds": train_seconds}  # the line has the rest, lr included
        history.add(line, timing, data.val_labels, val_p, data.val.scenario)
        tick = time.perf_counter()
        rngs = dist.gather_objects(rng_state())  # every rank's dropout stream, on rank 0
        if w.main:
            state = {
                "version": RESUME_VERSION,
                "fingerprint": fingerprint,
                "epoch": epoch + 1,  # epochs finished
                "model": model.state_dict(),
                "optimizers": [o.state_dict() for o in optimizer.optimizers],
                "stopping": [stopping.best_score, stopping.best_epoch, stopping.waited],
                "log": lines,
                "history": history.lines,
                "seconds": time.perf_counter() - start,
                "checkpoint_seconds": checkpoint_seconds,
                "rng": rngs[0],
            }
            if w.parallel:
                state["processes"] = w.size
                state["rng_ranks"] = rngs
            save_state(files.resume, state)
        checkpoint_seconds += time.perf_counter() - tick
        if w.main:
            with files.log.open("a") as fh:
                fh.write(lines[-1] + "\n")
        history.commit()
        if on_epoch is not None:
            on_epoch(epoch + 1, val)
    dist.stop_together()
    history.close()
    if data.test is None:  # tuning (msctr.tune): validation only, the test split is not loaded
        best = json.loads(lines[stopping.best_epoch])
        return {
            "model": entry.key,
            "seed": seed,
            "best_epoch": stopping.best_epoch + 1,
            "epochs": len(lines),  # trained, early stopping or --trial-epochs may end them sooner
            "val_auc": best["val_auc"],
            "val_logloss": best["val_logloss"],
            "train_seconds": time.perf_counter() - start,
        }
    model.load_state_dict(best_state)
    test_p = predict_shared(
        scorer, data.test, t.eval_batch_size, device, t.precision, threads.tick
    )
    summary = {
        "model": entry.key,
        "seed": seed,
        "best_epoch": stopping.best_epoch + 1,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": time.perf_counter() - start,
        "resume_checkpoint_seconds": checkpoint_seconds,
    }
    if w.parallel:
        summary["processes"] = w.size
    extra = getattr(model, "report", None)  # a model may expose extra facts (head weights, codes)
    if callable(extra):
        summary["model_report"] = extra()
    if w.main:
        write_predictions(files.predictions, data.test_frame, test_p)
        write_text(files.summary, json.dumps(summary, indent=2) + "\n")  # last: the run is done
        files.resume.unlink(missing_ok=True)
    dist.barrier()  # no rank starts the next run before rank 0 has finished this one
    return summary


def sparse_parameters(optimizer: Optimizers) -> list[torch.nn.Parameter]:
    """The embedding tables stepped by LazyAdam (row-sparse gradients)."""
    return [
        p
        for o in optimizer.optimizers
        if isinstance(o, LazyAdam)
        for g in o.param_groups
        for p in g["params"]
    ]


def _all_ranks(seen: int, loss_sum: float, seconds: float) -> tuple[int, float, float]:
    """An epoch's rows and summed loss over every process; its time, the slowest one's."""
    w = dist.world()
    if not w.parallel:
        return seen, loss_sum, seconds
    total_seen, total_loss, _ = dist.all_sum([seen, loss_sum, 0.0])
    return int(total_seen), total_loss, dist.all_max(seconds)


def _open_run(files: SeedRun, fingerprint: dict, processes: int) -> tuple[dict, dict | None] | None:
    """(rank 0) Make the run's folder ready; its resume state and best weights, if it has one.

    A run interrupted under N processes resumes under N: each one's dropout stream is in it."""
    files.folder.mkdir(parents=True, exist_ok=True)
    sweep_stale(files.folder)  # a checkpoint half-written by a killed earlier run
    if not files.resume.is_file():
        write_json(files.fingerprint, fingerprint)
        write_text(files.log, "")
        return None
    state = load_state(files.resume, fingerprint)
    was = state.get("processes", 1)
    if was != processes:
        raise UserError(
            f"'{files.resume}' was written by a run of {was} process(es), this one has "
            f"{processes}; resume it with the same number (msctr train --nproc {was}), or remove "
            "last.pt to retrain that run from its first epoch"
        )
    best_state = None
    if state["stopping"][1] >= 0:  # best.pt holds the best epoch's weights (see docs)
        if not files.checkpoint.is_file():
            raise UserError(
                f"'{files.checkpoint}' is missing, so '{files.resume}' cannot be resumed; "
                "remove last.pt to retrain that run from its first epoch, or use --fresh"
            )
        best_state = torch.load(files.checkpoint, map_location="cpu", weights_only=True)
    write_text(files.log, "".join(line + "\n" for line in state["log"]))
    return state, best_state


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
    runs are removed first). One process at a time per run folder (a lock file).

    Under torchrun every process calls this: they train each run together (data parallel);
    rank 0 alone takes the lock, checks and writes the folder and prints."""
    console = console or Console()
    # everything that can refuse the recipe runs before the run folder is touched
    resolve_device(recipe.train.device)
    check_available(recipe.train.log)
    check_labels(e.key for e in recipe.models)
    check_run_folder(recipe.run_dir, inputs=(recipe.data,))
    w, _ = dist.setup(recipe.train.device)
    try:
        if not w.main:  # rank 0 speaks for all
            console, show_progress = Console(quiet=True), False
        return _train_recipe(recipe, console, show_progress, fresh)
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


def _train_recipe(recipe: Recipe, console: Console, show_progress: bool, fresh: bool) -> Path:
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

        for old, new in dist.on_main(claim):
            console.print(
                f"renamed {escape(old)} -> {escape(new)}: the same model under a new label"
            )
        _train_runs(recipe, data, folder, console, show_progress)
    return folder.root


def _run_status(files: SeedRun) -> tuple[bool, bool]:
    """(rank 0) Whether a run is finished, and whether it has a resume state."""
    if files.finished:
        files.resume.unlink(missing_ok=True)  # left if killed right at the end
        return True, False
    return False, files.resume.is_file()


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
                    finished, resumed = dist.on_main(functools.partial(_run_status, files))
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
                    )
                    how = "resumed and trained" if resumed else "trained"
                    console.print(
                        f"[green]{how}[/] {escape(entry.key)} seed {seed}: "
                        f"best epoch {summary['best_epoch']}, {summary['train_seconds']:.1f}s"
                    )
    finally:
        if progress is not None:
            progress.stop()
