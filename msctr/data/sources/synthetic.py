"""The planted-signal synthetic dataset as a `SourceTable`: the simulation's rows (msctr.data.
planted) in log order, raw values and KuaiRand-like names. The click model itself, its
equations and parameters, are in `msctr.data.planted` and docs/synthetic.md."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from msctr.data.planted.clicks import Simulation, simulate
from msctr.data.planted.params import (
    CONTEXT_FIELDS,
    DENSE_FIELDS,
    GENERATOR_VERSION,
    ITEM_FIELDS,
    NOISE_FIELDS,
    SPARSE_FIELDS,
    STRING_VALUES,
    USER_FIELDS,
    scenario_names,
)
from msctr.data.sources.base import FieldMap, SequenceSpec, SourceTable
from msctr.errors import UserError


def generate(
    rows: int = 200_000,
    scenarios: int = 5,
    seed: int = 0,
    seq_len: int = 20,
    structure: str | None = None,
) -> SourceTable:
    """`rows` impressions over `scenarios` tabs as a SourceTable; same arguments, same frame.

    The default size trains 5 models x 3 seeds in a few minutes on 2 CPU cores and still
    leaves 20k test rows (see docs/synthetic.md). `structure` plants one paper's mechanism
    structure instead of the default's (see `simulate`).
    """
    if seq_len < 1:
        raise UserError(f"--seq-len {seq_len} is too small; use at least 1")
    sim = simulate(rows, scenarios, seed, structure)
    info = {
        "rows": rows,
        "scenarios": scenarios,
        "seed": seed,
        "seq_len": seq_len,
        "generator_version": GENERATOR_VERSION,
        "users": len(sim.world.counts),
        "items": len(sim.world.item_bias),
        "authors": len(sim.world.author_bias),
        "noise_fields": list(NOISE_FIELDS),
    }
    if structure is not None:  # absent from the default data's info, which stays as it was
        info["structure"] = structure
    return SourceTable(
        frame=to_frame(sim, seq_len).lazy(),
        fields=field_map(seq_len),
        name="synthetic",
        split="sequential",
        scenario_names=scenario_names(scenarios),
        info=info,
    )


def field_map(seq_len: int = 20) -> FieldMap:
    return FieldMap(
        label="is_click",
        scenario="tab",
        sparse=list(SPARSE_FIELDS),
        dense=list(DENSE_FIELDS),
        sequences=[
            SequenceSpec(
                "hist", {"hist_item_id": "item_id", "hist_item_cat": "item_cat"}, max_len=seq_len
            )
        ],
        user="user_id",
        session="session_id",
        partition=["gender", "city"],
        true_prob="true_prob",
        order="time_ms",
    )


def to_frame(sim: Simulation, seq_len: int = 20) -> pl.DataFrame:
    """The simulation's rows in log order (time, then user), raw values, KuaiRand-like names."""
    W, user, item = sim.world, sim.user, sim.item
    perm = np.lexsort((user, sim.time_ms))
    user_p, item_p = user[perm], item[perm]
    cols: dict[str, np.ndarray | pl.Series] = {
        "time_ms": sim.time_ms[perm],
        "date": sim.context["date"][perm],
        "session_id": (user * 1_000 + sim.context["day"])[perm],  # user x day
        "tab": sim.scenario[perm],
        "user_id": user_p,
        "item_id": item_p,
    }
    for name in USER_FIELDS:
        cols[name] = _raw(name, W.users[name][user_p])
    for name in ITEM_FIELDS:
        cols[name] = _raw(name, W.items[name][item_p])
    for name in CONTEXT_FIELDS:
        cols[name] = sim.context[name][perm]
    cols["item_duration"] = W.duration[item_p]
    cols["item_ctr_stat"] = W.item_ctr_stat[item_p]
    cols["position"] = sim.context["position"][perm]
    cols["register_days"] = W.register_days[user_p]
    cols["dense_noise"] = sim.context["dense_noise"][perm]
    hist = sim.history(seq_len)[perm]
    valid = hist >= 0  # a prefix of each row: the buffer fills from the front
    frame = pl.DataFrame(cols)
    return frame.with_columns(
        list_series("hist_item_id", item, hist, valid),
        list_series("hist_item_cat", W.items["item_cat"][item], hist, valid),
        pl.Series("is_click", sim.label[perm], dtype=pl.Int8),
        pl.Series("true_prob", sim.true_prob[perm], dtype=pl.Float64),
    )


def _raw(name: str, codes: np.ndarray) -> np.ndarray | pl.Series:
    labels = STRING_VALUES.get(name)
    return codes if labels is None else pl.Series(name, labels).gather(codes)


def list_series(name: str, values: np.ndarray, hist: np.ndarray, valid: np.ndarray) -> pl.Series:
    """[rows, L] history row indices (valid a prefix of each row) -> list<i64> of their values."""
    offsets = np.zeros(len(hist) + 1, np.int64)
    np.cumsum(valid.sum(1), out=offsets[1:])
    flat = values[hist[valid]].astype(np.int64)  # row-major: most recent first within a row
    arr = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat))
    return pl.Series(name, pl.from_arrow(arr)).cast(pl.List(pl.Int64))
