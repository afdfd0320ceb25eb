"""Every figure msctr draws into a run's, an ablation's or a sweep's folder: the reliability
diagram and learning curves of `msctr eval`, the ablation bars, the sweep's sensitivity
figure, and the figure a model declares (`register(..., figure=ModelFigure(...))`, e.g.
HierRec's head weights), drawn from what its `report()` wrote to run.json. Matplotlib is
imported here alone, on first use, with the Agg backend (no display).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from msctr.io import atomic_path, reading
from msctr.models.registry import get_spec

BAYES = "Bayes ceiling"  # the row (and line) of the true probabilities on planted-signal data


def pyplot():
    """matplotlib.pyplot with the Agg backend: figures are files, never windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_axes(figsize: tuple[float, float], panels: int = 1):
    plt = pyplot()
    fig, axes = plt.subplots(1, panels, figsize=figsize)
    return plt, fig, axes


def save(plt, fig, path: Path, dpi: int = 110) -> Path:
    """`fig` laid out and written atomically to `path` as a PNG, then closed."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def reliability(curves: dict[str, dict], bins: int, path: Path) -> Path:
    """Predicted against observed click rate per equal-mass bin, one line per model, the
    diagonal for perfect calibration; axes up to the largest point, both the same scale."""
    plt, fig, ax = figure_axes((6.0, 5.4))
    top = 0.0
    # the models in curves.png's colours, the Bayes ceiling last in grey
    names = [n for n in curves if n != BAYES] + [n for n in curves if n == BAYES]
    for i, name in enumerate(names):
        c = curves[name]
        xy = [(x, y) for x, y in zip(c["predicted"], c["observed"]) if x is not None]
        if not xy:
            continue
        xs, ys = zip(*xy)
        top = max(top, *xs, *ys)
        bayes = name == BAYES
        ax.plot(
            xs, ys, marker="" if bayes else "o", markersize=4, label=name,
            color="0.4" if bayes else f"C{i % 10}", linestyle="--" if bayes else "-",
        )  # fmt: skip
    top = min(1.0, top * 1.05) or 1.0
    ax.plot([0, top], [0, top], color="0.75", linewidth=1, zorder=0, label="perfectly calibrated")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel("mean predicted CTR in the bin")
    ax.set_ylabel("observed CTR in the bin")
    ax.set_title(f"Reliability: {bins} equal-mass bins of the test rows (first seed)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    return save(plt, fig, path)


def learning_curves(runs: list[tuple[str, int, list[dict], int | None]], path: Path) -> Path:
    plt, fig, (auc_ax, loss_ax) = figure_axes((11.0, 4.4), panels=2)
    colors: dict[str, str] = {}
    for key, _seed, lines, best in runs:
        first = key not in colors
        color = colors.setdefault(key, f"C{len(colors) % 10}")
        epochs = [r["epoch"] for r in lines]
        for ax, field in ((auc_ax, "val_auc"), (loss_ax, "train_loss")):
            ax.plot(epochs, [r[field] for r in lines], color=color, alpha=0.8, marker=".",
                    label=key if first and ax is auc_ax else None)  # fmt: skip
        if best is not None:
            at = next(r for r in lines if r["epoch"] == best)
            auc_ax.plot(best, at["val_auc"], marker="*", markersize=12, color=color,
                        markeredgecolor="black", linestyle="")  # fmt: skip
    auc_ax.set_title("validation AUC per epoch (★ best epoch, the weights kept)", fontsize=10)
    loss_ax.set_title("training loss (BCE) per epoch", fontsize=10)
    for ax in (auc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    auc_ax.legend(fontsize=7, title="one line per seed", title_fontsize=7)
    return save(plt, fig, path)


def auc_axis(means: list[float], stds: list[float], pad: float) -> tuple[float, float] | None:
    """The y range of an AUC figure (mean ± std per bar or point, plus `pad` of the span on
    each side) over the finite values only; None when there is none, so the caller writes no
    figure instead of failing in matplotlib on a nan limit."""
    spans = [(m - s, m + s) for m, s in zip(means, stds, strict=True) if math.isfinite(m + s)]
    if not spans:
        return None
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    margin = max(hi - lo, 1e-3) * pad
    return lo - margin, hi + margin


def ablation(result: dict, path: Path) -> bool:
    """`msctr ablate`'s bar chart (full model and each variant); False (and no file) when no
    AUC is a number."""
    plt = pyplot()
    names = [r["model"] for r in result["models"]]
    means = [r["auc"]["mean"] for r in result["models"]]
    stds = [r["auc"]["std"] for r in result["models"]]
    limits = auc_axis(means, stds, pad=0.3)
    if limits is None:
        return False
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(names), 3.6))
    ax.bar(
        range(len(names)),
        means,
        yerr=stds,
        capsize=4,
        color=["#3b6ea8"] + ["#c0c7d0"] * (len(names) - 1),
    )
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylim(*limits)
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    ax.set_title(result["recipe"])
    save(plt, fig, path, dpi=120)
    return True


def sensitivity(result: dict, path: Path) -> bool:
    """`msctr sweep`'s paper-style sensitivity figure: test AUC (mean ± std over seeds)
    against the value; False (and no file) when no AUC is a number."""
    plt = pyplot()
    pts = result["points"]
    kind = result["axis"]
    if kind == "categorical":
        x = list(range(len(pts)))
    else:
        x = [float(pt["value"]) for pt in pts]
    order = np.argsort(x, kind="stable")
    xs = [x[i] for i in order]
    means = [pts[i]["auc"]["mean"] for i in order]
    stds = [pts[i]["auc"]["std"] if len(pts[i]["auc"]["runs"]) > 1 else 0.0 for i in order]
    limits = auc_axis(means, stds, pad=0.25)
    if limits is None:
        return False
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    ax.errorbar(
        xs, means, yerr=stds, color="#3b6ea8", marker="o", markersize=6, linewidth=1.8,
        capsize=4, elinewidth=1.2, label=_seeds(result["model"], pts),
    )  # fmt: skip
    b = result["best"]
    bx = x[b]
    ax.plot(
        [bx], [pts[b]["auc"]["mean"]], marker="*", markersize=15, color="#d62728",
        linestyle="none", label=f"best: {pts[b]['text']}", zorder=5,
    )  # fmt: skip
    if kind == "log":
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(xs, [pts[i]["text"] for i in order])
    if kind != "categorical":
        pad = (max(xs) / min(xs)) ** 0.08 if kind == "log" else (max(xs) - min(xs)) * 0.08
        lo, hi = (min(xs) / pad, max(xs) * pad) if kind == "log" else (min(xs) - pad, max(xs) + pad)
        ax.set_xlim(lo, hi)
    else:
        ax.set_xlim(-0.4, len(pts) - 0.6)
    ax.set_ylim(*limits)
    ax.set_xlabel(f"{result['param']}" + (" (log scale)" if kind == "log" else ""))
    ax.set_ylabel("test AUC")
    ax.set_title(f"{result['recipe']}: {result['model']}, AUC vs {result['param']}", fontsize=10)
    ax.grid(True, linestyle=":", linewidth=0.6, alpha=0.7)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], fontsize=8, loc="best")  # the line first
    save(plt, fig, path, dpi=120)
    return True


def _seeds(model: str, pts: list[dict]) -> str:
    n = max(len(pt["seeds"]) for pt in pts)
    return f"{model} (mean ± std over {n} seeds)" if n > 1 else f"{model} (1 seed)"


def model_figure(
    name: str, label: str, run_json: Path, scenarios: list[str], out: Callable[[str], Path]
) -> Path | None:
    """The figure model `name` declares, drawn from the `model_report` its `report()` put in
    `run_json` (a seed's run.json) and written to `out(stem)`; None when the model declares
    none or the run has nothing for it."""
    declared = get_spec(name).figure
    if declared is None or not run_json.is_file():
        return None
    with reading(run_json, "retrain this model and seed"):
        report = json.loads(run_json.read_text()).get("model_report")
    if not report:
        return None
    plt = pyplot()
    fig = declared.draw(plt, report, scenarios, label)
    if fig is None:
        return None
    return save(plt, fig, out(declared.stem))
