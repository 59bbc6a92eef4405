"""The runner's evaluations: an ordered table, one entry per evaluation.

An :class:`Evaluation` is a name, a format version, and three functions of the
:class:`~ifa_jax.runner.stages.RunContext`: ``compute`` returns its numbers (JSON-ready)
and any arrays a figure needs; ``report`` returns its section of ``report.md``; ``log``
(optional) prints its headline. The runner stores the numbers in
``evaluation/<name>.json`` (arrays in ``evaluation/<name>.npz``) and recomputes them when
the file does not verify or its version differs. Adding an evaluation is one function
and one entry in :data:`EVALUATIONS` (or in the ``evaluations=`` of
:func:`ifa_jax.runner.run`); its numbers then appear in ``results.json`` under its name.

Examples:
    A report section as the evaluations write them:

    >>> from ifa_jax.runner.evaluations import fmt, table_section
    >>> fmt(0.91234), fmt(None)
    ('0.912', 'undefined')
    >>> section = table_section(
    ...     "Consistency", "Pearson r.", ["method", "r"], [["gradcam", fmt(0.91234)]]
    ... )
    >>> for line in section:
    ...     print(line)
    ## Consistency
    <BLANKLINE>
    Pearson r.
    <BLANKLINE>
    | method | r |
    |---|---|
    | gradcam | 0.912 |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from ifa_jax import cams, decompose, diagnostics, metrics, scale
from ifa_jax.consistency import (
    LEVELS,
    LINEAR_METHODS,
    common_levels,
    consistency_levels,
    summarize_consistency,
)
from ifa_jax.runner import comparison
from ifa_jax.runner import train as training
from ifa_jax.runner.stages import RunContext

Numbers = dict[str, Any]
Arrays = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One evaluation: ``compute(ctx) -> (numbers, arrays)``, ``report(ctx, numbers) ->
    markdown lines``, ``log(ctx, numbers)`` its printed headline. Bump ``version`` when
    the numbers change shape: an older file is then recomputed, not misread."""

    name: str
    version: int
    compute: Callable[[RunContext], tuple[Numbers, Arrays]]
    report: Callable[[RunContext, Numbers], list[str]]
    log: Callable[[RunContext, Numbers], None] | None = None


def table_section(
    title: str, text: str, header: list[str], rows: list[list[str]], notes: Sequence[str] = ()
) -> list[str]:
    """A report section: a title, a paragraph, a Markdown table, then ``notes`` (Markdown
    lines, e.g. a list saying how to read the numbers)."""
    return [
        f"## {title}",
        "",
        text,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        *(["", *notes] if notes else []),
    ]


def fmt(v) -> str:
    """A number for the report and the log: 3 decimals, or 'undefined'."""
    return "undefined" if v is None else f"{v:.3f}"


# --------------------------------------------------------------------------- consistency


# Without max_classes, the per-class vjp evaluation stops at this many classes: it costs
# one backward pass per class and image. consistency_all_classes covers every class.
DEFAULT_MAX_CLASSES = 64


def evaluated_classes(config, num_classes: int) -> list[int]:
    """The classes of the four-level evaluation: max_classes, or all up to 64."""
    limit = DEFAULT_MAX_CLASSES if config.max_classes is None else config.max_classes
    return list(range(min(num_classes, limit)))


def per_class_methods(config) -> tuple[list[str], dict[str, str]]:
    """The methods the per-class consistency evaluation computes (from A and the class's
    G alone, at their default options) and, for the others, why not: ``(methods,
    {method: reason})``."""
    methods, skipped = [], {}
    for m in config.methods:
        spec = cams.get_method(m)
        if "forward_passes" in spec.needs:
            skipped[m] = "it needs forward passes, which the per-class vjps do not run"
        elif "key" in spec.needs:
            skipped[m] = "it draws random numbers, which the per-class evaluation does not"
        elif cams.method_options(m, config.options_of(m)) != dict(spec.options):
            skipped[m] = "its method_options, which the per-class evaluation does not take"
        else:
            methods.append(m)
    return methods, skipped


