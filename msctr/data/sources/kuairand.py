"""KuaiRand (Gao et al., CIKM 2022) from the files its owners publish on Zenodo.

Two setups reproduce the data of the papers:

- ``hierrec`` (HierRec, Table 1): KuaiRand-1K's ``log_standard_4_22_to_5_08``, inner-joined with
  the user and basic video features, tabs {0, 1, 2, 3, 6} as scenarios 0..4, 37 categorical
  fields (tab, user_id, video_id, the 30 user columns, video_type, visible_status, server_width,
  server_height), a sequential 80/10/10 split in log order.
- ``scenario-wise`` (Scenario-Wise Rec benchmark): both standard periods, tabs {0, 1, 2, 4, 6},
  the four numeric user columns (follow/fans/friend counts, register_days) as dense inputs and
  the other fields categorical, a seeded random 80/10/10 split.

On top of the paper fields every row gets a session key (user, date) for S-GAUC and, for SFPNet,
its user's last N clicked videos strictly before the row's ``time_ms`` (from all standard logs,
every tab), with their attribute fields, built with a Polars as-of join and a rolling window.

Raw quirks handled here: the ``*_range`` and ``user_active_degree`` columns and ``video_type``
are strings; ``NaN``, empty cells and ``-124`` mean missing; ``1.0`` and ``1`` are the same value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from msctr.data.download import Archive, fingerprint
from msctr.data.sources.base import FieldMap, SequenceSpec, SourceTable
from msctr.errors import UserError

ZENODO_PAGE = "https://zenodo.org/records/10439422"
VARIANTS = ("pure", "1k", "27k")
ARCHIVE_NAMES = {"pure": "KuaiRand-Pure", "1k": "KuaiRand-1K", "27k": "KuaiRand-27K"}
ARCHIVE_MD5 = {
    "pure": "0820331067a3784d9691136f772b35a7",
    "1k": "6b0b9c8222d67fcd4c676218edca3f1f",
    "27k": "3e3c799a24e2d23a4d2c757fbf9adf59",
}
PERIODS = ("4_08_to_4_21", "4_22_to_5_08")

LOG_COLUMNS = (
    "user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow",
    "is_comment", "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms",
    "profile_stay_time", "comment_stay_time", "is_profile_enter", "is_rand", "tab",
)  # fmt: skip
# the log columns prepare reads, with compact types (ids fit int32; time_ms does not)
LOG_DTYPES = {
    "user_id": pl.Int32,
    "video_id": pl.Int32,
    "date": pl.Int32,
    "time_ms": pl.Int64,
    "is_click": pl.Int8,
    "tab": pl.Int8,
}
USER_COLUMNS = (
    "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
    "follow_user_num", "follow_user_num_range", "fans_user_num", "fans_user_num_range",
    "friend_user_num", "friend_user_num_range", "register_days", "register_days_range",
    *(f"onehot_feat{i}" for i in range(18)),
)  # fmt: skip
VIDEO_COLUMNS = (
    "video_id", "author_id", "video_type", "upload_dt", "upload_type", "visible_status",
    "video_duration", "server_width", "server_height", "music_id", "music_type", "tag",
)  # fmt: skip
ROW_VIDEO_FIELDS = ("video_type", "visible_status", "server_width", "server_height")
NUMERIC_USER = ("follow_user_num", "fans_user_num", "friend_user_num", "register_days")
MISSING = ("", "nan", "null", "none", "-124")  # after lower-casing and dropping a ".0" suffix
SESSION_DATE_FACTOR = 100_000_000  # session key = user_id * 1e8 + yyyymmdd


@dataclass(frozen=True)
class Setup:
    name: str
    periods: tuple[str, ...]
    tabs: tuple[int, ...]
    dense: tuple[str, ...]
    split: str


SETUPS = {
    "hierrec": Setup("hierrec", ("4_22_to_5_08",), (0, 1, 2, 3, 6), (), "sequential"),
    "scenario-wise": Setup("scenario-wise", PERIODS, (0, 1, 2, 4, 6), NUMERIC_USER, "random"),
}


def archive(variant: str) -> Archive:
    name = ARCHIVE_NAMES[variant]
    return Archive(
        dataset="kuairand",
        filename=f"{name}.tar.gz",
        url=f"{ZENODO_PAGE}/files/{name}.tar.gz?download=1",
        md5=ARCHIVE_MD5[variant],
        page=ZENODO_PAGE,
        raw_dir_hint=f"msctr prepare kuairand --variant {variant} --raw-dir <unpacked folder>",
    )


# -- locating and checking the raw files -----------------------------------------------------
def find_data_dir(raw_dir: Path, variant: str) -> Path:
    """The folder holding the variant's CSVs: raw_dir itself, raw_dir/data or raw_dir/*/data."""
    if not raw_dir.is_dir():
        raise UserError(f"KuaiRand raw folder '{raw_dir}' does not exist")
    probe = f"user_features_{variant}.csv"
    candidates = [raw_dir, raw_dir / "data", *sorted(raw_dir.glob("*/data"))]
    for folder in candidates:
        if (folder / probe).is_file():
            return folder
    others = [v for v in VARIANTS if v != variant and any(raw_dir.rglob(f"user_features_{v}.csv"))]
    hint = f" (it holds KuaiRand-{others[0]}: pass --variant {others[0]})" if others else ""
    raise UserError(
        f"KuaiRand raw folder '{raw_dir}' has no {probe}{hint}; pass the unpacked "
        f"{ARCHIVE_NAMES[variant]} folder (the one holding data/), or leave out --raw-dir to "
        "download it"
    )


