"""Planted-signal rows written as the raw files of KuaiRand and Ali-CCP, byte format and quirks
included, so the real-data adapters can be tested end to end (and benchmarked at full size)
without the real data. The generating rows, their true click probabilities and the values the
adapters should produce are returned on the side (a "truth" frame), never written next to the
raw files the adapters read.

KuaiRand (``write_kuairand``): the synthetic users, items and scenarios become KuaiRand users,
videos and tabs. Scenario s is tab ``TABS[s]`` (KuaiRand's tabs by size: 0, 2, 1, 3, 6, ...);
the generator's 14 days are stretched monotonically onto 2022-04-08 .. 2022-05-08 (Beijing
time) and cut into the two standard periods, so every user's event order -- and with it every
behavior sequence -- is kept. User fields map to the user columns (gender, city, age group and
device tier become onehot_feat0..3), item fields to the basic video columns (item_cat is
server_width, duration bucket server_height, item type video_type). Quirks as in the real
files: the ``*_range`` and ``user_active_degree`` strings, ``video_type`` strings, NaN and
empty cells, -124 for missing, integers written as floats ("1.0"), a quoted ``tag`` list, and
users / videos absent from the feature files (the inner joins drop their rows).

Ali-CCP (``write_aliccp``): each (user, day) is a request with one ``common_feature_index``;
its common features (user fields, and the histories 109_14 / 110_14 / 127_14 / 150_14 as the
distinct categories / shops / brands / intentions of the user's clicks before the request,
most recent first, with their counts as values) go to ``common_features_*.csv``, each sample's
item and cross fields to ``sample_skeleton_*.csv``, in the ``\\x01 \\x02 \\x03`` format with
global feature ids (each field its own id range). The first half of the days is the raw
train file, the second half the raw test file; a few non-clicks are marked bought (the rows
the adapter must drop).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from msctr.data.planted.clicks import Simulation, simulate
from msctr.data.planted.params import ACTIVE_DEGREES, CARD, DAYS, START_MS
from msctr.data.planted.world import SyntheticWorld, yyyymmdd
from msctr.data.sources.synthetic import list_series
from msctr.errors import UserError

# -- KuaiRand ---------------------------------------------------------------------------------
TABS = (0, 2, 1, 3, 6, 10, 4, 7, 11, 5, 9, 14, 13, 12, 8)  # KuaiRand-1K's tabs, largest first
KR_START_MS = int(np.datetime64("2022-04-07T16:00", "ms").astype(np.int64))  # 04-08 00:00 +8h
KR_DAYS = 31  # 2022-04-08 .. 2022-05-08
BEIJING_MS = 8 * 3_600_000
PERIOD_SPLIT_DATE = 20220422  # first date of the second standard period
# labels of the generator's buckets, in the real files' vocabulary
FOLLOW_RANGES = ("0", "(0,10]", "(10,50]", "(50,100]", "(100,150]", "(250,500]", "500+")
FOLLOW_BOUNDS = ((0, 0), (1, 10), (11, 50), (51, 100), (101, 150), (251, 500), (501, 3000))
FANS_RANGES = ("0", "[1,10)", "[10,100)", "[100,1k)", "[1k,5k)", "[1w,10w)")
FANS_BOUNDS = ((0, 0), (1, 9), (10, 99), (100, 999), (1000, 4999), (10000, 99999))
FRIEND_RANGES = ("0", "[1,5)", "[5,30)", "[30,60)", "[60,120)", "[120,250)", "250+")
FRIEND_BOUNDS = ((0, 0), (1, 4), (5, 29), (30, 59), (60, 119), (120, 249), (250, 600))
REGISTER_RANGES = ("15-30", "61-90", "91-180", "181-365", "366-730", "730+")
VIDEO_TYPES = ("NORMAL", "AD", "UNKNOWN")  # the generator's NORMAL / AD / LIVE
UPLOAD_TYPES = ("ShortImport", "LongImport", "Web", "ShortCamera", "LongCamera", "PictureSet")
WIDTHS = tuple(360 + 36 * k for k in range(CARD["item_cat"]))  # item_cat -> server_width
HEIGHTS = (640, 720, 960, 1024, 1280, 1920)  # duration bucket -> server_height
STAT_COLUMNS = (
    "counts", "show_cnt", "show_user_num", "play_cnt", "play_user_num", "play_duration",
    "complete_play_cnt", "complete_play_user_num", "valid_play_cnt", "valid_play_user_num",
    "long_time_play_cnt", "long_time_play_user_num", "short_time_play_cnt",
    "short_time_play_user_num", "play_progress", "comment_stay_duration", "like_cnt",
    "like_user_num", "click_like_cnt", "double_click_cnt", "cancel_like_cnt",
    "cancel_like_user_num", "comment_cnt", "comment_user_num", "direct_comment_cnt",
    "reply_comment_cnt", "delete_comment_cnt", "delete_comment_user_num", "comment_like_cnt",
    "comment_like_user_num", "follow_cnt", "follow_user_num", "cancel_follow_cnt",
    "cancel_follow_user_num", "share_cnt", "share_user_num", "download_cnt",
    "download_user_num", "report_cnt", "report_user_num", "reduce_similar_cnt",
    "reduce_similar_user_num", "collect_cnt", "collect_user_num", "cancel_collect_cnt",
    "cancel_collect_user_num", "direct_comment_user_num", "reply_comment_user_num",
    "share_all_cnt", "share_all_user_num", "outsite_share_all_cnt",
)  # fmt: skip


def _beijing_date(t_ms: np.ndarray) -> np.ndarray:
    days = ((t_ms + BEIJING_MS) // 86_400_000).astype("datetime64[D]")
    return yyyymmdd(days)


def _in_range(rng: np.random.Generator, bounds: tuple, codes: np.ndarray) -> np.ndarray:
    lo = np.array([b[0] for b in bounds])[codes]
    hi = np.array([b[1] for b in bounds])[codes]
    return lo + np.floor(rng.random(len(codes)) * (hi - lo + 1)).astype(np.int64)


def _float_text(x: np.ndarray, missing: np.ndarray | None = None, token: str = "") -> pl.Series:
    """Integers written the way pandas writes a float column ("3.0"), `token` where missing."""
    s = pl.Series(x.astype(np.float64)).cast(pl.String)
    if missing is not None:
        s = pl.select(pl.when(pl.Series(missing)).then(pl.lit(token)).otherwise(s)).to_series()
    return s


@dataclass
class KuaiRandFiles:
    """What `write_kuairand` wrote, and the truth beside it."""

    folder: Path  # the `data/` folder holding the CSVs
    truth: pl.DataFrame  # one row per standard-log row, in log order (see write_kuairand)
    users: int
    videos: int


def write_kuairand(
    root: str | Path,
    rows: int = 20_000,
    scenarios: int = 7,
    seed: int = 0,
    variant: str = "1k",
    users: int | None = None,
    videos: int | None = None,
    history: int = 0,
    drop_users: float = 0.02,
    drop_videos: float = 0.01,
    random_log_share: float = 0.01,
    statistics: bool = True,
) -> KuaiRandFiles:
    """Write ``root/KuaiRand-<V>/data/*.csv`` from a planted-signal simulation of `rows` rows.

    `users` folds the simulated users onto that many KuaiRand users and `videos` spreads each
    item over several video ids to reach about that many videos (both for benchmark shapes;
    they blur the planted signal, so tests leave them None). `history` > 0 adds to the truth
    each row's last `history` clicked videos strictly before it (the generator's own record).
    Truth columns: period (0/1), pos (position in the concatenated standard logs), user_id,
    video_id, time_ms, date, tab, scenario, is_click, true_prob, has_user, has_video
    [, hist_video_id].
    """
    if scenarios > len(TABS):
        raise UserError(f"KuaiRand has {len(TABS)} tabs; use at most that many scenarios")
    sim = simulate(rows, scenarios, seed)
    W = sim.world
    rng = np.random.default_rng([seed, 101])
    n_users, n_items = len(W.counts), len(W.item_bias)
    name = {"pure": "KuaiRand-Pure", "1k": "KuaiRand-1K", "27k": "KuaiRand-27K"}[variant]
    folder = Path(root) / name / "data"
    folder.mkdir(parents=True, exist_ok=True)

    # ids: users folded, items spread over `spread` video ids each
    raw_user = np.arange(n_users) % users if users else np.arange(n_users)
    spread = max(1, math.ceil(videos / n_items)) if videos else 1
    sub = rng.integers(0, spread, rows) if spread > 1 else np.zeros(rows, np.int64)
    video = sim.item * spread + sub
    n_videos = n_items * spread

    period, user, t, date, tab, click, order = _kuairand_logs(
        sim, rng, raw_user, video, n_videos, folder, variant, seed, random_log_share
    )
    keep_user = _kuairand_users(W, raw_user, folder, variant, seed, drop_users)
    keep_video = _kuairand_videos(
        W, video, n_videos, spread, folder, variant, seed, drop_videos, statistics
    )

    truth = pl.DataFrame(
        {
            "period": period,
            "user_id": user,
            "video_id": video,
            "time_ms": t,
            "date": date,
            "tab": tab,
            "scenario": sim.scenario,
            "is_click": click,
            "true_prob": sim.true_prob,
            "has_user": keep_user[user],
            "has_video": keep_video[video],
        }
    )
    if history:
        hist = sim.history(history)
        valid = hist >= 0
        truth = truth.with_columns(list_series("hist_video_id", video, hist, valid))
    truth = truth[order].with_row_index("pos")
    return KuaiRandFiles(folder, truth, users=int(keep_user.sum()), videos=int(keep_video.sum()))


def _kuairand_logs(
    sim: Simulation,
    rng: np.random.Generator,
    raw_user: np.ndarray,
    video: np.ndarray,
    n_videos: int,
    folder: Path,
    variant: str,
    seed: int,
    random_log_share: float,
) -> tuple[np.ndarray, ...]:
    """The two standard logs and the random-exposure log; each row's (period, user, time,
    date, tab, click) in simulation order, and the log order."""
    W, rows = sim.world, len(sim.user)
    # time: a monotone stretch of the generator's clock keeps every user's event order
    t = KR_START_MS + (sim.time_ms - START_MS) * KR_DAYS // DAYS
    date = _beijing_date(t)
    hourmin = ((t + BEIJING_MS) // 3_600_000 % 24) * 100
    period = (date >= PERIOD_SPLIT_DATE).astype(np.int8)
    tab = np.asarray(TABS)[sim.scenario]
    user = raw_user[sim.user]
    order = np.lexsort((user, t, period))  # log order: period file, then time, then user
    click = sim.label.astype(np.int8)
    dur_ms = np.round(W.duration[sim.item] * 1000).astype(np.int64)
    play = np.where(click == 1, dur_ms * (0.3 + rng.random(rows)), dur_ms * 0.1 * rng.random(rows))
    log = pl.DataFrame(
        {
            "user_id": user,
            "video_id": video,
            "date": date,
            "hourmin": hourmin,
            "time_ms": t,
            "is_click": click,
            "is_like": (click == 1) & (rng.random(rows) < 0.03),
            "is_follow": (click == 1) & (rng.random(rows) < 0.005),
            "is_comment": (click == 1) & (rng.random(rows) < 0.004),
            "is_forward": (click == 1) & (rng.random(rows) < 0.002),
            "is_hate": (click == 0) & (rng.random(rows) < 0.001),
            "long_view": (play > 0.5 * dur_ms).astype(np.int8),
            "play_time_ms": play.astype(np.int64),
            "duration_ms": dur_ms,
            "profile_stay_time": np.where(rng.random(rows) < 0.01, rng.integers(1, 60, rows), 0),
            "comment_stay_time": np.where(rng.random(rows) < 0.01, rng.integers(1, 90, rows), 0),
            "is_profile_enter": rng.random(rows) < 0.01,
            "is_rand": np.zeros(rows, np.int8),
            "tab": tab,
        }
    ).with_columns(pl.col(pl.Boolean).cast(pl.Int8))[order]
    period_o = period[order]
    for k, p in enumerate(("4_08_to_4_21", "4_22_to_5_08")):
        log.filter(pl.Series(period_o == k)).write_csv(folder / f"log_standard_{p}_{variant}.csv")

    # a small random-exposure log (is_rand = 1), as shipped; the adapters do not read it
    n_rand = max(1, int(rows * random_log_share))
    second = log.filter(pl.Series(period_o == 1))
    rr = second.sample(min(n_rand, second.height), seed=seed).sort("time_ms", "user_id")
    rr = rr.with_columns(
        video_id=pl.Series(rng.integers(0, n_videos, rr.height)),
        is_rand=pl.lit(1, pl.Int8),
        is_click=pl.Series((rng.random(rr.height) < 0.1).astype(np.int8)),
    )
    rr.write_csv(folder / f"log_random_4_22_to_5_08_{variant}.csv")
    return period, user, t, date, tab, click, order


def _kuairand_users(
    W: SyntheticWorld,
    raw_user: np.ndarray,
    folder: Path,
    variant: str,
    seed: int,
    drop_users: float,
) -> np.ndarray:
    """user_features_<variant>.csv; which raw users it keeps."""
    # user features: every raw user takes the fields of the first simulated user folded onto it
    rep = np.unique(raw_user, return_index=True)[1]
    U = {k: v[rep] for k, v in W.users.items()}
    nu = len(rep)
    ru = np.random.default_rng([seed, 102])
    follow = U["follow_user_num_range"]
    fans = U["fans_user_num_range"]
    friend = ru.integers(0, len(FRIEND_RANGES), nu)
    reg_days = np.maximum(W.register_days[rep].astype(np.int64), 15)
    user_cols: dict[str, object] = {
        "user_id": np.arange(nu),
        "user_active_degree": np.asarray(ACTIVE_DEGREES)[U["user_active_degree"]],
        "is_lowactive_period": U["is_lowactive_period"],
        "is_live_streamer": (ru.random(nu) < 0.05).astype(np.int64),
        "is_video_author": U["is_video_author"],
        "follow_user_num": _in_range(ru, FOLLOW_BOUNDS, follow),
        "follow_user_num_range": np.asarray(FOLLOW_RANGES)[follow],
        "fans_user_num": _in_range(ru, FANS_BOUNDS, fans),
        "fans_user_num_range": np.asarray(FANS_RANGES)[fans],
        "friend_user_num": _in_range(ru, FRIEND_BOUNDS, friend),
        "friend_user_num_range": np.asarray(FRIEND_RANGES)[friend],
        "register_days": reg_days,
        "register_days_range": np.asarray(REGISTER_RANGES)[U["register_days_range"]],
        # the quirks: floats for ints, NaN / empty / -124 for missing
        "onehot_feat0": _float_text(U["gender"]),
        "onehot_feat1": U["city"],
        "onehot_feat2": U["age_group"],
        "onehot_feat3": U["device_tier"],
        "onehot_feat4": U["u_noise0"],
        "onehot_feat5": U["u_noise1"],
    }
    for j in range(6, 18):
        vals = ru.integers(0, 2 + 3 * j, nu)
        if j == 6:
            user_cols[f"onehot_feat{j}"] = _float_text(vals, ru.random(nu) < 0.05, "NaN")
        elif j == 7:
            user_cols[f"onehot_feat{j}"] = np.where(ru.random(nu) < 0.05, -124, vals)
        elif j == 8:
            user_cols[f"onehot_feat{j}"] = _float_text(vals, ru.random(nu) < 0.05, "")
        else:
            user_cols[f"onehot_feat{j}"] = vals
    keep_user = np.random.default_rng([seed, 103]).random(nu) >= drop_users
    users_df = pl.DataFrame(user_cols).filter(pl.Series(keep_user))
    users_df.write_csv(folder / f"user_features_{variant}.csv")
    return keep_user


def _kuairand_videos(
    W: SyntheticWorld,
    video: np.ndarray,
    n_videos: int,
    spread: int,
    folder: Path,
    variant: str,
    seed: int,
    drop_videos: float,
    statistics: bool,
) -> np.ndarray:
    """video_features_basic_<variant>.csv (and the statistics file); which videos it keeps."""
    # basic video features: video v is item v // spread
    item_of = np.arange(n_videos) // spread
    It = {k: v[item_of] for k, v in W.items.items()}
    rv = np.random.default_rng([seed, 104])
    vis = np.asarray([1, 2, 3])[It["visible_status"]]
    video_cols = {
        "video_id": np.arange(n_videos),
        "author_id": It["author_id"],
        "video_type": np.asarray(VIDEO_TYPES)[It["item_type"]],
        "upload_dt": pl.Series(
            (np.datetime64("2022-03-01") - rv.integers(0, 400, n_videos)).astype(str)
        ),
        "upload_type": np.asarray(UPLOAD_TYPES)[It["upload_type"]],
        "visible_status": _float_text(vis, rv.random(n_videos) < 0.01, ""),
        "video_duration": _float_text(np.round(W.duration[item_of] * 1000)),
        "server_width": np.asarray(WIDTHS)[It["item_cat"]],
        "server_height": np.where(
            rv.random(n_videos) < 0.01, -124, np.asarray(HEIGHTS)[It["duration_bucket"]]
        ),
        "music_id": rv.integers(0, max(10, n_videos // 20), n_videos),
        "music_type": _float_text(It["music_type"]),
        "tag": pl.format("{},{}", pl.Series(It["item_cat"]), pl.Series(It["i_noise0"])),
    }
    video_cols["tag"] = pl.select(video_cols["tag"]).to_series()
    keep_video = np.random.default_rng([seed, 105]).random(n_videos) >= drop_videos
    videos_df = pl.DataFrame(video_cols).filter(pl.Series(keep_video))
    videos_df.write_csv(folder / f"video_features_basic_{variant}.csv", quote_style="necessary")
    if statistics:
        stats = {"video_id": np.arange(n_videos)}
        counts = np.bincount(video, minlength=n_videos)
        for j, c in enumerate(STAT_COLUMNS):
            stats[c] = counts * (1 + j % 3) + rv.integers(0, 3, n_videos)
        pl.DataFrame(stats).write_csv(folder / f"video_features_statistic_{variant}.csv")
    return keep_video


# -- Ali-CCP ------------------------------------------------------------------------------------
# global feature ids: field f's local value v is written as FIELD_BASE[f] + v (all distinct)
ALICCP_USER_FIELDS = ("101", "121", "122", "124", "125", "126", "127", "128", "129")
ALICCP_ITEM_FIELDS = ("205", "206", "207", "210", "216")
ALICCP_CROSS_FIELDS = ("508", "509", "702", "853")
ALICCP_HISTORY_FIELDS = ("109_14", "110_14", "127_14", "150_14")
ALICCP_FIELDS = (
    *ALICCP_USER_FIELDS, *ALICCP_HISTORY_FIELDS, *ALICCP_ITEM_FIELDS, *ALICCP_CROSS_FIELDS, "301",
)  # fmt: skip
FIELD_BASE = {f: (k + 1) * 10_000_000 for k, f in enumerate(ALICCP_FIELDS)}
# which item attribute each history summarizes, and the cross field pairing the two
HISTORY_OF = {"109_14": "206", "110_14": "207", "127_14": "216", "150_14": "210"}
CROSS_OF = {"508": "109_14", "509": "110_14", "702": "127_14", "853": "150_14"}


FILES = ("train", "test")  # raw Ali-CCP comes as a train and a test file of each kind


@dataclass
class AliCCPFiles:
    folder: Path
    truth: pl.DataFrame  # one row per skeleton line (see write_aliccp)


def _entry(field: str, fid: pl.Expr, value: pl.Expr | None = None) -> pl.Expr:
    """One ``field\\x02id\\x03value`` entry; null where the id is null (the field is absent)."""
    v = pl.lit("1.0") if value is None else value.cast(pl.Float64).cast(pl.String)
    return pl.concat_str([pl.lit(f"{field}\x02"), fid.cast(pl.String), pl.lit("\x03"), v])


def write_aliccp(
    root: str | Path,
    rows: int = 20_000,
    seed: int = 0,
    history: int = 30,
    bought: float = 0.002,
    chunk_rows: int = 4_000_000,
    truth: bool = True,
) -> AliCCPFiles:
    """Write ``root/sample_skeleton_{train,test}.csv`` and ``common_features_{train,test}.csv``.

    Scenario s (3 of them) is position 301 = s + 1. Histories summarize each request's user's
    last `history` clicks before the request. Truth (one row per skeleton line, file order):
    file ("train"/"test"), sample_id, click, buy, cfi, true_prob, scenario, kept (not click 0
    and buy 1), one column per single-valued field with the global id the adapter must read
    (null where absent; a history field's single value is its list's last entry, as in the
    widely shared processed files), and hist_<field> lists of global ids, most recent first.

    Memory is bounded by `chunk_rows`: more rows than that are simulated as consecutive
    independent worlds (chunk k with seed ``seed + k``; users, items and authors offset so
    the chunks share no id) appended to the same files, so the full Ali-CCP size (85 M
    samples) can be written on a small machine. ``truth=False`` skips the truth frame, which
    at that size would not fit in memory.
    """
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    n_chunks = max(1, math.ceil(rows / chunk_rows))
    sizes = [rows // n_chunks + (k < rows % n_chunks) for k in range(n_chunks)]
    names = ("sample_skeleton", "common_features")
    handles = {(n, f): open(folder / f"{n}_{f}.csv", "wb") for n in names for f in FILES}
    offset = {"user": 0, "item": 0, "author": 0, **{f: 0 for f in FILES}}
    truths = []
    try:
        for k, n in enumerate(sizes):
            chunk = _aliccp_chunk(simulate(n, 3, seed + k), seed + k, history, bought, offset)
            samples, common, chunk_truth = chunk
            for f in FILES:
                part = samples.filter(pl.col("file") == f)
                part.select(
                    "sample_id", "click", "buy", "cfi", "feature_num", "feature_list"
                ).write_csv(
                    handles["sample_skeleton", f], include_header=False, quote_style="never"
                )
                common.filter(pl.col("file") == f).select(
                    "cfi", "feature_num", "feature_list"
                ).write_csv(
                    handles["common_features", f], include_header=False, quote_style="never"
                )
                offset[f] += part.height
            if truth:
                truths.append(chunk_truth())
    finally:
        for h in handles.values():
            h.close()
    return AliCCPFiles(folder, pl.concat(truths) if truth else pl.DataFrame())


def _aliccp_chunk(
    sim: Simulation, seed: int, history: int, bought: float, offset: dict[str, int]
) -> tuple[pl.DataFrame, pl.DataFrame, Callable[[], pl.DataFrame]]:
    """One world's skeleton and common-feature rows (ids shifted by `offset`, which is then
    advanced past them) and a function that builds its truth frame."""
    U, it = sim.world.users, sim.world.items
    user = sim.user.astype(np.int64) + offset["user"]
    item = sim.item + offset["item"]
    author_base = offset["author"]
    offset["user"] += len(U["gender"])
    offset["item"] += len(it["item_cat"])
    offset["author"] += int(it["author_id"].max()) + 1
    rng = np.random.default_rng([seed, 201])
    brand = it["item_cat"] * CARD["music_type"] + it["music_type"]  # finer than category
    attr = {
        "206": it["item_cat"],
        "207": it["author_id"] + author_base,
        "216": brand,
        "210": it["upload_type"],
    }

    q_of_row, first, cfi = _requests(sim, user)
    H = _histories(sim, first, history, attr)
    common = _common_rows(sim, user, first, cfi, H, rng)
    samples = _sample_rows(sim, user, item, attr, q_of_row, H, common, rng, bought)
    samples, common = _files(sim, first, samples, common, offset)

    def build_truth() -> pl.DataFrame:  # what the adapter must read for each skeleton line
        lists = [
            H.filter(pl.col("field") == hf)
            .group_by("q", maintain_order=True)
            .agg(pl.col("fid").alias(f"hist_{hf}"))
            for hf in ALICCP_HISTORY_FIELDS
        ]
        truth = samples.select(
            "file", "sample_id", "click", "buy", "cfi", "true_prob", "scenario", "q",
            *ALICCP_ITEM_FIELDS, *ALICCP_CROSS_FIELDS, "301",
        )  # fmt: skip
        truth = truth.join(
            common.select("q", *ALICCP_USER_FIELDS), on="q", how="left", maintain_order="left"
        )
        for lst in lists:
            truth = truth.join(lst, on="q", how="left", maintain_order="left")
        truth = truth.with_columns(
            [pl.col(f"hist_{hf}").list.last().alias(hf) for hf in ALICCP_HISTORY_FIELDS],
            kept=~((pl.col("click") == 0) & (pl.col("buy") == 1)),
        ).drop("q")
        return truth

    return samples, common, build_truth


def _requests(sim: Simulation, user: np.ndarray) -> tuple[np.ndarray, np.ndarray, pl.Series]:
    """Each row's request, each request's first row and its common_feature_index."""
    # requests: one per (user, day); rows are in (user, time) order, so each is a contiguous run
    req = user * DAYS + sim.context["day"]
    change = np.r_[True, req[1:] != req[:-1]]
    q_of_row = np.cumsum(change) - 1
    first = np.flatnonzero(change)
    cfi = pl.Series(
        np.char.mod("%016x", (req[first] + 1).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    )
    return q_of_row, first, cfi


def _histories(
    sim: Simulation, first: np.ndarray, history: int, attr: dict[str, np.ndarray]
) -> pl.DataFrame:
    """One row per (request, history field, value): its global id, its count among the
    request's earlier clicks, and its text entry, most recent first within a field."""
    Q = len(first)
    # histories: distinct attribute values of the request's earlier clicks, most recent first
    hist = sim.history(history)[first]  # [Q, history] row indices
    ok = hist.ravel() >= 0
    events = pl.DataFrame(
        {
            "q": np.repeat(np.arange(Q), history)[ok],
            "rank": np.tile(np.arange(history), Q)[ok],
            "row": hist.ravel()[ok],
        }
    )
    parts = []
    for hf, a in HISTORY_OF.items():
        vals = attr[a][sim.item[events["row"].to_numpy()]]
        parts.append(
            events.with_columns(v=pl.Series(vals), field=pl.lit(hf))
            .group_by("q", "field", "v")
            .agg(pl.col("rank").min().alias("first"), pl.len().alias("count"))
        )
    order = {f: k for k, f in enumerate(ALICCP_HISTORY_FIELDS)}
    H = (
        pl.concat(parts)
        .with_columns(
            fid=pl.col("v") + pl.col("field").replace_strict(FIELD_BASE, return_dtype=pl.Int64),
            fk=pl.col("field").replace_strict(order, return_dtype=pl.Int32),
        )
        .sort("q", "fk", "first")
        .with_columns(
            entry=pl.concat_str(
                [
                    pl.col("field"),
                    pl.lit("\x02"),
                    pl.col("fid").cast(pl.String),
                    pl.lit("\x03"),
                    pl.col("count").cast(pl.Float64).cast(pl.String),
                ]
            )
        )
    )
    return H


def _common_rows(
    sim: Simulation,
    user: np.ndarray,
    first: np.ndarray,
    cfi: pl.Series,
    H: pl.DataFrame,
    rng: np.random.Generator,
) -> pl.DataFrame:
    """The common-feature rows: each request's user fields and histories."""
    U, Q = sim.world.users, len(first)
    hist_text = H.group_by("q", maintain_order=True).agg(pl.col("entry").str.join("\x01"))
    uq = sim.user[first]
    profile = {
        "101": user[first],
        "121": U["age_group"][uq] * 4 + U["device_tier"][uq],
        "122": U["register_days_range"][uq],
        "124": U["gender"][uq] + 1,
        "125": U["age_group"][uq],
        "126": U["fans_user_num_range"][uq],
        "127": U["user_active_degree"][uq],
        "128": U["is_lowactive_period"][uq],
        "129": U["city"][uq],
    }
    miss = pl.Series(rng.random(Q) < 0.03)  # some requests lack fields 126 and 127
    common = pl.DataFrame({"q": np.arange(Q), "cfi": cfi}).with_columns(
        [
            pl.when(miss & pl.lit(f in ("126", "127")))
            .then(None)
            .otherwise(pl.Series(f, v + FIELD_BASE[f]))
            .alias(f)
            for f, v in profile.items()
        ]
    )
    common = common.join(hist_text, on="q", how="left", maintain_order="left")
    common = common.with_columns(
        feature_list=pl.concat_str(
            [_entry(f, pl.col(f)) for f in ALICCP_USER_FIELDS] + [pl.col("entry")],
            separator="\x01",
            ignore_nulls=True,
        )
    ).with_columns(feature_num=pl.col("feature_list").str.count_matches("\x02"))
    return common


def _sample_rows(
    sim: Simulation,
    user: np.ndarray,
    item: np.ndarray,
    attr: dict[str, np.ndarray],
    q_of_row: np.ndarray,
    H: pl.DataFrame,
    common: pl.DataFrame,
    rng: np.random.Generator,
    bought: float,
) -> pl.DataFrame:
    """The skeleton rows: each sample's item, cross and position fields."""
    # samples: item, cross and position fields; crosses pair an item attribute with the history
    click = sim.label.astype(np.int64)
    n = len(click)
    buy = ((click == 1) & (rng.random(n) < 0.1)) | ((click == 0) & (rng.random(n) < bought))
    samples = pl.DataFrame(
        {
            "q": q_of_row,
            "user": user,
            "time_ms": sim.time_ms,
            "click": click,
            "buy": buy.astype(np.int64),
            "true_prob": sim.true_prob,
            "scenario": sim.scenario,
            "205": item + FIELD_BASE["205"],
            **{a: attr[a][sim.item] for a in attr},
            "301": sim.scenario + 1 + FIELD_BASE["301"],
        }
    )
    for cross, hf in CROSS_OF.items():
        a = HISTORY_OF[hf]
        counts = H.filter(pl.col("field") == hf).select("q", pl.col("v").alias(a), "count")
        samples = samples.join(counts, on=["q", a], how="left", maintain_order="left")
        samples = samples.with_columns(
            (pl.col(a) * 2 + pl.col("count").is_not_null() + FIELD_BASE[cross]).alias(cross),
            pl.col("count").fill_null(0).alias(f"D{cross}"),
        ).drop("count")
    samples = samples.with_columns(
        [(pl.col(a) + FIELD_BASE[a]).alias(a) for a in attr]
    ).with_columns(  # a few samples lack a brand
        pl.when(pl.Series(rng.random(n) < 0.02)).then(None).otherwise(pl.col("216")).alias("216")
    )
    sample_entries = [_entry(f, pl.col(f)) for f in ALICCP_ITEM_FIELDS]
    sample_entries += [_entry(f, pl.col(f), pl.col(f"D{f}")) for f in ALICCP_CROSS_FIELDS]
    sample_entries += [_entry("301", pl.col("301"))]
    samples = samples.with_columns(
        feature_list=pl.concat_str(sample_entries, separator="\x01", ignore_nulls=True)
    ).with_columns(feature_num=pl.col("feature_list").str.count_matches("\x02"))
    samples = samples.join(common.select("q", "cfi"), on="q", how="left", maintain_order="left")
    return samples


def _files(
    sim: Simulation,
    first: np.ndarray,
    samples: pl.DataFrame,
    common: pl.DataFrame,
    offset: dict[str, int],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Each skeleton and common-feature row's file, and the samples' ids, in file order."""
    # files: first half of the days is raw train, second half raw test; log order inside (a
    # chunk's rows follow the previous chunk's, so a multi-chunk file is in log order per chunk)
    is_test = pl.Series(sim.context["day"] >= DAYS // 2)
    samples = samples.with_columns(
        file=pl.when(is_test).then(pl.lit("test")).otherwise(pl.lit("train"))
    )
    common = common.with_columns(file=pl.Series(is_test.to_numpy()[first])).with_columns(
        file=pl.when(pl.col("file")).then(pl.lit("test")).otherwise(pl.lit("train"))
    )
    samples = samples.sort("file", "time_ms", "user", descending=[True, False, False])
    samples = samples.with_columns(
        sample_id=pl.int_range(1, pl.len() + 1).over("file")
        + pl.col("file").replace_strict(offset, return_dtype=pl.Int64)
    )
    return samples, common
