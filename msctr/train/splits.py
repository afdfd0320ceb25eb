"""What training reads of a prepared dataset: the splits as column tensors, loaded once and
shared by every (model, seed) run of a recipe."""

from __future__ import annotations

import itertools
import json
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
    test: Columns | None  # None when loaded for tuning (`test=False`): never opened
    val_labels: np.ndarray
    test_frame: pl.DataFrame | None  # label, scenario, groups and true probabilities of test rows
    identity: bytes | None = None  # schema.json as it was when the splits were read
    shuffle_buffer: int | None = None  # streamed: rows shuffled together (train.shuffle_buffer)

    @classmethod
    def load(cls, recipe: Recipe, test: bool = True, train_limit: int | None = None) -> SplitData:
        """The splits `recipe` trains on; `test=False` (msctr tune) leaves test.parquet
        unopened, so no choice made from these splits can have seen the test rows.
        `train_limit` (msctr tune --trial-rows, in-memory loader): the first N train rows only,
        as `train.eval_rows` takes the first rows of val and test."""
        folder = Path(recipe.data)
        if not folder.is_dir():
            raise UserError(
                f"data folder '{folder}' does not exist; run `msctr prepare ... --out {folder}` "
                "or fix the recipe's `data:`"
            )
        identity = _schema_bytes(folder)  # before the splits: a swap while reading shows
        schema = Schema.load(folder)
        t = recipe.train
        train = None  # streamed: read from disk each epoch
        if t.loader == "memory":
            train = load_columns(folder, "train", schema, limit=train_limit)
        val = load_columns(folder, "val", schema, limit=t.eval_rows)
        test_columns, test_frame = None, None
        if test:
            test_columns = load_columns(folder, "test", schema, limit=t.eval_rows)
            test_frame = load_eval_columns(folder, "test", schema, limit=t.eval_rows)
        labels = val.label.numpy().astype(np.int8)
        data = cls(
            schema, folder, train, val, test_columns, labels, test_frame, identity, t.shuffle_buffer
        )
        data.check_unchanged("before training")
        return data

    def check_unchanged(self, when: str) -> None:
        """Stop when the dataset was prepared again since its splits were read: `prepare`
        swaps the whole folder in, so a streamed run would go on with the new train split
        beside the old val/test held in memory. Cheap (schema.json, which names the splits'
        md5, is a few kB): the streamed trainer asks at every epoch boundary."""
        now = _schema_bytes(self.folder)
        if now == self.identity:
            return
        was = self.schema.info.get("prepared_md5", "?")
        try:
            md5 = json.loads(now or b"{}").get("info", {}).get("prepared_md5", "?")
        except ValueError:
            md5 = "?"
        state = f"prepared_md5 {was} then, {md5} now" if now is not None else "schema.json is gone"
        raise UserError(
            f"the dataset '{self.folder}' changed while training read it ({state}), so it was "
            f"stopped {when}: no run mixes two datasets' splits; to train on the new data, run "
            "the same command with --fresh (or --set out=NEW_FOLDER to keep the runs of the old)"
        )

    def train_batches(
        self,
        batch_size: int,
        seed: int,
        epoch: int,
        part: tuple[int, int] = (0, 1),
        max_steps: int | None = None,
    ) -> EpochBatches:
        """The epoch's batches of `batch_size` rows in a seeded order, at most `max_steps` of
        them; `part=(r, n)`: process r's share of each (msctr.train.distributed). Its `len` is
        the epoch's steps: the one place they are counted."""
        steps = -(-self.train_rows // batch_size)
        if max_steps:
            steps = min(steps, max_steps)
        if self.train is not None:
            rows = self.train.batches(batch_size, shuffle=True, seed=seed, epoch=epoch, part=part)
        else:
            rows = stream_batches(
                self.folder,
                "train",
                self.schema,
                batch_size,
                True,
                seed,
                epoch,
                buffer_rows=self.shuffle_buffer,
                part=part,
            )
        return EpochBatches(rows, steps)

    @property
    def train_rows(self) -> int:
        # in memory: the rows loaded (fewer than the split under `train_limit`)
        return len(self.train) if self.train is not None else self.schema.rows["train"]


class EpochBatches:
    """One epoch's training batches, cut at its step count (`len`)."""

    def __init__(self, batches: Iterator[Batch], steps: int):
        self.batches, self.steps = batches, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Batch]:
        return itertools.islice(self.batches, self.steps)


def _schema_bytes(folder: Path) -> bytes | None:
    try:
        return (folder / "schema.json").read_bytes()
    except OSError:
        return None