def consistency(ctx: RunContext) -> tuple[Numbers, Arrays]:
    """Per class and method: r between CAM activation level and logit, and AUROC. The
    arrays are the first class's levels per method and scaling, and its logit. Methods
    the per-class vjps cannot compute as configured are listed under ``skipped``."""
    config, ds = ctx.config, ctx.splits.validation
    classes = evaluated_classes(config, ds.num_classes)
    methods, skipped = per_class_methods(config)
    if not methods:
        return {"per_class": {}, "summary": {}, "scatter_class": None, "skipped": skipped}, {}
    masks = decompose.select(
        np.nan_to_num(ctx.summary.im_class), "top", ratio=config.consistency_ratio
    )
    levels = consistency_levels(
        ctx.probe,
        ctx.variables,
        ctx.batches(ds),
        scales={m: ctx.scales[m] for m in methods},
        masks=masks,
        classes=classes,
        group=config.consistency_group,
    )
    result = summarize_consistency(levels)
    c = classes[0]
    arrays = {f"{m} {k}": levels.of(c, m, k) for m in methods for k in LEVELS}
    arrays["logit"] = levels.logits[:, c]
    numbers = {
        "per_class": result.per_class,
        "summary": result.summary,
        "scatter_class": c,
        "coincide": coinciding_methods(levels.levels, levels.methods),
    }
    if skipped:
        numbers["skipped"] = skipped
    return numbers, arrays


def coinciding_methods(levels: np.ndarray, methods: tuple[str, ...]) -> list[list[str]]:
    """Groups of two or more methods whose activation levels agree on every image, class
    and scaling, to float round-off (levels: (classes, methods, scalings, images)). Such
    methods give the same maps by construction here, so their rows are one result."""
    groups: list[list[int]] = []
    for i in range(len(methods)):
        for g in groups:
            a, b = levels[:, g[0]], levels[:, i]
            if np.allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, float(np.max(np.abs(a))))):
                g.append(i)
                break
        else:
            groups.append([i])
    return [[methods[i] for i in g] for g in groups if len(g) > 1]


def consistency_all_classes(ctx: RunContext) -> tuple[Numbers, Arrays]:
    """The common level's r for every class, from the jvp path: one forward linearised at
    the layer per batch and linear method, whatever the number of classes."""
    methods = [m for m in per_class_methods(ctx.config)[0] if m in LINEAR_METHODS]
    if not methods:
        return {"methods": [], "classes": 0, "summary": {}, "per_class": {}}, {}
    ds = ctx.splits.validation
    levels = common_levels(
        ctx.probe,
        ctx.variables,
        ctx.batches(ds),
        scales={m: ctx.scales[m] for m in methods},
    )
    result = summarize_consistency(levels)
    numbers = {
        "methods": methods,
        "classes": len(levels.classes),
        "summary": result.summary,
        "per_class": result.per_class,
    }
    return numbers, {}


def log_consistency_all_classes(ctx: RunContext, numbers: Numbers) -> None:
    """Log the common-scale consistency over every class (the jvp path), when more classes exist
    than the per-class evaluation covers."""
    if numbers["methods"] and numbers["classes"] > len(
        evaluated_classes(ctx.config, numbers["classes"])
    ):
        ctx.log(
            f"consistency on all {numbers['classes']} classes (common scale, jvp path): "
            + ", ".join(
                f"{m} {fmt(numbers['summary'][m]['common']['mean_pearson'])}"
                for m in numbers["methods"]
            )
        )


