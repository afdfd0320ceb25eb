"""The planted-signal world: users and items with their fields and latent parameters, and the
timeline of impressions (who sees which item, where and when) before any click is drawn."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from msctr.data.planted.params import (
    ACTIVE_SHIFT,
    AUTHOR_BIAS_STD,
    CARD,
    DAYS,
    EXPOSE_FAVOURITE,
    HOUR_WEIGHTS,
    ITEM_BIAS_STD,
    ITEM_FACTOR_STD,
    ITEMS_PER_AUTHOR,
    RANK,
    ROWS_PER_ITEM,
    ROWS_PER_USER,
    SECOND_FAVOURITE,
    START_DATE,
    START_MS,
    TYPE_LOG_DURATION,
    USER_BIAS_STD,
    PlantedParams,
    bucket,
    draw_category,
    scenario_shares,
    sigmoid,
)


@dataclass
class SyntheticWorld:
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


def draw_world(P: PlantedParams, rows: int, seed: int) -> SyntheticWorld:
    S = P.scenarios
    n_users = max(20, rows // ROWS_PER_USER)
    n_items = max(CARD["item_cat"] * 5, rows // ROWS_PER_ITEM)
    n_authors = max(10, n_items // ITEMS_PER_AUTHOR)

    ru = np.random.default_rng([seed, 3])
    u = {
        "gender": draw_category(ru, "gender", n_users),
        "city": draw_category(ru, "city", n_users),
        "age_group": draw_category(ru, "age_group", n_users),
        "user_active_degree": draw_category(ru, "user_active_degree", n_users),
        "device_tier": draw_category(ru, "device_tier", n_users),
        "is_lowactive_period": (ru.random(n_users) < 0.1).astype(np.int64),
        "is_video_author": (ru.random(n_users) < 0.15).astype(np.int64),
        "u_noise0": ru.integers(0, 10, n_users),
        "u_noise1": ru.integers(0, 25, n_users),
    }
    register_days = np.round(np.exp(ru.normal(5.0, 1.0, n_users))) + 1
    u["register_days_range"] = bucket(register_days, [30, 90, 180, 365, 730])
    # follow count tracks activity but has no effect of its own (a correlated noise field)
    follow = np.exp(ru.normal(3.5 - 0.5 * u["user_active_degree"], 1.0))
    u["follow_user_num_range"] = bucket(follow, [10, 50, 100, 300, 1000, 3000])
    fans = np.exp(ru.normal(2.0, 1.5, n_users))
    u["fans_user_num_range"] = bucket(fans, [1, 10, 100, 1e3, 1e4])
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
        "item_type": draw_category(ri, "item_type", n_items),
        "author_id": ri.integers(0, n_authors, n_items),
        "music_type": ri.integers(0, CARD["music_type"], n_items),
        "upload_type": ri.integers(0, CARD["upload_type"], n_items),
        "visible_status": draw_category(ri, "visible_status", n_items),
        "i_noise0": ri.integers(0, 8, n_items),
        "i_noise1": ri.integers(0, 30, n_items),
    }
    log_dur = ri.normal(3.2 + TYPE_LOG_DURATION[it["item_type"]], 0.7)
    duration = np.round(np.exp(log_dur).clip(3, 3600), 1)
    it["duration_bucket"] = bucket(duration, [10, 20, 40, 80, 160])
    item_factor = P.cat_factors[item_cat] + ri.normal(0.0, ITEM_FACTOR_STD, (n_items, RANK))
    item_bias = ri.normal(0.0, ITEM_BIAS_STD, n_items)
    author_bias = ri.normal(0.0, AUTHOR_BIAS_STD, n_authors)
    # a noisy running-CTR statistic: an honest proxy of the item bias
    item_ctr_stat = sigmoid(-1.8 + item_bias + ri.normal(0.0, 0.3, n_items))
    popularity = np.exp(ri.normal(0.0, 1.2, n_items))
    return SyntheticWorld(
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


def _draw_impressions(W: SyntheticWorld, user: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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


@dataclass
class Timeline:
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


def draw_timeline(P: PlantedParams, W: SyntheticWorld, rows: int, seed: int) -> Timeline:
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
    network = draw_category(rr, "network", rows)
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
        "date": yyyymmdd(dates),
    }
    return Timeline(user, start, t, scen, item, position, hour_bucket, context, draw)


def yyyymmdd(days: np.ndarray) -> np.ndarray:
    """datetime64[D] -> yyyymmdd integers (KuaiRand's `date`)."""
    y = days.astype("datetime64[Y]")
    m = days.astype("datetime64[M]")
    year = y.astype(np.int64) + 1970
    month = (m - y.astype("datetime64[M]")).astype(np.int64) + 1
    dom = (days - m.astype("datetime64[D]")).astype(np.int64) + 1
    return year * 10_000 + month * 100 + dom
