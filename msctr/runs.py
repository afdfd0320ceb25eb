"""The run folder: the one place that knows where a training run keeps what.

    runs/<recipe>/recipe.yaml                      the resolved recipe (data path absolute)
    runs/<recipe>/results.json, report.md          the comparison over models and seeds
    runs/<recipe>/<model>/seed_<k>/log.jsonl       one line per epoch
    runs/<recipe>/<model>/seed_<k>/best.pt         best checkpoint (by validation)
    runs/<recipe>/<model>/seed_<k>/predictions.parquet   test rows with the model's prob
    runs/<recipe>/<model>/seed_<k>/metrics.json    test metrics of this run
    runs/<recipe>/<model>/seed_<k>/run.json        best epoch, parameters, seconds, model report
    runs/<recipe>/<model>/seed_<k>/fingerprint.json  what the run's results depend on
    runs/<recipe>/<model>/seed_<k>/last.pt         resume state after the last finished epoch
                                                   (only while the run is unfinished)
    runs/<recipe>/.lock                            held (flock) by the `msctr train` writing here

`<model>` is the model's label with every character a folder name should not hold replaced
(see `model_folder`). Training writes these paths, evaluation and benchmarks read them; all
ask this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


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

    def models(self) -> list[Path]:
        """The model folders present: those holding `seed_<k>` folders."""
        if not self.root.is_dir():
            return []
        return sorted(
            p
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and any(p.glob("seed_*"))
        )

    @staticmethod
    def seed_runs(model: Path) -> list[SeedRun]:
        return [SeedRun(p) for p in sorted(model.glob("seed_*")) if p.is_dir()]

    def model(self, key: str) -> Path:
        return self.root / model_folder(key)

    def seed(self, key: str, seed: int) -> SeedRun:
        return SeedRun(self.model(key) / f"seed_{seed}")

    def figure(self, name: str) -> Path:
        return self.root / name