def report_consistency_all_classes(ctx: RunContext, numbers: Numbers) -> list[str]:
    """The report section of the consistency over every class (the jvp path)."""
    if not numbers["methods"]:
        return []
    return table_section(
        "Consistency on every class (common scale)",
        f"Pearson r per class between the mean of the CAM on the common scale and the logit, "
        f"over all {numbers['classes']} classes, for the methods linear in the gradient "
        "(higher is better, as above; *min r*: the worst class; *classes defined*: those "
        "where r exists: at least 3 images and levels and logits that vary; AUROC as "
        "above). "
        "Computed by the jvp path: the CAM mass of every class from one forward pass "
        "linearised at the layer, so its cost does not grow with the number of classes; it "
        "equals the *common* column above on the classes both cover.",
        ["method", "mean r", "min r", "classes defined", "AUROC"],
        [
            [
                m,
                fmt(numbers["summary"][m]["common"]["mean_pearson"]),
                fmt(numbers["summary"][m]["common"]["min_pearson"]),
                str(numbers["summary"][m]["common"]["classes_defined"]),
                fmt(numbers["summary"][m]["auroc"]["mean"]),
            ]
            for m in numbers["methods"]
        ],
    )


def log_consistency(ctx: RunContext, numbers: Numbers) -> None:
    """Log the mean consistency r per method and scale."""
    ctx.log(
        "consistency: mean Pearson r over classes (common | clipped | per-image | "
        f"top {ctx.config.consistency_ratio:.0%} subset)"
    )
    for m, row in numbers["summary"].items():
        ctx.log(f"  {m:>10}: " + " | ".join(fmt(row[k]["mean_pearson"]) for k in LEVELS))
    for m, why in numbers.get("skipped", {}).items():
        ctx.log(f"  {m:>10}: not evaluated ({why})")


def report_consistency(ctx: RunContext, numbers: Numbers) -> list[str]:
    """The report section of the consistency: r per method, scale and class."""
    n_classes = len(next(iter(numbers["per_class"].values()), {}))
    lines = table_section(
        "Consistency: CAM activation level vs logit",
        "Is a brighter CAM a stronger decision? For each class, every validation image is "
        "explained as that class; its *activation level* is the mean of its rescaled CAM. "
        "Each number is Pearson's r between the levels and the class's logit over the "
        f"images, averaged over the {n_classes} class(es) evaluated. Higher is better: 1 "
        "means the brightness follows the logit exactly, 0 that it says nothing about it, "
        "below 0 that it runs against it. *common*: the dataset-wide scale (unclipped); "
        "*clipped*: the same clipped to [0, 1] as drawn; *per-image*: min-max per image "
        "(the usual CAM); *subset*: the common scale with only the top "
        f"{ctx.config.consistency_ratio:.0%} channels of the class; *min r*: the worst "
        "class on the common scale. *AUROC*: how well the common-scale level alone tells "
        "the images the model predicts as the class from the others (mean over classes; 1 "
        "perfect, 0.5 chance).",
        ["method", "common", "clipped", "per-image", "subset", "min r (common)", "AUROC"],
        [
            [
                m,
                *(fmt(row[k]["mean_pearson"]) for k in LEVELS),
                fmt(row["common"]["min_pearson"]),
                fmt(row["auroc"]["mean"]),
            ]
            for m, row in numbers["summary"].items()
        ],
        [
            "What to expect: *common* well above *per-image*, which is the paper's point: "
            "min-max per image removes each map's level, so its r is near 0 or negative. "
            "HiResCAM and XGradCAM can reach 1.000 on the common scale: their CAM mass is "
            "sum(G * A), which for a ReLU network is the logit up to bias terms. GradCAM "
            "replaces G by its grid mean and GradCAM++ reweights it, so they track the "
            "logit less; clipping (as drawn) costs a little of the level."
        ],
    )
    for group in numbers.get("coincide", []):
        lines += [
            "",
            f"**{', '.join(group[:-1])} and {group[-1]} coincide**: their activation "
            "levels are identical on every image, class and scaling, so their maps are the "
            "same by construction and their rows are one result, not independent "
            "agreement. This happens, for instance, when the layer feeds a global average "
            "pool and a dense head: the gradient is then constant over the grid, so "
            "GradCAM's grid mean of G is G itself and GradCAM, HiResCAM and XGradCAM give "
            "the same map.",
        ]
    if not numbers["summary"]:
        lines = lines[:1]  # no table: no method could be evaluated per class
    skipped = numbers.get("skipped", {})
    if skipped:
        lines += [
            "",
            "Not evaluated: "
            + "; ".join(f"{m} ({why})" for m, why in skipped.items())
            + ". Their statistics and figures come from the analysis pass as usual.",
        ]
    for m, per in numbers["per_class"].items():
        for what, key, value in (("Consistency", "common", "pearson"), ("AUROC", "auroc", "auroc")):
            undefined = [c for c, r in per.items() if r[key][value] is None]
            if undefined:
                reasons = sorted({str(per[c][key]["reason"]) for c in undefined})
                lines += [
                    "",
                    f"{what} is undefined for {m} on class(es) "
                    f"{', '.join(undefined)}: {'; '.join(reasons)}.",
                ]
    return lines


