"""The run folder: the one place that knows where a training run keeps what.

    runs/<recipe>/recipe.yaml                      the resolved recipe (data path absolute)
    runs/<recipe>/results.json, report.md          the comparison over models and seeds
    runs/<recipe>/<model>/seed_<k>/log.jsonl       one line per epoch
    runs/<recipe>/<model>/seed_<k>/history.jsonl   every figure of every epoch (docs/tracking.md)
    runs/<recipe>/<model>/seed_<k>/best.pt         best checkpoint (by validation)
    runs/<recipe>/<model>/seed_<k>/predictions.parquet   test rows with the model's prob
    runs/<recipe>/<model>/seed_<k>/metrics.json    test metrics of this run
    runs/<recipe>/<model>/seed_<k>/run.json        best epoch, parameters, seconds, model report
    runs/<recipe>/<model>/seed_<k>/fingerprint.json  what the run's results depend on
    runs/<recipe>/<model>/seed_<k>/last.pt         resume state after the last finished epoch
                                                   (only while the run is unfinished)
    runs/<recipe>/.lock                            held (flock) by the `msctr train` writing here
    runs/<recipe>/.msctr-run.json                  the model folders msctr made here (see below)
    runs/<recipe>/head_weights_<model>.png, ablation.png, bench.json   eval, ablate, bench
    runs/<recipe>/calibration.png, curves.png      eval: reliability diagram, learning curves
    runs/<recipe>/tensorboard/, mlflow.db, mlartifacts/   train.log's trackers (docs/tracking.md)

`<model>` is the model's label with every character a folder name should not hold replaced
(see `model_folder`). Training writes these paths, evaluation and benchmarks read them; all
ask this module.

What msctr wrote, and so may replace or delete (`--fresh`), it knows by name: the files
above, and the model folders listed in `.msctr-run.json` (for a run folder from before that
file: the model folders of its recorded recipe). A copy of a model folder, notes, anything
else a user keeps in a run folder is never touched. A folder that is not a run folder msctr
wrote, and holds anything, is refused as a run folder (`check_run_folder`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from msctr.errors import UserError
from msctr.io import read_json, write_json
from msctr.paths import refuse_protected

MANIFEST = ".msctr-run.json"
LOCK = ".lock"
# what msctr writes directly in a run folder (besides model folders and head_weights_*.png)
RUN_FILES = (
    "recipe.yaml", "results.json", "report.md", "bench.json", "ablation.png", "calibration.png",
    "curves.png", "tensorboard", "mlflow.db", "mlartifacts",
)  # fmt: skip
SWEEP_FILES = ("results.json", "report.md", "sweep.png")
# what `msctr tune` writes in its folder (docs/tune.md); Optuna's SQLite journal beside tune.db
TUNE_FILES = ("tune.db", "tune.db-journal", "tuned.yaml", "results.json", ".claim")
TUNE_TRACKERS = ("tensorboard", "mlflow.db", "mlartifacts")  # train.log's stores, every trial
TUNE_FIGURE = re.compile(r"(history|importance)_.+\.png")  # a model's figures of its study
_SEED = re.compile(r"seed_\d+")
_FIGURE = re.compile(r"head_weights_.+\.png")


def model_folder(key: str) -> str:
    """A model label as a folder name: anything but letters, digits, '.', '_', '-', '(', ')'
    replaced (labels like "HierRec w/o mi" must not create sub-folders)."""
    return re.sub(r"[^A-Za-z0-9_.()-]+", "_", key)


@dataclass(frozen=True)
class SeedRun:
    """One (model, seed) run's folder."""

    folder: Path

    @property
    def log(self) -> Path:
        return self.folder / "log.jsonl"

    @property
    def history(self) -> Path:
        return self.folder / "history.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.folder / "best.pt"

    @property
    def predictions(self) -> Path:
        return self.folder / "predictions.parquet"

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.json"

    @property
    def summary(self) -> Path:
        return self.folder / "run.json"

    @property
    def fingerprint(self) -> Path:
        return self.folder / "fingerprint.json"

    @property
    def resume(self) -> Path:
        return self.folder / "last.pt"

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file msctr writes in a run's folder."""
        return (
            self.log,
            self.history,
            self.checkpoint,
            self.predictions,
            self.metrics,
            self.summary,
            self.fingerprint,
            self.resume,
        )

    @property
    def finished(self) -> bool:
        """run.json is written last: a run that has it is complete."""
        return self.summary.is_file() and self.predictions.is_file()

    @property
    def started(self) -> bool:
        """Anything of the run is on disk (a fingerprint, a resume state or outputs)."""
        return any(
            p.exists() for p in (self.fingerprint, self.resume, self.summary, self.predictions)
        )


