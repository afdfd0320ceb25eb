"""Planted-signal synthetic data, the click model's constants and drawn parameters: a
KuaiRand-shaped log whose click probability is known.

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
once), never a Python loop per row or per user (`msctr.data.planted.clicks`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
def draw_category(rng: np.random.Generator, name: str, n: int) -> np.ndarray:
    return rng.choice(len(PROBS[name]), size=n, p=PROBS[name]).astype(np.int64)


def bucket(x: np.ndarray, edges: list[float]) -> np.ndarray:
    return np.searchsorted(np.asarray(edges), x, side="right").astype(np.int64)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def duration_z(duration_s: np.ndarray) -> np.ndarray:
    """The standardized log duration the click model uses."""
    return (np.log(duration_s) - 3.2) / 0.9
