"""The `msctr` command line: parse, call one function, render with rich."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from msctr.errors import (
    Interrupted,
    RankError,
    UserError,
    forget_interrupts,
    handle_interrupts,
    interrupt_received,
    interrupted_line,
)
from msctr.io import discard_pending
from msctr.train.launch import resumable

try:  # typer 0.2x carries its own copy of click
    from typer._click.exceptions import UsageError as UsageError
except ImportError:  # older typer uses click itself
    from click.exceptions import UsageError as UsageError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    help="Multi-scenario CTR research end to end: prepare, train, eval, ablate, sweep, "
    "tune, predict, export, bench-inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
prepare_app = typer.Typer(
    help="Turn a dataset into the prepared format (Parquet splits + schema.json).",
    no_args_is_help=True,
)
app.add_typer(prepare_app, name="prepare")


@app.callback()
def _width() -> None:
    # outside a terminal (logs, CI) rich would wrap tables at 80 columns: 200 unless COLUMNS
    # says otherwise (read per command, so that a test's COLUMNS counts)
    if not sys.stdout.isatty():
        columns = os.environ.get("COLUMNS", "")
        console.width = int(columns) if columns.isdigit() else 200


Sets = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe key, e.g. --set train.lr=0.002 (repeatable)."),
]


def seed_option(help: str) -> typer.models.OptionInfo:
    """A random seed: the generators take an unsigned 32-bit seed (numpy's, Polars' shuffle),
    so a negative or larger one is refused as a bad option value, before any work."""
    return typer.Option(help=help, min=0, max=2**32 - 1)


Fresh = Annotated[
    bool,
    typer.Option(
        "--fresh",
        help="Start over: remove the run folder's runs instead of keeping finished ones and "
        "resuming the interrupted one.",
    ),
]


MinCount = Annotated[
    int,
    typer.Option(
        help="Values seen fewer times than this in the training split share the "
        "out-of-vocabulary id with values never seen there (1: keep every value)."
    ),
]

Overwrite = Annotated[
    bool,
    typer.Option(
        help="Replace --out even when it is not a dataset msctr prepared (never '.', home, "
        "the input, or a folder holding one of them)."
    ),
]


@prepare_app.command("synthetic")
def prepare_synthetic(
    out: Annotated[Path, typer.Option(help="Folder to write the prepared dataset to.")] = Path(
        "data/synthetic"
    ),
    rows: Annotated[int, typer.Option(help="Number of impressions to generate.")] = 200_000,
    scenarios: Annotated[int, typer.Option(help="Number of explicit scenarios.")] = 5,
    seed: Annotated[int, seed_option("Random seed of the generator.")] = 0,
    structure: Annotated[
        str | None,
        typer.Option(
            help="Plant one paper's mechanism structure instead of the default click model's: "
            "hierrec (implicit sub-scenarios), sfpnet (scenario-dependent sequence and field "
            "importance), hmdn (nested partitions and clusters) or none (the negative "
            "control). Left out: the default data. See docs/synthetic.md."
        ),
    ] = None,
    min_count: MinCount = 1,
    overwrite: Overwrite = False,
) -> None:
    """Generate planted-signal data (known click probabilities) and prepare it.

    Example: msctr prepare synthetic --out data/synthetic --rows 200000 --scenarios 5 --seed 0

    Example: msctr prepare synthetic --out data/mechanisms/hierrec --rows 60000 --structure hierrec
    """
    from msctr.datasets import run_prepare_synthetic

    run_prepare_synthetic(out, rows, scenarios, seed, structure, min_count, overwrite, console)


@prepare_app.command("table")
def prepare_table(
    path: Annotated[
        Path, typer.Argument(help="A CSV or Parquet file with one row per impression.")
    ],
    label: Annotated[str, typer.Option(help="Label column (values 0/1).")],
    scenario: Annotated[str, typer.Option(help="Scenario column.")],
    sparse: Annotated[str, typer.Option(help="Comma-separated categorical columns.")],
    out: Annotated[Path, typer.Option(help="Folder to write the prepared dataset to.")],
    dense: Annotated[str, typer.Option(help="Comma-separated numeric columns.")] = "",
    user: Annotated[str | None, typer.Option(help="User column (GAUC groups).")] = None,
    session: Annotated[str | None, typer.Option(help="Session column (S-GAUC groups).")] = None,
    order: Annotated[str | None, typer.Option(help="Column giving log order.")] = None,
    split: Annotated[str, typer.Option(help="sequential | random")] = "sequential",
    seed: Annotated[int, seed_option("Seed for a random split.")] = 0,
    min_count: MinCount = 1,
    overwrite: Overwrite = False,
) -> None:
    """Prepare any table given a field map.

    Example: msctr prepare table clicks.csv --label click --scenario tab --sparse user,item,cat
    --dense price --user user --order ts --out data/mine
    """
    from msctr.datasets import run_prepare_table

    run_prepare_table(
        path, label, scenario, sparse, out, dense, user, session, order, split, seed,
        min_count, overwrite, console,
    )  # fmt: skip


@prepare_app.command("kuairand")
def prepare_kuairand(
    variant: Annotated[str, typer.Option(help="pure | 1k | 27k")] = "1k",
    raw_dir: Annotated[
        Path | None,
        typer.Option(help="Unpacked archive folder; without it the archive is downloaded."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default data/kuairand-<variant>-<setup>).")
    ] = None,
    setup: Annotated[str, typer.Option(help="hierrec | scenario-wise")] = "hierrec",
    seq_len: Annotated[int, typer.Option(help="Clicks per behavior sequence; 0: none.")] = 50,
    seq_fields: Annotated[
        str, typer.Option(help="Attributes of each clicked video, video_id first.")
    ] = "video_id,video_type",
    session_gap: Annotated[
        int, typer.Option(help="Minutes of inactivity that end a session; 0: user x date.")
    ] = 0,
    order: Annotated[str, typer.Option(help="Row order of the split: log | time.")] = "log",
    seed: Annotated[int, seed_option("Seed of the random split (scenario-wise).")] = 0,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Download cache (default $MSCTR_CACHE or ~/.cache/msctr).")
    ] = None,
    min_count: MinCount = 1,
    overwrite: Overwrite = False,
) -> None:
    """KuaiRand from the files its owners publish, in the HierRec or Scenario-Wise Rec setup.

    Example: msctr prepare kuairand --variant 1k --setup hierrec --out data/kuairand-1k
    """
    from msctr.datasets import run_prepare_kuairand

    run_prepare_kuairand(
        variant, raw_dir, out, setup, seq_len, seq_fields, session_gap, order, seed, cache_dir,
        min_count, overwrite, console,
    )  # fmt: skip


@prepare_app.command("aliccp")
def prepare_aliccp(
    raw_dir: Annotated[
        Path | None, typer.Option(help="Folder of the four raw Ali-CCP CSV files.")
    ] = None,
    processed_dir: Annotated[
        Path | None, typer.Option(help="Folder of the 33-column processed CSVs instead.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("data/aliccp"),
    val_from: Annotated[
        str, typer.Option(help="train: 10% of raw train | test: half of raw test.")
    ] = "train",
    val_fraction: Annotated[float, typer.Option(help="Share of raw train for val.")] = 0.1,
    seq_len: Annotated[int, typer.Option(help="Entries kept per history; 0: none.")] = 20,
    dense: Annotated[bool, typer.Option(help="Add the D-value columns as dense inputs.")] = False,
    seed: Annotated[int, seed_option("Seed of the val split.")] = 0,
    min_count: MinCount = 1,
    overwrite: Overwrite = False,
) -> None:
    """Ali-CCP from the raw Tianchi files (streamed), or from the processed 33-column CSVs.

    Example: msctr prepare aliccp --raw-dir ~/data/ali-ccp --out data/aliccp
    """
    from msctr.datasets import run_prepare_aliccp

    run_prepare_aliccp(
        raw_dir, processed_dir, out, val_from, val_fraction, seq_len, dense, seed, min_count,
        overwrite, console,
    )  # fmt: skip


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    set_: Sets = None,
    smoke: Annotated[bool, typer.Option(help="A few batches, one seed, small eval.")] = False,
    evaluate: Annotated[bool, typer.Option("--eval/--no-eval", help="Evaluate when done.")] = True,
    fresh: Fresh = False,
    nproc: Annotated[
        int,
        typer.Option(
            help="Train each run data-parallel in this many processes on this machine: "
            "starts `torchrun --nproc-per-node N -m msctr train ...` (docs/distributed.md)."
        ),
    ] = 1,
    log: Annotated[
        list[str] | None,
        typer.Option(
            help="Also log each epoch's figures to tensorboard or mlflow (repeatable, or "
            "comma-separated); replaces the recipe's train.log (docs/tracking.md)."
        ),
    ] = None,
) -> None:
    """Train every model of a recipe over its seeds, then evaluate. Resumes by default:
    finished runs in the run folder are kept, an interrupted one continues from its last epoch.

    Example: msctr train recipes/synthetic/table.yaml --set train.seeds=[0,1,2]

    Example: msctr train recipes/synthetic/table.yaml --log tensorboard --log mlflow
    """
    from msctr.evaluate.report import render_table, summarize
    from msctr.recipe import load_recipe
    from msctr.train.loop import train_recipe

    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}")
    if log is not None:  # as train.log, checked by the recipe's rules
        trackers = [k.strip() for item in log for k in item.split(",") if k.strip()]
        set_ = [*(set_ or []), f"train.log=[{','.join(trackers)}]"]
    r = load_recipe(recipe, set_ or [], smoke=smoke)  # a bad recipe fails here, once
    if nproc > 1:
        from msctr.train.launch import launch_workers

        with resumable():  # a stop of any of its processes is reported here, once
            raise typer.Exit(launch_workers(nproc))
    with resumable():
        run_dir = train_recipe(r, console, fresh=fresh)
    if _rank() != 0:  # data parallel: rank 0 reports
        return
    console.print(f"[green]runs in[/] {escape(str(run_dir))}")
    if evaluate:
        render_table(summarize(run_dir), console)
        _wrote_results(run_dir)


def _rank() -> int:
    """This process's rank under torchrun (0 alone)."""
    return int(os.environ.get("RANK", "0"))


