"""Shared test fixtures: a small schema and batches made here, with no files; one small
prepared dataset for the whole session; the CLI run in-process or in a process of its own,
and the one-line-error assertion every test of a refusal uses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from msctr import cli
from msctr.cli import app
from msctr.data.batch import Batch
from msctr.data.schema import DenseField, Schema, Sequence, SequenceField, SparseField

torch.set_num_threads(1)
# runs started here and in the CLI subprocesses tests start keep one thread: an adaptive count
# (msctr.cores) would follow the machine's load and make bit-for-bit comparisons flaky
os.environ["OMP_NUM_THREADS"] = "1"


# three small models on a prepared folder (`data`), trained for 2 epochs into `out`
THREE_MODELS_RECIPE = """
name: three-models
data: {data}
out: {out}
models:
  - {{name: dnn, label: DNN, params: {{hidden: [32, 16]}}}}
  - {{name: shared_bottom, label: SB, params: {{bottom_hidden: [32], tower_hidden: [16]}}}}
  - {{name: ple, label: PLE, params: {{expert_hidden: [16], tower_hidden: [8]}}}}
train: {{batch_size: 256, epochs: 2, seeds: [0], lr: 0.003, eval_batch_size: 700}}
"""

# small but complete configuration of every model (2 PLE levels, 2 STAR hidden layers), for
# tests that run each model on a few rows
SMALL = {
    "shared_bottom": {"embed_dim": 8, "bottom_hidden": [32], "tower_hidden": [16]},
    "mmoe": {"embed_dim": 8, "num_experts": 3, "expert_hidden": [32], "tower_hidden": [16]},
    "ple": {
        "embed_dim": 8,
        "shared_experts": 2,
        "specific_experts": 2,
        "expert_hidden": [32],
        "tower_hidden": [16],
    },
    "star": {"embed_dim": 8, "hidden": [32, 16], "aux_hidden": [8]},
    "dnn": {"embed_dim": 8, "hidden": [32, 16]},
    "pepnet": {"embed_dim": 8, "hidden": [32, 16]},
    "adasparse": {"embed_dim": 8, "hidden": [32, 16]},
    "hierrec": {"embed_dim": 8, "heads": 2},
    "sfpnet": {"embed_dim": 8, "hidden": [32, 16], "din_hidden": [16]},
    "hmdn": {"embed_dim": 8, "hidden": [32, 16], "depth": 3, "codebook_size": 16},
    "deepfm": {"embed_dim": 8, "hidden": [32, 16]},
    "wide_deep": {"embed_dim": 8, "hidden": [32, 16], "cross_fields": [["f0", "f3"]]},
    "dcn": {"embed_dim": 8, "hidden": [32, 16], "num_cross_layers": 2},
    # AESM2 keeps per-scenario gates but is not in ROUTED: its expert selection compares an
    # expert's gate under the row's scenario with its gates under every other scenario, so
    # every row reads all S gates by the paper's rule (docs/models/aesm2.md)
    "aesm2": {"embed_dim": 8, "num_experts": 4, "expert_hidden": [32], "tower_hidden": [16]},
    "maria": {
        "embed_dim": 8,
        "fs_hidden": 16,
        "refine_dim": 4,
        "fcm_dim": 4,
        "num_experts": 3,
        "expert_hidden": [32],
        "tower_hidden": [16],
    },
    "hinet": {
        "embed_dim": 8,
        "sub_experts": 2,
        "sei_hidden": [16],
        "san_hidden": [8],
        "task_specific_experts": 2,
        "task_shared_experts": 2,
        "task_expert_hidden": [16],
        "tower_hidden": [8],
    },
    "hamur": {"embed_dim": 8, "hidden": [32, 16], "hyper_hidden": [8], "k": 4, "bottleneck": 8},
    "m2m": {
        "embed_dim": 8,
        "num_experts": 3,
        "expert_hidden": [16, 8],
        "scenario_hidden": [8],
        "meta_layers": 2,
        "tower_layers": 2,
    },
    "sarnet": {
        "embed_dim": 8,
        "att_dim": 4,
        "specific_experts": 2,
        "shared_experts": 2,
        "expert_hidden": [16],
    },
    # AdaptDHM is not in ROUTED: it routes rows by learned clusters, not by scenario
    # (tests/test_adaptdhm.py checks that each cluster's weights reach its rows only)
    "adaptdhm": {"embed_dim": 8, "hidden": [32, 16], "clusters": 3},
    "m3oe": {
        "embed_dim": 8,
        "bottom_hidden": [32, 16],
        "num_experts": 3,
        "expert_hidden": [16],
        "tower_hidden": [8],
    },
}


def make_schema(
    num_scenarios: int = 3,
    n_sparse: int = 6,
    vocab: int = 30,
    n_dense: int = 2,
    seq_len: int = 8,
    with_sequence: bool = True,
) -> Schema:
    sparse = [SparseField(f"f{i}", vocab) for i in range(n_sparse)]
    sequences = []
    if with_sequence:
        sequences = [
            Sequence(
                name="hist",
                max_len=seq_len,
                length_column="hist_len",
                fields=[SequenceField("hist_f1", "f1"), SequenceField("hist_f2", "f2")],
            )
        ]
    return Schema(
        source="toy",
        num_scenarios=num_scenarios,
        scenario_names=[f"s{i}" for i in range(num_scenarios)],
        sparse=sparse,
        dense=[DenseField(f"x{i}", 0.0, 1.0) for i in range(n_dense)],
        sequences=sequences,
        partition_fields=["scenario", "f0"],
        num_partitions=num_scenarios * vocab,
    )


def make_batch(schema: Schema, size: int = 64, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    vocab = [f.vocab_size for f in schema.sparse]
    sparse = torch.stack([torch.randint(0, v, (size,), generator=g) for v in vocab], dim=1)
    seq_ids, seq_mask = [], []
    for seq in schema.sequences:
        L, K = seq.max_len, len(seq.fields)
        ids = torch.randint(1, 30, (size, L, K), generator=g)
        lengths = torch.randint(0, L + 1, (size,), generator=g)
        mask = torch.arange(L) < lengths.unsqueeze(1)
        seq_ids.append(ids * mask.unsqueeze(-1))
        seq_mask.append(mask)
    return Batch(
        scenario=torch.randint(0, schema.num_scenarios, (size,), generator=g),
        sparse=sparse,
        dense=torch.randn(size, len(schema.dense), generator=g),
        label=torch.randint(0, 2, (size,), generator=g).float(),
        partition=torch.randint(0, schema.num_partitions, (size,), generator=g),
        seq_ids=tuple(seq_ids),
        seq_mask=tuple(seq_mask),
    )


@pytest.fixture
def schema() -> Schema:
    return make_schema()


@pytest.fixture
def batch(schema: Schema) -> Batch:
    return make_batch(schema)


def rows_of(batch: Batch, index: torch.Tensor) -> Batch:
    """The rows `index` of `batch`, as a batch of their own."""
    return Batch(
        scenario=batch.scenario[index],
        sparse=batch.sparse[index],
        dense=batch.dense[index],
        label=batch.label[index],
        partition=batch.partition[index],
        seq_ids=tuple(t[index] for t in batch.seq_ids),
        seq_mask=tuple(t[index] for t in batch.seq_mask),
    )


def spread_embeddings(model: torch.nn.Module, scale: float = 50.0) -> torch.nn.Module:
    """`model`'s embeddings times `scale` (the init's std 0.01 -> 0.5 by default), in place:
    at std 0.01 every gate, attention and generated weight reads almost the same input, so
    rows, scenarios and fields make no visible difference. Returns the model."""
    with torch.no_grad():
        for p in model.embedding.parameters():
            p.mul_(scale)
    return model


def warmed_up(model: torch.nn.Module, schema: Schema, rows: int = 64, seed: int = 3):
    """`model` after one training forward of a made-up batch (batch-norm running statistics,
    cluster centres leave their init), in eval mode."""
    model.train()
    with torch.no_grad():
        model(make_batch(schema, rows, seed))
    return model.eval()


def assert_rows_alone_match(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """`model` (in eval mode) scores each row of `batch` alone as it scores it in the batch: a
    row's score never depends on its batch-mates. Returns the batch's scores."""
    with torch.no_grad():
        together = model(batch)
        alone = torch.cat([model(rows_of(batch, torch.tensor([i]))) for i in range(len(batch))])
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-6)
    return together


def planted_batch(schema: Schema, size: int, seed: int) -> Batch:
    """A batch whose label follows a known rule mixing scenario, fields, dense and sequence.

    logit = scenario-specific effect of f0 + effect of f3 + 1.0 * x0
            + 1.5 * [target f1 appears in the behavior sequence] (scenario 0 only)
    """
    b = make_batch(schema, size, seed)
    g = torch.Generator().manual_seed(12345)  # the rule itself is fixed across seeds
    vocab0 = schema.sparse[0].vocab_size
    eff0 = torch.randn(schema.num_scenarios, vocab0, generator=g) * 1.5
    eff3 = torch.randn(schema.sparse[3].vocab_size, generator=g)
    logit = eff0[b.scenario, b.sparse[:, 0]] + eff3[b.sparse[:, 3]] + 1.0 * b.dense[:, 0]
    if schema.sequences:
        hit = ((b.seq_ids[0][..., 0] == b.sparse[:, 1:2]) & b.seq_mask[0]).any(1)
        logit = logit + 1.5 * (hit & (b.scenario == 0)).float()
    gen = torch.Generator().manual_seed(seed + 777)
    b.label = torch.bernoulli(torch.sigmoid(logit - 0.5), generator=gen)
    return b


def train_and_auc(
    model: torch.nn.Module, schema: Schema, steps: int = 150, lr: float = 3e-3
) -> float:
    """Train `model` on planted batches for a few Adam steps; return its AUC on held-out rows."""
    from sklearn.metrics import roc_auc_score

    from msctr.models.registry import split_output

    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        b = planted_batch(schema, 256, seed=step)
        logit, aux = split_output(model(b))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, b.label)
        if aux is not None:
            loss = loss + aux
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = planted_batch(schema, 4000, seed=10_000)
    with torch.inference_mode():
        logit, _ = split_output(model(test))
    return float(roc_auc_score(test.label.numpy(), logit.numpy()))


def assert_learns_planted(name: str, with_sequence: bool = False) -> None:
    """The bar of tests/test_baselines.py (the planted rule's Bayes AUC 0.868, the best model
    without its scenario x f0 interaction 0.810): `name` at its SMALL config, no dropout,
    seed 0, must pass 0.835."""
    from msctr.models.registry import build

    schema = make_schema(with_sequence=with_sequence)
    torch.manual_seed(0)
    model = build(name, schema, {**SMALL[name], "dropout": 0.0})
    assert train_and_auc(model, schema) > 0.835


def assert_trains(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """One forward and backward: logits of shape [B], a finite BCE, and a non-zero gradient on
    every parameter (an all-zero gradient means a part is computed but never used)."""
    out = model(batch)
    assert out.shape == (len(batch),)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out, batch.label)
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"no gradient: {missing}"
    return out


runner = CliRunner()


def invoke(*args: str):
    """Run `msctr ARGS` in-process and insist that it succeeded."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def vocab(out, field: str) -> dict:
    """A prepared dataset's vocabulary of `field`: raw value (as text) -> id."""
    enc = pl.read_parquet(out / "encoders.parquet").filter(pl.col("field") == field)
    return dict(zip(enc["value"].to_list(), enc["id"].to_list(), strict=True))