@dataclass(frozen=True)
class RunFolder:
    """A recipe's run folder (`Recipe.run_dir`)."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def bench(self) -> Path:
        return self.root / "bench.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    def recorded_models(self) -> list[str] | None:
        """The model folders msctr made here (those may be renamed or removed): the manifest's,
        or, in a run folder from before the manifest, its recorded recipe's models. None when
        the folder is no run folder msctr wrote."""
        if self.manifest.is_file():
            try:
                names = read_json(self.manifest)["models"]
            except (OSError, ValueError, KeyError, TypeError):
                names = None
            if isinstance(names, list) and all(isinstance(n, str) for n in names):
                return [n for n in names if _safe_folder(n)]
            raise UserError(
                f"'{self.manifest}' is damaged; it lists the model folders msctr made in "
                f"'{self.root}': restore it, or move your files out and remove the folder"
            )
        recipe = _written_recipe(self.recipe)
        if recipe is None:
            return None
        labels = [m.get("label") or m.get("name") for m in recipe["models"]]
        return [model_folder(k) for k in labels if isinstance(k, str)]

    def record_models(self, names: Iterable[str]) -> None:
        """Write the manifest: `names` are the model folders msctr made (or is about to make)
        here. Written before a folder is made or renamed, so it never misses one."""
        write_json(self.manifest, {"written_by": "msctr", "models": sorted(set(names))})

    def models(self) -> list[Path]:
        """The model folders msctr made here that are present."""
        return sorted(
            self.root / n for n in self.recorded_models() or [] if (self.root / n).is_dir()
        )

    @staticmethod
    def seed_runs(model: Path) -> list[SeedRun]:
        """The `seed_<k>` folders of a model folder (a user's `seed_0_old` is not one)."""
        return [
            SeedRun(p) for p in sorted(model.iterdir()) if p.is_dir() and _SEED.fullmatch(p.name)
        ]

    def figures(self) -> list[Path]:
        """The figures eval and ablate write here."""
        names = [f"head_weights_{m}.png" for m in self.recorded_models() or []]
        return [self.root / n for n in ["ablation.png", "calibration.png", "curves.png", *names]]

    def model(self, key: str) -> Path:
        return self.root / model_folder(key)

    def seed(self, key: str, seed: int) -> SeedRun:
        return SeedRun(self.model(key) / f"seed_{seed}")

    def figure(self, name: str) -> Path:
        return self.root / name

    @property
    def tensorboard(self) -> Path:
        """TensorBoard's log folder: one sub-folder per run, `<model>/seed_<k>`."""
        return self.root / "tensorboard"

    @property
    def mlflow_db(self) -> Path:
        """MLflow's local store (SQLite: its plain-file store is retired)."""
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"


def _safe_folder(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name and "\\" not in name


def _written_recipe(path: Path) -> dict | None:
    """The recipe.yaml msctr wrote (every key filled in, the data path absolute), or None for
    anything else (a hand-written recipe, another file of that name)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if not isinstance(raw, dict) or not {"name", "data", "models", "train", "eval", "out"} <= set(
        raw
    ):
        return None
    train, models = raw["train"], raw["models"]
    filled = {"seeds", "lr", "batch_size", "epochs", "early_stopping", "device", "loader"}
    if not isinstance(train, dict) or not filled <= set(train) or not isinstance(models, list):
        return None
    if not isinstance(raw["data"], str) or not Path(raw["data"]).is_absolute():
        return None
    return raw if all(isinstance(m, dict) for m in models) else None


def _temporary(name: str) -> bool:
    """A `.<name>.<pid>-<hex>.tmp` of `msctr.io`'s atomic writes."""
    return name.startswith(".") and name.endswith(".tmp")


RUN_FOLDER_HINT = (
    "train into a folder of its own: leave `out` out of the recipe (runs/<name>) or give "
    "--set out=runs/NAME"
)
OUT_HINT = "give the recipe another `out` or name (--set out=runs/NAME)"


def _existing_folder(root: Path, subject: str, hint: str, inputs: Iterable) -> bool:
    """Refuse `root` where no output folder may be (`refuse_protected`) or when it is a
    file; whether it exists as a folder (then its content decides)."""
    refuse_protected(root, subject, hint, inputs)
    if root.exists() and not root.is_dir():
        raise UserError(f"{subject} is a file; {hint}")
    return root.is_dir()


def _lock_or_temporary(p: Path) -> bool:
    return p.name == LOCK or _temporary(p.name)


NOT_A_RUN_FOLDER = " and is no run folder of msctr's"


def _refuse_foreign(
    root: Path, subject: str, hint: str, ours: Callable[[Path], bool], why: str = ""
) -> None:
    """Refuse `root` when it holds an entry that `ours` does not know as msctr's."""
    foreign = [p.name for p in sorted(root.iterdir()) if not ours(p)]
    if foreign:
        raise UserError(
            f"{subject} holds files msctr did not write (e.g. '{foreign[0]}'){why}, so nothing "
            f"is written there; {hint}"
        )


def check_run_folder(root: Path, inputs: Iterable[Path | str | None] = ()) -> None:
    """Refuse, before anything is written, a run folder whose use would bury or delete the
    user's files: the current folder, home, the data (`inputs`) or a folder holding them; a
    file; a folder that holds anything and is no run folder msctr wrote (a `.lock` or a
    temporary file alone: a first train killed at its start, are msctr's)."""
    subject = f"the run folder '{root}'"
    if not _existing_folder(root, subject, RUN_FOLDER_HINT, inputs):
        return
    if RunFolder(root).recorded_models() is None:  # a `.lock` or temporary file alone is ours
        _refuse_foreign(root, subject, RUN_FOLDER_HINT, _lock_or_temporary, why=NOT_A_RUN_FOLDER)


def check_sweep_folder(root: Path, points: Iterable[Path], inputs=()) -> None:
    """A sweep's folder: its results, report and figure, and run folders (each value's)."""
    subject = f"the sweep folder '{root}'"
    exists = _existing_folder(root, subject, OUT_HINT, inputs)
    for point in points:
        check_run_folder(point, inputs)
    names = {Path(p).name for p in points}

    def ours(p: Path) -> bool:  # a run folder msctr wrote: a value an earlier sweep tried
        if p.name in SWEEP_FILES or _temporary(p.name) or p.name in names:
            return True
        return p.is_dir() and RunFolder(p).recorded_models() is not None

    if exists:
        _refuse_foreign(root, subject, OUT_HINT, ours)


def check_tune_folder(root: Path, inputs: Iterable[Path | str | None] = ()) -> None:
    """A tune's folder (`msctr tune`): refused, before anything is written, where a run
    folder is refused, and when it holds anything but what tune writes there (`TUNE_FILES`,
    its figures, its `.lock`, temporary files and trial folders of a killed tune)."""
    subject = f"the tune folder '{root}'"

    def ours(p: Path) -> bool:
        return (
            p.name in (*TUNE_FILES, *TUNE_TRACKERS)
            or bool(TUNE_FIGURE.fullmatch(p.name))
            or _lock_or_temporary(p)
        )

    if _existing_folder(root, subject, OUT_HINT, inputs):
        _refuse_foreign(root, subject, OUT_HINT, ours)


def check_labels(keys: Iterable[str]) -> None:
    """Refuse model labels whose folders would collide or leave the run folder, before
    anything is written: "My Model" and "My_Model" (or "dnn" and "DNN", one folder on a
    case-insensitive disk) would share a folder, so the second model would be taken for
    "finished earlier" and never trained; "." and ".." are not folders of their own."""
    seen: dict[str, str] = {}
    for key in keys:
        name = model_folder(key)
        if name.startswith(".") or name in RUN_FILES or name == MANIFEST or _FIGURE.fullmatch(name):
            raise UserError(
                f"model label {key!r} would be the folder '{name}' of the run folder, which is "
                "not a model folder of its own (a hidden name, '.', '..' or a file msctr "
                "writes there); give the model a label that starts with a letter or digit"
            )
        other = seen.setdefault(name.casefold(), key)
        if other != key:
            raise UserError(
                f"model labels {other!r} and {key!r} both become the folder "
                f"'{model_folder(other)}' of the run folder, so one would pass for the other's "
                "runs; give them labels that differ in letters or digits, not only in case, "
                "spaces or punctuation"
            )
