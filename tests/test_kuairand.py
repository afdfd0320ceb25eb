"""KuaiRand from raw-format files written by the planted-signal generator, end to end.

The generator keeps the rows it wrote (and each row's true click history) on the side; the
prepared splits are checked against them row by row.
"""

import hashlib
import shutil

import numpy as np
import polars as pl
import pytest
from conftest import codes, invoke, runner, user_error_line, vocab

from msctr.cli import app
from msctr.data.download import Archive
from msctr.data.sources import kuairand
from msctr.errors import UserError
from msctr.testing.rawgen import write_kuairand

L = 12  # sequence length used throughout
HIERREC_TABS = [0, 1, 2, 3, 6]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("kuairand")
    return write_kuairand(root / "raw", rows=24_000, scenarios=7, seed=3, history=L)


@pytest.fixture(scope="module")
def hierrec(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "kr"
    result = invoke(
        "prepare", "kuairand", "--raw-dir", str(raw.folder.parent.parent), "--out", str(out),
        "--seq-len", str(L),
    )  # fmt: skip
    return out, result.output


def expected_hierrec(raw) -> pl.DataFrame:
    T = raw.truth
    keep = (pl.col("period") == 1) & pl.col("tab").is_in(HIERREC_TABS)
    return T.filter(keep & pl.col("has_user") & pl.col("has_video")).sort("pos")


def split_bounds(n: int) -> dict:
    a, b = int(n * 0.8), int(n * 0.9)
    return {"train": (0, a), "val": (a, b), "test": (b, n)}


def test_hierrec_rows_joins_filter_and_split_are_exact(raw, hierrec):
    out, output = hierrec
    exp = expected_hierrec(raw)
    schema = __import__("msctr.data.schema", fromlist=["Schema"]).Schema.load(out)
    assert schema.scenario_names == [f"tab{t}" for t in HIERREC_TABS]
    assert len(schema.sparse) == 36  # + the scenario (tab): HierRec's 37 fields
    users, videos = vocab(out, "user_id"), vocab(out, "video_id")
    bounds = split_bounds(exp.height)
    assert schema.rows == {k: hi - lo for k, (lo, hi) in bounds.items()}  # 80/10/10 to the row
    for split, (lo, hi) in bounds.items():
        got = pl.read_parquet(out / f"{split}.parquet")
        want = exp.slice(lo, hi - lo)
        assert (got["label"].to_numpy() == want["is_click"].to_numpy()).all()
        tab_rank = {t: k for k, t in enumerate(HIERREC_TABS)}
        assert got["scenario"].to_list() == [tab_rank[t] for t in want["tab"].to_list()]
        assert (got["user_id"].to_numpy() == codes(want["user_id"], users)).all()
        assert (got["video_id"].to_numpy() == codes(want["video_id"], videos)).all()
        session = (
            (want["user_id"] * 100_000_000 + want["date"]).hash(seed=0).reinterpret(signed=True)
        )
        assert (got["_session"].to_numpy() == session.to_numpy()).all()
        # scenario statistics as printed: rows and CTR per scenario per split
        for k, t in enumerate(HIERREC_TABS):
            assert schema.scenario_counts[split][k] == want.filter(pl.col("tab") == t).height
    assert "tab6" in output and "train CTR" in output
    assert schema.info["setup"] == "hierrec" and schema.info["variant"] == "1k"
    assert schema.info["raw_fingerprint"] and schema.info["archive_md5"] is None


def test_sequences_are_the_clicks_strictly_before_each_row(raw, hierrec):
    out, _ = hierrec
    exp = expected_hierrec(raw)
    videos = vocab(out, "video_id")
    lo, hi = split_bounds(exp.height)["train"]
    got = pl.read_parquet(out / "train.parquet")
    want = exp.slice(lo, hi - lo)
    ids = np.stack(got["hist_video_id"].to_numpy())
    lens = want["hist_video_id"].list.len().clip(upper_bound=L).to_numpy()
    assert (got["hist_len"].to_numpy() == lens).all()
    pad = np.zeros((want.height, L), np.int64)
    for k in range(L):  # the generator's own record of each row's earlier clicks
        col = want["hist_video_id"].list.get(k, null_on_oob=True).to_list()
        pad[:, k] = np.where(k < lens, codes(col, videos), 0)  # 0-padded after it
    assert (ids == pad).all()
    assert lens.mean() > 5  # the test data has real histories


def test_tied_timestamps_are_not_history():
    rows = pl.DataFrame(
        {"pos": [0, 1, 2, 3], "user_id": [1, 1, 1, 1], "time_ms": [10, 20, 20, 30]},
        schema_overrides={"pos": pl.UInt32, "user_id": pl.Int32},
    )
    clicks = rows.with_columns(video_id=pl.Series([100, 200, 300, 400], dtype=pl.Int32))
    clicks = clicks.filter(pl.col("pos").is_in([0, 1, 2]))  # rows 0-2 clicked
    sorted_clicks, located = kuairand.click_windows(rows, clicks, max_len=2)
    hist = located.lazy().with_columns(kuairand.history_lists(sorted_clicks, ["video_id"]))
    got = hist.collect()["hist_video_id"].to_list()
    # row 2 shares row 1's millisecond: it sees only the click at 10; row 3 sees the last two
    assert got == [[], [100], [100], [300, 200]]


def test_time_order_and_gap_sessions(raw, tmp_path):
    out = tmp_path / "t"
    invoke(
        "prepare", "kuairand", "--raw-dir", str(raw.folder.parent.parent), "--out", str(out),
        "--seq-len", "0", "--order", "time", "--session-gap", "30",
    )  # fmt: skip
    exp = expected_hierrec(raw).sort("time_ms", "pos")  # a split by time, not file position
    lo, hi = split_bounds(exp.height)["test"]
    got = pl.read_parquet(out / "test.parquet")
    assert (got["label"].to_numpy() == exp.slice(lo, hi - lo)["is_click"].to_numpy()).all()
    # 30-minute gaps over all selected log rows (before the feature joins drop any)
    T = raw.truth.filter((pl.col("period") == 1) & pl.col("tab").is_in(HIERREC_TABS))
    fresh = (pl.col("time_ms").diff().over("user_id") > 30 * 60_000).fill_null(False)
    T = T.sort("user_id", "time_ms").with_columns(k=fresh.cum_sum().over("user_id"))
    want = exp.join(T.select("pos", "k"), on="pos", how="left", maintain_order="left")
    want = want.slice(0, split_bounds(exp.height)["train"][1])
    got = pl.read_parquet(out / "train.parquet")["_session"]
    pairs = want.select("user_id", "k").with_columns(s=got)
    # the same partition of rows into sessions: each (user, k) is one session and vice versa
    assert pairs.select(pl.struct("user_id", "k").n_unique()).item() == got.n_unique()
    assert pairs.group_by("user_id", "k").agg(pl.col("s").n_unique())["s"].max() == 1
    assert got.n_unique() > want.select(pl.struct("user_id", "date").n_unique()).item()


def test_session_gap_rule():
    rows = pl.DataFrame(
        {
            "pos": [0, 1, 2, 3, 4],
            "user_id": [7, 7, 8, 7, 7],
            "time_ms": [0, 60_000, 0, 10 * 60_000, 11 * 60_000],
            "date": [1, 1, 1, 1, 1],
        }
    )
    keys = kuairand.session_keys(rows, gap_minutes=5).to_list()
    assert keys[0] == keys[1] and keys[3] == keys[4] and keys[1] != keys[3]
    assert keys[2] not in (keys[0], keys[3])
    day = kuairand.session_keys(rows, gap_minutes=0).to_list()
    assert day[0] == day[1] == day[3] == day[4] == 7 * 100_000_000 + 1


def test_no_encoder_is_fitted_on_val_or_test(raw, hierrec):
    out, _ = hierrec
    exp = expected_hierrec(raw)
    lo, hi = split_bounds(exp.height)["train"]
    train = exp.slice(lo, hi - lo)
    # the videos of the training rows, then those only their histories hold (the first L
    # clicks each row keeps): ids 1..n for the candidates, n+1.. for the history-only ones
    candidates = {str(v) for v in train["video_id"].unique()}
    watched = train["hist_video_id"].list.head(L).explode().drop_nulls().unique()
    history_only = {str(v) for v in watched} - candidates
    assert history_only  # the check below has something to check
    videos = vocab(out, "video_id")
    assert set(videos) == candidates | history_only
    assert {v for v, i in videos.items() if i <= len(candidates)} == candidates
    assert set(vocab(out, "user_id")) == {str(v) for v in train["user_id"].unique()}
    later = exp.slice(hi, exp.height - hi)
    known = pl.concat([train["video_id"], watched.cast(train["video_id"].dtype)])
    unseen = ~later["video_id"].is_in(known.implode())
    assert unseen.sum() > 0  # the check below has something to check
    test_val = pl.concat([pl.read_parquet(out / f"{s}.parquet") for s in ("val", "test")])
    assert (test_val["video_id"].to_numpy()[unseen.to_numpy()] == 0).all()


def test_prepare_is_deterministic(raw, hierrec, tmp_path):
    out, _ = hierrec
    again = tmp_path / "again"
    invoke(
        "prepare", "kuairand", "--raw-dir", str(raw.folder.parent.parent), "--out", str(again),
        "--seq-len", str(L),
    )  # fmt: skip

    def digest(folder):
        return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}

    assert digest(out) == digest(again)


