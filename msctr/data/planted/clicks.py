"""The planted-signal click model: the logit terms of every impression, and the clicks that
depend on each user's earlier clicks, drawn in per-user event order (one vectorized step per
event index: all users' k-th events at once, never a Python loop per row or per user)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from msctr.data.planted.params import (
    AFFINITY_SCALE,
    ARCHETYPES,
    CARD,
    HISTORY_WINDOW,
    HOUR_SHIFT,
    MODE_AFFINITY,
    MODE_DURATION,
    MODE_POSITION,
    MODE_SHIFT,
    MODE_TABLE,
    PAIR_FIELDS,
    POSITION_SLOPE,
    RECENCY_DECAY,
    REGISTER_SLOPE,
    PlantedParams,
    draw_parameters,
    duration_z,
    sigmoid,
)
from msctr.data.planted.structures import (
    MECHANISM_TERMS,
    STRUCTURE_TERMS,
    STRUCTURES,
    draw_structure,
)
from msctr.data.planted.world import SyntheticWorld, Timeline, draw_timeline, draw_world
from msctr.errors import UserError


@dataclass
class Simulation:
    """Everything drawn for one call, rows in (user, time) order (not yet log order)."""

    params: PlantedParams
    world: SyntheticWorld
    user: np.ndarray  # [rows]
    item: np.ndarray  # [rows]
    scenario: np.ndarray  # [rows]
    time_ms: np.ndarray  # [rows], strictly increasing within a user
    context: dict[str, np.ndarray]  # hour_bucket, weekday, network, day, date, position, ...
    mode: np.ndarray  # [rows] implicit sub-scenario mode in [0, 4)
    cluster: np.ndarray  # [rows] population cluster of the row's scenario
    terms: dict[str, np.ndarray]  # the additive logit terms, [rows] each
    seq_cat_match: np.ndarray  # [rows] m_cat in [0, 1]
    seq_item_match: np.ndarray  # [rows] m_item in {0, 1}
    true_prob: np.ndarray  # [rows]
    label: np.ndarray  # [rows] int8
    start: np.ndarray  # [n_users] first row of each user
    structure: str | None = None  # the planted mechanism structure (None: the default model)
    latent: dict[str, np.ndarray] = field(default_factory=dict)  # its hidden row labels

    def history(self, length: int) -> np.ndarray:
        """[rows, length] row indices of each row's earlier clicks by its user, most recent
        first, -1 padded: a gather through the running click count, no loop."""
        clicked = np.flatnonzero(self.label)  # (user, time) order: each user's clicks in a run
        before = np.cumsum(self.label, dtype=np.int64) - self.label  # clicks in earlier rows
        first = before[self.start[self.user]]  # the user's first click's index in `clicked`
        idx = before[:, None] - 1 - np.arange(length)  # [rows, length]
        valid = idx >= first[:, None]
        return np.where(valid, clicked[np.clip(idx, 0, None)] if len(clicked) else -1, -1)


def simulate(
    rows: int = 200_000, scenarios: int = 5, seed: int = 0, structure: str | None = None
) -> Simulation:
    """Draw the world, the impressions and the clicks; `generate` turns this into a frame.

    `structure` None is the default click model. A name of STRUCTURES keeps the same users,
    items, impressions and uniform draws but swaps the click model's mechanism terms (mode,
    cluster, sequence) for one paper's planted structure, or for none of them ("none").
    """
    if structure is not None and structure not in STRUCTURES:
        raise UserError(
            f"--structure {structure!r} is not one of {', '.join(STRUCTURES)}; "
            "leave it out for the default data"
        )
    if rows < 1_000:
        raise UserError(f"--rows {rows} is too small for the synthetic data; use at least 1000")
    if not 1 <= scenarios <= 64:
        raise UserError(f"--scenarios {scenarios} is out of range; use 1 to 64")
    if seed < 0:
        raise UserError(f"--seed {seed} is negative; use a seed >= 0")
    P = draw_parameters(scenarios, seed)
    W = draw_world(P, rows, seed)
    imp = draw_timeline(P, W, rows, seed)
    terms, cat, mode, cluster = _static_terms(P, W, imp)
    seq_cat, seq_item, latent = P.seq_cat, P.seq_item, {}
    if structure is not None:
        for name in MECHANISM_TERMS:
            terms.pop(name, None)
        zero = np.zeros(scenarios)
        seq_cat, seq_item = zero, zero
        if structure != "none":
            extra, seq, latent = STRUCTURE_TERMS[structure](
                draw_structure(structure, scenarios, seed), W, imp
            )
            terms.update(extra)
            if seq is not None:
                seq_cat, seq_item = seq
    m_cat, m_item, true_prob, label = _sequential_clicks(
        seq_cat, seq_item, W.counts, imp, np.sum(list(terms.values()), axis=0), cat
    )
    if structure is None:
        terms["seq_cat"] = seq_cat[imp.scenario] * m_cat
        terms["seq_item"] = seq_item[imp.scenario] * m_item
    elif seq_cat.any() or seq_item.any():
        terms["sfpnet_seq"] = seq_cat[imp.scenario] * m_cat + seq_item[imp.scenario] * m_item
    return Simulation(
        params=P,
        world=W,
        user=imp.user,
        item=imp.item,
        scenario=imp.scenario,
        time_ms=imp.time_ms,
        context=imp.context,
        mode=mode,
        cluster=cluster,
        terms=terms,
        seq_cat_match=m_cat,
        seq_item_match=m_item,
        true_prob=true_prob,
        label=label,
        start=imp.start,
        structure=structure,
        latent=latent,
    )


def _static_terms(
    P: PlantedParams, W: SyntheticWorld, imp: Timeline
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """The logit terms that do not depend on earlier clicks; also each row's item category,
    latent mode and population cluster."""
    S = P.scenarios
    u, it = W.users, W.items
    user, item, scen = imp.user, imp.item, imp.scenario
    position, hour_bucket = imp.position, imp.hour_bucket
    cat = it["item_cat"][item]
    row_pop = u["gender"][user] * CARD["city"] + u["city"][user]
    cluster = P.cluster[scen, row_pop]
    zdur = duration_z(W.duration[item])
    aff = AFFINITY_SCALE * np.einsum("rk,rk->r", W.user_factor[user], W.item_factor[item])
    mode = (MODE_TABLE[u["user_active_degree"][user], it["item_type"][item]] + scen) % 4
    row_field = {name: (u[name][user] if name in u else it[name][item]) for name in PAIR_FIELDS}
    pair = np.zeros(len(user))
    for j, arch in enumerate(ARCHETYPES[: min(S, 5)]):  # one lookup over all rows per archetype
        a, b = arch.pair
        uses = np.arange(S) % 5 == j
        table = np.zeros((S, CARD[a], CARD[b]))
        table[uses] = np.stack([P.pair_tables[s] for s in np.flatnonzero(uses)])
        pair += table[scen, row_field[a], row_field[b]]
    terms = {
        "base": P.base[scen],
        "population": P.pop_shift[row_pop],
        "cluster": P.cluster_shift[scen, cluster] + P.cluster_duration[scen, cluster] * zdur,
        "user_bias": W.user_bias[user],
        "item_bias": W.item_bias[item],
        "author_bias": W.author_bias[it["author_id"][item]],
        "affinity": P.affinity[scen] * aff,
        "pair": pair,
        "mode": MODE_SHIFT[mode]
        + (mode == 1) * MODE_AFFINITY * aff
        + (mode == 2) * (MODE_POSITION * position + MODE_DURATION * zdur)
        + (mode == 3) * P.context_table[hour_bucket, cat],
        "hour": HOUR_SHIFT[hour_bucket],
        "position": POSITION_SLOPE * position,
        "register": REGISTER_SLOPE * (np.log(W.register_days[user]) - 5.0),
    }
    return terms, cat, mode, cluster


def _sequential_clicks(
    seq_cat: np.ndarray,
    seq_item: np.ndarray,
    counts: np.ndarray,
    imp: Timeline,
    static: np.ndarray,
    cat: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clicks that depend on each user's earlier clicks, one vectorized step per event index:
    (category-history match, item-history match, true probability, label), row order.
    `seq_cat` / `seq_item` [S] are the scenarios' weights of the two history matches.

    Users are ranked by event count, so the users active at step k are ranks [0, n_k); rows
    are laid out step-major (step k's rows are one contiguous slice, in rank order), so
    every step works on slices and views instead of gathers.
    """
    rows = len(imp.user)
    user, item, scen, start = imp.user, imp.item, imp.scenario, imp.start
    by_count = np.argsort(-counts, kind="stable")
    rank = np.empty_like(by_count)
    rank[by_count] = np.arange(len(by_count))
    n_active = np.searchsorted(-counts[by_count], -np.arange(counts.max()), side="left")
    offset = np.zeros(len(n_active) + 1, np.int64)
    np.cumsum(n_active, out=offset[1:])
    step = np.arange(rows) - start[user]  # event index of the row within its user
    sm = offset[step] + rank[user]  # step-major position of each row

    def step_major(x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        out[sm] = x
        return out

    static_sm, draw_sm = step_major(static), step_major(imp.draw)
    cat_sm, item_sm = step_major(cat), step_major(item)
    kappa_sm, lam_sm = step_major(seq_cat[scen]), step_major(seq_item[scen])
    m_cat, m_item = np.zeros(rows), np.zeros(rows, bool)
    p_all, y_all = np.empty(rows), np.zeros(rows, bool)
    # the last HISTORY_WINDOW clicked (item, category) per user rank, most recent first;
    # -1 never equals a real id, so empty slots need no mask
    buf = np.full((len(counts), 2, HISTORY_WINDOW), -1, np.int64)
    decay = RECENCY_DECAY ** np.arange(HISTORY_WINDOW)
    decay = decay / decay.sum()
    for k, n in enumerate(n_active):
        lo, hi = offset[k], offset[k + 1]
        c_t, i_t = cat_sm[lo:hi], item_sm[lo:hi]
        mc = (buf[:n, 1] == c_t[:, None]) @ decay
        mi = (buf[:n, 0] == i_t[:, None]).any(1)
        p = sigmoid(static_sm[lo:hi] + kappa_sm[lo:hi] * mc + lam_sm[lo:hi] * mi)
        click = draw_sm[lo:hi] < p
        m_cat[lo:hi], m_item[lo:hi], p_all[lo:hi], y_all[lo:hi] = mc, mi, p, click
        c = np.flatnonzero(click)  # ranks of the users who clicked at this step
        buf[c, :, 1:] = buf[c, :, :-1]
        buf[c, 0, 0], buf[c, 1, 0] = i_t[c], c_t[c]
    # back to (user, time) order
    return m_cat[sm], m_item[sm], p_all[sm], y_all[sm].astype(np.int8)
