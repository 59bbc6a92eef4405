"""The report: a table of figures (title, caption, drawing function) and ``report.md``.

Every figure is drawn from the :class:`~ifa_jax.runner.stages.RunContext` alone, that is
from files the run folder holds (or the model, for CAMs), so a resumed run draws the
same figures as a fresh one. Adding a figure is one function and one :class:`Figure`
entry in :data:`FIGURES`.

Examples:
    Numbers in figure titles:

    >>> from ifa_jax.runner.report import number
    >>> number(0.012345), number(-0.0), number(1234.5)
    ('0.0123', '0', '1234')
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np

from ifa_jax import cams, io, plots, scale
from ifa_jax.consistency import LEVELS
from ifa_jax.runner import comparison
from ifa_jax.runner.evaluations import Evaluation
from ifa_jax.runner.stages import RunContext


@dataclasses.dataclass(frozen=True)
class Figure:
    """``draw(ctx)`` returns a matplotlib figure, or None where it does not apply (e.g.
    image figures for 1-D signals, or an evaluation that was not run)."""

    key: str
    title: Callable[[RunContext], str] | str
    caption: str
    draw: Callable[[RunContext], object | None]


def number(v) -> str:
    """A value for a figure title: 3 significant digits (whole numbers from 100), never
    "-0" (-0.04 stays -0.04)."""
    v = float(v) + 0.0  # -0.0 + 0.0 is 0.0
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _image_maps(ctx: RunContext, x, cam, common: bool) -> np.ndarray:
    spatial = x.shape[1:-1]
    if common:
        return np.clip(
            np.asarray(cams.upsample(scale.apply_scale(cam, ctx.scales[ctx.method]), spatial)), 0, 1
        )
    return np.asarray(cams.upsample(scale.minmax_per_image(cam), spatial))


def draw_cams(ctx: RunContext):
    """Validation CAMs on the common scale beside the same maps min-max per image; None for inputs
    that are not 2-D images."""
    ds = ctx.splits.validation
    if len(ds.input_shape) != 3:
        return None
    x, y = ds.gather(ctx.sample_indices(ctx.config.figure_samples))
    res, out = ctx.explain(x, "predicted")
    titles = [
        f"y={int(a)} p={int(b)}\nlogit {number(s)}"
        for a, b, s in zip(y, np.asarray(res.target), np.asarray(res.score))
    ]
    return plots.cam_grid(
        x, _image_maps(ctx, x, out.cam, True), _image_maps(ctx, x, out.cam, False), titles
    )


def draw_consistency(ctx: RunContext):
    """Scatter of CAM activation level against the logit, per method and scale."""
    if "consistency" not in ctx.evaluations:
        return None
    numbers, arrays = ctx.evaluations["consistency"]
    if numbers["scatter_class"] is None:  # no method could be evaluated per class
        return None
    c = str(numbers["scatter_class"])
    panels = {
        f"{m} {k}": (arrays[f"{m} {k}"], arrays["logit"], numbers["per_class"][m][c][k]["pearson"])
        for m in numbers["per_class"]
        for k in LEVELS
    }
    return plots.consistency_scatter(panels)


def draw_importance(ctx: RunContext):
    """The importance matrices IM_c and IM_diff of the first method."""
    s = ctx.summary
    return plots.importance_heatmaps({"IM_c (train)": s.im_class, "IM_diff (train)": s.im_diff})


def draw_distributions(ctx: RunContext):
    """Distributions of the CAM maxima and minima, train against validation."""
    return plots.distributions({k: ctx.analyses[ctx.method][k][1] for k in ("train", "validation")})


def draw_spectrum(ctx: RunContext):
    """The explained-variance spectrum of the channel importances."""
    if "decomposition" not in ctx.evaluations:
        return None
    dec = ctx.evaluations["decomposition"][0]
    return plots.spectrum(np.asarray(dec["explained_ratio"]), dec["components_for"])


def draw_subsets(ctx: RunContext):
    """Accuracy against the share of channels kept."""
    if "subsets" not in ctx.evaluations:
        return None
    curves = ctx.evaluations["subsets"][0]
    return plots.accuracy_curve(
        {m: (c["ratios"], c["accuracy"]) for m, c in curves.items()},
        next(iter(curves.values()))["full_accuracy"],
        label_rows={m: (c["ratios"], c["accuracy_label_row"]) for m, c in curves.items()},
    )


def draw_outliers(ctx: RunContext):
    """The validation samples farthest from their class, with their CAMs."""
    diag = ctx.evaluations.get("diagnostics", ({}, {}))[0]
    if "outliers" not in diag or len(ctx.splits.validation.input_shape) != 3:
        return None
    idx = np.asarray(diag["outliers"]["indices"], np.int64)
    x, y = ctx.splits.validation.gather(idx)
    _, out = ctx.explain(x, y)
    titles = [
        f"#{int(i)} y={int(label)}\nd={d:.1f}"
        for i, label, d in zip(idx, y, diag["outliers"]["distances"])
    ]
    return plots.outliers(x, _image_maps(ctx, x, out.cam, True), titles)


def _consistency_title(ctx: RunContext) -> str:
    c = ctx.evaluations["consistency"][0]["scatter_class"]
    return f"Activation level vs logit (class {c})"


FIGURES: tuple[Figure, ...] = (
    Figure(
        "cams",
        "CAMs on the common scale vs per image",
        "One validation image per class (drawn with the run's seed), explaining the "
        "predicted class; titles: y the label, p the predicted class, and its logit. "
        "Top: one shared colour scale for the whole dataset, so brightness compares "
        "across images (a dim map is a weak decision). Bottom: each map stretched to its "
        "own min and max, so every map looks equally confident.",
        draw_cams,
    ),
    Figure(
        "consistency",
        _consistency_title,
        "Each point is a validation image explained as this class: its mean rescaled "
        "CAM (x, the activation level) against the logit of the class (y), per method and "
        "scaling; r as in the consistency table. On a faithful scale the points lie on a "
        "rising line (r near 1); per-image min-max scatters them.",
        draw_consistency,
    ),
    Figure(
        "importance",
        "Importance matrices",
        "Rows: classes; columns: the 64 channels with the largest mean importance, most "
        "important left, labelled with their channel ids. IM_c is a class's mean channel "
        "importance on the training split; IM_diff = IM_c - IM_all shows the channels "
        "that single out a class (red above, blue below the average over classes). "
        "Classes without a counted sample are blank.",
        draw_importance,
    ),
    Figure(
        "distributions",
        "CAM max/min, train vs validation",
        "Densities of each image's raw CAM maximum (left) and minimum (right) on the "
        "feature grid, training vs validation split. Overlapping histograms are what one "
        "wants; validation maxima shifted left (weaker CAMs on unseen images) are the "
        "sign of overfitting that the KS statistic under Diagnostics measures.",
        draw_distributions,
    ),
    Figure(
        "spectrum",
        "Explained variance of channel importances",
        "Bars: the share of the variance of per-image channel importances (training "
        "split) along each principal direction, largest first; line: the cumulative "
        "share; dotted lines: the components needed for 90, 95 and 99%. Few components "
        "mean the decision rests on few directions (redundant channels).",
        draw_spectrum,
    ),
    Figure(
        "subsets",
        "Accuracy with a subset of channels",
        "Validation accuracy when only a share of the layer's channels is kept (the rest "
        "zeroed), per selection mode: solid lines with the predicted class's mask row, "
        "dashed with the label's (an oracle; see Feature subsets); the dotted line is the "
        "accuracy with all channels.",
        draw_subsets,
    ),
    Figure(
        "outliers",
        "Outliers: samples farthest from their class in importance space",
        "Validation images whose channel importances lie farthest (Mahalanobis distance "
        "d) from their class mean, with their CAMs on the common scale explaining the "
        "label; titles: #index in the validation split, y the label, d the distance.",
        draw_outliers,
    ),
    Figure(
        "comparison",
        "Method comparison: ranks per metric",
        "The table of the method comparison drawn as a heatmap: each cell is coloured by "
        "the method's rank in its column (green the best, red the worst, whichever "
        "direction the metric is better in), its mean written in it; the best of each "
        "column is framed and bold.",
        comparison.draw_comparison,
    ),
)


def make_figures(ctx: RunContext, figures: Sequence[Figure] = FIGURES) -> dict[str, str]:
    """Draw and save every figure that applies; returns ``{key: path in the run folder}``."""
    out = {}
    for fig in figures:
        drawn = fig.draw(ctx)
        if drawn is not None:
            name = os.path.join("figures", f"{fig.key}.png")
            plots.save(drawn, ctx.run.file(name))
            ctx.run.record(name)  # so --overwrite knows it is the runner's
            out[fig.key] = name
    return out


def _methods_line(config) -> str:
    """The methods, each with the options the config gives it: ``gradcam++ (eps=1e-07)``."""
    out = []
    for m in config.methods:
        options = ", ".join(f"{k}={v!r}" for k, v in config.options_of(m).items())
        out.append(f"{m} ({options})" if options else m)
    return ", ".join(out)


def missing_classes_note(results: dict, method: str) -> list[str]:
    """A paragraph naming the classes with no counted sample per split (none: [])."""
    per_split = {
        split: list(numbers["missing_classes"])
        for split, numbers in results["analysis"][method].items()
        if numbers["missing_classes"]
    }
    if not per_split:
        return []
    where = "; ".join(
        f"{split} split: class{'es' if len(c) > 1 else ''} {', '.join(map(str, c))}"
        for split, c in per_split.items()
    )
    return [
        "",
        f"**Classes without a counted sample** ({where}). The analysis counts only "
        "correctly classified samples, so these classes have no importance row: they are "
        "blank in the importance figure and left out of the class SVD, the confounders and "
        "the outliers, and their channel masks (feature subsets, the *subset* consistency "
        "level) come from a zero row, i.e. the first channels. Numbers per class for them "
        "say nothing about their features.",
    ]


def write_report(
    ctx: RunContext,
    results: dict,
    evaluations: Sequence[Evaluation],
    figures: Sequence[Figure],
    drawn: dict[str, str],
) -> str:
    """``report.md``: the header, each evaluation's section, then the figures."""
    config = ctx.config
    trained = results["train"]
    source = (
        f"the variables in `{trained['variables']}` (not trained here)"
        if "variables" in trained
        else "trained here"
    )
    lines = [
        f"# Integrated feature analysis: {config.name}",
        "",
        f"Dataset `{config.dataset}`, model `{config.model}` ({source}), layer "
        f"`{config.layer}`, methods {_methods_line(config)}. Validation accuracy "
        f"{trained['validation_accuracy']['accuracy']:.4f}. "
        f"{results['samples'][0].upper()}{results['samples'][1:]}.",
        *missing_classes_note(results, ctx.method),
    ]
    for e in evaluations:
        section = e.report(ctx, results[e.name])
        if section:
            lines += ["", *section]
    for fig in figures:
        if fig.key in drawn:
            title = fig.title(ctx) if callable(fig.title) else fig.title
            lines += ["", f"## {title}", "", fig.caption, "", f"![{title}]({drawn[fig.key]})"]
    path = ctx.run.file("report.md")
    io.atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


__all__ = ["FIGURES", "Figure", "make_figures", "missing_classes_note", "write_report"]