# --------------------------------------------------------------------------- feature subsets


SUBSET_MODE_TEXT = {
    "top": "the largest IM_c",
    "diff_top": "the largest |IM_c - IM_all|, the channels that single out the class",
    "reverse_diff_top": "all but diff_top's channels",
    "random": "drawn at random, the baseline",
}
# Which class's row of a per-class channel mask a sample is evaluated with: the class the
# unmasked model predicts (no label used) and the sample's label (an oracle).
SUBSET_ROWS = ("predicted", "label")


def subsets(ctx: RunContext) -> tuple[Numbers, Arrays]:
    """Accuracy with a share of the channels kept, per selection mode: ``{mode: curve}``,
    ``curve["accuracy"]`` with the predicted class's mask row and
    ``curve["accuracy_label_row"]`` with the label's (see :data:`SUBSET_ROWS`)."""
    config, summary = ctx.config, ctx.summary
    rows, diff = np.nan_to_num(summary.im_class), np.nan_to_num(summary.im_diff)
    key = jax.random.key(config.seed)
    curves = {}
    for mode in config.subset_modes:

        def select_fn(r_, ratio, mode=mode):
            return decompose.select(r_, mode, ratio=ratio, im_diff=diff, key=key)

        predicted, label = (
            metrics.subset_accuracy_curve(
                ctx.probe,
                ctx.variables,
                ctx.batches(ctx.splits.validation),
                rows,
                config.subset_ratios,
                select_fn=select_fn,
                row=row,
            )
            for row in SUBSET_ROWS
        )
        curves[mode] = {**predicted, "accuracy_label_row": label["accuracy"]}
    return curves, {}


def log_subsets(ctx: RunContext, curves: Numbers) -> None:
    """Log the feature-subset accuracies per share of channels kept."""
    full = next(iter(curves.values()))["full_accuracy"]
    ctx.log(f"feature subsets: accuracy by share of channels kept (all channels: {full:.4f})")
    ctx.log("  " + " ".join(f"{r:>6.0%}" for r in ctx.config.subset_ratios))
    for key, row in (("accuracy", "predicted class's row"), ("accuracy_label_row", "label's row")):
        for mode, c in curves.items():
            ctx.log("  " + " ".join(f"{a:>6.3f}" for a in c[key]) + f"  {mode}, {row}")


def report_subsets(ctx: RunContext, curves: Numbers) -> list[str]:
    """The report section of the feature subsets: accuracy per share of channels kept."""
    first = next(iter(curves.values()))
    return table_section(
        "Feature subsets",
        "Validation accuracy when only a share of the layer's channels is kept and the "
        "others are zeroed (higher is better; the last column, 100%, is the model itself: "
        f"{first['full_accuracy']:.3f} on {first['n']} images). The channels are chosen per "
        "class from the training split's importances ("
        + "; ".join(f"*{m}*: {SUBSET_MODE_TEXT[m]}" for m in curves)
        + "), so each image is evaluated with one class's row of the mask, and the curve "
        "depends on which.",
        ["mode, mask row", *(f"{r:.0%}" for r in ctx.config.subset_ratios)],
        [
            [f"{mode}, {row}", *(f"{a:.3f}" for a in c[key])]
            for key, row in (("accuracy", "predicted"), ("accuracy_label_row", "label"))
            for mode, c in curves.items()
        ],
        [
            "- *predicted*: the row of the class the full model predicts; no label is used. "
            "Keeping that class's most important channels mostly keeps its logit ahead, so "
            "this curve shows whether the kept channels preserve the model's own decisions "
            "and tends to reach the full accuracy at a small share. It cannot show that the "
            "other channels carry no information, nor that one fixed subset would serve "
            "every class.",
            "- *label*: the row of the sample's true class, an oracle: the choice of mask "
            "already points at the right class, so it can exceed the full model's "
            "accuracy. It shows how much class-specific evidence the selected channels "
            "hold, not the accuracy of a model pruned to them.",
        ],
    )