def test_scenario_wise_setup(raw, tmp_path):
    out = tmp_path / "sw"
    invoke(
        "prepare", "kuairand", "--raw-dir", str(raw.folder.parent.parent), "--out", str(out),
        "--setup", "scenario-wise", "--seq-len", "0", "--seed", "4",
    )  # fmt: skip
    from msctr.data.schema import Schema

    schema = Schema.load(out)
    T = raw.truth
    exp = T.filter(pl.col("tab").is_in([0, 1, 2, 4, 6]) & pl.col("has_user") & pl.col("has_video"))
    exp = exp.sort("pos")  # both standard periods
    n = exp.height
    assert sum(schema.rows.values()) == n
    assert schema.rows["train"] == int(n * 0.8)
    assert schema.scenario_names == ["tab0", "tab1", "tab2", "tab4", "tab6"]
    assert [d.name for d in schema.dense] == list(kuairand.NUMERIC_USER)
    assert not set(kuairand.NUMERIC_USER) & set(schema.sparse_names)
    assert not schema.sequences
    # the scaler is fit on the (seeded, random) training rows only
    position = pl.select(pl.int_range(n, dtype=pl.UInt32).shuffle(seed=4)).to_series()
    users = pl.read_csv(raw.folder / "user_features_1k.csv").select("user_id", "register_days")
    reg = exp.join(users, on="user_id", how="left", maintain_order="left")["register_days"]
    train_mean = reg.filter(position < int(n * 0.8)).mean()
    dense = {d.name: d for d in schema.dense}
    assert dense["register_days"].mean == pytest.approx(train_mean)
    assert dense["register_days"].mean != pytest.approx(reg.mean(), rel=1e-9)


