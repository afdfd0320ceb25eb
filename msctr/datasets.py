"""`msctr prepare <dataset>`: each dataset's command, what the CLI calls: check the arguments
(before a download or a generator's minutes), read or generate the source
(`msctr.data.sources`), prepare it (`msctr.data.prepare`) and print the rows and CTR per
scenario."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from msctr.data.schema import Schema
from msctr.errors import UserError

# the generated table alone holds about 530 bytes a row (39 columns, behavior sequences
# included; measured at 20k and 40k rows), and generating it needs more at its peak
SYNTHETIC_ROW_BYTES = 500


def run_prepare_synthetic(
    out: Path,
    rows: int,
    scenarios: int,
    seed: int,
    structure: str | None,
    min_count: int,
    overwrite: bool,
    console: Console,
) -> None:
    """`msctr prepare synthetic`: generate planted-signal data (known click probabilities) and
    prepare it; the arguments are checked before the generator's minutes, not after."""
    from msctr.data.planted.structures import STRUCTURES
    from msctr.data.prepare import check_min_count, check_out, prepare
    from msctr.data.sources.synthetic import generate
    from msctr.resources import need_memory

    if rows < 1000:
        raise UserError(f"--rows must be at least 1000 (got {rows}) so every split has rows")
    need_memory(rows * SYNTHETIC_ROW_BYTES, f"--rows {rows}", "generate fewer rows")
    if scenarios < 1:
        raise UserError(f"--scenarios must be at least 1 (got {scenarios})")
    if structure is not None and structure not in STRUCTURES:
        raise UserError(
            f"--structure {structure!r} is not one of {', '.join(STRUCTURES)}; "
            "leave it out for the default data"
        )
    check_min_count(min_count)
    check_out(out, overwrite)  # before the generator's minutes, not after
    with console.status("generating and preparing synthetic data"):
        table = generate(rows=rows, scenarios=scenarios, seed=seed, structure=structure)
        schema = prepare(table, out, seed=seed, min_count=min_count, overwrite=overwrite)
    report_prepared(schema, out, console)


def run_prepare_table(
    path: Path,
    label: str,
    scenario: str,
    sparse: str,
    out: Path,
    dense: str,
    user: str | None,
    session: str | None,
    order: str | None,
    split: str,
    seed: int,
    min_count: int,
    overwrite: bool,
    console: Console,
) -> None:
    """`msctr prepare table`: any CSV or Parquet table, given its field map."""
    from msctr.data.prepare import check_min_count, check_out, prepare
    from msctr.data.sources.table import read_table

    check_min_count(min_count)
    check_out(out, overwrite, inputs=(path,))
    table = read_table(
        path,
        label=label,
        scenario=scenario,
        sparse=sparse,
        dense=dense,
        user=user,
        session=session,
        order=order,
        split=split,
    )
    schema = prepare(
        table, out, seed=seed, min_count=min_count, materialize=True, overwrite=overwrite
    )
    report_prepared(schema, out, console)


def run_prepare_kuairand(
    variant: str,
    raw_dir: Path | None,
    out: Path | None,
    setup: str,
    seq_len: int,
    seq_fields: str,
    session_gap: int,
    order: str,
    seed: int,
    cache_dir: Path | None,
    min_count: int,
    overwrite: bool,
    console: Console,
) -> None:
    """`msctr prepare kuairand`: KuaiRand from its owners' files (downloaded when `raw_dir` is
    None), in the HierRec or Scenario-Wise Rec setup."""
    from msctr.data.download import cache_root, fetch
    from msctr.data.prepare import check_min_count, check_out, prepare
    from msctr.data.sources import kuairand
    from msctr.io import os_errors, scratch_dir

    if variant not in kuairand.VARIANTS:
        raise UserError(f"--variant must be one of {', '.join(kuairand.VARIANTS)}, got {variant!r}")
    check_min_count(min_count)
    out = out or Path(f"data/kuairand-{variant}-{setup}")
    # before a download, not after
    check_out(out, overwrite, inputs=(raw_dir, cache_root(cache_dir)))
    archive_md5 = None
    if raw_dir is None:
        archive = kuairand.archive(variant)
        with console.status(f"fetching {archive.filename}") as status:

            def progress(done: int, total: int | None) -> None:
                size = f" of {total / 1e6:,.0f}" if total else ""
                status.update(f"downloading {archive.filename}: {done / 1e6:,.0f}{size} MB")

            raw_dir = fetch(archive, cache_dir, progress=progress)
        archive_md5 = archive.md5
    fields = tuple(c.strip() for c in seq_fields.split(",") if c.strip())
    with os_errors("prepare"), scratch_dir(out) as work:
        with console.status(f"reading KuaiRand-{variant} and preparing ({setup})"):
            table = kuairand.load(
                raw_dir,
                variant=variant,
                setup=setup,
                seq_len=seq_len,
                seq_fields=fields,
                session_gap=session_gap,
                order=order,
                archive_md5=archive_md5,
                work_dir=work,
            )
            schema = prepare(table, out, seed=seed, min_count=min_count, overwrite=overwrite)
    report_prepared(schema, out, console)