def _part_number(path: Path) -> int:
    m = re.search(r"_part(\d+)\.csv$", path.name)
    return int(m.group(1)) if m else 0


def data_files(folder: Path, stem: str) -> list[Path]:
    """`stem`.csv, or its parts `stem`_part1.csv, _part2.csv, ... (KuaiRand-27K) in order."""
    single = folder / f"{stem}.csv"
    if single.is_file():
        return [single]
    parts = sorted(folder.glob(f"{stem}_part*.csv"), key=_part_number)
    if not parts:
        raise UserError(
            f"KuaiRand raw folder '{folder}' is missing {stem}.csv; the archive unpacked "
            "incompletely: unpack it again (or delete the cache folder to re-download)"
        )
    return parts


def header(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return [c.strip().strip('"') for c in fh.readline().rstrip("\r\n").split(",")]


def check_columns(path: Path, required: tuple[str, ...] | list[str]) -> None:
    have = set(header(path))
    missing = [c for c in required if c not in have]
    if missing:
        raise UserError(
            f"{path.name} is missing column(s) {', '.join(missing)}; is it a KuaiRand file? "
            f"expected: {', '.join(required)}"
        )


# -- cleaning ------------------------------------------------------------------------------------
def clean_categorical(col: pl.Series) -> pl.Series:
    """Raw cell text -> a categorical value: missing markers to null, integers as Int64.

    A column whose every present value is an integer (``"3"``, ``"3.0"``) becomes Int64 so that
    ``1`` and ``1.0`` are one value; anything else (``"(0,10]"``, ``"NORMAL"``) stays a string.
    """
    text = col.cast(pl.String).str.strip_chars().str.replace(r"^(-?\d+)\.0*$", "${1}")
    text = pl.select(
        pl.when(text.str.to_lowercase().is_in(MISSING)).then(None).otherwise(text).alias(col.name)
    ).to_series()
    as_int = text.cast(pl.Int64, strict=False)
    return as_int if as_int.null_count() == text.null_count() else text


def clean_numeric(col: pl.Series) -> pl.Series:
    """Raw cell text -> Float64 with NaN / -124 / unparsable as null (for dense inputs)."""
    x = col.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
    return pl.select(
        pl.when(x.is_nan() | (x == -124.0)).then(None).otherwise(x).alias(col.name)
    ).to_series()


def _id_column(df: pl.DataFrame, name: str, path: Path) -> pl.Series:
    ids = df.get_column(name).str.strip_chars().cast(pl.Int32, strict=False)
    bad = ids.is_null().sum()
    if bad:
        raise UserError(f"{path.name}: {bad} row(s) with a non-integer {name}; is the file intact?")
    return ids


def read_users(path: Path, dense: tuple[str, ...]) -> pl.DataFrame:
    check_columns(path, ("user_id", *USER_COLUMNS))
    raw = pl.read_csv(path, infer_schema=False, columns=["user_id", *USER_COLUMNS])
    cols = [_id_column(raw, "user_id", path)]
    for c in USER_COLUMNS:
        cols.append(clean_numeric(raw[c]) if c in dense else clean_categorical(raw[c]))
    return pl.DataFrame(cols).unique("user_id", keep="first", maintain_order=True)


def read_videos(paths: list[Path], fields: list[str]) -> pl.DataFrame:
    for p in paths:
        check_columns(p, VIDEO_COLUMNS)
    raw = pl.scan_csv(paths, infer_schema=False).select(["video_id", *fields]).collect()
    cols = [_id_column(raw, "video_id", paths[0])] + [clean_categorical(raw[c]) for c in fields]
    return pl.DataFrame(cols).unique("video_id", keep="first", maintain_order=True)


def read_logs(files: dict[str, list[Path]]) -> pl.DataFrame:
    """The standard logs of `files` (period -> parts) in file order: pos is the log position."""
    frames = []
    for k, (_, paths) in enumerate(files.items()):
        for p in paths:
            check_columns(p, LOG_COLUMNS)
        frames.append(
            pl.scan_csv(paths, schema_overrides=LOG_DTYPES)
            .select(list(LOG_DTYPES))
            .with_columns(pl.lit(k, pl.Int8).alias("period"))
        )
    try:
        return pl.concat(frames).with_row_index("pos").collect()
    except pl.exceptions.PolarsError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"cannot read the KuaiRand logs ({first}); are the files intact?") from None