# --------------------------------------------------------------------------- decomposition


def decomposition(ctx: RunContext) -> tuple[Numbers, Arrays]:
    """Explained-variance spectrum of channel importances, class SVD, redundancy."""
    summary = ctx.summary
    spectrum = decompose.explained_variance(summary.covariance)
    present = summary.present
    class_svd = decompose.class_svd(summary.im_class[present]) if present.sum() > 1 else None
    return {
        "explained_ratio": np.asarray(spectrum.ratio),
        "components_for": spectrum.n_components,
        "redundancy": diagnostics.redundancy(summary.im_all, summary.covariance),
        "class_svd_components_for": class_svd.n_components if class_svd else None,
    }, {}


def report_decomposition(ctx: RunContext, dec: Numbers) -> list[str]:
    """The report section of the decomposition: the principal components of the importances."""
    red = dec["redundancy"]
    levels = ", ".join(f"{k}% along {v}" for k, v in dec["components_for"].items())
    lines = [
        "## Decomposition and redundancy",
        "",
        "How many independent directions carry the channel importances of the training "
        f"images ({red['n_channels']} channels): {levels} principal direction(s) of their "
        "variance (fewer means the decision rests on few directions and many channels are "
        "redundant; the paper finds 5-25% of the features suffice). Effective rank "
        f"{red['effective_rank']:.1f} of {red['n_channels']}: the number of equally strong "
        "directions with the same spread (1: a single direction; all channels: every "
        f"direction alike). Near-zero channels {red['near_zero_share']:.1%}: mean "
        "importance below 1% of the largest, so they contribute almost nothing on average.",
    ]
    if dec["class_svd_components_for"]:
        between = ", ".join(f"{k}%: {v}" for k, v in dec["class_svd_components_for"].items())
        lines += [
            "",
            "Between classes (SVD of the class means IM_c, centred; at most classes - 1 "
            f"directions): {between} direction(s) of their differences.",
        ]
    return lines


# --------------------------------------------------------------------------- diagnostics


