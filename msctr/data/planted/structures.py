"""Planted mechanism structures (`msctr prepare synthetic --structure`): one paper's structure
in place of the default click model's weak mechanism terms."""

from __future__ import annotations

import numpy as np

from msctr.data.planted.params import AFFINITY_SCALE, CARD, duration_z
from msctr.data.planted.world import SyntheticWorld, Timeline

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


def _row_values(name: str, W: SyntheticWorld, imp: Timeline) -> np.ndarray:
    """Each row's code of a user, item or context field."""
    if name in W.users:
        return W.users[name][imp.user]
    if name in W.items:
        return W.items[name][imp.item]
    return imp.context[name]


def _weighted_effects(
    start: np.ndarray, D: dict, group: np.ndarray, W: SyntheticWorld, imp: Timeline
) -> np.ndarray:
    """start + sum_f D["weight"][group, f] * D["effects"][f][x_f] over HIERREC_FIELDS (=
    SFP_FIELDS): each row's field effects weighed by its group's row of importances (the
    implicit sub-scenario for hierrec, the tab for sfpnet). One lookup over all rows per field."""
    term = start
    for f, name in enumerate(HIERREC_FIELDS):
        term = term + D["weight"][group, f] * D["effects"][f][_row_values(name, W, imp)]
    return term


def _hierrec_terms(D: dict, W: SyntheticWorld, imp: Timeline) -> tuple:
    combo = (
        W.users["user_active_degree"][imp.user] * CARD["item_type"] + W.items["item_type"][imp.item]
    )
    sub = D["sub"][imp.scenario, combo]  # the row's implicit sub-scenario in its tab
    term = _weighted_effects(D["shift"][imp.scenario, sub], D, sub, W, imp)
    return {"hierrec_sub": term}, None, {"subscenario": sub}


def _sfpnet_terms(D: dict, W: SyntheticWorld, imp: Timeline) -> tuple:
    term = _weighted_effects(np.zeros(len(imp.user)), D, imp.scenario, W, imp)
    return {"sfpnet_fields": term}, (D["seq_cat"], D["seq_item"]), {}


def _hmdn_terms(D: dict, W: SyntheticWorld, imp: Timeline) -> tuple:
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
