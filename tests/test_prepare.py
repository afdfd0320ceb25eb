import hashlib

import numpy as np
import polars as pl
import pytest

from msctr.data.loader import load_columns, stream_batches
from msctr.data.prepare import prepare
from msctr.data.schema import Schema
from msctr.data.sources.base import FieldMap, SequenceSpec, SourceTable
from msctr.errors import UserError


def toy_table(n: int = 2000, seed: int = 0, label=None) -> SourceTable:
    rng = np.random.default_rng(seed)
    frame = pl.DataFrame(
        {
            "y": rng.integers(0, 2, n) if label is None else label,
            "tab": rng.choice([3, 5, 9], n, p=[0.6, 0.3, 0.1]),
            "user": rng.integers(0, 60, n),
            "item": rng.integers(0, 300, n),
            "kind": pl.Series(rng.choice(["a", "b", "c"], n)).replace("c", None),
            "price": rng.normal(5.0, 2.0, n),
            "ts": rng.permutation(n),
        }
    ).with_columns(hist=pl.concat_list("item", "user", "item"), p=pl.lit(0.25))
    fields = FieldMap(
        label="y",
        scenario="tab",
        sparse=["user", "item", "kind"],
        dense=["price"],
        sequences=[SequenceSpec("hist", {"hist": "item"}, max_len=2)],
        user="user",
        session="user",
        partition=["kind"],
        true_prob="p",
        order="ts",
    )
    return SourceTable(frame.lazy(), fields, name="toy")


def digest(folder) -> dict:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_prepare_is_deterministic_and_sequential(tmp_path):
    s1 = prepare(toy_table(), tmp_path / "a")
    prepare(toy_table(), tmp_path / "b")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert s1.rows == {"train": 1600, "val": 200, "test": 200}
    assert sum(s1.scenario_counts["test"]) == 200
    # sequential split in log order: test rows are the 200 latest timestamps
    raw = toy_table().frame.collect().sort("ts")
    test = pl.read_parquet(tmp_path / "a" / "test.parquet")
    assert (test["label"].to_numpy() == raw["y"].to_numpy()[-200:]).all()


def test_encoders_fit_on_train_only(tmp_path):
    schema = prepare(toy_table(), tmp_path / "d")
    raw = toy_table().frame.collect().sort("ts")
    train_items = set(raw["item"][:1600].to_list())
    assert schema.sparse[1].vocab_size == len(train_items) + 1
    test = pl.read_parquet(tmp_path / "d" / "test.parquet")
    unseen = ~raw["item"][-200:].is_in(list(train_items))
    assert (test["item"].to_numpy()[unseen.to_numpy()] == 0).all()  # OOV id
    assert (test["item"].to_numpy()[~unseen.to_numpy()] > 0).all()
    # dense standardized with training statistics only
    train = pl.read_parquet(tmp_path / "d" / "train.parquet")
    assert abs(train["price"].mean()) < 1e-5
    assert schema.dense[0].mean == pytest.approx(raw["price"][:1600].mean())


def test_sequences_padded_and_shared_vocab(tmp_path):
    schema = prepare(toy_table(), tmp_path / "s")
    cols = load_columns(tmp_path / "s", "train", schema)
    assert cols.seq_ids[0].shape == (1600, 2, 1)
    assert (cols.seq_len[0] == 2).all()  # lists of 3 truncated to max_len 2
    # first element of the history is the row's own item: same vocabulary -> same id
    assert (cols.seq_ids[0][:, 0, 0] == cols.sparse[:, 1]).all()