def _wrote_results(run_dir: Path) -> None:
    from msctr.runs import RunFolder

    folder = RunFolder(run_dir)
    console.print(f"wrote {escape(str(folder.results))} and {escape(str(folder.report))}")


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A run folder made by `msctr train`.")],
    partial: Annotated[
        bool,
        typer.Option(help="Evaluate although some seeds' runs are missing (named in the output)."),
    ] = False,
    data: Annotated[
        Path | None,
        typer.Option(help="The prepared dataset, if it moved since training."),
    ] = None,
) -> None:
    """Metrics, seed statistics and significance for a finished run.

    Example: msctr eval runs/synthetic-table
    """
    from msctr.evaluate.report import render_table, summarize

    if not run_dir.is_dir():
        raise UserError(f"run folder '{run_dir}' does not exist; train a recipe first")
    render_table(summarize(run_dir, partial=partial, data=data), console)
    _wrote_results(run_dir)


@app.command()
def ablate(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    drop: Annotated[
        list[str] | None,
        typer.Option(
            help="Switch to turn off (repeatable); 'a+b' drops both in one variant; "
            "'all' runs every switch."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Which of the recipe's models (default: the last one with switches)."),
    ] = None,
    with_baselines: Annotated[
        bool,
        typer.Option(
            help="Also train the recipe's other models, each compared with the full model "
            "like the variants (the mechanism recipes' strongest baseline)."
        ),
    ] = False,
    set_: Sets = None,
    smoke: Annotated[bool, typer.Option(help="A few batches, one seed, small eval.")] = False,
    fresh: Fresh = False,
) -> None:
    """Switch a model's named parts off and compare each variant with the full model.
    Resumes like `train`: each variant is a run of the ablation's run folder.

    Example: msctr ablate recipes/synthetic/sfpnet.yaml --drop rtm --drop sam

    Example: msctr ablate recipes/mechanisms/hierrec.yaml --drop all --with-baselines
    """
    from msctr.ablate import run_ablation
    from msctr.recipe import load_recipe

    r = load_recipe(recipe, set_ or [], smoke=smoke)
    with resumable():
        run_ablation(r, drop or [], model, console, with_baselines, fresh=fresh)


@app.command()
def sweep(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    vary: Annotated[
        str,
        typer.Option(
            help="KEY=V1,V2,...: a dotted recipe key and its values, as YAML scalars, e.g. "
            "models.HierRec.params.heads=1,2,4,8 or train.lr=1e-4,1e-3,1e-2."
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            help="Which of the recipe's models (needed when it has several and KEY "
            "does not name one as models.<index or label>)."
        ),
    ] = None,
    set_: Sets = None,
    smoke: Annotated[bool, typer.Option(help="A few batches, one seed, small eval.")] = False,
    fresh: Fresh = False,
) -> None:
    """Train one model at each value of one hyperparameter over the recipe's seeds: a table
    (AUC ± std, Logloss, p vs the best value), sweep.png and report.md. Resumes like
    `train`: each value is a run folder of the sweep's.

    Example: msctr sweep recipes/synthetic/hierrec.yaml --vary models.HierRec.params.heads=1,2,4,8
    """
    from msctr.recipe import load_recipe
    from msctr.sweep import run_sweep

    r = load_recipe(recipe, set_ or [], smoke=smoke)
    with resumable():
        run_sweep(r, vary, model, console, fresh=fresh)


@app.command()
def tune(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file with a `search:` space.")],
    sampler: Annotated[
        str, typer.Option(help="tpe (Optuna's TPE) or grid (every point of the space).")
    ] = "tpe",
    trials: Annotated[
        int | None,
        typer.Option(
            help="Trials each model's study should reach, finished, pruned or failed by diverging "
            "(default: 20 for tpe, the whole grid for grid). A rerun continues the study "
            "up to it."
        ),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds per model, at most (checked between trials).")
    ] = None,
    seed: Annotated[int, seed_option("Seed of the sampler.")] = 0,
    model: Annotated[
        str | None, typer.Option(help="Tune this model (label) only; default: every model.")
    ] = None,
    set_: Sets = None,
    smoke: Annotated[
        bool, typer.Option(help="2 trials of a few batches per model, small eval (for CI).")
    ] = False,
    fresh: Annotated[
        bool,
        typer.Option("--fresh", help="Start over: remove the tune folder's studies first."),
    ] = False,
    pruner: Annotated[
        str | None,
        typer.Option(
            help="median, halving or none: stop a trial whose per-epoch validation figure "
            "lags the others' (default: median for tpe, none for grid)."
        ),
    ] = None,
    trial_epochs: Annotated[
        int | None, typer.Option(help="Train each trial for at most N epochs (not tuned.yaml).")
    ] = None,
    trial_rows: Annotated[
        int | None,
        typer.Option(help="Train each trial on the first N train rows only (validation whole)."),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            help="Worker processes running trials of the same studies at once, each with its "
            "share of the cores (train.threads when the recipe sets it)."
        ),
    ] = 1,
) -> None:
    """Search each model's hyperparameters over the recipe's `search:` space with Optuna, on
    the validation split only (the test split is never opened). Writes tune.db (the studies:
    a rerun continues them), tuned.yaml (the recipe with the best params) and results.json
    to runs/<name>-tune (docs/tune.md).

    Example: msctr tune recipes/synthetic/tune.yaml --trials 20

    Example: msctr tune recipes/synthetic/tune.yaml --sampler grid --model DNN

    Example: msctr tune recipes/synthetic/tune.yaml --trial-epochs 3 --trial-rows 20000

    Example: msctr tune recipes/synthetic/tune.yaml --jobs 2
    """
    from msctr.recipe import load_recipe
    from msctr.tune import Caps, need_optuna, run_tune

    need_optuna()  # before anything else: the one-line hint to install the extra
    r = load_recipe(recipe, set_ or [], smoke=smoke)
    with resumable():
        run_tune(
            r, console, sampler, trials, timeout, seed, model, fresh=fresh, smoke=smoke,
            pruner=pruner, caps=Caps(trial_epochs, trial_rows), jobs=jobs,
        )  # fmt: skip


