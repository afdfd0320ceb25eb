"""Ali-CCP (Ma et al., SIGIR 2018; Tianchi dataset 408) from the raw files, streamed.

Raw files (no header): ``sample_skeleton_{train,test}.csv`` with sample_id, click, buy,
common_feature_index, feature_num, feature_list, and ``common_features_{train,test}.csv`` with
common_feature_index, feature_num, feature_list. A feature list is ``\\x01``-separated entries
``field\\x02feature_id\\x03value``; feature ids are global (each field its own id range).

What the adapter makes of them (the HierRec / SFPNet / HMDN setups):
- samples with click = 0 and buy = 1 are dropped; label = click;
- the skeleton's item, cross and position fields are joined with the request's common (user)
  features on common_feature_index, which is also the session key (one request);
- 23 categorical fields as in HierRec's Table 1: the user fields 101, 121, 122, 124..129, the
  item fields 205, 206, 207, 210, 216, the crosses 508, 509, 702, 853, the scenario 301, and the
  four history fields 109_14, 110_14, 127_14, 150_14 as single values (their last entry, as in
  the widely shared processed files);
- the four histories also as behavior sequences (their first `seq_len` entries in file order:
  the raw data has no behavior times), each sharing its single-valued field's vocabulary and
  queried in target attention by the candidate item's field of the same kind (109_14
  categories by 206, 110_14 shops by 207, 127_14 brands by 216, 150_14 intentions by 210);
- partition = gender (124) x city (129) x scenario, HMDN's 33 partitions;
- split: raw train -> train / val by a seeded hash of sample_id (``val_fraction``), raw test ->
  test (HierRec); or ``val_from="test"``: raw test halved into val / test the same way.

Raw files are tens of GB: every file is read with Polars' streaming engine and a regex per
field, never whole; the common features are reduced to their parsed (truncated) columns first.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from msctr.data.download import fingerprint
from msctr.data.prepare import gathered
from msctr.data.sources.base import FieldMap, SequenceSpec, SourceTable
from msctr.errors import UserError

TIANCHI_PAGE = "https://tianchi.aliyun.com/dataset/408"
SKELETON_COLUMNS = (
    "sample_id", "click", "buy", "common_feature_index", "feature_num", "feature_list",
)  # fmt: skip
COMMON_COLUMNS = ("common_feature_index", "feature_num", "feature_list")
USER_FIELDS = ("101", "121", "122", "124", "125", "126", "127", "128", "129")
HISTORY_FIELDS = ("109_14", "110_14", "127_14", "150_14")
ITEM_FIELDS = ("205", "206", "207", "210", "216")
CROSS_FIELDS = ("508", "509", "702", "853")
# the candidate item's field that queries each history in target attention: the same kind of
# value (data.md: 109_14 categories, 110_14 shops, 127_14 brands, 150_14 intentions)
QUERY_OF = {"109_14": "206", "110_14": "207", "127_14": "216", "150_14": "210"}
SCENARIO = "301"
SPARSE = [*USER_FIELDS, *ITEM_FIELDS, *CROSS_FIELDS, *HISTORY_FIELDS]
DENSE = [f"D{f}" for f in (*HISTORY_FIELDS, *CROSS_FIELDS)]  # the processed files' value columns
PROCESSED_COLUMNS = ("click", "purchase", *SPARSE, SCENARIO, *DENSE)
SESSION = "common_feature_index"
GIVEN = "__given"
HASH_BUCKETS = 1_000_000
FL = "__fl"  # the feature list with a leading separator, so every entry starts with \x01
REQUEST = "__request"  # row number of the sample's request in the parsed common features


def _single(field: str) -> pl.Expr:
    """The feature id of `field`'s first entry (null when absent)."""
    return pl.col(FL).str.extract(f"\x01{field}\x02([0-9]+)\x03", 1).cast(pl.Int64).alias(field)


def _value(field: str) -> pl.Expr:
    """The value of `field`'s first entry (the processed files' D<field> column)."""
    pattern = f"\x01{field}\x02[0-9]+\x03([^\x01]*)"
    return pl.col(FL).str.extract(pattern, 1).cast(pl.Float64, strict=False).alias(f"D{field}")


