"""docs/models/README.md's "Adding a model", followed literally: the file and the recipe it
shows go into a copy of the package, and the recipe trains with --smoke."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import invoke

import msctr

DOC = Path(__file__).resolve().parents[1] / "docs" / "models" / "README.md"


def blocks(language: str) -> list[str]:
    section = DOC.read_text().split("## Adding a model", 1)[1]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_the_worked_example_trains_from_its_recipe(tmp_path):
    data = tmp_path / "syn"
    invoke("prepare", "synthetic", "--out", str(data), "--rows", "3000")
    (model_file,) = blocks("python")
    (recipe,) = blocks("yaml")
    package = tmp_path / "pkg" / "msctr"
    shutil.copytree(
        Path(msctr.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    (package / "models" / "logreg.py").write_text(model_file)
    (tmp_path / "logreg.yaml").write_text(recipe)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "pkg")}
    proc = subprocess.run(
        [sys.executable, "-m", "msctr.cli", "train", "logreg.yaml", "--smoke"]
        + ["--set", f"data={data}", "--set", "out=run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "LogReg" in proc.stdout
    assert (tmp_path / "run-smoke" / "LogReg" / "seed_0" / "predictions.parquet").is_file()
    # the copy was imported, not the installed package: nothing else had to change
    assert not (Path(msctr.__file__).parent / "models" / "logreg.py").exists()