@app.command("bench-inference")
def bench_inference(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    models: Annotated[
        str | None, typer.Option(help="Comma-separated model labels (default: all).")
    ] = None,
    batch_sizes: Annotated[
        str, typer.Option(help="Comma-separated batch sizes for throughput and latency.")
    ] = "1,256,2000,8192",
    variants: Annotated[
        str, typer.Option(help="Comma-separated: eager, bf16, compile, compile-bf16.")
    ] = "eager",
    backend: Annotated[
        str,
        typer.Option(
            help="Comma-separated: torch (the variants), torchscript, onnxruntime (the model "
            "exported, checked against eager's AUC; onnxruntime needs msctr[export])."
        ),
    ] = "torch",
    threads: Annotated[
        int | None, typer.Option(help="torch intra-op threads (default: follows the load).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda (cuda:N).")] = "cpu",
    rows: Annotated[int | None, typer.Option(help="Score the first N test rows only.")] = None,
    repeats: Annotated[int, typer.Option(help="Timed runs after one warm-up run.")] = 3,
    min_time: Annotated[
        float, typer.Option(help="Seconds of timed calls per batch size and repeat, at least.")
    ] = 0.3,
    seed: Annotated[
        int | None, typer.Option(help="Whose checkpoint (default: the recipe's first seed).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="bench.json path (default: <run dir>/bench.json).")
    ] = None,
    set_: Sets = None,
) -> None:
    """Inference cost per model: whole test split end to end (the papers' Table 3),
    forward-only throughput and p50/p90/p99 latency per batch size, parameters,
    multiply-adds per sample, peak memory; writes bench.json.

    Uses each model's trained checkpoint when the recipe's run exists, else a freshly
    initialised model (the table says which).

    Example: msctr bench-inference recipes/synthetic/table.yaml --variants eager,bf16

    Example: msctr bench-inference recipes/synthetic/hierrec.yaml --backend torch,onnxruntime
    """
    from msctr.bench import BenchConfig, parse_int_list, render, run_bench
    from msctr.recipe import load_recipe

    r = load_recipe(recipe, set_ or [])
    cfg = BenchConfig(
        models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
        batch_sizes=parse_int_list(batch_sizes, "--batch-sizes"),
        variants=[v.strip() for v in variants.split(",") if v.strip()],
        backends=[b.strip() for b in backend.split(",") if b.strip()],
        device=device,
        threads=threads,
        rows=rows,
        repeats=repeats,
        min_seconds=min_time,
        seed=seed,
        out=out,
    )
    render(run_bench(r, cfg, console), console)


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run folder of `msctr train` (runs/<name>).")],
    input: Annotated[
        Path, typer.Option("--input", help="Raw rows: CSV or Parquet, as `prepare` read them.")
    ],
    out: Annotated[Path, typer.Option(help="Parquet file for the scores.")],
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Score with this model (label); repeatable; default all."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Whose checkpoint (default: the run's first seed).")
    ] = None,
    ensemble: Annotated[
        bool, typer.Option(help="Mean of the probabilities of every seed of the run.")
    ] = False,
    batch_size: Annotated[
        int | None, typer.Option(help="Rows per forward (default: train.eval_batch_size).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda (cuda:N) or mps.")] = "cpu",
    threads: Annotated[
        int | None, typer.Option(help="torch intra-op threads (default: follows the load).")
    ] = None,
    keep: Annotated[
        str | None,
        typer.Option(help="Comma-separated input columns copied to the output (keys)."),
    ] = None,
    chunk_rows: Annotated[
        int, typer.Option(help="Rows read, encoded and scored at a time (bounds memory).")
    ] = 200_000,
    data: Annotated[
        Path | None,
        typer.Option(help="The run's prepared dataset, if it moved (default: recipe.yaml's)."),
    ] = None,
) -> None:
    """Score new raw rows with a trained run: encoded with the run's dataset's encoders (fitted
    on its training rows), one probability column per model; prints how many values per
    field training never had (docs/predict.md).

    Example: msctr predict runs/synthetic-hierrec --input tomorrow.parquet --out scores.parquet

    Example: msctr predict runs/mine --input new.csv --out s.parquet --model DNN --ensemble
    """
    from msctr.train.runtime import limit_heaps

    limit_heaps(threads or 2)  # before Polars' and torch's threads allocate (docs/predict.md)
    from msctr.predict import PredictConfig, render, run_predict

    cfg = PredictConfig(
        input=input,
        out=out,
        models=model or None,
        seed=seed,
        ensemble=ensemble,
        batch_size=batch_size,
        device=device,
        threads=threads,
        keep=[c.strip() for c in keep.split(",") if c.strip()] if keep else [],
        chunk_rows=chunk_rows,
        data=data,
    )
    render(run_predict(run, cfg, console), console)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run folder of `msctr train` (runs/<name>).")],
    format: Annotated[str, typer.Option("--format", help="torchscript or onnx.")],
    out: Annotated[Path, typer.Option(help="Folder for the export (written whole, atomically).")],
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Export this model (label); repeatable; default all."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Whose checkpoint (default: the run's first seed).")
    ] = None,
    rows: Annotated[
        int | None, typer.Option(help="Check on the first N test rows only (default: all).")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="The run's prepared dataset, if it moved (default: recipe.yaml's)."),
    ] = None,
) -> None:
    """Export a run's models for serving without msctr: TorchScript or ONNX over the prepared
    id tensors, with encoders.parquet and contract.json (inputs, id ranges, dense statistics);
    each export is checked against PyTorch on the test split (docs/predict.md#export).

    Example: msctr export runs/synthetic-hierrec --format onnx --out exports/hierrec
    """
    from msctr.export import ExportConfig, render, run_export

    cfg = ExportConfig(format, out, models=model or None, seed=seed, data=data, rows=rows)
    render(run_export(run, cfg, console), console)