def test_label_outside_01_is_a_clear_error(tmp_path):
    label = np.zeros(2000, dtype=np.int64)
    label[7] = 2
    with pytest.raises(UserError, match="outside"):
        prepare(toy_table(label=label), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # nothing half-written


def test_missing_column_is_a_clear_error(tmp_path):
    t = toy_table()
    t.frame = t.frame.drop("price")
    with pytest.raises(UserError, match="missing column.*price"):
        prepare(t, tmp_path / "m")


def test_streamed_loader_matches_memory(tmp_path):
    schema = prepare(toy_table(), tmp_path / "l", row_group_size=300)
    mem = load_columns(tmp_path / "l", "train", schema)
    plain = list(stream_batches(tmp_path / "l", "train", schema, 128))
    assert [len(b) for b in plain[:-1]] == [128] * (len(plain) - 1)
    import torch

    assert torch.equal(torch.cat([b.sparse for b in plain]), mem.sparse.long())
    shuffled = list(
        stream_batches(tmp_path / "l", "train", schema, 128, shuffle=True, seed=3, buffer_rows=500)
    )
    again = list(
        stream_batches(tmp_path / "l", "train", schema, 128, shuffle=True, seed=3, buffer_rows=500)
    )
    rows = torch.cat([b.sparse for b in shuffled])
    assert torch.equal(rows, torch.cat([b.sparse for b in again]))  # seeded
    assert not torch.equal(rows, mem.sparse.long())  # shuffled
    # the same multiset of rows
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(rows) == key(mem.sparse.long())
    assert Schema.load(tmp_path / "l").rows["train"] == 1600


def _counted_table() -> SourceTable:
    """Train rows hold 'a' 3 times, 'b' twice, 'c' once (and a null twice); val and test hold
    'c' and the never-seen 'z'. Histories share v's vocabulary: 'b', 'a', and once (in the
    'c' row's) 'q', a value no row has as its own."""
    train = ["a", "a", "a", "b", "b", "c", None, None]
    rest = ["a", "b", "c", "z"]
    hist = [["b", "a"]] * 5 + [["b", "a", "q"]] + [["b", "a"]] * 2 + [["b"]] * 8
    frame = pl.DataFrame(
        {
            "y": [0, 1] * 8,
            "tab": [1] * 16,
            "v": train + rest + rest,
            "split": ["train"] * 8 + ["val"] * 4 + ["test"] * 4,
            "hist": hist,
        }
    )
    fields = FieldMap(
        label="y",
        scenario="tab",
        sparse=["v"],
        sequences=[SequenceSpec("h", {"hist": "v"}, max_len=3)],
    )
    return SourceTable(frame.lazy(), fields, name="counted", split="given", split_column="split")


def test_min_count_maps_rare_training_values_to_the_unseen_id(tmp_path):
    schema = prepare(_counted_table(), tmp_path / "two", min_count=2)
    assert schema.info["min_count"] == 2
    assert schema.sparse[0].vocab_size == 4  # 'a', 'b', null (2 each or more) + the OOV id 0
    ids = {
        sp: pl.read_parquet(tmp_path / "two" / f"{sp}.parquet")["v"].to_list()
        for sp in ("train", "val", "test")
    }
    a, b, null = ids["train"][0], ids["train"][3], ids["train"][6]
    assert len({a, b, null}) == 3 and 0 not in (a, b, null)  # counts at N keep their own id
    assert ids["train"][5] == 0  # 'c': seen once in training, below 2 -> the rare id
    assert ids["val"] == ids["test"] == [a, b, 0, 0]  # 'c' rare, 'z' unseen: the same id 0
    hist = pl.read_parquet(tmp_path / "two" / "train.parquet")["hist"].to_list()
    assert hist[5] == [b, a, 0]  # sequences share the field's vocabulary, rare ids included
    # at 1 every training value keeps an id, then 'q', seen only in a history, gets the next;
    # 'z' (never in training) is still 0
    one = prepare(_counted_table(), tmp_path / "one")
    assert one.sparse[0].vocab_size == 6
    val = pl.read_parquet(tmp_path / "one" / "val.parquet")["v"].to_list()
    assert 0 not in val[:3] and val[3] == 0
    assert pl.read_parquet(tmp_path / "one" / "train.parquet")["hist"][5][2] == 5


def test_min_count_changes_the_datasets_fingerprint(tmp_path):
    base = prepare(_counted_table(), tmp_path / "one", min_count=1).info["prepared_md5"]
    same = prepare(_counted_table(), tmp_path / "one-again", min_count=1).info["prepared_md5"]
    # no value has fewer than 1 occurrence, so the files of min_count 1 and 1 are the same
    assert base == same
    fit = prepare(_counted_table(), tmp_path / "two", min_count=2).info["prepared_md5"]
    assert fit != base
    # a threshold no training value falls below (no null, all counts >= 2 at 'a'/'b' only)
    kept = _counted_table()
    kept.frame = kept.frame.filter(pl.col("v").is_in(["a", "b"]))
    one = prepare(kept, tmp_path / "k1", min_count=1)
    two = prepare(kept, tmp_path / "k2", min_count=2)
    for sp in ("train", "val", "test"):  # the same files ...
        assert (tmp_path / "k1" / f"{sp}.parquet").read_bytes() == (
            tmp_path / "k2" / f"{sp}.parquet"
        ).read_bytes()
    # ... under another fingerprint: a run of one setting never passes for the other's
    assert one.info["prepared_md5"] != two.info["prepared_md5"]


@pytest.mark.parametrize("bad", [0, -3])
def test_min_count_below_one_is_refused(tmp_path, bad):
    with pytest.raises(UserError, match="--min-count must be a whole number of at least 1"):
        prepare(_counted_table(), tmp_path / "x", min_count=bad)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "source",
    [
        ["synthetic"],
        ["table", "t.csv", "--label", "y", "--scenario", "s", "--sparse", "a"],
        ["kuairand", "--raw-dir", "nowhere"],
        ["aliccp", "--raw-dir", "nowhere"],
    ],
)
def test_every_prepare_command_refuses_min_count_below_one(capsys, tmp_path, source):
    from conftest import one_line_error

    out = str(tmp_path / "out")
    one_line_error(capsys, "--min-count", "prepare", *source, "--out", out, "--min-count", "0")
    assert not (tmp_path / "out").exists()
