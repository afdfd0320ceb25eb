"""`msctr tune`: each model's hyperparameters searched with Optuna over the recipe's
`search:` space (msctr.search), on the validation split only (docs/tune.md).

    runs/<recipe>-tune/tune.db        the studies, one per model (Optuna's SQLite storage)
    runs/<recipe>-tune/tuned.yaml     the recipe with each model's best params written in
    runs/<recipe>-tune/results.json   best params and validation value per model, budget

A trial is one run of one model with the recipe's first seed, trained by the training loop's
`fit_one` with the recipe's early stopping; its value is the best epoch's validation figure
of the early-stopping metric. The test split is never opened (`load_training_data(test=
False)`): `msctr train <folder>/tuned.yaml` then measures the chosen configurations on test,
over the seeds. Every trial's recipe is built and checked like a sweep value's before the
first trial, so a bad key or value is one line and nothing is written.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from msctr.data.schema import Schema
from msctr.errors import Diverged, Interrupted, UserError
from msctr.io import (
    atomic_path,
    exclusive_lock,
    scratch_dir,
    sweep_stale,
    write_json,
    write_text,
)
from msctr.models.registry import TRAIN_COPIES, check_memory, check_model
from msctr.recipe import (
    Recipe,
    fingerprint_change,
    recipe_from_dict,
    run_fingerprint,
    set_key,
)
from msctr.runs import TUNE_FIGURE, TUNE_FILES, check_labels, check_tune_folder, model_folder
from msctr.search import Spec, grid_size, model_space, parse_space
from msctr.tables import Table, print_tables
from msctr.track import check_available
from msctr.train.launch import wait
from msctr.train.loop import fit_one, load_training_data, make_progress
from msctr.train.runtime import StepBoundaryStop, resolve_device, stop_at_step_boundaries
from msctr.train.splits import SplitData

OPTUNA_MISSING = "msctr tune needs Optuna: pip install 'msctr[tune]'"
SAMPLERS = ("tpe", "grid")
PRUNERS = ("median", "halving", "none")
DEFAULT_TRIALS = 20  # per model, for tpe (grid: the whole grid)
SMOKE_TRIALS = 2


def need_optuna() -> Any:
    """Optuna, imported only here: it is the optional extra `msctr[tune]`."""
    try:
        import optuna
    except ImportError:
        raise UserError(OPTUNA_MISSING) from None
    # trials are reported in msctr's table; Optuna's own log lines would repeat them
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna


class _TrialFailed(Exception):
    """A trial that ended without a value (diverged, or a combination the model refuses):
    Optuna records it as FAIL and the study goes on."""


@dataclass(frozen=True)
class Caps:
    """Limits on every trial, not on the tuned recipe (`--trial-epochs`, `--trial-rows`):
    cheaper trials that rank configurations; `msctr train tuned.yaml` trains in full."""

    epochs: int | None = None  # train.epochs of a trial at most this
    rows: int | None = None  # a trial trains on the first N train rows (validation whole)

    def recorded(self) -> dict[str, int]:
        """The caps set, by option (study fingerprint, results.json): none set is {}, so a
        study begun before caps existed is the same study as one without them."""
        caps = {"trial_epochs": self.epochs, "trial_rows": self.rows}
        return {k: v for k, v in caps.items() if v is not None}

    def shown(self) -> str:
        if self.epochs is None and self.rows is None:
            return "the recipe's epochs on every train row"
        epochs = f"at most {self.epochs} epoch(s)" if self.epochs else "the recipe's epochs"
        rows = f"the first {self.rows:,} train rows" if self.rows else "every train row"
        return f"{epochs} on {rows}"


NO_CAPS = Caps()


@dataclass
class Target:
    """One model to tune: its place in the recipe, its space, and its grid (grid sampler)."""

    index: int
    label: str
    raw_space: dict  # as written in the recipe (the study's fingerprint)
    space: dict[str, Spec]
    grid: dict[str, list] | None = None


def tune_folder(recipe: Recipe) -> Path:
    """runs/<name>-tune (or <out>-tune): beside the recipe's run folder, never it."""
    run = recipe.run_dir
    return run.with_name(f"{run.name}-tune")