def print_error(message: str) -> None:
    """One `error: ...` line on stderr, the message printed literally: it carries user text
    (column names, paths, labels) that rich would otherwise read as markup ('[bold]click'
    styled away, '[/x]' crashing the printer) or as emoji codes."""
    err_console.print(
        Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True
    )


def usage_message(e: UsageError) -> str:
    """A command-line usage error (a bad option value, a missing argument, an unknown flag)
    as one line with the fix, like every other user error: not click's boxed usage block
    and exit code 2."""
    command = e.ctx.command_path if e.ctx is not None else "msctr"
    return f"{e.format_message().rstrip('.')}; see {command} --help"


def main() -> None:
    forget_interrupts()
    handle_interrupts()
    try:
        try:
            # not standalone: click's usage errors reach the handler below instead of being
            # printed as a box; `--help` and typer.Exit come back as an exit code
            code = app(standalone_mode=False, prog_name="msctr")
        except BaseException as e:  # after a Ctrl-C: the interrupt, whatever a library made of it
            # (Polars, whose Rust code called back into Python as the handler raised, reports
            # an error of its own, or panics: a PanicException is a BaseException)
            signum = interrupt_received()
            if signum is None or isinstance(e, (Interrupted, SystemExit, GeneratorExit)):
                raise
            raise Interrupted(signum) from e
        if isinstance(code, int) and code:  # typer.Exit(code), e.g. torchrun's exit status
            sys.exit(code)
    except UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `msctr`, `msctr prepare`: help shown
            sys.exit(e.exit_code)
        print_error(usage_message(e))
        sys.exit(1)
    except UserError as e:
        # under torchrun every rank meets the same error and rank 0 says it, unless it is
        # one process's own
        if _rank() == 0 or isinstance(e, RankError):
            print_error(str(e))
        sys.exit(1)
    except OSError as e:
        from msctr.io import os_error_message

        message = os_error_message(e)
        if message is None:
            raise
        print_error(message)
        sys.exit(1)
    except Interrupted as e:
        from msctr.train.launch import launched_by_msctr

        # rank 0 says it for all; under `train --nproc N`, the launcher, once all have ended
        if _rank() != 0 or launched_by_msctr():
            sys.exit(128 + e.signum)
        err_console.print(
            Text(interrupted_line(e.signum, getattr(e, "resume", None))),
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(128 + e.signum)
    finally:
        # what an interrupted cleanup left (io.discard_pending), with a second Ctrl-C ignored
        # and no deferred one still to come (forget_interrupts stops its timer)
        forget_interrupts()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        discard_pending()


if __name__ == "__main__":
    main()