def run_prepare_aliccp(
    raw_dir: Path | None,
    processed_dir: Path | None,
    out: Path,
    val_from: str,
    val_fraction: float,
    seq_len: int,
    dense: bool,
    seed: int,
    min_count: int,
    overwrite: bool,
    console: Console,
) -> None:
    """`msctr prepare aliccp`: Ali-CCP from the raw Tianchi files (streamed), or from the
    processed 33-column CSVs."""
    from msctr.data.prepare import check_min_count, check_out, prepare
    from msctr.data.sources import aliccp
    from msctr.io import os_errors, scratch_dir

    if (raw_dir is None) == (processed_dir is None):
        raise UserError("give exactly one of --raw-dir (raw Ali-CCP files) or --processed-dir")
    check_min_count(min_count)
    check_out(out, overwrite, inputs=(raw_dir, processed_dir))
    with os_errors("prepare"), scratch_dir(out) as work:
        with console.status("reading Ali-CCP and preparing"):
            if raw_dir is not None:
                table = aliccp.load(
                    raw_dir,
                    seq_len=seq_len,
                    val_from=val_from,
                    val_fraction=val_fraction,
                    dense=dense,
                    seed=seed,
                    work_dir=work,
                )
                schema = prepare(table, out, seed=seed, min_count=min_count, overwrite=overwrite)
            else:
                table = aliccp.load_processed(
                    processed_dir,
                    val_from=val_from,
                    val_fraction=val_fraction,
                    dense=dense,
                    seed=seed,
                )
                schema = prepare(
                    table,
                    out,
                    seed=seed,
                    min_count=min_count,
                    materialize=True,
                    overwrite=overwrite,
                )
    report_prepared(schema, out, console)


def report_prepared(schema: Schema, out: Path, console: Console) -> None:
    print_scenario_stats(schema, console)
    console.print(f"[green]wrote[/] {escape(str(out))}")


def print_scenario_stats(schema: Schema, console: Console) -> None:
    table = Table(title=Text(f"{schema.source}: rows and CTR per scenario"), header_style="bold")
    table.add_column("scenario")
    for split in ("train", "val", "test"):
        table.add_column(f"{split} rows", justify="right")
        table.add_column(f"{split} CTR", justify="right")
    for k, name in enumerate(schema.scenario_names):
        cells = [Text(name)]  # the data's own names, printed literally
        for split in ("train", "val", "test"):
            n, c = schema.scenario_counts[split][k], schema.scenario_clicks[split][k]
            cells += [f"{n:,}", f"{c / n:.4f}" if n else "-"]
        table.add_row(*cells)
    totals = ["all"]
    for split in ("train", "val", "test"):
        n = schema.rows[split]
        totals += [f"{n:,}", f"{sum(schema.scenario_clicks[split]) / n:.4f}"]
    table.add_row(*totals, style="bold")
    console.print(table)
    console.print(
        f"{len(schema.sparse)} sparse, {len(schema.dense)} dense, "
        f"{len(schema.sequences)} sequence field(s); {schema.num_partitions - 1} partitions"
    )