def _multi(field: str) -> pl.Expr:
    """All entries of a multi-valued field, as `field\\x02id\\x03value` strings in file order."""
    return pl.col(FL).str.extract_all(f"\x01{field}\x02[0-9]+\x03[^\x01]*")


def _ids(entries: pl.Expr, field: str) -> pl.Expr:
    skip = len(field) + 2  # the leading \x01, the field name and \x02
    return entries.list.eval(
        pl.element().str.slice(skip).str.split("\x03").list.first().cast(pl.Int64)
    )


def _check_header(path: Path, ncols: int, what: str) -> None:
    with open(path, "rb") as fh:
        line = fh.readline(1 << 20)
    if not line:
        raise UserError(f"{path} is empty; re-download the Ali-CCP {what} file")
    cells = line.split(b",", ncols - 1)
    if len(cells) < ncols or b"\x02" not in cells[-1]:
        raise UserError(
            f"{path.name} is not an Ali-CCP {what} file (expected {ncols} comma-separated columns "
            "ending in a \\x01/\\x02/\\x03 feature list); check the file"
        )


def _find(raw_dir: Path, name: str) -> Path:
    for p in (raw_dir / name, raw_dir / "train" / name, raw_dir / "test" / name):
        if p.is_file():
            return p
    raise UserError(
        f"Ali-CCP raw folder '{raw_dir}' has no {name}; download the four raw files from "
        f"{TIANCHI_PAGE} (login required), unzip them into one folder and pass it as --raw-dir"
    )


def read_common(path: Path, seq_len: int, dense: bool) -> pl.DataFrame:
    """One row per request: user fields, history lists (first `seq_len`), their last entries."""
    _check_header(path, len(COMMON_COLUMNS), "common_features")
    scan = pl.scan_csv(
        path,
        has_header=False,
        new_columns=list(COMMON_COLUMNS),
        schema_overrides={
            "common_feature_index": pl.String,
            "feature_num": pl.Int64,
            "feature_list": pl.String,
        },
        quote_char=None,
    ).select(SESSION, pl.concat_str(pl.lit("\x01"), pl.col("feature_list")).alias(FL))
    exprs: list[pl.Expr] = [pl.col(SESSION), *[_single(f) for f in USER_FIELDS]]
    for f in HISTORY_FIELDS:
        entries = _multi(f)
        exprs.append(_ids(entries.list.head(seq_len), f).alias(f"hist_{f}"))
        last = entries.list.last()
        exprs.append(
            last.str.slice(len(f) + 2).str.split("\x03").list.first().cast(pl.Int64).alias(f)
        )
        if dense:
            value = last.str.split("\x03").list.last().cast(pl.Float64, strict=False)
            exprs.append(value.alias(f"D{f}"))
    try:
        common = scan.select(exprs).collect(engine="streaming")
    except pl.exceptions.PolarsError as e:
        raise UserError(f"cannot parse {path.name} ({str(e).splitlines()[0]})") from None
    return common.unique(SESSION, keep="first", maintain_order=True)


def scan_samples(path: Path, dense: bool) -> pl.LazyFrame:
    _check_header(path, len(SKELETON_COLUMNS), "sample_skeleton")
    scan = pl.scan_csv(
        path,
        has_header=False,
        new_columns=list(SKELETON_COLUMNS),
        schema_overrides={
            "sample_id": pl.Int64,
            "click": pl.Int8,
            "buy": pl.Int8,
            "common_feature_index": pl.String,
            "feature_num": pl.Int64,
            "feature_list": pl.String,
        },
        quote_char=None,
    )
    exprs = [pl.col("sample_id"), pl.col("click"), pl.col(SESSION)]
    exprs += [_single(f) for f in (*ITEM_FIELDS, *CROSS_FIELDS, SCENARIO)]
    if dense:
        exprs += [_value(f) for f in CROSS_FIELDS]
    return (
        scan.filter(~((pl.col("click") == 0) & (pl.col("buy") == 1)))
        .with_columns(pl.concat_str(pl.lit("\x01"), pl.col("feature_list")).alias(FL))
        .select(exprs)
    )


