"""Planted-signal synthetic data: a KuaiRand-shaped log whose click probability is known.

Every row's click is drawn from ``true_prob = sigmoid(logit)`` where ``logit`` is a sum of
documented terms (see ``docs/synthetic.md`` for the equations and the parameter values):

- explicit scenarios (``tab``) with Zipf-skewed sizes, their own base rate, affinity
  weight and a scenario-specific interaction of two ordinary fields;
- implicit sub-scenarios: ``user_active_degree x item_type`` (and the scenario) pick one
  of four click "modes" that change which fields matter (HierRec's implicit heads);
- a behavior-sequence term whose sign and size depend on the scenario (SFPNet);
- nested distributions: ``gender x city`` populations fall into per-scenario clusters
  with their own offset and duration slope (HMDN's codebooks);
- user / item / author biases, a low-rank user x item affinity, dense effects, and
  noise fields with no effect at all.

Because the label of a row depends on the user's earlier clicks, rows are generated in
per-user event order: one vectorized step per event index (all users' k-th events at
once), never a Python loop per row or per user.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

from msctr.data.sources.base import FieldMap, SequenceSpec, SourceTable
from msctr.errors import UserError

GENERATOR_VERSION = 1

# -- the click model's fixed constants (docs/synthetic.md lists them all) ------------------
HISTORY_WINDOW = 10  # the click model reads the user's last 10 clicks, whatever seq_len is
RECENCY_DECAY = 0.75  # weight of the j-th most recent click: RECENCY_DECAY ** j
ZIPF_SCENARIO = 1.6  # scenario share ~ (s + 1) ** -1.6: 59/20/10/6/5 % for 5 scenarios
RANK = 8  # dimension of the user x item affinity
ROWS_PER_USER = 200  # mean events per user
ROWS_PER_ITEM = 50  # mean impressions per item
ITEMS_PER_AUTHOR = 8
DAYS = 14
START_DATE = np.datetime64("2022-04-22")
START_MS = int(START_DATE.astype("datetime64[ms]").astype(np.int64))
EXPOSE_FAVOURITE = 0.35  # share of impressions drawn from the user's two favourite categories
SECOND_FAVOURITE = 0.35  # ... of which this share from the second one

ACTIVE_DEGREES = ("high_active", "full_active", "middle_active", "low_active")
ITEM_TYPES = ("NORMAL", "AD", "LIVE")
GENDERS = ("M", "F", "U")

# -- the fields ------------------------------------------------------------------------------
STRING_VALUES = {
    "gender": GENDERS,
    "user_active_degree": ACTIVE_DEGREES,
    "item_type": ITEM_TYPES,
}
USER_FIELDS = (
    "gender",
    "city",
    "age_group",
    "user_active_degree",
    "is_lowactive_period",
    "is_video_author",
    "register_days_range",
    "follow_user_num_range",
    "fans_user_num_range",
    "device_tier",
    "u_noise0",
    "u_noise1",
)
ITEM_FIELDS = (
    "item_cat",
    "item_type",
    "author_id",
    "music_type",
    "upload_type",
    "duration_bucket",
    "visible_status",
    "i_noise0",
    "i_noise1",
)
CONTEXT_FIELDS = ("hour_bucket", "weekday", "network")
SPARSE_FIELDS = ["user_id", "item_id", *USER_FIELDS, *ITEM_FIELDS, *CONTEXT_FIELDS]
DENSE_FIELDS = ("item_duration", "item_ctr_stat", "position", "register_days", "dense_noise")
# fields the click model never reads (follow_user_num_range is correlated with activity)
NOISE_FIELDS = (
    "is_lowactive_period",
    "is_video_author",
    "follow_user_num_range",
    "u_noise0",
    "u_noise1",
    "visible_status",
    "i_noise0",
    "i_noise1",
    "weekday",
    "network",
    "dense_noise",
)

# cardinalities of the fields the click model reads, and non-uniform draw probabilities
CARD = {
    "gender": 3,
    "city": 6,
    "age_group": 7,
    "user_active_degree": 4,
    "device_tier": 4,
    "item_cat": 20,
    "item_type": 3,
    "music_type": 5,
    "upload_type": 6,
    "hour_bucket": 6,
    "fans_user_num_range": 6,
    "register_days_range": 6,
    "duration_bucket": 6,
}
PROBS = {
    "gender": [0.46, 0.46, 0.08],
    "city": [0.30, 0.25, 0.20, 0.12, 0.08, 0.05],
    "age_group": [0.05, 0.15, 0.25, 0.20, 0.15, 0.12, 0.08],
    "user_active_degree": [0.25, 0.35, 0.25, 0.15],
    "device_tier": [0.30, 0.40, 0.20, 0.10],
    "item_type": [0.75, 0.12, 0.13],
    "network": [0.60, 0.30, 0.08, 0.02],
    "visible_status": [0.90, 0.07, 0.03],
}
# clicks by hour of day: low at night, peaks at noon and in the evening
HOUR_WEIGHTS = np.array(
    [2, 1, 1, 1, 1, 2, 3, 4, 5, 5, 5, 6, 7, 6, 5, 5, 5, 6, 7, 9, 10, 10, 8, 5], dtype=float
)

# base logit of each user_active_degree (added to the user bias) and of each hour bucket
ACTIVE_SHIFT = np.array([0.3, 0.1, -0.1, -0.3])
HOUR_SHIFT = np.array([0.10, -0.10, -0.05, 0.0, 0.05, 0.15])
POSITION_SLOPE = -0.05
REGISTER_SLOPE = 0.10
AFFINITY_SCALE = 0.4
USER_BIAS_STD = 0.3
ITEM_BIAS_STD = 0.35
AUTHOR_BIAS_STD = 0.25
ITEM_FACTOR_STD = 0.6  # item factor = its category's center + this much item noise
TYPE_LOG_DURATION = np.array([0.0, -0.7, 1.5])  # ads are short, live streams long

# implicit sub-scenario modes: mode = (MODE_TABLE[active_degree, item_type] + s) mod 4
MODE_TABLE = np.array([[1, 2, 3], [0, 2, 1], [3, 0, 1], [2, 3, 0]])
MODE_NAMES = ("baseline", "personal", "casual", "contextual")
MODE_SHIFT = np.array([0.0, 0.2, -0.3, 0.1])
MODE_AFFINITY = 0.8  # mode 1: extra weight on the affinity
MODE_POSITION = -0.20  # mode 2: steep position decay ...
MODE_DURATION = -0.50  # ... and short videos preferred
MODE_CONTEXT_STD = 0.6  # mode 3: an hour_bucket x item_cat table with this spread

PAIR_STD = 0.45  # spread of each scenario's two-field interaction table
POP_STD = 0.2  # population (gender x city) main effect
CLUSTERS = 3  # population clusters per scenario
CLUSTER_SHIFT_STD = 0.4
CLUSTER_DURATION_STD = 0.3


@dataclass(frozen=True)
class Archetype:
    """The fixed parameters of a scenario (scenario s uses archetype s mod 5)."""

    name: str
    base: float  # b_s: base logit
    affinity: float  # gamma_s: weight of the user x item affinity
    seq_cat: float  # kappa_s: weight of the recency-weighted category match with history
    seq_item: float  # lambda_s: weight of "the target item is among the last clicks"
    pair: tuple[str, str]  # the scenario-specific interaction's two fields


ARCHETYPES = (
    Archetype("featured", -2.1, 1.0, 1.0, 0.3, ("age_group", "item_cat")),
    Archetype("follow", -1.7, 1.3, 3.0, 1.0, ("fans_user_num_range", "upload_type")),
    Archetype("discover", -2.4, 0.5, -1.5, -1.0, ("register_days_range", "music_type")),
    Archetype("nearby", -1.8, 0.8, 0.0, 0.0, ("city", "item_cat")),
    Archetype("live", -2.9, 1.0, 2.5, 1.5, ("device_tier", "item_type")),
)
PAIR_FIELDS = sorted({name for arch in ARCHETYPES for name in arch.pair})
REPEAT_SHIFT = 0.15  # scenarios 5.. reuse archetype s mod 5 with base + 0.15 * (s // 5)


def scenario_names(scenarios: int) -> dict[int, str]:
    return {s: ARCHETYPES[s % 5].name + ("" if s < 5 else f"_{s // 5}") for s in range(scenarios)}


def scenario_shares(scenarios: int) -> np.ndarray:
    """The expected share of rows of each scenario."""
    w = (np.arange(scenarios) + 1.0) ** -ZIPF_SCENARIO
    return w / w.sum()


# -- drawn parameters -----------------------------------------------------------------------
@dataclass
class PlantedParams:
    """Every drawn parameter of the click model (the fixed ones are module constants)."""

    scenarios: int
    base: np.ndarray  # [S]
    affinity: np.ndarray  # [S]
    seq_cat: np.ndarray  # [S]
    seq_item: np.ndarray  # [S]
    pair_tables: list[np.ndarray]  # S tables [card_a, card_b] for ARCHETYPES[s % 5].pair
    cluster: np.ndarray  # [S, gender * city] population cluster in [0, CLUSTERS)
    cluster_shift: np.ndarray  # [S, CLUSTERS]
    cluster_duration: np.ndarray  # [S, CLUSTERS]
    pop_shift: np.ndarray  # [gender * city]
    context_table: np.ndarray  # [hour_bucket, item_cat] (mode 3)
    cat_factors: np.ndarray  # [item_cat, RANK] category centers of the item factors


def draw_parameters(scenarios: int, seed: int) -> PlantedParams:
    """The drawn parameters for `seed`; scenario s's draws do not depend on `scenarios`."""
    rng = np.random.default_rng([seed, 1])
    pops = CARD["gender"] * CARD["city"]
    pop_shift = rng.normal(0.0, POP_STD, pops)
    context_table = rng.normal(0.0, MODE_CONTEXT_STD, (CARD["hour_bucket"], CARD["item_cat"]))
    cat_factors = rng.normal(0.0, 1.0, (CARD["item_cat"], RANK))
    pair_tables, cluster, c_shift, c_dur = [], [], [], []
    for s in range(scenarios):  # parameter draws only: S small tables
        rs = np.random.default_rng([seed, 2, s])
        a, b = ARCHETYPES[s % 5].pair
        pair_tables.append(rs.normal(0.0, PAIR_STD, (CARD[a], CARD[b])))
        cluster.append(rs.integers(0, CLUSTERS, pops))
        shift = rs.normal(0.0, CLUSTER_SHIFT_STD, CLUSTERS)
        c_shift.append(shift - shift.mean())  # clusters move around the scenario's base
        c_dur.append(rs.normal(0.0, CLUSTER_DURATION_STD, CLUSTERS))
    arch = [ARCHETYPES[s % 5] for s in range(scenarios)]
    return PlantedParams(
        scenarios=scenarios,
        base=np.array([a.base + REPEAT_SHIFT * (s // 5) for s, a in enumerate(arch)]),
        affinity=np.array([a.affinity for a in arch]),
        seq_cat=np.array([a.seq_cat for a in arch]),
        seq_item=np.array([a.seq_item for a in arch]),
        pair_tables=pair_tables,
        cluster=np.stack(cluster) if cluster else np.zeros((0, pops), np.int64),
        cluster_shift=np.array(c_shift).reshape(scenarios, CLUSTERS),
        cluster_duration=np.array(c_dur).reshape(scenarios, CLUSTERS),
        pop_shift=pop_shift,
        context_table=context_table,
        cat_factors=cat_factors,
    )


# -- helpers ----------------------------------------------------------------------------------
def _cat(rng: np.random.Generator, name: str, n: int) -> np.ndarray:
    return rng.choice(len(PROBS[name]), size=n, p=PROBS[name]).astype(np.int64)


def _bucket(x: np.ndarray, edges: list[float]) -> np.ndarray:
    return np.searchsorted(np.asarray(edges), x, side="right").astype(np.int64)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def duration_z(duration_s: np.ndarray) -> np.ndarray:
    """The standardized log duration the click model uses."""
    return (np.log(duration_s) - 3.2) / 0.9


# -- the simulation ---------------------------------------------------------------------------
@dataclass
class World:
    """Users and items: their fields and latent parameters, indexed by raw id."""

    users: dict[str, np.ndarray]  # categorical user fields, [n_users] each
    items: dict[str, np.ndarray]  # categorical item fields, [n_items] each
    user_factor: np.ndarray  # [n_users, RANK]
    user_bias: np.ndarray  # [n_users]
    register_days: np.ndarray  # [n_users]
    counts: np.ndarray  # [n_users] events per user (>= 1)
    pref_cum: np.ndarray  # [n_users, S] cumulative tab preference
    favourite: np.ndarray  # [n_users, 2] favourite categories
    item_factor: np.ndarray  # [n_items, RANK]
    item_bias: np.ndarray  # [n_items]
    author_bias: np.ndarray  # [n_authors]
    duration: np.ndarray  # [n_items] seconds
    item_ctr_stat: np.ndarray  # [n_items]
    popularity: np.ndarray  # [n_items] exposure weight


@dataclass
class Simulation:
    """Everything drawn for one call, rows in (user, time) order (not yet log order)."""

    params: PlantedParams
    world: World
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


def _draw_world(P: PlantedParams, rows: int, seed: int) -> World:
    S = P.scenarios
    n_users = max(20, rows // ROWS_PER_USER)
    n_items = max(CARD["item_cat"] * 5, rows // ROWS_PER_ITEM)
    n_authors = max(10, n_items // ITEMS_PER_AUTHOR)

    ru = np.random.default_rng([seed, 3])
    u = {
        "gender": _cat(ru, "gender", n_users),
        "city": _cat(ru, "city", n_users),
        "age_group": _cat(ru, "age_group", n_users),
        "user_active_degree": _cat(ru, "user_active_degree", n_users),
        "device_tier": _cat(ru, "device_tier", n_users),
        "is_lowactive_period": (ru.random(n_users) < 0.1).astype(np.int64),
        "is_video_author": (ru.random(n_users) < 0.15).astype(np.int64),
        "u_noise0": ru.integers(0, 10, n_users),
        "u_noise1": ru.integers(0, 25, n_users),
    }
    register_days = np.round(np.exp(ru.normal(5.0, 1.0, n_users))) + 1
    u["register_days_range"] = _bucket(register_days, [30, 90, 180, 365, 730])
    # follow count tracks activity but has no effect of its own (a correlated noise field)
    follow = np.exp(ru.normal(3.5 - 0.5 * u["user_active_degree"], 1.0))
    u["follow_user_num_range"] = _bucket(follow, [10, 50, 100, 300, 1000, 3000])
    fans = np.exp(ru.normal(2.0, 1.5, n_users))
    u["fans_user_num_range"] = _bucket(fans, [1, 10, 100, 1e3, 1e4])
    user_factor = ru.normal(0.0, 1.0 / np.sqrt(RANK), (n_users, RANK))
    user_bias = ru.normal(0.0, USER_BIAS_STD, n_users) + ACTIVE_SHIFT[u["user_active_degree"]]
    # the active users are the heavy ones; every user has at least one event
    activity = np.exp(ru.normal(0.0, 0.8, n_users) - 0.4 * u["user_active_degree"])
    counts = 1 + ru.multinomial(rows - n_users, activity / activity.sum())
    # each user's tab preference scatters around the global Zipf shares
    pref = np.log(scenario_shares(S)) + ru.normal(0.0, 0.7, (n_users, S))
    pref = np.exp(pref - pref.max(1, keepdims=True))
    pref_cum = np.cumsum(pref / pref.sum(1, keepdims=True), axis=1)
    # favourite categories: the two closest to the user's factor
    favourite = np.argsort(-(user_factor @ P.cat_factors.T), axis=1, kind="stable")[:, :2]

    ri = np.random.default_rng([seed, 4])
    cat_pop = ri.dirichlet(np.full(CARD["item_cat"], 2.0))
    item_cat = ri.choice(CARD["item_cat"], n_items, p=cat_pop).astype(np.int64)
    item_cat[: CARD["item_cat"]] = np.arange(CARD["item_cat"])  # no empty category
    it = {
        "item_cat": item_cat,
        "item_type": _cat(ri, "item_type", n_items),
        "author_id": ri.integers(0, n_authors, n_items),
        "music_type": ri.integers(0, CARD["music_type"], n_items),
        "upload_type": ri.integers(0, CARD["upload_type"], n_items),
        "visible_status": _cat(ri, "visible_status", n_items),
        "i_noise0": ri.integers(0, 8, n_items),
        "i_noise1": ri.integers(0, 30, n_items),
    }
    log_dur = ri.normal(3.2 + TYPE_LOG_DURATION[it["item_type"]], 0.7)
    duration = np.round(np.exp(log_dur).clip(3, 3600), 1)
    it["duration_bucket"] = _bucket(duration, [10, 20, 40, 80, 160])
    item_factor = P.cat_factors[item_cat] + ri.normal(0.0, ITEM_FACTOR_STD, (n_items, RANK))
    item_bias = ri.normal(0.0, ITEM_BIAS_STD, n_items)
    author_bias = ri.normal(0.0, AUTHOR_BIAS_STD, n_authors)
    # a noisy running-CTR statistic: an honest proxy of the item bias
    item_ctr_stat = _sigmoid(-1.8 + item_bias + ri.normal(0.0, 0.3, n_items))
    popularity = np.exp(ri.normal(0.0, 1.2, n_items))
    return World(
        users=u,
        items=it,
        user_factor=user_factor,
        user_bias=user_bias,
        register_days=register_days,
        counts=counts,
        pref_cum=pref_cum,
        favourite=favourite,
        item_factor=item_factor,
        item_bias=item_bias,
        author_bias=author_bias,
        duration=duration,
        item_ctr_stat=item_ctr_stat,
        popularity=popularity,
    )


def _draw_impressions(W: World, user: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A share of impressions from the user's favourite categories, the rest by popularity."""
    rows, item_cat = len(user), W.items["item_cat"]
    order = np.argsort(item_cat, kind="stable")  # items grouped by category
    cum = np.cumsum(W.popularity[order])
    size = np.bincount(item_cat, minlength=CARD["item_cat"])
    end = np.cumsum(size)
    begin = end - size
    mass_end = cum[end - 1]
    mass_begin = np.where(begin > 0, cum[np.maximum(begin - 1, 0)], 0.0)
    want = W.favourite[user, (rng.random(rows) < SECOND_FAVOURITE).astype(np.int64)]
    from_favourite = rng.random(rows) < EXPOSE_FAVOURITE
    u = rng.random(rows)
    in_cat = np.searchsorted(cum, mass_begin[want] + u * (mass_end[want] - mass_begin[want]))
    anywhere = np.searchsorted(cum, u * cum[-1])
    pos = np.where(
        from_favourite,
        in_cat.clip(begin[want], end[want] - 1),
        anywhere.clip(0, len(order) - 1),
    )
    return order[pos]


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
    W = _draw_world(P, rows, seed)
    imp = _draw_timeline(P, W, rows, seed)
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


@dataclass
class _Timeline:
    """The impressions in (user, time) order, before any click is drawn."""

    user: np.ndarray  # [rows] user index
    start: np.ndarray  # [users] first row of each user
    time_ms: np.ndarray
    scenario: np.ndarray
    item: np.ndarray
    position: np.ndarray
    hour_bucket: np.ndarray
    context: dict[str, np.ndarray]
    draw: np.ndarray  # uniform draws: label = draw < true_prob


def _draw_timeline(P: PlantedParams, W: World, rows: int, seed: int) -> _Timeline:
    S = P.scenarios
    counts = W.counts
    rr = np.random.default_rng([seed, 5])
    user = np.repeat(np.arange(len(counts)), counts)
    start = np.zeros(len(counts), np.int64)
    np.cumsum(counts[:-1], out=start[1:])
    day = rr.integers(0, DAYS, rows)
    hour = rr.choice(24, rows, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    t = START_MS + day * 86_400_000 + hour * 3_600_000 + rr.integers(0, 3_600_000, rows)
    t = t[np.lexsort((t, user))]  # user is already sorted: this sorts times within users
    t = t + (np.arange(rows) - start[user])  # + event index: strictly increasing per user
    scen = (rr.random(rows)[:, None] > W.pref_cum[user]).sum(1).clip(0, S - 1)
    item = _draw_impressions(W, user, rr)
    position = np.minimum(rr.geometric(0.25, rows) - 1, 9).astype(np.float64)
    network = _cat(rr, "network", rows)
    dense_noise = rr.normal(0.0, 1.0, rows)
    draw = np.random.default_rng([seed, 6]).random(rows)
    hour_bucket = ((t // 3_600_000) % 24) // 4  # context fields follow the clock
    day_idx = (t - START_MS) // 86_400_000
    dates = START_DATE + day_idx.astype("timedelta64[D]")
    context = {
        "hour_bucket": hour_bucket,
        "weekday": (dates.astype(np.int64) + 3) % 7,  # 1970-01-01 was a Thursday; 0 = Monday
        "network": network,
        "position": position,
        "dense_noise": dense_noise,
        "day": day_idx,
        "date": _yyyymmdd(dates),
    }
    return _Timeline(user, start, t, scen, item, position, hour_bucket, context, draw)


def _static_terms(
    P: PlantedParams, W: World, imp: _Timeline
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
    imp: _Timeline,
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
        p = _sigmoid(static_sm[lo:hi] + kappa_sm[lo:hi] * mc + lam_sm[lo:hi] * mi)
        click = draw_sm[lo:hi] < p
        m_cat[lo:hi], m_item[lo:hi], p_all[lo:hi], y_all[lo:hi] = mc, mi, p, click
        c = np.flatnonzero(click)  # ranks of the users who clicked at this step
        buf[c, :, 1:] = buf[c, :, :-1]
        buf[c, 0, 0], buf[c, 1, 0] = i_t[c], c_t[c]
    # back to (user, time) order
    return m_cat[sm], m_item[sm], p_all[sm], y_all[sm].astype(np.int8)


# -- planted mechanism structures (`msctr prepare synthetic --structure`) --------------------
# Each option keeps the default data's users, items, impressions and uniform draws, removes the
# default's three weak mechanism terms (MECHANISM_TERMS) and plants one paper's structure at
# full strength; "none" plants nothing in their place: the negative control. docs/synthetic.md
# gives each formula and its share of the Bayes AUC.
STRUCTURES = ("hierrec", "sfpnet", "hmdn", "none")
MECHANISM_TERMS = ("mode", "cluster", "seq_cat", "seq_item")

# HierRec (Section 1, Figure 1): implicit sub-scenarios inside each explicit one. In tab s the
# 12 combos user_active_degree x item_type are dealt 3 each to SUBSCENARIOS sub-scenarios (a
# fresh deal per tab, so the same combo is a different sub-scenario in another tab);
# sub-scenario k has its own feature interactions: its own importance w[k, f] (sign included)
# of each field f of HIERREC_FIELDS, whose value effects E_f are shared, as HierRec's implicit
# heads weigh the fields (Eq. 6). A first version gave sub-scenario k a pair table of two
# fields of its own instead; at the mechanism recipes' 60,000 rows no model learned any of it
# before the id embeddings overfit (docs/mechanisms.md), so the experiment could not speak.
SUBSCENARIOS = 4
HIERREC_FIELDS = (
    "age_group",
    "device_tier",
    "register_days_range",
    "fans_user_num_range",
    "music_type",
    "upload_type",
    "hour_bucket",
    "duration_bucket",
)
HIERREC_EFFECT_STD = 0.4  # each field's value effects E_f, shared by the sub-scenarios
HIERREC_WEIGHT_STD = 1.0  # the sub-scenario's importance w[k, f] of field f
SUB_SHIFT_STD = 0.3  # the sub-scenario's offset within its tab

# SFPNet (Section 3, SAM and RTM): how much the behaviour sequence matters to the target, and
# in which direction, depends on the tab; so does the importance of each of SFP_FIELDS.
SFP_SEQ_CAT = np.array([-2.0, 3.5, -2.5, 0.0, 3.0])  # per archetype: weight of m_cat
SFP_SEQ_ITEM = np.array([-1.0, 1.5, -1.5, 0.0, 2.0])  # ... and of m_item
SFP_FIELDS = HIERREC_FIELDS  # the same eight fields, read the SFPNet way
SFP_EFFECT_STD = 0.3  # each field's main-effect table E_f, shared by the tabs
SFP_WEIGHT_STD = 1.0  # the tab's importance w[s, f] of field f (sign included)

# HMDN (Section 2): in tab s the gender x city populations fall into HMDN_PARTITIONS
# partitions of HMDN_CLUSTERS clusters each (3 populations per cluster); each cluster has its
# own click function offset + coef . (z_dur, affinity_z, position_z), its coefficients those
# of its partition plus its own deviation.
HMDN_PARTITIONS = 3
HMDN_CLUSTERS = 2
HMDN_PART_SHIFT_STD = 0.5
HMDN_PART_COEF_STD = 0.6
HMDN_CLUSTER_SHIFT_STD = 0.35
HMDN_CLUSTER_COEF_STD = 0.4


def draw_structure(structure: str, scenarios: int, seed: int) -> dict[str, np.ndarray]:
    """The drawn tables of a planted structure; tab s's draws do not depend on `scenarios`.

    Streams [seed, 7, j] and [seed, 8, j, s] (j = the structure's index) are new, so the
    default data's draws are untouched.
    """
    j = STRUCTURES.index(structure)
    rg = np.random.default_rng([seed, 7, j])
    tabs = [np.random.default_rng([seed, 8, j, s]) for s in range(scenarios)]
    if structure == "hierrec":
        combos = CARD["user_active_degree"] * CARD["item_type"]
        deal = np.repeat(np.arange(SUBSCENARIOS), combos // SUBSCENARIOS)
        return {
            "effects": [rg.normal(0.0, HIERREC_EFFECT_STD, CARD[f]) for f in HIERREC_FIELDS],
            "weight": rg.normal(0.0, HIERREC_WEIGHT_STD, (SUBSCENARIOS, len(HIERREC_FIELDS))),
            "sub": np.array([r.permutation(deal) for r in tabs]).reshape(scenarios, combos),
            "shift": np.array([r.normal(0.0, SUB_SHIFT_STD, SUBSCENARIOS) for r in tabs]).reshape(
                scenarios, SUBSCENARIOS
            ),
        }
    if structure == "sfpnet":
        return {
            "effects": [rg.normal(0.0, SFP_EFFECT_STD, CARD[f]) for f in SFP_FIELDS],
            "weight": np.array(
                [r.normal(0.0, SFP_WEIGHT_STD, len(SFP_FIELDS)) for r in tabs]
            ).reshape(scenarios, len(SFP_FIELDS)),
            "seq_cat": SFP_SEQ_CAT[np.arange(scenarios) % 5],
            "seq_item": SFP_SEQ_ITEM[np.arange(scenarios) % 5],
        }
    if structure == "hmdn":
        pops = CARD["gender"] * CARD["city"]
        leaves = HMDN_PARTITIONS * HMDN_CLUSTERS
        leaf, shift, coef = [], [], []
        for r in tabs:
            leaf.append(r.permutation(np.repeat(np.arange(leaves), pops // leaves)))
            p_shift = r.normal(0.0, HMDN_PART_SHIFT_STD, HMDN_PARTITIONS)
            p_coef = r.normal(0.0, HMDN_PART_COEF_STD, (HMDN_PARTITIONS, 3))
            part = np.arange(leaves) // HMDN_CLUSTERS  # leaf -> its partition
            shift.append(p_shift[part] + r.normal(0.0, HMDN_CLUSTER_SHIFT_STD, leaves))
            coef.append(p_coef[part] + r.normal(0.0, HMDN_CLUSTER_COEF_STD, (leaves, 3)))
        return {
            "leaf": np.array(leaf).reshape(scenarios, pops),
            "shift": np.array(shift).reshape(scenarios, leaves),
            "coef": np.array(coef).reshape(scenarios, leaves, 3),
        }
    return {}


def _row_values(name: str, W: World, imp: _Timeline) -> np.ndarray:
    """Each row's code of a user, item or context field."""
    if name in W.users:
        return W.users[name][imp.user]
    if name in W.items:
        return W.items[name][imp.item]
    return imp.context[name]


def _weighted_effects(
    start: np.ndarray, D: dict, group: np.ndarray, W: World, imp: _Timeline
) -> np.ndarray:
    """start + sum_f D["weight"][group, f] * D["effects"][f][x_f] over HIERREC_FIELDS (=
    SFP_FIELDS): each row's field effects weighed by its group's row of importances (the
    implicit sub-scenario for hierrec, the tab for sfpnet). One lookup over all rows per field."""
    term = start
    for f, name in enumerate(HIERREC_FIELDS):
        term = term + D["weight"][group, f] * D["effects"][f][_row_values(name, W, imp)]
    return term


def _hierrec_terms(D: dict, W: World, imp: _Timeline) -> tuple:
    combo = (
        W.users["user_active_degree"][imp.user] * CARD["item_type"] + W.items["item_type"][imp.item]
    )
    sub = D["sub"][imp.scenario, combo]  # the row's implicit sub-scenario in its tab
    term = _weighted_effects(D["shift"][imp.scenario, sub], D, sub, W, imp)
    return {"hierrec_sub": term}, None, {"subscenario": sub}


def _sfpnet_terms(D: dict, W: World, imp: _Timeline) -> tuple:
    term = _weighted_effects(np.zeros(len(imp.user)), D, imp.scenario, W, imp)
    return {"sfpnet_fields": term}, (D["seq_cat"], D["seq_item"]), {}


def _hmdn_terms(D: dict, W: World, imp: _Timeline) -> tuple:
    u = W.users
    pop = u["gender"][imp.user] * CARD["city"] + u["city"][imp.user]
    leaf = D["leaf"][imp.scenario, pop]
    aff = AFFINITY_SCALE * np.einsum("rk,rk->r", W.user_factor[imp.user], W.item_factor[imp.item])
    x = np.stack([duration_z(W.duration[imp.item]), aff / 0.5, (imp.position - 3.0) / 3.0], axis=1)
    coef = D["coef"][imp.scenario, leaf]  # [rows, 3]
    term = D["shift"][imp.scenario, leaf] + np.einsum("rk,rk->r", coef, x)
    latent = {"partition": leaf // HMDN_CLUSTERS, "leaf": leaf}
    return {"hmdn_nested": term}, None, latent


STRUCTURE_TERMS = {"hierrec": _hierrec_terms, "sfpnet": _sfpnet_terms, "hmdn": _hmdn_terms}


def term_shares(
    sim: Simulation, names: list[str] | tuple[str, ...] | None = None, test_share: float = 0.1
) -> dict[str, float]:
    """Each term's share of the Bayes AUC on the test rows (the last `test_share` of the log,
    as `prepare` splits it): AUC of true_prob minus AUC of sigmoid(logit - term), labels
    unchanged. `names` may join several terms with "+" to remove them together."""
    from sklearn.metrics import roc_auc_score

    perm = np.lexsort((sim.user, sim.time_ms))  # log order
    n = len(perm)
    test = perm[int(n * (1.0 - test_share)) :]
    y = sim.label[test]
    total = np.sum(list(sim.terms.values()), axis=0)[test]
    full = roc_auc_score(y, total)
    out = {}
    for group in names if names is not None else list(sim.terms):
        minus = sum(sim.terms[t][test] for t in group.split("+"))
        out[group] = float(full - roc_auc_score(y, total - minus))
    return out


# -- the frame ---------------------------------------------------------------------------------
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
        _list_series("hist_item_id", item, hist, valid),
        _list_series("hist_item_cat", W.items["item_cat"][item], hist, valid),
        pl.Series("is_click", sim.label[perm], dtype=pl.Int8),
        pl.Series("true_prob", sim.true_prob[perm], dtype=pl.Float64),
    )


def _raw(name: str, codes: np.ndarray) -> np.ndarray | pl.Series:
    labels = STRING_VALUES.get(name)
    return codes if labels is None else pl.Series(name, labels).gather(codes)


def _list_series(name: str, values: np.ndarray, hist: np.ndarray, valid: np.ndarray) -> pl.Series:
    """[rows, L] history row indices (valid a prefix of each row) -> list<i64> of their values."""
    offsets = np.zeros(len(hist) + 1, np.int64)
    np.cumsum(valid.sum(1), out=offsets[1:])
    flat = values[hist[valid]].astype(np.int64)  # row-major: most recent first within a row
    arr = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat))
    return pl.Series(name, pl.from_arrow(arr)).cast(pl.List(pl.Int64))


def _yyyymmdd(days: np.ndarray) -> np.ndarray:
    """datetime64[D] -> yyyymmdd integers (KuaiRand's `date`)."""
    y = days.astype("datetime64[Y]")
    m = days.astype("datetime64[M]")
    year = y.astype(np.int64) + 1970
    month = (m - y.astype("datetime64[M]")).astype(np.int64) + 1
    dom = (days - m.astype("datetime64[D]")).astype(np.int64) + 1
    return year * 10_000 + month * 100 + dom


# -- evaluation helpers -----------------------------------------------------------------------
def bayes_metrics(
    data: SourceTable | pl.DataFrame | pl.LazyFrame,
    label: str = "is_click",
    prob: str = "true_prob",
    scenario: str = "tab",
) -> dict:
    """AUC and logloss of the true probability (what no model can beat), overall and per scenario.

    `data` is a SourceTable (its FieldMap names the columns) or any frame holding the
    three named columns, e.g. a prepared split with ``label``, ``_true_prob``, ``scenario``.
    """
    from sklearn.metrics import log_loss, roc_auc_score

    if isinstance(data, SourceTable):
        f = data.fields
        if f.true_prob is None:
            raise UserError(f"dataset '{data.name}' has no true click probability")
        label, prob, scenario = f.label, f.true_prob, f.scenario
        data = data.frame
    df = data.lazy().select(scenario, label, prob).collect()

    def one(d: pl.DataFrame) -> dict:
        y, p = d[label].to_numpy(), d[prob].to_numpy()
        both = 0 < y.sum() < len(y)
        return {
            "rows": len(y),
            "ctr": float(y.mean()),
            "mean_true_prob": float(p.mean()),
            "auc": float(roc_auc_score(y, p)) if both else float("nan"),
            "logloss": float(log_loss(y, p, labels=[0, 1])),
        }

    out = one(df)
    groups = df.partition_by(scenario, as_dict=True, maintain_order=False)
    out["scenarios"] = {int(k[0]): one(d) for k, d in sorted(groups.items())}
    return out


def bayes_auc(data: SourceTable | pl.DataFrame | pl.LazyFrame, **columns: str) -> float:
    """AUC of the true click probability: the best AUC any model can reach on these rows."""
    return bayes_metrics(data, **columns)["auc"]