# -- derived columns -------------------------------------------------------------------------------
def session_keys(rows: pl.DataFrame, gap_minutes: int) -> pl.Series:
    """(user, date) by default; with a gap, a new session after `gap_minutes` of inactivity."""
    if gap_minutes <= 0:
        key = pl.col("user_id").cast(pl.Int64) * SESSION_DATE_FACTOR + pl.col("date")
        return rows.select(key.alias("session")).to_series()
    gap = gap_minutes * 60_000
    ordered = rows.select("pos", "user_id", "time_ms").sort("user_id", "time_ms", "pos")
    fresh = (pl.col("time_ms").diff().over("user_id") > gap).fill_null(False)
    ordered = ordered.with_columns(
        (pl.col("user_id").cast(pl.Int64) * (1 << 32) + fresh.cum_sum().over("user_id")).alias(
            "session"
        )
    )
    return rows.select("pos").join(ordered, on="pos", how="left", maintain_order="left")["session"]


HI, LO = "__hist_hi", "__hist_lo"  # a row's window in the click table: [lo, hi], hi latest


def click_windows(rows: pl.DataFrame, clicks: pl.DataFrame, max_len: int) -> pl.DataFrame:
    """Where each row's history lies in the click table: ``clicks`` sorted, plus [lo, hi] per row.

    ``clicks`` (every click of the logs) is sorted by (user, time, log position) and numbered:
    each user's clicks form one run. A row's history is the run's part strictly before its
    time_ms: hi is the latest click strictly before it (an as-of join by user that excludes
    exact matches, so no row sees its own click or one at the same millisecond; null if none)
    and lo = max(hi - max_len + 1, the user's first click) (a window minimum over the user).
    The lists themselves are cut from the click table batch by batch (`history_lists`), so
    neither per-row nor per-click lists are ever all in memory.
    Returns ``clicks`` sorted and ``rows`` with HI and LO (both in ``rows``' order).
    """
    clicks = clicks.sort("user_id", "time_ms", "pos").with_row_index("ci")
    first = clicks.group_by("user_id").agg(pl.col("ci").min().alias("first"))
    # a stable sort by time keeps (user, time, pos) order among equal times: the as-of join
    # then takes the largest ci among several clicks at the same millisecond
    last = (
        rows.select("pos", "user_id", "time_ms")
        .sort("time_ms")
        .join_asof(
            clicks.select("user_id", "time_ms", "ci").sort("time_ms", maintain_order=True),
            on="time_ms",
            by="user_id",
            strategy="backward",
            allow_exact_matches=False,
            check_sortedness=False,
        )
        .join(first, on="user_id", how="left")
        .select(
            "pos",
            pl.col("ci").alias(HI),
            pl.max_horizontal(pl.col("ci").cast(pl.Int64) - (max_len - 1), "first")
            .cast(pl.UInt32)
            .alias(LO),
        )
    )
    return clicks, rows.join(last, on="pos", how="left", maintain_order="left")