def _held_out(fraction: float, seed: int) -> pl.Expr:
    """A seeded pseudo-random share `fraction` of the rows, by a hash of sample_id."""
    return pl.col("sample_id").hash(seed=seed) % HASH_BUCKETS < int(round(fraction * HASH_BUCKETS))


def _given(raw: str, val_from: str, val_fraction: float, seed: int) -> pl.Expr:
    if raw == "train":
        if val_from == "train":
            return (
                pl.when(_held_out(val_fraction, seed))
                .then(pl.lit("val"))
                .otherwise(pl.lit("train"))
            )
        return pl.lit("train")
    if val_from == "test":
        return pl.when(_held_out(0.5, seed)).then(pl.lit("val")).otherwise(pl.lit("test"))
    return pl.lit("test")


def _check_split_args(val_from: str, val_fraction: float) -> None:
    if val_from not in ("train", "test"):
        raise UserError(f"--val-from must be train or test, got {val_from!r}")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-fraction must be between 0 and 1, got {val_fraction}")


def _fields(seq_len: int, dense: bool, label: str, session: str | None) -> FieldMap:
    # each history keeps the vocabulary of its own single-valued field (the same ids: the
    # raw feature ids are numbered per field, so a category in 109_14 and the same category
    # in 206 have different ids) and is queried by the candidate item's field of its kind
    sequences = [
        SequenceSpec(f"seq_{f}", {f"hist_{f}": f}, max_len=seq_len, queries={f"hist_{f}": q})
        for f, q in (QUERY_OF.items() if seq_len else ())
    ]
    return FieldMap(
        label=label,
        scenario=SCENARIO,
        sparse=list(SPARSE),
        dense=list(DENSE) if dense else [],
        sequences=sequences,
        user="101",
        session=session,
        partition=["124", "129"],
    )


def load(
    raw_dir: str | Path,
    seq_len: int = 20,
    val_from: str = "train",
    val_fraction: float = 0.1,
    dense: bool = False,
    seed: int = 0,
    work_dir: str | Path | None = None,
) -> SourceTable:
    """The four raw Ali-CCP files in `raw_dir` as a SourceTable (see the module doc).

    The common features (one row per request) stay in memory, parsed; the samples are streamed
    and joined with the requests' scalar fields and a request index. With `work_dir` (a folder
    the caller removes after `prepare`) that join runs once, streamed into Parquet there; the
    history lists are gathered from the in-memory requests by index as prepare streams rows.
    """
    _check_split_args(val_from, val_fraction)
    if seq_len < 0:
        raise UserError(f"--seq-len must be 0 (no sequences) or more, got {seq_len}")
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise UserError(f"Ali-CCP raw folder '{raw_dir}' does not exist")
    paths = {
        raw: (
            _find(raw_dir, f"sample_skeleton_{raw}.csv"),
            _find(raw_dir, f"common_features_{raw}.csv"),
        )
        for raw in ("train", "test")
    }
    fields = _fields(seq_len, dense, "click", SESSION)
    hist_cols = [c for s in fields.sequences for c in s.columns]
    commons, parts, offset = [], [], 0
    for raw, (skeleton, common_path) in paths.items():
        common = read_common(common_path, max(seq_len, 1), dense)
        common = common.with_row_index(REQUEST, offset=offset)
        offset += common.height
        commons.append(common.select(REQUEST, *hist_cols))
        scalars = common.drop(hist_cols + [f"hist_{f}" for f in HISTORY_FIELDS], strict=False)
        samples = scan_samples(skeleton, dense).join(
            scalars.lazy(), on=SESSION, how="left", maintain_order="left"
        )
        parts.append(samples.with_columns(_given(raw, val_from, val_fraction, seed).alias(GIVEN)))
    keep = ["click", SCENARIO, SESSION, GIVEN, *fields.sparse, *fields.dense]
    frame = pl.concat([p.select(keep + [REQUEST]) for p in parts])
    if work_dir is not None:  # parse and join once; prepare's passes then read columns
        path = Path(work_dir) / "aliccp_samples.parquet"
        try:
            frame.sink_parquet(path, statistics=False, compression="lz4", row_group_size=100_000)
        except pl.exceptions.PolarsError as e:
            first = str(e).strip().splitlines()[0]
            raise UserError(f"cannot parse the Ali-CCP samples ({first})") from None
        frame = pl.scan_parquet(path)
    if hist_cols:  # requests' histories, gathered by request index while prepare streams
        requests = pl.concat(commons)
        frame = frame.with_columns(gathered(REQUEST, requests, hist_cols))
    return SourceTable(
        frame=frame.select(keep + hist_cols),
        fields=fields,
        name="aliccp",
        split="given",
        split_column=GIVEN,
        # the papers' #B1, #B2, #B3: the processed files number 301's hashed ids 1, 2, 3 in
        # the order they first appear in the raw training skeleton
        scenario_order="first_seen",
        scenario_prefix="#B",
        info={
            "dataset": "Ali-CCP",
            "format": "raw",
            "files": [p.name for pair in paths.values() for p in pair],
            "raw_fingerprint": fingerprint([p for pair in paths.values() for p in pair]),
            "requests": offset,
            "val_from": val_from,
            "val_fraction": val_fraction if val_from == "train" else 0.5,
            "seq_len": seq_len,
            "dropped": "click = 0 and buy = 1",
        },
    )