def diagnostics_(ctx: RunContext) -> tuple[Numbers, Arrays]:
    """Overfitting (train vs validation), confounders, outliers of the validation split."""
    summary = ctx.summary
    tr, va = (ctx.analyses[ctx.method][s][1] for s in ("train", "validation"))
    out: Numbers = {
        "overfitting": diagnostics.overfitting(
            tr["cam_max"], tr["cam_min"], va["cam_max"], va["cam_min"]
        )
    }
    if summary.present.sum() >= 2:
        out["confounders"] = diagnostics.confounders(
            summary.im_class, summary.cam_mean, present=summary.present
        )
    else:
        out["confounders"] = {
            "undefined": "confounders compare classes, and fewer than 2 "
            "classes have counted samples"
        }
    counted = summary.present[va["label"]]
    if ctx.config.outliers_shown and counted.any():
        imp = va["importance"][counted]
        idx = np.flatnonzero(counted)
        # The principal subspace: a quarter of the channels, at most 10 directions.
        k = max(1, min(10, imp.shape[1] // 4))
        means = np.nan_to_num(summary.im_class)
        within = diagnostics.within_class_covariance(
            summary.covariance, means, summary.class_counts
        )
        worst = diagnostics.outliers(
            imp,
            va["label"][counted],
            means,
            within,
            n_components=k,
            worst=ctx.config.outliers_shown,
        )
        out["outliers"] = worst._replace(indices=tuple(int(idx[i]) for i in worst.indices))
    return out, {}


def report_diagnostics(ctx: RunContext, diag: Numbers) -> list[str]:
    """The report section of the diagnostics: overfitting, outliers, confounders, redundancy."""
    of = diag["overfitting"]["cam_max"]
    verdict = (
        "below it: no shift beyond sampling noise"
        if of["ks"] <= of["ks_critical"]
        else "above it: the splits differ beyond sampling noise"
    )
    lines = [
        "## Diagnostics",
        "",
        f"- Overfitting: the Kolmogorov-Smirnov statistic between the training and "
        f"validation distributions of each image's raw CAM maximum is {of['ks']:.3f} "
        f"against a 5% critical value of {of['ks_critical']:.3f} ({verdict}); the median "
        f"moves by {of['median_shift_iqr']:.3f} training IQR (validation minus training; "
        "beyond about ±0.5 a person would see it). Lower is better; a KS above the "
        "critical value with a negative shift (weaker CAMs on unseen images) is the sign "
        "of overfitting.",
    ]
    conf = diag["confounders"]
    if "undefined" in conf:
        lines.append(f"- Confounders: undefined ({conf['undefined']}).")
    else:
        shared, border = conf["shared"], conf["border"]
        lines.append(
            f"- Confounders: {shared['n_shared']} of the {len(shared['channels'])} channels "
            "with the largest mean importance are about as important for every class (the "
            f"smallest class importance at least {shared['threshold']:.0%} of the largest): "
            "features of no class, such as background or a marker; 0 is what one wants. "
            "The mean |CAM| of class "
            f"{border['worst_class']} puts {border['worst']:.1%} of its mass on the border "
            f"of the feature grid, where a uniform map would put {border['uniform']:.1%} "
            "(the most of any class); far above uniform means the model looks at the edges."
        )
    if "outliers" in diag:
        out = diag["outliers"]
        lines.append(
            "- Outliers: the validation images whose channel importances lie farthest from "
            f"their class mean (Mahalanobis distance d over {out['n_components']} principal "
            f"direction(s); median d {out['median']:.1f}), worst first: "
            + ", ".join(f"#{i} (d {d:.1f})" for i, d in zip(out["indices"], out["distances"]))
            + ". Candidates for mislabelled or unusual images; the outlier figure shows them."
        )
    return lines


# --------------------------------------------------------------------------- faithfulness


def faithfulness(ctx: RunContext) -> tuple[Numbers, Arrays]:
    """Confidence drop/increase and insertion/deletion on stratified validation images."""
    indices = ctx.sample_indices(ctx.config.faithfulness_samples)
    if len(indices) == 0:
        return {}, {}
    x, y = ctx.splits.validation.gather(indices)
    res, out = ctx.explain(x, y)
    spatial = x.shape[1:-1]
    common = np.clip(
        np.asarray(cams.upsample(scale.apply_scale(out.cam, ctx.scales[ctx.method]), spatial)), 0, 1
    )
    per_image = np.asarray(cams.upsample(scale.minmax_per_image(out.cam), spatial))
    scorer = metrics.model_scorer(ctx.probe, ctx.variables)
    target = np.asarray(res.target)
    window = max(1, min(spatial) // 7)  # about 7 windows along the shortest side
    curves = metrics.insertion_deletion(scorer, x, common, target, window=window)
    return {
        "samples": len(indices),
        "confidence_common": metrics.confidence_change(scorer, x, common, target),
        "confidence_per_image": metrics.confidence_change(scorer, x, per_image, target),
        "insertion_deletion": {
            k: float(np.mean(np.asarray(v)))
            for k, v in curves._asdict().items()
            if k.endswith("auc")
        },
    }, {}


def report_faithfulness(ctx: RunContext, f: Numbers) -> list[str]:
    """The report section of faithfulness: average drop and increase, insertion and deletion."""
    if not f:
        return []
    rows = [
        [
            name,
            f"{f[key]['average_drop']:.1f}",
            f"{f[key]['average_increase']:.1f}",
        ]
        for name, key in (("common", "confidence_common"), ("per-image", "confidence_per_image"))
    ]
    ins, dele = f["insertion_deletion"]["insertion_auc"], f["insertion_deletion"]["deletion_auc"]
    return table_section(
        "Faithfulness",
        f"On {f['samples']} validation images, each explained as its label with "
        f"{ctx.method}: the image is multiplied by its CAM (upsampled, in [0, 1]) and the "
        "model's probability of the label compared with the unmasked one's. *Average drop* "
        "(%): the mean relative fall of that probability, lower is better (the map keeps "
        "what the model needs). *Increase* (%): the share of images whose probability "
        "rises, higher is better.",
        ["scaling", "average drop (%) ↓", "increase (%) ↑"],
        rows,
        [
            "On the common scale weak maps stay dark, so more of the image is removed and "
            "the drop is larger than with per-image maps, whose brightest point is always "
            "1: compare methods on one scaling, not the two scalings with each other.",
            "",
            f"Insertion AUC {ins:.3f} (higher is better: the probability rises fast as the "
            "most salient windows are put back into a blurred image) and deletion AUC "
            f"{dele:.3f} (lower is better: it falls fast as they are replaced by zeros), "
            "both on the common-scale map, averaged over the images; each is an area under "
            "the probability over the share of windows moved, between 0 and 1.",
        ],
    )


# --------------------------------------------------------------------------- sanity check


def sanity(ctx: RunContext) -> tuple[Numbers, Arrays]:
    """Rank correlation (and SSIM) with the trained CAMs under cascading randomisation."""
    indices = ctx.sample_indices(ctx.config.sanity_samples)
    if len(indices) == 0:
        return {"steps": []}, {}
    x, y = ctx.splits.validation.gather(indices)
    _, ref = ctx.explain(x, y)
    ref_maps = np.asarray(scale.minmax_per_image(ref.cam))
    # Output layer first, from the model's own call order: the parameter dict is sorted by
    # name once a checkpoint is loaded, so its order says nothing about the model.
    order = metrics.top_down_order(
        ctx.model,
        ctx.variables,
        jax.ShapeDtypeStruct(x.shape, x.dtype),
        **training.inference_kwargs(ctx.model),
    )
    rows = []
    for name, randomised in metrics.cascading_randomization(
        ctx.variables, jax.random.key(ctx.config.seed + 1), order.order
    ):
        _, out = ctx.explain(x, y, variables=randomised)
        maps = np.asarray(scale.minmax_per_image(out.cam))
        rc = [r for r in metrics.rank_correlation(ref_maps, maps) if r is not None]
        row = {"randomised_down_to": name, "rank_correlation": float(np.mean(rc)) if rc else None}
        if ref_maps.ndim == 3:
            side = min(7, min(ref_maps.shape[1:]))
            row["ssim"] = float(
                np.mean(metrics.ssim(ref_maps, maps, win_size=side - (1 - side % 2)))
            )
        rows.append(row)
    numbers = {"samples": len(indices), "order": order.order, "steps": rows}
    if order.uncalled:
        numbers["uncalled"] = order.uncalled
    return numbers, {}


def report_sanity(ctx: RunContext, s: Numbers) -> list[str]:
    """The report section of the randomisation sanity check, in the order layers were randomised."""
    if not s["steps"]:
        return []
    ssim = all("ssim" in r for r in s["steps"])
    uncalled = s.get("uncalled", [])
    text = (
        "Cascading randomisation (Adebayo et al. 2018): the layers' parameters are redrawn "
        "one layer at a time from the output down, in the model's call order read from "
        f"one forward pass ({' → '.join(s['order'])}); each row has that layer and every "
        "layer above it randomised. *rank r*: the Spearman rank correlation between the "
        f"{ctx.method} CAM of the trained and of the randomised model (min-max per image), "
        f"averaged over {s['samples']} validation images"
        + ("; *SSIM*: their structural similarity (1 identical, 0 unrelated)" if ssim else "")
        + ". Lower is better: near 0 from the first row on means the maps depend on the "
        "learned weights; values that stay near 1 mean the map would look the same for an "
        "untrained model (it shows the input, not the model)."
    )
    if uncalled:
        text += (
            f" {', '.join(uncalled)}: never called as a submodule, so their place in the "
            "call order is unknown; they are randomised last."
        )
    return table_section(
        "Sanity check: cascading randomisation",
        text,
        ["randomised down to", "rank r", *(["SSIM"] if ssim else [])],
        [
            [
                r["randomised_down_to"],
                fmt(r["rank_correlation"]),
                *([fmt(r["ssim"])] if ssim else []),
            ]
            for r in s["steps"]
        ],
    )


# --------------------------------------------------------------------------- scale coverage


def scale_coverage(ctx: RunContext) -> tuple[Numbers, Arrays]:
    """How much of the validation split the common scale clips: the share of images whose
    raw CAM maximum lies above vmax (saturated when drawn) or minimum below vmin."""
    out = {}
    for m in ctx.config.methods:
        va = ctx.analyses[m]["validation"][1]
        sc = ctx.scales[m]
        out[m] = {
            "above_vmax": float(np.mean(va["cam_max"] > sc.vmax)),
            "below_vmin": float(np.mean(va["cam_min"] < sc.vmin)),
            "vmin": sc.vmin,
            "vmax": sc.vmax,
        }
    return out, {}


def report_scale_coverage(ctx: RunContext, cov: Numbers) -> list[str]:
    """The report section of the common scale's coverage of the validation maps."""
    config = ctx.config
    hi, lo, ratio = config.scale_hi_percentile, config.scale_lo_percentile, config.scale_ratio
    times = "" if ratio == 1 else f"{ratio:g} x "
    vmin = (
        "vmin is 0 (remove_negative)"
        if config.remove_negative
        else f"vmin {times}the {lo:g}th percentile of its minima"
    )
    text = (
        "The share of validation images whose raw CAM maximum lies above the common "
        "scale's vmax (their brightest parts are drawn saturated) and whose minimum lies "
        f"below vmin (their darkest parts are drawn as 0). vmax is {times}the {hi:g}th "
        f"percentile of the training split's per-image maxima and {vmin}"
    )
    if ratio == 1 and not config.remove_negative:
        half = "half" if lo == 50 else f"{lo:g}%"
        text += (
            f", so on data like the training split expect about {100 - hi:g}% above vmax "
            f"and about {lo:g}% below vmin: that about {half} of the maps reach below vmin "
            "is by construction, not a defect"
        )
    text += ". Far more above vmax means the validation maps are brighter than the training ones."
    return table_section(
        "Common scale coverage",
        text,
        ["method", "vmin", "vmax", "above vmax", "below vmin"],
        [
            [
                m,
                f"{row['vmin']:.4g}",
                f"{row['vmax']:.4g}",
                f"{row['above_vmax']:.1%}",
                f"{row['below_vmin']:.1%}",
            ]
            for m, row in cov.items()
        ],
    )


EVALUATIONS: tuple[Evaluation, ...] = (
    Evaluation("consistency", 2, consistency, report_consistency, log_consistency),
    Evaluation(
        "consistency_all_classes",
        1,
        consistency_all_classes,
        report_consistency_all_classes,
        log_consistency_all_classes,
    ),
    Evaluation("subsets", 2, subsets, report_subsets, log_subsets),
    Evaluation("decomposition", 1, decomposition, report_decomposition),
    Evaluation("diagnostics", 1, diagnostics_, report_diagnostics),
    Evaluation("faithfulness", 1, faithfulness, report_faithfulness),
    Evaluation("sanity", 2, sanity, report_sanity),
    Evaluation("scale_coverage", 1, scale_coverage, report_scale_coverage),
    Evaluation("comparison", 1, comparison.compare_methods, comparison.report_comparison),
)

__all__ = ["EVALUATIONS", "Evaluation", "fmt"]
