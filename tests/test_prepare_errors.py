"""`msctr prepare` on bad input: one line naming the problem and the fix, exit code 1, and
nothing of the user's touched -- an existing --out, a Ctrl-C, a full disk, a bad table."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import msctr_process, process_error, run_main, runner

from msctr import io as msctr_io
from msctr.cli import app
from msctr.data.prepare import is_dataset
from msctr.errors import UserError

ROWS = "2000"  # the smallest synthetic size msctr prepares in well under a second


def refused(args: list[str], *words: str) -> str:
    """In-process: the command ends in a one-line UserError (main() prints it, exit 1)."""
    result = runner.invoke(app, args)
    assert isinstance(result.exception, UserError), result.output + repr(result.exception)
    assert result.exit_code == 1
    msg = str(result.exception)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


def ok(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)


def synthetic(out: Path, *extra: str) -> list[str]:
    return ["prepare", "synthetic", "--rows", ROWS, "--out", str(out), *extra]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) with an md5 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def temp_entries(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


def clicks(n: int = 3000, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "click": rng.integers(0, 2, n),
            "tab": rng.integers(0, 3, n),
            "user": rng.integers(0, 50, n),
            "item": rng.integers(0, 90, n),
            "price": rng.normal(5.0, 2.0, n),
        }
    )


def table_args(path: Path, out: Path, *extra: str, dense: bool = True) -> list[str]:
    args = ["prepare", "table", str(path), "--label", "click", "--scenario", "tab"]
    args += ["--sparse", "user,item", "--out", str(out), *extra]
    return args + (["--dense", "price"] if dense else [])


# -- 1. an existing --out ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_folder_of_the_users_files_is_refused_and_kept(tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "thesis.txt").write_text("x\n")
    before = snapshot(tmp_path)
    proc = msctr_process(*synthetic(keep))
    process_error(proc, "--out", "thesis.txt", "--overwrite")
    assert snapshot(tmp_path) == before  # nothing touched, nothing left beside it


def test_a_folder_of_sibling_datasets_is_refused(tmp_path):
    ok(synthetic(tmp_path / "data" / "a"))
    before = snapshot(tmp_path)
    refused(synthetic(tmp_path / "data"), "not part of a prepared dataset", "'a/'")
    assert snapshot(tmp_path) == before


def test_a_file_at_out_is_refused_not_renamed(tmp_path):
    (tmp_path / "notes").write_text("mine\n")
    refused(synthetic(tmp_path / "notes"), "is a file", "--overwrite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]  # no hidden .notes.old
    assert (tmp_path / "notes").read_text() == "mine\n"
    refused(synthetic(tmp_path / "notes" / "sub"), "is a file, not a folder")


def test_a_schema_json_msctr_did_not_write_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "schema.json").write_text('{"fields": []}')
    refused(synthetic(tmp_path / "d"), "schema.json that msctr did not write")


@pytest.mark.parametrize("where", [".", "..", "cwd", "home", "above-home"])
def test_the_current_folder_home_and_their_parents_are_refused_even_with_overwrite(
    tmp_path, monkeypatch, where
):
    home = tmp_path / "home" / "me"
    cwd = home / "work"
    cwd.mkdir(parents=True)
    (cwd / "code.py").write_text("print(1)\n")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    out = {"cwd": str(cwd), "home": str(home), "above-home": str(home.parent)}.get(where, where)
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):
        refused(synthetic(Path(out), *extra), f"--out '{out}'", "folder", "--out data/")
    assert snapshot(tmp_path) == before


def test_out_holding_the_input_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / "in").mkdir()
    clicks().write_csv(tmp_path / "in" / "t.csv")
    before = snapshot(tmp_path)
    for out in (tmp_path / "in", tmp_path / "in" / "t.csv"):
        refused(table_args(tmp_path / "in" / "t.csv", out, "--overwrite"), "the input")
    assert snapshot(tmp_path) == before


def test_a_prepared_dataset_and_an_empty_folder_are_replaced_without_asking(tmp_path):
    out = tmp_path / "syn"
    out.mkdir()
    ok(synthetic(out))  # empty folder: nothing to lose
    first = snapshot(out)
    ok(synthetic(out, "--seed", "1"))  # msctr's own dataset: replaced
    assert snapshot(out) != first
    assert json.loads((out / "schema.json").read_text())["info"]["seed"] == 1
    assert temp_entries(tmp_path, "syn") == []


def test_overwrite_replaces_a_foreign_folder_or_file(tmp_path):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "thesis.txt").write_text("x\n")
    (tmp_path / "notes").write_text("mine\n")
    for name in ("keep", "notes"):
        ok(synthetic(tmp_path / name, "--overwrite"))
        assert (tmp_path / name / "schema.json").is_file()
        assert not (tmp_path / name / "thesis.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep", "notes"]


def test_the_out_check_comes_before_any_expensive_work(tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "thesis.txt").write_text("x\n")
    t0 = time.perf_counter()
    refused(["prepare", "synthetic", "--rows", "5000000", "--out", str(keep)], "thesis.txt")
    assert time.perf_counter() - t0 < 3  # generating 5M rows takes far longer
    # no download is tried before the refusal (this URL would fail with another message)
    args = ["prepare", "kuairand", "--variant", "pure", "--out", str(keep)]
    refused([*args, "--cache-dir", str(tmp_path / "cache")], "thesis.txt")
    refused(["prepare", "aliccp", "--raw-dir", str(tmp_path), "--out", str(keep)], "thesis.txt")
    clicks().write_csv(tmp_path / "t.csv")
    refused(table_args(tmp_path / "t.csv", keep), "thesis.txt")
    assert not (tmp_path / "cache").exists()


# -- 2. NaN and inf in a dense column -------------------------------------------------------------


def test_nan_and_null_are_missing_and_never_poison_the_column(tmp_path):
    frame = clicks()
    price = frame["price"].to_numpy().copy()
    price[[3, 2500, 2900]] = np.nan  # train, val and test rows
    frame = frame.with_columns(price=pl.Series(price)).with_columns(
        pl.when(pl.int_range(pl.len()) == 10).then(None).otherwise(pl.col("price")).alias("price")
    )
    frame.write_parquet(tmp_path / "t.parquet")
    ok(table_args(tmp_path / "t.parquet", tmp_path / "p"))
    text = (tmp_path / "p" / "schema.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    dense = json.loads(text)["dense"][0]
    train_price = price[:2400]
    assert dense["mean"] == pytest.approx(np.nanmean(np.delete(train_price, 10)))
    got = pl.concat([pl.read_parquet(tmp_path / "p" / f"{s}.parquet") for s in ("train", "val")])
    x = got["price"].to_numpy()
    assert np.isfinite(x).all()
    assert x[3] == 0.0 and x[10] == 0.0 and x[2500] == 0.0  # missing -> the training mean
    assert x.std() > 0.5  # the other rows keep their standardized values


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rows", "where", "via_main"), [([7], "1 in train", True), ([2950, 2990], "2 in test", False)]
)
def test_an_infinite_value_is_refused_with_column_count_and_split(tmp_path, rows, where, via_main):
    frame = clicks()
    price = frame["price"].to_numpy().copy()
    price[rows] = [np.inf, -np.inf][: len(rows)]
    frame.with_columns(price=pl.Series(price)).write_parquet(tmp_path / "t.parquet")
    words = ("dense column 'price'", "infinite", where)
    args = table_args(tmp_path / "t.parquet", tmp_path / "p")
    if via_main:
        process_error(msctr_process(*args), *words)
    else:
        refused(args, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


def test_a_dense_column_of_text_is_refused_with_an_example(tmp_path):
    frame = clicks().with_columns(pl.col("price").cast(pl.String))
    frame[1500, "price"] = "n/a?"
    frame.write_csv(tmp_path / "t.csv")
    refused(table_args(tmp_path / "t.csv", tmp_path / "p"), "'price'", "not numbers", "'n/a?'")
    assert not (tmp_path / "p").exists()


# -- 4. Ctrl-C and what a killed run left behind ----------------------------------------------


@pytest.fixture
def busy_machine():
    """Two processes spinning on the CPU while the test runs, as other jobs would: the
    interrupted process is descheduled at odd moments, where races show."""
    # spinning until done, or until pytest itself is gone (killed, so no finally ran)
    spin = [sys.executable, "-c", "import os\np = os.getppid()\nwhile os.getppid() == p: pass"]
    procs = [subprocess.Popen(spin) for _ in range(2)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


PREPARE_ROWS = "30000"  # about a second: every phase of a prepare, long enough to aim at


def handles_sigterm(pid: int) -> bool:
    """Whether the process has its own SIGTERM handler: msctr's entry point installs it
    together with SIGINT's, before its imports (Python itself catches SIGINT only)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def interrupted_prepare(folder: Path, when) -> tuple[subprocess.CompletedProcess, float]:
    """`msctr prepare synthetic --out folder/X` through the real entry point, sent SIGINT
    once `when(seconds since msctr's handler is in)` is true (polled every 2 ms); with the
    seconds from the handler to the end. Interrupts before the handler land in the
    interpreter's own start, which no program can make quiet."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "msctr", "prepare", "synthetic", "--rows", PREPARE_ROWS]
        + ["--out", str(folder / "X")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    while proc.poll() is None and not handles_sigterm(proc.pid):
        time.sleep(0.001)
    start = time.monotonic()
    while proc.poll() is None and not when(time.monotonic() - start):
        time.sleep(0.002)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    return done, time.monotonic() - start


def temp_appeared(folder: Path, with_content: bool):
    def when(_: float) -> bool:
        tmp = [p for p in folder.iterdir() if p.name.startswith(".X.") and p.is_dir()]
        return bool(tmp) and (not with_content or any(any(p.iterdir()) for p in tmp))

    return when


@pytest.mark.slow
@pytest.mark.parametrize("old_dataset", [False, True], ids=["new", "replacing"])
def test_ctrl_c_at_any_moment_leaves_nothing_behind(tmp_path, old_dataset, busy_machine):
    """Ctrl-C at 7 moments of one `prepare`, with the machine busy: 5 spread over the whole
    run from the moment msctr's handler is in, the instant its temporary folder appears (the
    mkdir/cleanup race of issue 22), and once a split is being written into it.
    Every time: no temporary file or folder, exit 130 (or 0 when the run had finished) with
    one line, and X is either what it was before or
    the whole new dataset."""
    if old_dataset:
        ok(synthetic(tmp_path / "old"))
    whole, duration = interrupted_prepare(tmp_path / "timing", lambda _: False)
    assert whole.returncode == 0, whole.stderr
    spread = [k * duration / 4 for k in range(5)]
    moments = [lambda folder, d=d: lambda t: t >= d for d in spread]
    moments += [
        lambda folder: temp_appeared(folder, False),
        lambda folder: temp_appeared(folder, True),
    ]
    for i, moment in enumerate(moments):
        folder = tmp_path / f"try{i}"
        folder.mkdir()
        if old_dataset:  # a smaller one than the new: a mix of the two would show
            shutil.copytree(tmp_path / "old", folder / "X")
        before = snapshot(folder)
        proc, _ = interrupted_prepare(folder, moment(folder))
        where = f"moment {i}: {proc.stderr}"
        assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == [], where
        assert proc.returncode in (0, 130), where
        assert "Traceback" not in proc.stderr, where
        if proc.returncode == 130:
            assert proc.stderr.strip().startswith("interrupted (SIGINT)"), where
        if snapshot(folder) != before:  # the old dataset intact, or no X at all, unless ...
            # ... the signal came after the new dataset was swapped in: then X is that one
            new = is_dataset(folder / "X") and schema_rows(folder / "X") == int(PREPARE_ROWS)
            assert new, where


def test_an_interrupt_right_after_the_mkdir_removes_the_folder(tmp_path, monkeypatch):
    """The race issue 22 found: a signal handled the instant the temporary folder exists,
    before any cleanup was armed. Both temporary folders of prepare are removed."""
    real = Path.mkdir

    def mkdir_then_interrupted(self: Path, *args, **kwargs) -> None:
        real(self, *args, **kwargs)
        if self.name.endswith(".tmp"):
            raise KeyboardInterrupt

    monkeypatch.setattr(Path, "mkdir", mkdir_then_interrupted)
    for make in (msctr_io.atomic_dir, msctr_io.scratch_dir):
        with pytest.raises(KeyboardInterrupt):
            with make(tmp_path / "X"):
                pass
        assert list(tmp_path.iterdir()) == [], make.__name__


def _polars_panic() -> BaseException:
    from polars.exceptions import PanicException

    return PanicException("python exception in collect_schema")


@pytest.mark.parametrize(
    "library_error",
    [lambda: TypeError("'<unprintable str object>' is not a Polars data type"), _polars_panic],
    ids=["error", "panic"],
)
def test_an_interrupt_a_library_reports_as_its_own_error_is_still_one_line(
    tmp_path, capsys, monkeypatch, library_error
):
    """Polars, calling back into Python just as the handler raised, reported a Ctrl-C as
    "TypeError: '<unprintable str object>' is not a Polars data type" (once in the 50 runs of
    the test above), or panicked (a PanicException, which is a BaseException, seen once in
    collect_schema): after a signal, whatever error follows is that interrupt."""
    from msctr.data.sources import synthetic as source

    def generate(**kwargs):
        try:
            signal.raise_signal(signal.SIGINT)  # the CLI's handler raises here ...
        except BaseException:  # ... and the native library reports an error of its own
            raise library_error() from None
        raise AssertionError("the handler did not run")

    monkeypatch.setattr(source, "generate", generate)
    code, _, err = run_main(capsys, *synthetic(tmp_path / "X"))
    assert code == 130
    assert err.strip() == "interrupted (SIGINT): no file was left half-written"
    assert list(tmp_path.iterdir()) == []


def test_the_cli_removes_a_temporary_folder_whose_cleanup_never_ran(tmp_path, capsys):
    """An interrupt inside a context manager's own machinery can skip its cleanup; the entry
    point removes on its way out whatever temporary path of this process is still there."""
    held = msctr_io.atomic_dir(tmp_path / "X")
    tmp = held.__enter__()  # entered, never exited: as if __exit__ had been skipped
    (tmp / "train.parquet").write_bytes(b"partial")
    code, _, _ = run_main(
        capsys, "prepare", "synthetic", "--rows", ROWS, "--out", str(tmp_path / "Y")
    )
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Y"]


def schema_rows(folder: Path) -> int:
    return sum(json.loads((folder / "schema.json").read_text())["rows"].values())


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_next_run_sweeps_what_a_killed_run_left(tmp_path):
    pid = dead_pid()
    stale = [tmp_path / f".X.{pid}-0badc0de.tmp", tmp_path / f".X.work.{pid}-0badc0de.tmp"]
    for d in stale:
        d.mkdir()
        (d / "train.parquet").write_bytes(b"PAR1 half a file")
    live = tmp_path / f".X.{os.getpid()}-0123abcd.tmp"  # a running process's: not ours to take
    live.mkdir()
    other = tmp_path / f".Y.{pid}-0badc0de.tmp"  # another output's: swept by its own runs
    other.mkdir()
    ok(synthetic(tmp_path / "X"))
    assert not any(d.exists() for d in stale)
    assert live.is_dir() and other.is_dir()


def test_cleanup_survives_the_second_interrupt_of_one_ctrl_c(tmp_path, monkeypatch):
    """Polars raises KeyboardInterrupt for a Ctrl-C and Python's handler raises again at the
    next call, inside the cleanup: the removal is retried, and the interrupt still ends the run."""
    real = msctr_io._discard
    calls: list[Path] = []

    def interrupted_once(path: Path) -> None:
        calls.append(path)
        if len(calls) == 1:
            raise KeyboardInterrupt
        real(path)

    monkeypatch.setattr(msctr_io, "_discard", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        with msctr_io.atomic_dir(tmp_path / "X") as tmp:
            (tmp / "train.parquet").write_bytes(b"partial")
            raise KeyboardInterrupt
    assert len(calls) >= 2  # interrupted once, then done again
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_between_the_two_renames_puts_the_old_dataset_back(tmp_path, monkeypatch):
    (tmp_path / "X").mkdir()
    (tmp_path / "X" / "schema.json").write_text("old")
    real = Path.rename
    moves: list[str] = []

    def rename(self: Path, target):
        moves.append(self.name)
        if len(moves) == 2:  # X -> old done; Ctrl-C before the new one moves into place
            raise KeyboardInterrupt
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        with msctr_io.atomic_dir(tmp_path / "X") as tmp:
            (tmp / "schema.json").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["X"]
    assert (tmp_path / "X" / "schema.json").read_text() == "old"


# -- 5. labels, empty and broken tables, a full disk, a read-only folder ----------------------


@pytest.mark.parametrize("kind", ["float", "bool"])
def test_float_and_boolean_labels_are_ordinary_encodings(tmp_path, kind):
    frame = clicks()
    frame.write_csv(tmp_path / "int.csv")
    label = pl.col("click").cast(pl.Float64) if kind == "float" else pl.col("click") == 1
    frame.with_columns(label.alias("click")).write_csv(tmp_path / "t.csv")
    if kind == "bool":
        assert "true" in (tmp_path / "t.csv").read_text()[:200]
    ok(table_args(tmp_path / "int.csv", tmp_path / "a"))
    ok(table_args(tmp_path / "t.csv", tmp_path / "b"))
    for split in ("train", "test"):
        a = pl.read_parquet(tmp_path / "a" / f"{split}.parquet")["label"]
        b = pl.read_parquet(tmp_path / "b" / f"{split}.parquet")["label"]
        assert b.dtype == pl.Int8 and a.equals(b)


@pytest.mark.slow
def test_text_labels_are_one_line(tmp_path):
    frame = clicks().with_columns(
        pl.when(pl.col("click") == 1).then(pl.lit("yes")).otherwise(pl.lit("no")).alias("click")
    )
    frame.write_csv(tmp_path / "t.csv")
    proc = msctr_process(*table_args(tmp_path / "t.csv", tmp_path / "p"))
    process_error(proc, "label column 'click'", "3000 value(s) outside {0, 1}", "'yes'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


@pytest.mark.parametrize(("value", "shown"), [(0.5, "0.5"), (2.0, "2.0"), (None, "None")])
def test_other_label_values_name_count_and_example(tmp_path, value, shown):
    frame = clicks().with_columns(pl.col("click").cast(pl.Float64))
    frame[[5, 9], "click"] = value
    frame.write_parquet(tmp_path / "t.parquet")
    refused(table_args(tmp_path / "t.parquet", tmp_path / "p"), "2 value(s)", f"e.g. {shown}")


def test_a_header_only_csv_has_no_rows(tmp_path):
    clicks().head(0).write_csv(tmp_path / "t.csv")
    refused(table_args(tmp_path / "t.csv", tmp_path / "p"), "has no rows")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def write_broken(tmp_path: Path, kind: str) -> Path:
    frame = clicks(20_000)
    if kind.endswith("parquet"):
        path = tmp_path / "t.parquet"
        frame.write_parquet(path, row_group_size=2000)
        data = bytearray(path.read_bytes())
        if kind == "truncated parquet":
            del data[len(data) // 2 :]
        else:  # corrupted: compressed data pages overwritten in the middle of the file
            data[len(data) // 4 : len(data) // 4 + 2000] = b"\x55" * 2000
        path.write_bytes(bytes(data))
    else:
        path = tmp_path / "t.csv"
        frame.write_csv(path)
        text = path.read_bytes()
        if kind == "truncated csv":  # cut inside the last row's second field
            cut = text.rindex(b"\n", 0, len(text) // 2) + 3
            path.write_bytes(text[:cut])
        elif kind == "binary csv":
            path.write_bytes(bytes(range(256)) * 40)
        else:  # empty
            path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("truncated parquet", ("unreadable", "check that the file is complete")),
        ("corrupted parquet", ("unreadable", "check that the file is complete")),
        ("truncated csv", ("cut off", "2 of 5 fields")),
        ("binary csv", ("not a UTF-8 text file",)),
        ("empty csv", ("unreadable",)),
    ],
)
def test_a_truncated_or_corrupted_table_is_one_line(tmp_path, kind, words):
    path = write_broken(tmp_path, kind)
    refused(table_args(path, tmp_path / "p"), str(path.name), *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    ok(synthetic(tmp_path / "X"))
    before = snapshot(tmp_path)
    real = pl.LazyFrame.sink_parquet

    def full(self, path, *args, **kwargs):
        if Path(path).name == "val.parquet":  # train written, then the disk fills up
            raise pl.exceptions.ComputeError(
                "parquet: File out of specification: underlying IO error: "
                "No space left on device (os error 28)"
            )
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pl.LazyFrame, "sink_parquet", full)
    refused(synthetic(tmp_path / "X", "--seed", "2"), "no space left", "free space")
    assert snapshot(tmp_path) == before


def test_a_read_only_output_folder_is_one_line(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: refuse as the file system would a user
        real = os.mkdir

        def mkdir(path, *args, **kwargs):
            if Path(path).parent == ro:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
    try:
        refused(synthetic(ro / "d"), "no permission to write", "choose a folder")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_scenario_nulls_are_refused_and_odd_columns_work(tmp_path):
    frame = clicks()
    frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 11).then(None).otherwise(pl.col("tab")).alias("tab")
    ).write_parquet(tmp_path / "nulls.parquet")
    refused(table_args(tmp_path / "nulls.parquet", tmp_path / "p"), "'tab'", "1 missing")
    # an all-null sparse column, and a scenario with no rows in val/test: prepared, no crash
    odd = frame.with_columns(item=pl.lit(None, pl.Int64))
    odd = odd.with_columns(tab=pl.when(pl.int_range(pl.len()) < 50).then(9).otherwise("tab"))
    odd.write_parquet(tmp_path / "odd.parquet")
    ok(table_args(tmp_path / "odd.parquet", tmp_path / "q"))
    schema = json.loads((tmp_path / "q" / "schema.json").read_text())
    assert schema["scenario_names"] == ["0", "1", "2", "9"]
    assert schema["scenario_counts"]["test"][3] == 0
    assert {f["name"]: f["vocab_size"] for f in schema["sparse"]}["item"] == 2  # OOV + null


# -- 7. one column, one role; permissions --------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--sparse", "user,item,user"], ("'user'", "listed twice")),
        (["--sparse", "user,item", "--dense", "item"], ("'item'", "sparse", "dense")),
        (["--scenario", "click"], ("label column 'click'", "scenario")),
        (["--sparse", "user,click"], ("label column 'click'", "sparse")),
        (["--dense", "price,click"], ("label column 'click'", "dense")),
        (["--user", "click"], ("label column 'click'", "user")),
    ],
)
def test_one_column_one_role(tmp_path, extra, words):
    clicks().write_csv(tmp_path / "t.csv")
    args = ["prepare", "table", str(tmp_path / "t.csv"), "--label", "click"]
    args += ["--scenario", "tab", "--sparse", "user,item", "--out", str(tmp_path / "p")]
    refused(args + extra, *words)  # a repeated option: the later value counts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_a_repeated_csv_header_and_a_reserved_name_are_refused(tmp_path):
    (tmp_path / "dup.csv").write_text("click,tab,user,user\n1,0,3,4\n0,1,5,6\n")
    args = ["prepare", "table", str(tmp_path / "dup.csv"), "--label", "click", "--scenario"]
    refused([*args, "tab", "--sparse", "user", "--out", str(tmp_path / "p")], "'user' twice")
    clicks().rename({"item": "scenario"}).write_csv(tmp_path / "t.csv")
    args = ["prepare", "table", str(tmp_path / "t.csv"), "--label", "click", "--scenario"]
    refused([*args, "tab", "--sparse", "scenario", "--out", str(tmp_path / "p")], "'scenario'")


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_outputs_follow_the_users_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        ok(synthetic(tmp_path / "X"))
    finally:
        os.umask(old)
    assert (tmp_path / "X").stat().st_mode & 0o777 == 0o777 & ~umask
    for p in (tmp_path / "X").iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p.name
