"""What training reads of a prepared dataset: the splits as column tensors, loaded once and
shared by every (model, seed) run of a recipe."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from msctr.data.batch import Batch
from msctr.data.loader import Columns, load_columns, load_eval_columns, stream_batches
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.recipe import Recipe


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