def _shown(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def _recipe_key(index: int, key: str) -> str:
    """A search space's key as the recipe key it sets: params.X is model `index`'s."""
    return f"models.{index}.{key}" if key.startswith("params.") else key


def trial_recipe(
    recipe: Recipe, index: int, values: dict[str, Any], caps: Caps = NO_CAPS
) -> Recipe:
    """The one-model recipe a trial trains: model `index` with `values` set (params keys in
    the model entry, train keys in `train`), the recipe's first seed, no search space, its
    epochs capped by `caps` (a searched train.epochs too). Checked as any recipe is; a refusal
    names the model and the key as the user's recipe has them."""
    raw = recipe.to_dict()
    raw.pop("search", None)
    entry = raw["models"][index]
    entry.pop("search", None)
    raw["models"] = [entry]
    # the other models are gone: their baselines and the paper's rows go with them
    raw["eval"]["baseline"], raw["eval"]["baselines"], raw["paper"] = None, [], None
    raw["train"]["seeds"] = raw["train"]["seeds"][:1]
    for key, value in values.items():
        set_key(raw, _recipe_key(0, key), value, f"search of {recipe.models[index].key}")
    if caps.epochs is not None:
        raw["train"]["epochs"] = min(raw["train"]["epochs"], caps.epochs)
    try:
        return recipe_from_dict(raw, where=recipe.name)
    except UserError as e:
        message = str(e).replace("models.0.", f"models.{index}.")
        label = recipe.models[index].key
        raise UserError(f"search of {label}, {_shown(values)}: {message}") from None


def _checked(
    recipe: Recipe, target: Target, values: dict[str, Any], schema: Schema, caps: Caps = NO_CAPS
) -> Recipe:
    """`trial_recipe`, and its model's shape built on the data's schema (without allocating
    it): sizes the model refuses only against the data, or beyond free memory, fail here."""
    r = trial_recipe(recipe, target.index, values, caps)
    m = r.models[0]
    try:
        check_model(m.name, schema, m.model_params)
        check_memory(m.name, schema, m.model_params, TRAIN_COPIES, r.train.device)
    except UserError as e:
        raise UserError(f"search of {target.label}, {_shown(values)}: {e}") from None
    return r


def plan(recipe: Recipe, model: str | None, sampler: str) -> list[Target]:
    """The models to tune and their spaces, every key's values checked against the recipe
    and the data's schema; trains nothing, writes nothing."""
    if sampler not in SAMPLERS:
        raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if model:
        indices = [recipe.model_index(model, "--model")]
    else:  # the models with a space: a paper may give one for some models only
        indices = [i for i, m in enumerate(recipe.models) if model_space(recipe.search, m.search)]
        if not indices:
            raise UserError(
                "no model of the recipe has a search space; add `search:` to a model entry or "
                "to the recipe (docs/tune.md)"
            )
    schema = Schema.load(recipe.data)
    targets = []
    for i in indices:
        entry = recipe.models[i]
        raw = model_space(recipe.search, entry.search)
        where = f"search of {entry.key}"
        space = parse_space(raw, where)
        if not space:
            raise UserError(
                f"model {entry.key} has no search space; add `search:` to its entry or to the "
                "recipe (docs/tune.md), or tune another model with --model LABEL"
            )
        trains = [k for k in space if k.startswith("train.")]
        if trains and len(recipe.models) > 1:
            raise UserError(
                f"{where}: {trains[0]} is one value for all {len(recipe.models)} models of the "
                "recipe, so tuned.yaml could not hold each model's best; search model params "
                "(params.NAME) only, or tune a one-model recipe"
            )
        target = Target(i, entry.key, raw, space)
        if sampler == "grid":
            target.grid = {n: v for s in space.values() for n, v in s.grid(where).items()}
        for spec in space.values():  # every choice, both ends of every range
            for value in spec.probes():
                _checked(recipe, target, {spec.key: value}, schema)
        _checked(recipe, target, {s.key: s.probes()[0] for s in space.values()}, schema)
        targets.append(target)
    return targets


def study_fingerprint(recipe: Recipe, target: Target, schema: Schema, caps: Caps) -> dict:
    """What a study's trials depend on: the run fingerprint of the model's trial recipe (data,
    model, params, train keys, as the recipe has them), the seed, the space and the trial
    caps. A study in tune.db that records another is not continued."""
    r = trial_recipe(recipe, target.index, {})
    fp = run_fingerprint(r, r.models[0], schema)
    fp["seed"] = r.train.seeds[0]
    fp["space"] = target.raw_space
    if caps.recorded():  # absent when none: studies begun before caps existed still match
        fp["caps"] = caps.recorded()
    return json.loads(json.dumps(fp))


def _format(value: Any) -> str:
    if isinstance(value, float):  # 0.0 stays a float in the table, not "0"
        text = f"{value:.4g}"
        return text if any(c in text for c in ".en") else f"{text}.0"
    return json.dumps(value)


def _values(target: Target, params: dict[str, Any]) -> dict[str, Any] | None:
    """A trial's recipe values from its Optuna params (None while a key has none yet)."""
    if not all(n in params for s in target.space.values() for n in s.names()):
        return None
    return {k: s.value(params) for k, s in target.space.items()}


def trials_table(target: Target, study: Any, metric: str, sampler: str) -> Table:
    optuna = need_optuna()
    done = optuna.trial.TrialState.COMPLETE
    best = _best(study)
    keys = list(target.space)
    rows, styles = [], []
    for t in study.get_trials(deepcopy=False):
        values = _values(target, t.params) or {}
        state = t.state.name.lower()
        if "error" in t.user_attrs:
            state += f": {t.user_attrs['error']}"
        elif "pruned_at" in t.user_attrs:
            state += f" after epoch {t.user_attrs['pruned_at']}"
        rows.append(
            [
                str(t.number),
                *(_format(values[k]) if k in values else "" for k in keys),
                f"{t.value:.4f}" if t.state == done else "",
                state,
            ]
        )
        styles.append("bold" if best is not None and t.number == best.number else None)
    finished = sum(t.state == done for t in study.get_trials(deepcopy=False))
    title = (
        f"{target.label}: {finished} finished trial(s), {sampler} sampler, validation {metric} "
        f"({'higher' if metric == 'auc' else 'lower'} is better; best in bold)"
    )
    return Table(["trial", *keys, f"val {metric}", "state"], rows, title=title, styles=styles)


def _best(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no finished trial
        return None


def _earlier(optuna: Any, work: Work, schema: Schema) -> list[tuple[Target, Any]]:
    """The recipe's models this command did not tune (`--model`) whose study in tune.db an
    earlier tune of the same recipe made (same fingerprint, trial caps included)."""
    names = set(optuna.get_all_study_names(work.storage))
    tuned = {t.index for t in work.targets}
    found = []
    for i, entry in enumerate(work.recipe.models):
        if i in tuned or entry.key not in names:
            continue
        raw = model_space(work.recipe.search, entry.search)
        target = Target(i, entry.key, raw, parse_space(raw, f"search of {entry.key}"))
        study = optuna.load_study(study_name=entry.key, storage=work.storage)
        fp = study_fingerprint(work.recipe, target, schema, work.caps)
        if study.user_attrs.get("fingerprint") == fp:
            found.append((target, study))
    return found


def _grid_sampler(optuna: Any, grid: dict[str, list], seed: int) -> Any:
    """Optuna's grid sampler without its stop at the grid's end (`Study.stop`, which works
    only inside `Study.optimize`, not with ask-and-tell): `_run_trials` counts the budget
    itself, and never asks for more trials than the grid has points."""

    class Grid(optuna.samplers.GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            pass

        def point(self, grid_id: int) -> dict[str, Any]:
            """The params of grid point `grid_id` (Optuna's own mapping, as it suggests them)."""
            return dict(zip(self._param_names, self._all_grids[grid_id]))

    return Grid(grid, seed=seed)


def _open_studies(optuna: Any, work: Work, schema: Schema) -> list[Any]:
    """Each target's study, created or continued, with this command's sampler and pruner; a
    study from another recipe, or run with other trial caps, is refused. The sampler and the
    pruner are not the study's: a rerun may change them."""
    recipe, storage = work.recipe, work.storage
    direction = "maximize" if recipe.train.early_stopping.metric == "auc" else "minimize"
    for target in work.targets:
        study = optuna.create_study(
            storage=storage, study_name=target.label, direction=direction, load_if_exists=True
        )
        fp = study_fingerprint(recipe, target, schema, work.caps)
        old = study.user_attrs.get("fingerprint")
        parts = ("data", "model", "params", "train", "seed", "space", "caps")
        change = None if old is None else fingerprint_change(old, fp, target.label, parts)
        if change is not None:
            key, was, now = change
            if key.startswith("caps."):  # named by its option; a cap not given is none
                key = "--" + key.removeprefix("caps.").replace("_", "-")
                was, now = (None if v == "<absent>" else v for v in (was, now))
            raise UserError(
                f"{key} changed since the study of {target.label} in '{storage[10:]}' began "
                f"({json.dumps(was)} there, {json.dumps(now)} now), so its trials are not this "
                "recipe's; add --fresh to start over, or tune into another folder (--set out=...)"
            )
        if old is None:
            study.set_user_attr("fingerprint", fp)
    return _studies(optuna, work, work.seed)


def _pruner(optuna: Any, name: str) -> Any:
    """Optuna's pruner, with its defaults: median prunes a trial whose best value so far is
    worse than the median of earlier trials' at the same epoch, once 5 trials have finished;
    halving keeps the best quarter of the trials at each rung of epochs 1, 4, 16, ..."""
    if name == "median":
        return optuna.pruners.MedianPruner()
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def _retry_stale(optuna: Any, study: Any, console: Console) -> None:
    """A trial still RUNNING is one a killed tune left (this one holds the folder's lock, so
    no other runs): marked FAIL and its point enqueued, so the next trial tries it again (the
    grid sampler would count the failed point as visited and never come back to it)."""
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in running:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        params = t.params
        if not params and "grid_id" in t.system_attrs:  # killed before its values were drawn
            params = study.sampler.point(t.system_attrs["grid_id"])
        if params:
            study.enqueue_trial(params)
        console.print(
            f"trial {t.number} of {escape(study.study_name)} was left running by a tune that "
            "stopped: marked failed, its point tried again"
        )


def run_tune(
    recipe: Recipe,
    console: Console,
    sampler: str = "tpe",
    trials: int | None = None,
    timeout: float | None = None,
    seed: int = 0,
    model: str | None = None,
    fresh: bool = False,
    smoke: bool = False,
    pruner: str | None = None,
    caps: Caps = NO_CAPS,
    jobs: int = 1,
) -> dict:
    """Tune each model (or `model`): trials until `trials` of each study have ended
    (`_settled`; default: DEFAULT_TRIALS for tpe, SMOKE_TRIALS under `smoke`; grid: at most
    the whole grid) or `timeout` seconds per model pass, each trial capped by `caps` and
    stopped early by `pruner` (default: median for tpe, none for grid); then the tables,
    tuned.yaml and results.json."""
    optuna = need_optuna()
    if trials is not None and trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    if timeout is not None and not timeout > 0:
        raise UserError(f"--timeout must be a positive number of seconds, got {timeout}")
    # a grid wants every point's full value (its table is the whole space), so no pruner
    pruner = pruner or ("none" if sampler == "grid" else "median")
    if pruner not in PRUNERS:
        raise UserError(f"--pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    for option, cap in (("--trial-epochs", caps.epochs), ("--trial-rows", caps.rows)):
        if cap is not None and cap < 1:
            raise UserError(f"{option} must be at least 1, got {cap}")
    if caps.rows is not None and recipe.train.loader != "memory":
        raise UserError(
            "--trial-rows takes the first rows of the train split in memory, and this recipe "
            "streams it (train.loader: stream); drop --trial-rows, or --set train.loader=memory"
        )
    # everything that can refuse the command runs before the folder is touched
    resolve_device(recipe.train.device)
    check_available(recipe.train.log)
    check_labels(e.key for e in recipe.models)
    targets = plan(recipe, model, sampler)
    folder = tune_folder(recipe)
    check_tune_folder(folder, inputs=(recipe.data,))
    data = _trial_data(recipe, targets, caps)  # checked here, before the folder is touched
    folder.mkdir(parents=True, exist_ok=True)
    busy = (
        f"{{holder}} is tuning into '{folder}' now; wait for it to end, or stop it: Ctrl-C "
        "where it runs, or kill -INT {pid} (run the same command again to continue its study)"
    )
    with exclusive_lock(folder / ".lock", busy):
        if fresh:
            for path in folder.iterdir():
                if path.name in TUNE_FILES or TUNE_FIGURE.fullmatch(path.name):
                    path.unlink()
        sweep_stale(folder)  # trial folders and temporary files of a killed tune
        storage = f"sqlite:///{(folder / 'tune.db').resolve()}"
        work = Work(recipe, targets, [], folder, storage, sampler, seed, pruner, timeout, caps)
        schema = data.schema
        studies = _open_studies(optuna, work, schema)
        budget = trials if trials is not None or not smoke else SMOKE_TRIALS
        per_model = f"{budget or DEFAULT_TRIALS} trial(s)"
        if sampler == "grid":
            per_model = f"{budget} trial(s) at most" if budget else "the whole grid"
        console.print(Text(
            f"budget per model: {per_model}"
            + (f", {timeout:g}s at most" if timeout else "")
            + f", {sampler} sampler, pruner {pruner}; each trial: {caps.shown()}"
        ))  # fmt: skip
        spaceless = [m.key for m in recipe.models if not model_space(recipe.search, m.search)]
        if spaceless and model is None:
            console.print(Text(f"not tuned (no search space): {', '.join(spaceless)}"))
        for target, study in zip(targets, studies):
            _retry_stale(optuna, study, console)
            want = budget or DEFAULT_TRIALS
            if sampler == "grid":  # each point once: a larger budget would repeat points
                want = min(budget or math.inf, grid_size(target.space))
            work.wants.append(want)
            done = _settled(optuna, study)
            if done >= want:
                console.print(f"[dim]kept[/] {escape(target.label)}: {done} trial(s) ended earlier")
            elif done:
                console.print(f"{escape(target.label)}: {done} trial(s) ended earlier, "
                              "continuing the study")  # fmt: skip
        if jobs > 1:
            del data  # each worker loads its own
            _run_jobs(work, jobs, console)
        else:
            progress = make_progress(console)
            progress.start()
            try:
                with stop_at_step_boundaries() as work.stop:
                    _run_all(optuna, work, studies, data, console, progress)
            finally:
                progress.stop()
        # a model tuned by an earlier `--model` into this folder keeps its place in tuned.yaml
        for target, study in _earlier(optuna, work, schema):
            targets, studies = [*targets, target], [*studies, study]
        return _finish(optuna, storage, recipe, targets, studies, folder, console, sampler, {
            "trials": budget, "timeout": timeout, "sampler_seed": seed, "smoke": smoke,
            "pruner": pruner, "trial_epochs": caps.epochs, "trial_rows": caps.rows,
        })  # fmt: skip


@dataclass
class Work:
    """What a process that runs trials needs: the recipe, the models, the folder and study
    storage, each model's budget (`wants`), and how its trials run."""

    recipe: Recipe
    targets: list[Target]
    wants: list[int]
    folder: Path
    storage: str
    sampler: str
    seed: int
    pruner: str
    timeout: float | None
    caps: Caps
    stop: StepBoundaryStop | None = None  # this process's Ctrl-C, at step boundaries


def _run_trials(
    optuna: Any,
    study: Any,
    target: Target,
    work: Work,
    want: int,
    data: SplitData,
    console: Console,
    progress: Any,
) -> None:
    """Trials of one model's study until `want` of them have ended or `work.timeout` seconds
    have passed. Optuna's ask-and-tell: a trial is taken (`study.ask`) under the folder's
    claim lock after counting the trials that ended and those other workers run, so N workers
    on one study (`--jobs N`) start exactly the budget between them, none twice."""
    metric = work.recipe.train.early_stopping.metric
    state = optuna.trial.TrialState
    start = time.monotonic()
    while work.timeout is None or time.monotonic() - start < work.timeout:
        with _claim(work.folder):
            running = study.get_trials(deepcopy=False, states=(state.RUNNING,))
            if _settled(optuna, study) + len(running) >= want:
                return
            trial = study.ask()
            # drawn at once: a trial killed before its values exist is retried by grid id
            values = {k: s.suggest(trial) for k, s in target.space.items()}
        try:
            value = _trial(optuna, trial, target, work, values, data, console, progress, metric)
        except optuna.TrialPruned:  # counts as ended: the budget is trials started and ended
            study.tell(trial, state=state.PRUNED)
        except _TrialFailed:  # diverged or refused: ended, with its reason
            study.tell(trial, state=state.FAIL)
        except BaseException:  # Ctrl-C, an error: not ended; the next run tries it again
            study.tell(trial, state=state.FAIL)
            study.enqueue_trial(trial.params)
            raise
        else:
            study.tell(trial, value)


def _trial(
    optuna: Any,
    trial: Any,
    target: Target,
    work: Work,
    values: dict[str, Any],
    data: SplitData,
    console: Console,
    progress: Any,
    metric: str,
) -> float:
    """One trial: `fit_one` of the model with `values` on train, scored on validation; its
    value, its figures in the trial's user attributes."""
    try:
        r = _checked(work.recipe, target, values, data.schema, work.caps)
    except UserError as e:  # a combination the model refuses (each value alone passed)
        trial.set_user_attr("error", "refused")
        console.print(Text(f"trial {trial.number} of {target.label}: {e}"))
        raise _TrialFailed from None

    def report(epoch: int, val: dict[str, float]) -> None:
        # the pruner compares this epoch's figure with the other trials' at the same epoch
        trial.report(val[metric], epoch)
        if trial.should_prune():
            trial.set_user_attr("pruned_at", epoch)
            raise optuna.TrialPruned(f"val {metric} {val[metric]:.4f} after epoch {epoch}")

    try:
        with scratch_dir(work.folder / "trial") as run:  # checkpoints of the trial, then gone
            summary = fit_one(
                r, r.models[0], r.train.seeds[0], data, run, progress, on_epoch=report,
                tracking=work.folder, track_as=f"{target.label}/trial_{trial.number}",
                stop=work.stop,
            )  # fmt: skip
    except optuna.TrialPruned as e:
        console.print(Text(f"trial {trial.number} of {target.label}: {_shown(values)}: "
                           f"pruned, {e}"))  # fmt: skip
        raise
    except Diverged:
        trial.set_user_attr("error", "diverged")
        console.print(Text(f"trial {trial.number} of {target.label}: {_shown(values)} "
                           "diverged (loss NaN/inf); recorded as failed"))  # fmt: skip
        raise _TrialFailed from None
    for key in ("val_auc", "val_logloss", "best_epoch", "epochs", "train_seconds"):
        trial.set_user_attr(key, summary[key])
    value = summary[f"val_{metric}"]
    console.print(Text(
        f"trial {trial.number} of {target.label}: {_shown(values)}: val {metric} "
        f"{value:.4f} (best epoch {summary['best_epoch']}, {summary['train_seconds']:.1f}s)"
    ))  # fmt: skip
    return value


@contextmanager
def _claim(folder: Path) -> Iterator[None]:
    """The folder's claim lock, held while a worker counts a study's trials and takes the
    next one: short, and blocking (the workers wait their turn), unlike the folder's `.lock`."""
    import fcntl

    fd = os.open(folder / ".claim", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _studies(optuna: Any, work: Work, seed: int) -> list[Any]:
    """Each model's study as stored, with this process's sampler and pruner."""
    studies = []
    for target in work.targets:  # the grid sampler takes its own grid, not the study's
        if work.sampler == "grid":  # one seed for all: it orders the grid, its ids name points
            chosen = _grid_sampler(optuna, target.grid, work.seed)
        else:
            chosen = optuna.samplers.TPESampler(seed=seed)
        studies.append(
            optuna.load_study(
                study_name=target.label,
                storage=work.storage,
                sampler=chosen,
                pruner=_pruner(optuna, work.pruner),
            )
        )
    return studies


def _run_all(optuna: Any, work: Work, studies: list[Any], data: SplitData, console: Console,
             progress: Any) -> None:  # fmt: skip
    for target, study, want in zip(work.targets, studies, work.wants):
        _run_trials(optuna, study, target, work, want, data, console, progress)


def _run_jobs(work: Work, jobs: int, console: Console) -> None:
    """`--jobs N`: N worker processes on the studies, each with its share of the cores
    (`train.threads` when the recipe sets it). Each runs in a session of its own, so a
    terminal's Ctrl-C reaches this process alone, which hands it on once: the workers stop at
    their next step boundary, their trials to be tried again by the next run. Each dies with
    this process (PR_SET_PDEATHSIG): a kill -9 here leaves no worker running, only trials
    RUNNING in tune.db, which the next run marks failed and tries again."""
    threads = work.recipe.train.threads or max(1, len(os.sched_getaffinity(0)) // jobs)
    procs, errors = [], []
    for k in range(jobs):
        read, write = os.pipe()
        proc = subprocess.Popen(
            [sys.executable, "-c", "from msctr.tune import worker; worker()",
             str(k), str(threads), str(os.getpid()), str(write)],
            stdin=subprocess.PIPE,
            pass_fds=(write,),
            start_new_session=True,
        )  # fmt: skip
        os.close(write)
        proc.stdin.write(pickle.dumps(work))
        proc.stdin.close()
        procs.append(proc)
        errors.append(read)
    try:
        codes = wait(procs)  # in short sleeps: a signal must reach its handler at once
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    finally:
        said = []
        for fd in errors:
            with os.fdopen(fd, "rb") as fh:
                said.append(fh.read().decode(errors="replace").strip())
    for code, message in zip(codes, said):
        if code - 128 in (signal.SIGINT, signal.SIGTERM):
            raise Interrupted(code - 128)
        if code:
            raise UserError(message or f"a tune worker ended with exit status {code}")


def worker() -> None:
    """A `--jobs N` worker (started by `_run_jobs`): argv holds its number, threads, the
    parent's pid and the fd to write its error line to; stdin its `Work`."""
    import torch

    from msctr.train.launch import die_with_parent

    number, threads, parent, fd = (int(a) for a in sys.argv[1:5])
    die_with_parent(parent)
    code, message = 0, ""
    try:
        work: Work = pickle.loads(sys.stdin.buffer.read())
        torch.set_num_threads(threads)
        optuna = need_optuna()
        console = Console()
        data = _trial_data(work.recipe, work.targets, work.caps)
        # another TPE seed per worker: one seed and one history would repeat the same point
        studies = _studies(optuna, work, work.seed + number)
        with stop_at_step_boundaries() as work.stop:
            _run_all(optuna, work, studies, data, console, None)
    except Interrupted as e:
        code = 128 + e.signum
    except KeyboardInterrupt:  # a signal before the trials began
        code = 128 + signal.SIGINT
    except UserError as e:
        code, message = 1, str(e)
    with os.fdopen(fd, "w") as fh:
        fh.write(message)
    sys.exit(code)


def _trial_data(recipe: Recipe, targets: list[Target], caps: Caps) -> SplitData:
    """The splits every trial reads: train (its first rows under --trial-rows) and validation."""
    base = trial_recipe(recipe, targets[0].index, {})
    return load_training_data(base, test=False, train_limit=caps.rows)


def _settled(optuna: Any, study: Any) -> int:
    """The trials that count toward the budget: finished ones, pruned ones (as Optuna counts
    them), and failed ones with a reason (diverged, refused: trying them again gives the
    same). A trial that failed without one was killed; its point is tried again
    (`_retry_stale`)."""
    state = optuna.trial.TrialState
    return sum(
        t.state in (state.COMPLETE, state.PRUNED)
        or (t.state == state.FAIL and "error" in t.user_attrs)
        for t in study.get_trials(deepcopy=False)
    )


def _finish(
    optuna: Any,
    storage: str,
    recipe: Recipe,
    targets: list[Target],
    studies: list[Any],
    folder: Path,
    console: Console,
    sampler: str,
    budget: dict,
) -> dict:
    metric = recipe.train.early_stopping.metric
    done = optuna.trial.TrialState.COMPLETE
    models: dict[str, dict] = {}
    for target, study in zip(targets, studies):
        print_tables(console, trials_table(target, study, metric, sampler))
        states = [t.state for t in study.get_trials(deepcopy=False)]
        complete, pruned = states.count(done), states.count(optuna.trial.TrialState.PRUNED)
        entry: dict[str, Any] = {
            "space": target.raw_space,
            "trials": {
                "complete": complete,
                "pruned": pruned,
                "failed": len(states) - complete - pruned,
            },
        }
        best = _best(study)
        if best is None:
            console.print(Text(f"{target.label}: no trial finished; nothing to write for it"))
        else:
            entry |= {
                "best_trial": best.number,
                "best_value": best.value,
                "best_params": _values(target, best.params),
                "best_epoch": best.user_attrs.get("best_epoch"),
            }
            console.print(
                Text(
                    f"best {target.label}: trial {best.number}, val {metric} {best.value:.4f}: "
                    f"{_shown(entry['best_params'])}"
                ),
                style="bold",
            )
        entry["figures"] = _figures(optuna, study, target, folder, metric)
        models[target.label] = entry
    tuning = {
        "results": str((folder / "results.json").resolve()),
        "sampler": sampler,
        "metric": metric,
        **{k: budget[k] for k in ("pruner", "trials", "timeout", "trial_epochs", "trial_rows")},
        "models": {
            t.label: {
                **models[t.label]["trials"],
                "best_trial": models[t.label].get("best_trial"),
                "best_value": models[t.label].get("best_value"),
                "keys": list(t.space),
            }
            for t in targets
        },
    }
    tuned = tuned_recipe(recipe, targets, models, tuning)
    result = {
        "recipe": recipe.name,
        "folder": str(folder),
        "data": str(Path(recipe.data).resolve()),
        "sampler": sampler,
        "metric": metric,
        "direction": "maximize" if metric == "auc" else "minimize",
        "train_seed": recipe.train.seeds[0],  # every trial's
        "budget": budget,
        "storage": storage,
        "models": models,
        "tuned": str(folder / "tuned.yaml") if tuned else None,
    }
    if tuned is not None:
        write_text(folder / "tuned.yaml", tuned)
    write_json(folder / "results.json", result)
    wrote = f"wrote {folder / 'results.json'}"
    if tuned is not None:
        path = folder / "tuned.yaml"
        wrote += f" and {path}; measure it on test: msctr train {path}"
    console.print(Text(wrote))
    return result


def _figures(optuna: Any, study: Any, target: Target, folder: Path, metric: str) -> list[str]:
    """The study's figures through Optuna's matplotlib backend: its optimization history
    (each finished trial's validation figure and the best so far), and, from two finished
    trials on, each parameter's importance (fANOVA, Optuna's default). Their file names."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        return []
    plots = {"history": optuna.visualization.matplotlib.plot_optimization_history}
    points = {json.dumps(t.params, sort_keys=True) for t in done}
    if len(points) >= 2 and len({t.value for t in done}) >= 2:  # fANOVA needs both to vary
        plots["importance"] = partial(  # seeded: the same study draws the same figure
            optuna.visualization.matplotlib.plot_param_importances,
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
        )
    names = []
    for kind, plot in plots.items():
        with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
            warnings.simplefilter("ignore")
            ax = plot(study, target_name=f"validation {metric}")
        for loc in ("left", "center"):  # Optuna titles one of them
            if title := ax.get_title(loc=loc):
                ax.set_title(f"{target.label}: {title.lower()}", loc=loc)
        fig = ax.figure
        fig.set_size_inches(7, 4.2)
        fig.tight_layout()
        name = f"{kind}_{model_folder(target.label)}.png"
        with atomic_path(folder / name) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        names.append(name)
    return names


def tuned_recipe(
    recipe: Recipe, targets: list[Target], models: dict[str, dict], tuning: dict
) -> str | None:
    """The recipe with each tuned model's best values written in and every `search:` removed,
    named <name>-tuned (its own run folder), the data path absolute, `tuning:` saying what
    the search was (report.md's Tuning section); checked as a recipe. None when no model has
    a finished trial."""
    found = [t for t in targets if "best_params" in models[t.label]]
    best = {t.index: models[t.label]["best_params"] for t in found}
    if not best:
        return None
    raw = recipe.to_dict()
    raw.pop("search", None)
    for i, entry in enumerate(raw["models"]):
        entry.pop("search", None)
        for key, value in best.get(i, {}).items():
            set_key(raw, _recipe_key(i, key), value, f"search of {recipe.models[i].key}")
    raw["name"] = f"{recipe.name}-tuned"
    raw["out"] = f"{recipe.out}-tuned" if recipe.out else None
    raw["data"] = str(Path(recipe.data).resolve())
    raw["tuning"] = tuning
    recipe_from_dict(raw, where="tuned.yaml")  # what `msctr train` will read must be a recipe
    tuned = ", ".join(recipe.models[i].key for i in best)
    head = (
        f"# written by msctr tune from recipe '{recipe.name}': the best validation params of "
        f"{tuned}\n# (results.json beside it); measure them on test: msctr train <this file>\n"
    )
    return head + yaml.safe_dump(raw, sort_keys=False)
