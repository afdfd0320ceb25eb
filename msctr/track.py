"""Experiment trackers: every run's per-epoch figures (its history.jsonl lines) mirrored to
TensorBoard and MLflow, so the curves open in the tool a user already has (docs/tracking.md).

Both are optional extras, imported only where a recipe's `train.log` names them. A run folder
holds the stores: `tensorboard/<model>/seed_<k>/` (event files) and `mlflow.db` with
`mlartifacts/` (MLflow's local SQLite store; its plain-file store is retired). Each (model,
seed) run is one TensorBoard run and one MLflow run, found again by its name when it resumes,
so a run stopped (even killed) and resumed has one continuous curve: TensorBoard's earlier
event files of the run are replaced by a writer that writes the restored history again; the
MLflow run gets the epochs past the last one it holds.

history.jsonl stays the source of truth: a tracker is told an epoch only after the resume
state holding it is on disk, so it never holds an epoch the resumed run does not.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from msctr.errors import UserError
from msctr.runs import RunFolder, model_folder

KINDS = ("tensorboard", "mlflow")
# the module each tracker imports, the pip extra that installs it
_EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
RUN_TAG = "msctr.run"  # an MLflow run's name in msctr: "<model folder>/seed_<k>", or "eval"


def check_available(kinds: Iterable[str]) -> None:
    """One line naming the extra for a tracker whose package is not installed, before any
    training starts."""
    for kind in kinds:
        if importlib.util.find_spec(_EXTRAS[kind]) is None:
            raise UserError(
                f"train.log names {kind}, whose package is not installed; install the extra "
                f"with pip install 'msctr[{kind}]', or leave {kind} out of train.log / --log"
            )


@dataclass(frozen=True)
class Target:
    """Where one run's curves go: its run folder (the stores), the experiment (the recipe's
    name), the run's name (its seed folder, relative to the run folder), the scenario names
    (for `_s{k}` figures) and the parameters MLflow records once, when the run starts."""

    root: Path
    experiment: str
    run: str
    scenarios: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)


def scalars(record: dict, scenarios: list[str]) -> dict[str, float]:
    """A history line's numbers under tracker names: `val_auc_s2` -> `val_auc/<scenario 2>`;
    the epoch (the step) and flags left out."""
    out = {}
    for key, value in record.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        m = re.fullmatch(r"(.+)_s(\d+)", key)
        if m and int(m[2]) < len(scenarios):
            key = f"{m[1]}/{_name(scenarios[int(m[2])])}"
        out[key] = float(value)
    return out


def _name(text: str) -> str:
    # MLflow keys allow letters, digits, '_', '-', '.', ' ', '/'
    return re.sub(r"[^A-Za-z0-9_.\- ]+", "_", text)


def _flat(tree: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[_name(f"{prefix}{k}")] = v if isinstance(v, str) else json.dumps(v)
    return out


class Trackers:
    """The trackers of one run (rank 0 alone makes them). `restored` are the history lines
    of a resumed run (those of its resume state), written to trackers that lack them."""

    def __init__(self, kinds: Iterable[str], target: Target, restored: list[dict], resumed: bool):
        self.target = target
        self.runs: list[_TensorBoard | _Mlflow] = []
        for kind in kinds:
            make = _TensorBoard if kind == "tensorboard" else _Mlflow
            self.runs.append(make(target, restored, resumed))

    def epoch(self, record: dict) -> None:
        values = scalars(record, self.target.scenarios)
        for run in self.runs:
            run.epoch(record["epoch"], values)

    def close(self) -> None:
        """The run finished: MLflow marks it so (a later train of this seed is a new run)."""
        for run in self.runs:
            run.close()


class _TensorBoard:
    def __init__(self, target: Target, restored: list[dict], resumed: bool):
        from torch.utils.tensorboard import SummaryWriter

        folder = RunFolder(target.root).tensorboard / target.run
        # the run's curve is its history, written again whole (the restored epochs below): an
        # earlier writer's files go. Purging alone is not enough: readers order the files by
        # name, whose time is in whole seconds, so a writer started in the same second as
        # the one it replaces (a resume right after a kill) could sort first and be purged
        for old in folder.glob("events.out.tfevents.*"):
            old.unlink()
        self.writer = SummaryWriter(str(folder), purge_step=1)
        for r in restored:
            self.epoch(r["epoch"], scalars(r, target.scenarios))

    def epoch(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a killed run keeps what it logged

    def close(self) -> None:
        self.writer.close()


def _client(root: Path):
    """An MLflow client on the run folder's store, without MLflow's INFO lines (its database
    set-up talks on stderr)."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    folder = RunFolder(root)
    return MlflowClient(tracking_uri=f"sqlite:///{folder.mlflow_db.resolve()}")


def _experiment(client, root: Path, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = RunFolder(root).mlflow_artifacts.resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def _find(client, experiment: str, run: str):
    found = client.search_runs(
        [experiment],
        filter_string=f"tags.`{RUN_TAG}` = '{run}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None


def _log(client, run_id: str, step: int, values: dict[str, float]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, step) for k, v in values.items()]
    for i in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


class _Mlflow:
    def __init__(self, target: Target, restored: list[dict], resumed: bool):
        from mlflow.entities import Param

        self.client = client = _client(target.root)
        experiment = _experiment(client, target.root, target.experiment)
        run = _find(client, experiment, target.run) if resumed else None
        if run is None or run.info.status == "FINISHED":  # a fresh start is a new MLflow run
            run = client.create_run(experiment, run_name=target.run, tags={RUN_TAG: target.run})
            params = [Param(k, v[:6000]) for k, v in _flat(target.params).items()]
            for i in range(0, len(params), 100):
                client.log_batch(run.info.run_id, params=params[i : i + 100])
        else:
            client.update_run(run.info.run_id, status="RUNNING")
        self.run_id = run.info.run_id
        held = client.get_metric_history(self.run_id, "train_loss")
        last = max((m.step for m in held), default=0)
        for r in restored:
            if r["epoch"] > last:
                self.epoch(r["epoch"], scalars(r, target.scenarios))

    def epoch(self, step: int, values: dict[str, float]) -> None:
        _log(self.client, self.run_id, step, values)

    def close(self) -> None:
        self.client.set_terminated(self.run_id, "FINISHED")


def log_results(root: Path, experiment: str, result: dict, figures: list[Path]) -> None:
    """`msctr eval` into MLflow: each run's test figures (step 0) on its own run, and the
    table's means, report.md, results.json and the figures on the run folder's `eval` run
    (found again by name, so a second eval updates it)."""
    client = _client(root)
    exp = _experiment(client, root, experiment)
    for row in result["models"]:
        for i, seed in enumerate(row["seeds"]):
            run = _find(client, exp, f"{model_folder(row['model'])}/seed_{seed}")
            if run is None:  # trained without MLflow
                continue
            values = {
                f"test_{k}": v["runs"][i]
                for k, v in row.items()
                if isinstance(v, dict) and "runs" in v and _number(v["runs"][i])
            }
            _log(client, run.info.run_id, 0, scalars(values, result["scenarios"]))
    run = _find(client, exp, "eval")
    if run is None:
        run = client.create_run(exp, run_name="eval", tags={RUN_TAG: "eval"})
    means = {
        f"{_name(row['model'])}/{k}": v["mean"]
        for row in result["models"]
        for k, v in row.items()
        if isinstance(v, dict) and "mean" in v and _number(v["mean"])
    }
    _log(client, run.info.run_id, 0, scalars(means, result["scenarios"]))
    for path in figures:
        if path.is_file():
            client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id, "FINISHED")


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