def test_raw_quirks_are_cleaned():
    s = pl.Series("c", ["1.0", "2", "NaN", "", "-124", "-124.0", " 3 ", None])
    assert kuairand.clean_categorical(s).to_list() == [1, 2, None, None, None, None, 3, None]
    t = pl.Series("c", ["(0,10]", "nan", "UNKNOWN", "730+"])
    assert kuairand.clean_categorical(t).to_list() == ["(0,10]", None, "UNKNOWN", "730+"]
    x = pl.Series("x", ["12", "NaN", "-124", "3.5", ""])
    assert kuairand.clean_numeric(x).to_list() == [12.0, None, None, 3.5, None]


def test_quirky_columns_read_as_clean_values(raw):
    table = kuairand.load(raw.folder.parent.parent, seq_len=0)
    df = table.frame.collect()
    assert df.schema["onehot_feat0"] == pl.Int64  # written as "1.0"
    assert df["onehot_feat6"].null_count() > 0  # NaN cells
    assert df["onehot_feat7"].null_count() > 0 and (df["onehot_feat7"] != -124).all()
    assert df["server_height"].null_count() > 0  # -124
    assert set(df["follow_user_num_range"].drop_nulls()) <= {
        "0", "(0,10]", "(10,50]", "(50,100]", "(100,150]", "(250,500]", "500+",
    }  # fmt: skip
    assert set(df["video_type"].unique()) <= {"NORMAL", "AD", "UNKNOWN"}


def test_trains_on_the_prepared_folder(hierrec, tmp_path):
    out, _ = hierrec
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: kr\ndata: {out}\nout: {tmp_path / 'run'}\n"
        "models:\n  - {name: dnn, params: {hidden: [32]}}\n  - sfpnet\n"
        "train: {batch_size: 512, epochs: 1, seeds: [0]}\n"
    )
    result = invoke("train", str(recipe), "--smoke")
    assert "dnn" in result.output.lower()


# -- one-line errors ---------------------------------------------------------------------------
def copy_raw(raw, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(raw.folder.parent.parent, dst)
    return dst, dst / "KuaiRand-1K" / "data"


def test_missing_file(raw, tmp_path):
    root, data = copy_raw(raw, tmp_path)
    (data / "video_features_basic_1k.csv").unlink()
    with pytest.raises(UserError) as e:
        kuairand.load(root)
    assert "missing video_features_basic_1k.csv" in user_error_line(e)


def test_missing_column(raw, tmp_path):
    root, data = copy_raw(raw, tmp_path)
    path = data / "user_features_1k.csv"
    pl.read_csv(path, infer_schema=False).drop("register_days_range").write_csv(path)
    with pytest.raises(UserError) as e:
        kuairand.load(root)
    assert "user_features_1k.csv is missing column(s) register_days_range" in user_error_line(e)


def test_wrong_variant_names_the_right_one(raw):
    with pytest.raises(UserError) as e:
        kuairand.load(raw.folder.parent.parent, variant="pure")
    assert "pass --variant 1k" in user_error_line(e)


def test_no_network_names_the_manual_route(monkeypatch, tmp_path):
    def unreachable(variant: str) -> Archive:
        return Archive(
            "kuairand", "KuaiRand-Pure.tar.gz", "http://127.0.0.1:9/KuaiRand-Pure.tar.gz",
            kuairand.ARCHIVE_MD5[variant], kuairand.ZENODO_PAGE,
            f"msctr prepare kuairand --variant {variant} --raw-dir <unpacked folder>",
        )  # fmt: skip

    monkeypatch.setattr(kuairand, "archive", unreachable)
    result = runner.invoke(
        app,
        ["prepare", "kuairand", "--variant", "pure", "--cache-dir", str(tmp_path), "--out",
         str(tmp_path / "o")],
    )  # fmt: skip
    assert result.exit_code != 0
    msg = str(result.exception)
    assert "cannot download" in msg and "--raw-dir" in msg and "\n" not in msg