def load_processed(
    processed_dir: str | Path,
    val_from: str = "train",
    val_fraction: float = 0.1,
    dense: bool = False,
    seed: int = 0,
) -> SourceTable:
    """The widely shared 33-column processed CSVs (``*train*.csv``, optional ``*val*.csv``,
    ``*test*.csv``): the same fields without histories and sessions (they were not kept)."""
    _check_split_args(val_from, val_fraction)
    folder = Path(processed_dir)
    if not folder.is_dir():
        raise UserError(f"Ali-CCP processed folder '{folder}' does not exist")

    def one(kind: str, required: bool) -> Path | None:
        found = sorted(p for p in folder.glob(f"*{kind}*.csv") if p.is_file())
        if len(found) > 1:
            raise UserError(
                f"Ali-CCP processed folder '{folder}' has several *{kind}*.csv files "
                f"({', '.join(p.name for p in found)}); keep one"
            )
        if not found and required:
            raise UserError(
                f"Ali-CCP processed folder '{folder}' has no *{kind}*.csv file; expected the "
                "33-column CSVs (click,purchase,101,...,D853), e.g. ali_ccp_train.csv"
            )
        return found[0] if found else None

    files = {"train": one("train", True), "val": one("val", False), "test": one("test", True)}
    parts = []
    for kind, path in files.items():
        if path is None:
            continue
        with open(path, encoding="utf-8") as fh:
            head = [c.strip() for c in fh.readline().strip().split(",")]
        missing = [c for c in PROCESSED_COLUMNS if c not in head]
        if missing:
            raise UserError(
                f"{path.name} is missing column(s) {', '.join(missing)}; expected the 33-column "
                "processed Ali-CCP format"
            )
        scan = pl.scan_csv(path, schema_overrides={c: pl.Int64 for c in (*SPARSE, SCENARIO)})
        scan = scan.filter(~((pl.col("click") == 0) & (pl.col("purchase") == 1)))
        split = pl.lit(kind)
        if files["val"] is None:  # no val file: make one as the raw adapter would
            split = _given(kind, val_from, val_fraction, seed)
        scan = scan.with_row_index("sample_id").with_columns(pl.col("sample_id").cast(pl.Int64))
        parts.append(scan.with_columns(split.alias(GIVEN)))
    fields = _fields(0, dense, "click", None)
    keep = ["click", SCENARIO, GIVEN, *fields.sparse, *fields.dense]
    return SourceTable(
        frame=pl.concat([p.select(keep) for p in parts]),
        fields=fields,
        name="aliccp-processed",
        split="given",
        split_column=GIVEN,
        scenario_prefix="#B",  # 301 is already 1, 2, 3 here: #B1, #B2, #B3
        info={
            "dataset": "Ali-CCP",
            "format": "processed (33 columns)",
            "files": [p.name for p in files.values() if p is not None],
            "raw_fingerprint": fingerprint([p for p in files.values() if p is not None]),
        },
    )