def codes(values, table: dict) -> np.ndarray:
    """Raw values -> the prepared ids (0 for a value the training rows never had)."""
    return np.array([table.get(None if v is None else str(v), 0) for v in values])


def load_shared(src: torch.nn.Module, dst: torch.nn.Module) -> list[str]:
    """Copy into `dst` every parameter and buffer of `src` that has the same name and shape
    (an ablated model gets the full model's weights wherever the architectures agree), so a
    difference in output comes from the part that differs, not from the initialization.
    Returns the names copied."""
    theirs = src.state_dict()
    mine = dst.state_dict()
    shared = [k for k, v in mine.items() if k in theirs and theirs[k].shape == v.shape]
    dst.load_state_dict({**mine, **{k: theirs[k] for k in shared}})
    return shared


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """`msctr ARGS` through the real entry point (as the console script runs it), in-process:
    (exit code, stdout, stderr). The entry point's signal handlers and unraisable hook are
    undone afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    hook, old_argv = sys.unraisablehook, sys.argv
    sys.argv = ["msctr", *args]
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv, sys.unraisablehook = old_argv, hook
        for s, h in saved.items():
            signal.signal(s, h)
    out = capsys.readouterr()
    return code, out.out, out.err


def msctr_process(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`msctr ARGS` in a Python process of its own (what signals, exit codes and the current
    folder need): its exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "msctr.cli", *args], capture_output=True, text=True, cwd=cwd
    )


def assert_one_line_error(code: int, out: str, err: str, *needles: str) -> str:
    """A command's end as the CLI promises for bad input: exit 1, one `error:` line on stderr
    containing every needle, no traceback. Returns that line."""
    assert code == 1, (code, out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def one_line_error(capsys, needle: str, *args: str) -> str:
    """`msctr ARGS` through the real entry point ends in one `error:` line containing
    `needle`, exit 1, no traceback; returns that line."""
    return assert_one_line_error(*run_main(capsys, *args), needle)


def process_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """`assert_one_line_error` for a command run by `msctr_process`."""
    return assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, *needles)


def user_error_line(exc: pytest.ExceptionInfo) -> str:
    """The message of a UserError raised in-process: one line, as the CLI would print it."""
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """The session's small synthetic dataset (3,000 rows, seed 3), prepared once through the
    CLI. Tests read it and never write into it; a test that needs other data (more rows,
    scenarios, a structure) prepares its own."""
    out = tmp_path_factory.mktemp("shared-data") / "syn"
    invoke("prepare", "synthetic", "--out", str(out), "--rows", "3000", "--seed", "3")
    return out