def history_lists(clicks: pl.DataFrame, attrs: list[str]) -> list[pl.Expr]:
    """Expressions: the rows' behavior lists hist_<attr>, clicks hi, hi - 1, ..., lo of the
    click table, most recent first, built per batch of rows from the [lo, hi] columns."""
    exprs = []
    for a in attrs:
        values = clicks.get_column(a).rechunk()

        def cut(bounds: pl.Series, values: pl.Series = values) -> pl.Series:
            hi = bounds.struct.field(HI)
            lens = (hi.cast(pl.Int64) - bounds.struct.field(LO) + 1).fill_null(0).to_numpy()
            top = hi.fill_null(0).cast(pl.Int64).to_numpy()
            offsets = np.zeros(len(lens) + 1, np.int64)
            np.cumsum(lens, out=offsets[1:])
            # the k-th element of row r is click hi[r] - k
            idx = np.repeat(top + offsets[:-1], lens) - np.arange(offsets[-1])
            flat = values.gather(pl.Series(idx, dtype=pl.UInt32)).to_arrow()
            arr = pa.LargeListArray.from_arrays(pa.array(offsets), flat)
            return pl.Series(f"hist_{values.name}", arr).cast(pl.List(values.dtype))

        exprs.append(
            pl.struct(HI, LO)
            .map_batches(cut, return_dtype=pl.List(values.dtype), is_elementwise=True)
            .alias(f"hist_{a}")
        )
    return exprs


def integer_codes(videos: pl.DataFrame, columns: list[str]) -> tuple[pl.DataFrame, dict]:
    """String columns -> 1-based codes in sorted value order (null stays null).

    Behavior lists of strings would cost four times the memory of int32 codes at KuaiRand's
    scale (rows x max_len per attribute); the code tables go into schema.json.
    """
    tables = {}
    for c in columns:
        if videos.schema[c] != pl.String:
            continue
        values = videos.get_column(c).drop_nulls().unique().sort()
        codes = pl.Series(range(1, len(values) + 1), dtype=pl.Int32)
        videos = videos.with_columns(pl.col(c).replace_strict(values, codes, default=None))
        tables[c] = values.to_list()
    return videos, tables


# -- the adapter -----------------------------------------------------------------------------------
def load(
    raw_dir: str | Path,
    variant: str = "1k",
    setup: str = "hierrec",
    seq_len: int = 50,
    seq_fields: tuple[str, ...] = ("video_id", "video_type"),
    session_gap: int = 0,
    order: str = "log",
    archive_md5: str | None = None,
    work_dir: str | Path | None = None,
) -> SourceTable:
    """KuaiRand's raw files in `raw_dir` as a SourceTable for `prepare` (see the module doc).

    With `work_dir` (a folder the caller removes after `prepare`) the joined rows are written
    there once as Parquet, so prepare's passes read columns instead of re-running the joins.
    """
    if variant not in VARIANTS:
        raise UserError(f"--variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if setup not in SETUPS:
        raise UserError(f"--setup must be one of {', '.join(SETUPS)}, got {setup!r}")
    if order not in ("log", "time"):
        raise UserError(f"--order must be log or time, got {order!r}")
    if seq_len < 0:
        raise UserError(f"--seq-len must be 0 (no sequences) or more, got {seq_len}")
    S = SETUPS[setup]
    seq_fields = tuple(dict.fromkeys(seq_fields)) if seq_len else ()
    allowed = ("video_id", *(c for c in VIDEO_COLUMNS if c not in ("video_id", "tag")))
    bad = [a for a in seq_fields if a not in allowed]
    if bad:
        raise UserError(
            f"--seq-fields: {', '.join(bad)} is not a video column; choose from "
            f"{', '.join(allowed)}"
        )
    if seq_fields and seq_fields[0] != "video_id":
        raise UserError("--seq-fields must start with video_id (the clicked video itself)")

    folder = find_data_dir(Path(raw_dir), variant)
    v = variant
    log_files = {p: data_files(folder, f"log_standard_{p}_{v}") for p in PERIODS}
    user_file = data_files(folder, f"user_features_{v}")[0]
    video_files = data_files(folder, f"video_features_basic_{v}")

    # sequence attributes other than video_id must be fields of the row too (shared vocabulary)
    extra = [a for a in seq_fields[1:] if a not in ROW_VIDEO_FIELDS]
    video_fields = [*ROW_VIDEO_FIELDS, *extra]
    users = read_users(user_file, S.dense)
    videos = read_videos(video_files, video_fields)
    log = read_logs(log_files)
    all_logs = [p for ps in log_files.values() for p in ps]

    kept_periods = [k for k, p in enumerate(PERIODS) if p in S.periods]
    rows = log.filter(pl.col("period").is_in(kept_periods) & pl.col("tab").is_in(list(S.tabs)))
    if order == "time":
        rows = rows.sort("time_ms", "pos")
    rows = rows.with_columns(session_keys(rows, session_gap)).drop("period")

    sequences, codes = [], {}
    if seq_fields:
        videos, codes = integer_codes(videos, list(seq_fields[1:]))
        clicks = log.filter(pl.col("is_click") == 1).select("pos", "user_id", "time_ms", "video_id")
        if len(seq_fields) > 1:
            attrs = videos.select("video_id", *seq_fields[1:])
            clicks = clicks.join(attrs, on="video_id", how="left", maintain_order="left")
        clicks, rows = click_windows(rows, clicks, seq_len)
        clicks = clicks.select(list(seq_fields))
        sequences = [SequenceSpec("hist", {f"hist_{a}": a for a in seq_fields}, max_len=seq_len)]
    del log
    selected_rows = rows.height
    sparse = ["user_id", "video_id", *(c for c in USER_COLUMNS if c not in S.dense)]
    sparse += video_fields
    scalars = ["is_click", "tab", "session", *sparse, *S.dense] + ([HI, LO] if sequences else [])
    frame = (
        rows.lazy()
        .join(users.lazy(), on="user_id", how="inner", maintain_order="left")
        .join(videos.lazy(), on="video_id", how="inner", maintain_order="left")
        .select(scalars)
    )
    if work_dir is not None:  # run the joins once; every pass of prepare then reads columns
        path = Path(work_dir) / "kuairand_rows.parquet"
        frame.sink_parquet(path, statistics=False, compression="lz4", row_group_size=100_000)
        frame = pl.scan_parquet(path)
    del rows, users, videos
    if sequences:  # the rows' behavior lists, cut from the click table as prepare streams
        frame = frame.with_columns(history_lists(clicks, list(seq_fields)))
    fields = FieldMap(
        label="is_click",
        scenario="tab",
        sparse=sparse,
        dense=list(S.dense),
        sequences=sequences,
        user="user_id",
        session="session",
    )
    keep = ["is_click", "tab", "session", *sparse, *S.dense]
    keep += [c for seq in sequences for c in seq.columns]
    return SourceTable(
        frame=frame.select(keep),
        fields=fields,
        name=f"kuairand-{variant}",
        split=S.split,
        split_fractions=(0.8, 0.1, 0.1),
        scenario_names={t: f"tab{t}" for t in range(16)},
        info={
            "dataset": "KuaiRand",
            "variant": variant,
            "setup": setup,
            "archive": f"{ARCHIVE_NAMES[variant]}.tar.gz",
            "archive_md5": archive_md5,
            "logs": [p.name for k in S.periods for p in log_files[k]],
            "history_logs": [p.name for ps in log_files.values() for p in ps],
            "raw_fingerprint": fingerprint([user_file, *video_files, *all_logs]),
            "tabs": list(S.tabs),
            "order": order,
            "session": f"gap {session_gap} min" if session_gap > 0 else "user x date",
            "seq_len": seq_len,
            "seq_fields": list(seq_fields),
            "value_codes": codes,
            "selected_log_rows": selected_rows,
        },
    )
