"""The method comparison: every method of a run scored on a table of metrics, with its cost.

A :class:`Metric` is a name, the direction in which it is better (``"higher"`` or
``"lower"``), whether it needs ground-truth masks, and a function of
:class:`MetricInputs` (the model's score function, the inputs, their targets, one
method's maps on the input grid, the masks, a key, and the method itself for metrics that
explain perturbed inputs) returning one value per sample. :func:`score_methods` runs
every method on the same images and every metric on its maps, and summarises each
method x metric by the mean and spread over the images; metrics that need masks are
skipped (with the reason) when the dataset has none. Adding a metric is one entry in
:data:`METRICS`.

In a run this is the ``comparison`` evaluation (:func:`compare_methods`): the first
``comparison_samples`` validation images (drawn stratified by class), each explained as
its label, with the maps min-max per image (the convention of the field's metrics). The
report's section (:func:`report_comparison`) and figure (:func:`draw_comparison`) mark
the best method per column.

Examples:
    Ranks per column, the direction of each metric taken into account (1 is best;
    ties share a rank; a missing value has none):

    >>> import numpy as np
    >>> from ifa_jax.runner.comparison import column_ranks
    >>> means = np.array([[10.0, 0.5], [20.0, 0.9], [10.0, np.nan]])
    >>> column_ranks(means, ("lower", "higher")).tolist()
    [[1.0, 2.0], [3.0, 1.0], [1.0, nan]]
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from ifa_jax import cams, metrics, plots, scale
from ifa_jax.runner.stages import RunContext, method_key

if TYPE_CHECKING:
    from matplotlib.figure import Figure as FigureType

DIRECTIONS = ("higher", "lower")
ARROWS = {"higher": "↑", "lower": "↓"}  # in table headers and figure labels
# Values this close count as equal when ranking (maps that coincide by construction, such
# as GradCAM and HiResCAM before a global average pool, differ by float round-off).
TIE_RTOL = 1e-6
SENSITIVITY_SAMPLES = 10  # perturbations per image (Quantus' default is 200)

Explainer = Callable[[Any, Any], Any]  # (x (N, *in, C), target (N,)) -> maps (N, *in)


@dataclasses.dataclass(frozen=True, eq=False)
class MetricInputs:
    """What a metric function reads, for N images and one method.

    score_fn: ``(x (N, *in, C), target (N,)) -> (N,)`` the model's probability of the
    target (:func:`ifa_jax.metrics.model_scorer`); x: (N, *in, C) inputs; target: (N,)
    int classes explained; maps: (N, *in) the method's maps in [0, 1] on the input grid;
    masks: (N, *in) bool ground-truth masks, or None; key: a PRNG key for metrics that
    draw (the same for every method, so methods are compared on the same draws); explain:
    ``(x, target) -> maps`` the method itself, for metrics that explain other inputs
    (robustness); num_classes: the model's classes (random-logit draws another class), or
    None when unknown; base_key: the comparison's key, from which :meth:`shared_key`
    derives the keys of shared computations.
    """

    score_fn: Any
    x: np.ndarray
    target: np.ndarray
    maps: np.ndarray
    masks: np.ndarray | None
    key: jax.Array
    explain: Explainer
    num_classes: int | None = None
    base_key: jax.Array | None = None
    _shared: dict = dataclasses.field(default_factory=dict, repr=False)

    def shared_key(self, name: str) -> jax.Array:
        """The key of a computation several metrics share (max- and average-sensitivity
        read the same perturbations): the same for each of them and for every method.

        Args:
            name: the computation's name.

        Returns:
            A PRNG key.
        """
        base = jax.random.key(0) if self.base_key is None else self.base_key
        return jax.random.fold_in(base, zlib.crc32(f"shared:{name}".encode()))

    def shared(self, name: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per method: metrics that read one computation (insertion
        and deletion read the same curves) ask for it under the same ``name``. Every
        metric has its own ``key``, so a shared computation must not draw from it.

        Args:
            name: the computation's name.
            compute: computes it.

        Returns:
            Its value.
        """
        if name not in self._shared:
            self._shared[name] = compute()
        return self._shared[name]


@dataclasses.dataclass(frozen=True)
class Metric:
    """One column of the comparison: ``compute(inputs)`` gives one value per sample,
    ``(N,)`` with NaN where undefined, or an object with ``value`` and ``defined`` (N,)
    arrays, as the metrics' ``Scores`` (the undefined are left out); ``direction`` in
    which it is better, ``needs_masks`` (skipped without ground-truth masks), ``label``
    for tables and figures, ``description`` (one sentence for the report)."""

    name: str
    direction: str
    needs_masks: bool
    compute: Callable[[MetricInputs], Any]
    label: str
    description: str

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(
                f"metric {self.name!r}: direction must be one of {DIRECTIONS}; got "
                f"{self.direction!r}"
            )


def _window(inputs: MetricInputs) -> int:
    """About 7 windows along the shortest side, as the faithfulness evaluation uses."""
    return max(1, min(inputs.x.shape[1:-1]) // 7)


def _confidence(inputs: MetricInputs) -> tuple[np.ndarray, np.ndarray]:
    def compute():
        y, ym = metrics.confidence_scores(
            inputs.score_fn, jnp.asarray(inputs.x), inputs.maps, inputs.target
        )
        return np.asarray(y, np.float64), np.asarray(ym, np.float64)

    return inputs.shared("confidence", compute)


def average_drop(inputs: MetricInputs) -> np.ndarray:
    """Per image: ``max(0, y - y_masked) / y * 100`` (:func:`ifa_jax.metrics.drop_increase`
    is its mean), y the probability of the target, y_masked that of ``x * map``; NaN where
    y is 0.

    Args:
        inputs: the :class:`MetricInputs`.

    Returns:
        (N,) percentages.
    """
    y, ym = _confidence(inputs)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(y > 0, np.maximum(0.0, y - ym) / y * 100, np.nan)


def increase(inputs: MetricInputs) -> np.ndarray:
    """Per image: 100 where masking by the map raises the target's probability, else 0
    (the mean is the *increase in confidence* of :func:`ifa_jax.metrics.drop_increase`).

    Args:
        inputs: the :class:`MetricInputs`.

    Returns:
        (N,) values in {0, 100}.
    """
    y, ym = _confidence(inputs)
    return (ym > y) * 100.0


def _curves(inputs: MetricInputs) -> metrics.InsertionDeletion:
    return inputs.shared(
        "insertion_deletion",
        lambda: metrics.insertion_deletion(
            inputs.score_fn,
            jnp.asarray(inputs.x),
            inputs.maps,
            inputs.target,
            window=_window(inputs),
        ),
    )


def insertion_auc(inputs: MetricInputs) -> np.ndarray:
    """Per image: the insertion AUC (:func:`ifa_jax.metrics.insertion_deletion`, windows
    of about a seventh of the shortest side, put back into a blurred image).

    Args:
        inputs: the :class:`MetricInputs`.

    Returns:
        (N,) areas in [0, 1].
    """
    return np.asarray(_curves(inputs).insertion_auc, np.float64)


def deletion_auc(inputs: MetricInputs) -> np.ndarray:
    """Per image: the deletion AUC (windows replaced by zeros, most salient first).

    Args:
        inputs: the :class:`MetricInputs`.

    Returns:
        (N,) areas in [0, 1].
    """
    return np.asarray(_curves(inputs).deletion_auc, np.float64)


def _cells(inputs: MetricInputs) -> int:
    return int(np.prod(inputs.x.shape[1:-1]))


def road_combined(inputs: MetricInputs) -> np.ndarray:
    """Per image: ROAD's combined score (:func:`ifa_jax.metrics.road`, percentiles 10 ...
    90, noisy linear imputation): half the mean score change when the least relevant
    cells are removed minus when the most relevant are.

    Args:
        inputs: the :class:`MetricInputs`.

    Returns:
        (N,) scores, higher is better.
    """
    r = metrics.road(
        inputs.score_fn, jnp.asarray(inputs.x), inputs.maps, inputs.target, key=inputs.key
    )
    return np.asarray(r.combined, np.float64)


def arcc_score(inputs: MetricInputs) -> np.ndarray:
    """Per image: ARCC (:func:`ifa_jax.metrics.arcc`), the harmonic mean of coherency (the
    method's map of the image masked by its map correlates with the map), 1 - complexity
    and ROAD over the percentiles 20 ... 80.

    Args:
        inputs: the :class:`MetricInputs`.

    Returns:
        (N,) scores in [0, 1], higher is better.
    """
    r = metrics.arcc(
        inputs.score_fn,
        inputs.explain,
        jnp.asarray(inputs.x),
        inputs.maps,
        inputs.target,
        key=inputs.key,
    )
    return np.asarray(r.arcc, np.float64)


def faithfulness_correlation(inputs: MetricInputs) -> np.ndarray:
    """Per image: the faithfulness correlation (:func:`ifa_jax.metrics.faithfulness_correlation`,
    100 random subsets of a quarter of the cells, at most 224, set to the image's minimum):
    Pearson r between the map's sum over a subset and the score's fall.

    Args:
        inputs: the :class:`MetricInputs`.

    Returns:
        (N,) correlations, NaN where undefined; higher is better.
    """
    r = metrics.faithfulness_correlation(
        inputs.score_fn,
        jnp.asarray(inputs.x),
        inputs.maps,
        inputs.target,
        key=inputs.key,
        subset_size=min(224, max(1, _cells(inputs) // 4)),
    )
    return np.array([np.nan if c is None else c for c in r.correlation], np.float64)


def pixel_flipping_auc(inputs: MetricInputs) -> np.ndarray:
    """Per image: the area under the score as the cells are set to the image's minimum,
    most relevant first, in about 50 steps (:func:`ifa_jax.metrics.pixel_flipping`).

    Args:
        inputs: the :class:`MetricInputs`.

    Returns:
        (N,) areas, lower is better.
    """
    r = metrics.pixel_flipping(
        inputs.score_fn,
        jnp.asarray(inputs.x),
        inputs.maps,
        inputs.target,
        cells_per_step=max(1, _cells(inputs) // 50),
    )
    return np.asarray(r.auc, np.float64)


def _sensitivity(inputs: MetricInputs) -> metrics.Sensitivity:
    return inputs.shared(
        "sensitivity",
        lambda: metrics.sensitivity(
            inputs.explain,
            jnp.asarray(inputs.x),
            inputs.target,
            key=inputs.shared_key("sensitivity"),
            n_samples=SENSITIVITY_SAMPLES,
            maps=inputs.maps,
        ),
    )


def random_logit(inputs: MetricInputs) -> Any:
    """Per image: SSIM between the map of the label and the map of a random other class
    (:func:`ifa_jax.metrics.random_logit`); NaN for inputs without two spatial axes or a
    model without two classes.

    Args:
        inputs: the :class:`MetricInputs`.

    Returns:
        (N,) similarities, lower is better.
    """
    if inputs.x.ndim != 4 or not inputs.num_classes or inputs.num_classes < 2:
        return np.full(len(inputs.x), np.nan)
    return metrics.random_logit(
        inputs.explain,
        jnp.asarray(inputs.x),
        inputs.target,
        inputs.num_classes,
        key=inputs.key,
        maps=inputs.maps,
    )


def _masked(fn: Callable[[Any, Any], Any]) -> Callable[[MetricInputs], Any]:
    return lambda inputs: fn(inputs.maps, inputs.masks)


METRICS: tuple[Metric, ...] = (
    Metric(
        "average_drop",
        "lower",
        False,
        average_drop,
        "average drop (%)",
        "the relative fall of the label's probability when the image is multiplied by "
        "the map (the map keeps what the model needs when it is small)",
    ),
    Metric(
        "increase",
        "higher",
        False,
        increase,
        "increase (%)",
        "the share of images whose probability rises when multiplied by the map",
    ),
    Metric(
        "insertion_auc",
        "higher",
        False,
        insertion_auc,
        "insertion AUC",
        "the area under the probability as the most salient windows are put back into "
        "a blurred image (it rises fast for a faithful map)",
    ),
    Metric(
        "deletion_auc",
        "lower",
        False,
        deletion_auc,
        "deletion AUC",
        "the area under the probability as the most salient windows are replaced by "
        "zeros (it falls fast for a faithful map)",
    ),
    Metric(
        "road",
        "higher",
        False,
        road_combined,
        "ROAD",
        "half the fall of the probability when the least relevant cells are removed "
        "minus when the most relevant are (ROAD combined, noisy linear imputation)",
    ),
    Metric(
        "arcc",
        "higher",
        False,
        arcc_score,
        "ARCC",
        "the harmonic mean of coherency, 1 - complexity and ROAD (pytorch-grad-cam's "
        "combined metric)",
    ),
    Metric(
        "faithfulness_correlation",
        "higher",
        False,
        faithfulness_correlation,
        "faithfulness corr.",
        "Pearson r between the map's sum over random subsets of cells and the fall of "
        "the probability when they are removed",
    ),
    Metric(
        "pixel_flipping",
        "lower",
        False,
        pixel_flipping_auc,
        "pixel flipping AUC",
        "the area under the probability as the cells are removed, most relevant first",
    ),
    Metric(
        "pointing_game",
        "higher",
        True,
        _masked(metrics.pointing_game),
        "pointing game",
        "the share of maps whose maximum lies on the object",
    ),
    # The energy pointing game is not a column: on these maps (min-max, >= 0) it equals
    # the relevance mass.
    Metric(
        "relevance_mass",
        "higher",
        True,
        _masked(metrics.relevance_mass_accuracy),
        "relevance mass",
        "the share of the map's mass on the object (on maps >= 0, as these are, also the "
        "energy-based pointing game)",
    ),
    Metric(
        "relevance_rank",
        "higher",
        True,
        _masked(metrics.relevance_rank_accuracy),
        "relevance rank",
        "the share of the object's cells among the map's k largest, k the object's size",
    ),
    Metric(
        "sparseness",
        "higher",
        False,
        lambda inputs: metrics.sparseness(inputs.maps),
        "sparseness",
        "the Gini index of the map (1: all mass on one cell, 0: uniform)",
    ),
    Metric(
        "complexity",
        "lower",
        False,
        lambda inputs: metrics.complexity(inputs.maps),
        "complexity",
        "the entropy of the map's share per cell (lower: a more concise map)",
    ),
    Metric(
        "max_sensitivity",
        "lower",
        False,
        lambda inputs: _sensitivity(inputs).max,
        "max sensitivity",
        f"the largest relative change of the map under {SENSITIVITY_SAMPLES} uniform "
        "input perturbations of radius 0.2",
    ),
    Metric(
        "average_sensitivity",
        "lower",
        False,
        lambda inputs: _sensitivity(inputs).average,
        "avg sensitivity",
        "the mean relative change of the map under the same perturbations",
    ),
    Metric(
        "random_logit",
        "lower",
        False,
        random_logit,
        "random logit",
        "SSIM between the map of the label and the map of a random other class (a map "
        "that does not depend on the class scores high)",
    ),
)


def _summary(values: np.ndarray) -> dict[str, Any]:
    """Mean, standard deviation and standard error of the finite values, and their count."""
    v = values[np.isfinite(values)]
    n = int(v.size)
    if n == 0:
        return {"mean": None, "std": None, "sem": None, "n": 0}
    std = float(v.std(ddof=1)) if n > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "sem": std / np.sqrt(n), "n": n}


def _per_sample(result: Any) -> np.ndarray:
    """A metric's values as float64, NaN where a ``(value, defined)`` result is undefined."""
    if hasattr(result, "value") and hasattr(result, "defined"):
        defined = np.asarray(result.defined, bool)
        return np.where(defined, np.asarray(result.value, np.float64), np.nan)
    return np.asarray(result, np.float64)


def _seconds_per_image(
    explain: Explainer, x: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, float]:
    """The maps of ``x``, and the seconds per image of a second, compiled call."""
    jax.block_until_ready(explain(x, target))  # compiles
    start = time.perf_counter()
    maps = jax.block_until_ready(explain(x, target))
    return np.asarray(maps), (time.perf_counter() - start) / len(x)


def score_methods(
    explainers: Mapping[str, Explainer],
    score_fn: Any,
    x: np.ndarray,
    target: np.ndarray,
    *,
    masks: np.ndarray | None = None,
    key: jax.Array | None = None,
    num_classes: int | None = None,
    metric_table: Sequence[Metric] = METRICS,
) -> dict[str, Any]:
    """Every method's maps of the same images scored by every metric of the table.

    Args:
        explainers: ``{method: (x, target) -> maps (N, *in) in [0, 1]}``.
        score_fn: ``(x, target) -> (N,)`` the model's probability of the target.
        x: (N, *in, C) inputs.
        target: (N,) int classes explained.
        masks: (N, *in) bool ground-truth masks, or None (metrics that need them are
            skipped).
        key: the PRNG key the metrics draw from (default ``jax.random.key(0)``); each
            metric gets ``fold_in(key, crc32(name))``, the same for every method.
        num_classes: the model's classes, for the metrics that need them, or None.
        metric_table: the :class:`Metric` s.

    Returns:
        ``{"samples": N, "metrics": {name: {"direction", "needs_masks", "label",
        "description"}}, "skipped": {name: reason}, "methods": {method:
        {"seconds_per_image": s, "values": {name: {"mean", "std", "sem", "n"}}}}}``;
        a mean is None where no image has a defined value.

    Raises:
        ValueError: two metrics of one name, no methods, masks of another shape than
            the inputs' grid, or maps of another shape.
    """
    names = [m.name for m in metric_table]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"metric name(s) {', '.join(twice)} appear more than once")
    if not explainers:
        raise ValueError("no methods to compare; pass at least one explainer")
    x, target = np.asarray(x), np.asarray(target)
    spatial = x.shape[:-1]
    if masks is not None:
        masks = np.asarray(masks)
        if masks.shape != spatial:
            raise ValueError(
                f"masks have shape {masks.shape} but the inputs {x.shape} need {spatial} "
                "(N, *spatial)"
            )
    key = jax.random.key(0) if key is None else key
    skipped = {
        m.name: "the dataset has no ground-truth masks"
        for m in metric_table
        if m.needs_masks and masks is None
    }
    table = [m for m in metric_table if m.name not in skipped]
    out: dict[str, Any] = {
        "samples": len(x),
        "metrics": {
            m.name: {
                "direction": m.direction,
                "needs_masks": m.needs_masks,
                "label": m.label,
                "description": m.description,
            }
            for m in metric_table
        },
        "skipped": skipped,
        "methods": {},
    }
    for method, explain in explainers.items():
        maps, seconds = _seconds_per_image(explain, x, target)
        if maps.shape != spatial:
            raise ValueError(
                f"method {method!r} gave maps of shape {maps.shape}; the metrics need "
                f"{spatial} (N, *spatial) on the input grid"
            )
        inputs = MetricInputs(
            score_fn, x, target, maps, masks, key, explain, num_classes, base_key=key
        )
        values = {}
        for m in table:
            metric_key = jax.random.fold_in(key, zlib.crc32(m.name.encode()))
            per_sample = _per_sample(
                m.compute(dataclasses.replace(inputs, key=metric_key, _shared=inputs._shared))
            )
            if per_sample.shape != (len(x),):
                raise ValueError(
                    f"metric {m.name!r} returned shape {per_sample.shape}; it must return "
                    f"one value per sample, ({len(x)},)"
                )
            values[m.name] = _summary(per_sample)
        out["methods"][method] = {"seconds_per_image": seconds, "values": values}
    return out


def column_ranks(values: Any, directions: Sequence[str]) -> np.ndarray:
    """The rank of each row within each column, 1 the best in the column's direction.

    Values within a relative :data:`TIE_RTOL` of each other tie and share the better rank
    (1, 1, 3); NaN (an undefined value) gets no rank (NaN).

    Args:
        values: (M, K) values, M rows (methods) and K columns (metrics).
        directions: K entries, ``"higher"`` or ``"lower"``: where the column is better.

    Returns:
        (M, K) float ranks in 1..M, NaN where the value is NaN.

    Raises:
        ValueError: values that are not (M, K), or directions not one per column.
    """
    v = np.asarray(values, np.float64)
    if v.ndim != 2 or len(directions) != v.shape[1]:
        raise ValueError(
            f"values must be (methods, metrics) with one direction per metric; got "
            f"{v.shape} and {len(directions)} direction(s)"
        )
    for d in directions:
        if d not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}; got {d!r}")
    sign = np.array([-1.0 if d == "higher" else 1.0 for d in directions])
    loss = v * sign  # lower is better in every column
    ranks = np.full(v.shape, np.nan)
    for k in range(v.shape[1]):
        col = loss[:, k]
        ok = np.isfinite(col)
        c = col[ok]
        tol = TIE_RTOL * np.maximum(np.abs(c[:, None]), np.abs(c[None, :])) + 1e-12
        better = c[None, :] < c[:, None] - tol  # [i, j]: j beats i
        ranks[ok, k] = 1 + better.sum(axis=1)
    return ranks


def _columns(numbers: Mapping[str, Any]) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """The scored metrics and the cost column: (names, labels, directions, values (M, K))."""
    scored = [n for n in numbers["metrics"] if n not in numbers["skipped"]]
    methods = numbers["methods"]
    values = [
        [np.nan if row["values"][n]["mean"] is None else row["values"][n]["mean"] for n in scored]
        + [row["seconds_per_image"] * 1000]
        for row in methods.values()
    ]
    labels = [numbers["metrics"][n]["label"] for n in scored] + ["cost (ms / image)"]
    directions = [numbers["metrics"][n]["direction"] for n in scored] + ["lower"]
    return [*scored, "cost"], labels, directions, np.asarray(values, np.float64)


def _decimals(largest: float) -> int:
    """Three significant digits of the largest value of a column, 1 to 3 decimals."""
    if not np.isfinite(largest) or largest == 0:
        return 3
    return int(np.clip(2 - np.floor(np.log10(abs(largest))), 1, 3))


def _number(v: float, decimals: int | None = None) -> str:
    """A value for the table with ``decimals`` (default: as :func:`_decimals` of it)."""
    if not np.isfinite(v):
        return "undefined"
    return f"{v:.{_decimals(v) if decimals is None else decimals}f}"


# ------------------------------------------------------------------------ in a run


def method_maps(ctx: RunContext, method: str) -> Explainer:
    """``(x, target) -> maps (N, *in)``: ``method``'s CAMs as the run computes them,
    min-max per image and upsampled to the input grid.

    Args:
        ctx: the run.
        method: one of the config's methods.

    Returns:
        The explainer.
    """

    def explain(x, target):
        _, out = ctx.explain(x, target, method=method)
        return cams.upsample(scale.minmax_per_image(out.cam), x.shape[1:-1])

    return explain


def chosen_metrics(names: Sequence[str] | None) -> tuple[Metric, ...]:
    """The metrics of :data:`METRICS` named in ``names``, in that order (None: all).

    Args:
        names: metric names, or None.

    Returns:
        The :class:`Metric` s.

    Raises:
        ValueError: a name that is not in :data:`METRICS`.
    """
    if names is None:
        return METRICS
    by_name = {m.name: m for m in METRICS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(
            f"unknown comparison metric(s) {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(by_name)}"
        )
    return tuple(by_name[n] for n in names)


def compare_methods(ctx: RunContext) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The ``comparison`` evaluation: :func:`score_methods` of every method of the config
    on ``comparison_samples`` (default: ``faithfulness_samples``) validation images drawn
    stratified by class, each explained as its label, with the validation split's masks
    when it has them.

    Args:
        ctx: the run, analysed.

    Returns:
        ``(numbers, {})``; numbers as :func:`score_methods` returns them ({} when
        ``comparison_samples`` is 0).
    """
    config = ctx.config
    n = config.comparison_samples
    indices = ctx.sample_indices(config.faithfulness_samples if n is None else n)
    if len(indices) == 0:
        return {}, {}
    ds = ctx.splits.validation
    x, y = ds.gather(indices)
    gather_masks = getattr(ds, "gather_masks", None)
    masks = gather_masks(indices) if gather_masks is not None else None
    numbers = score_methods(
        {m: method_maps(ctx, m) for m in config.methods},
        metrics.model_scorer(ctx.probe, ctx.variables),
        x,
        y,
        masks=masks,
        key=method_key(config, "explain"),
        num_classes=ds.num_classes,
        metric_table=chosen_metrics(config.comparison_metrics),
    )
    numbers["backend"] = jax.default_backend()
    return numbers, {}


def report_comparison(ctx: RunContext, numbers: Mapping[str, Any]) -> list[str]:
    """The report section: methods x metrics, best per column in bold, the direction of
    each metric in its header, the cost column, and how to read it.

    Args:
        ctx: the run.
        numbers: what :func:`compare_methods` computed.

    Returns:
        Markdown lines (none when nothing was compared).
    """
    if not numbers:
        return []
    names, labels, directions, values = _columns(numbers)
    ranks = column_ranks(values, directions)
    methods = list(numbers["methods"])
    # One precision per column, from its largest value.
    decimals = [_decimals(float(np.nanmax(np.abs(c), initial=0.0))) for c in values.T]
    rows = []
    for i, m in enumerate(methods):
        row = [m]
        for k, name in enumerate(names):
            cell = _number(values[i, k], decimals[k])
            if name != "cost":
                summary = numbers["methods"][m]["values"][name]
                if summary["mean"] is not None and summary["n"] > 1:
                    cell += f" ± {_number(summary['sem'], decimals[k])}"
            row.append(f"**{cell}**" if ranks[i, k] == 1 else cell)
        rows.append(row)
    header = ["method", *(f"{label} {ARROWS[d]}" for label, d in zip(labels, directions))]
    described = [
        f"*{meta['label']}* ({meta['direction']} is better): {meta['description']}"
        for n, meta in numbers["metrics"].items()
        if n not in numbers["skipped"]
    ]
    lines = [
        "## Method comparison",
        "",
        f"Every method on the same {numbers['samples']} validation images (drawn "
        "stratified by class), each explained as its label, its maps min-max per image "
        "and upsampled to the input grid. Each cell is the mean over the images ± its "
        "standard error; the arrow in a header says which direction is better, and the "
        "best method of each column is in bold (ties share it). *cost*: milliseconds per "
        f"image to compute a method's maps, measured after compilation on this machine "
        f"({numbers.get('backend', 'unknown')} backend).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        "How to read it: the metrics measure different things, so no method needs to win "
        "every column. Faithfulness metrics (drop, increase, insertion, deletion, ROAD, "
        "ARCC, faithfulness correlation, pixel flipping) ask whether the model needs what "
        "the map highlights; localisation metrics (pointing game, relevance mass and "
        "rank) whether the map lies on the object; sparseness and "
        "complexity whether it is concise; sensitivity whether it stays put under small "
        "input noise; random logit whether it changes with the class explained (a map "
        "that looks the same for another class explains the image, not the decision). "
        "Two means closer than about two standard "
        "errors are not told apart by these images. A method best on the metrics that "
        "match your question, at a cost you can pay, is the one to trust on this model.",
        "",
        *(f"- {d}" for d in described),
    ]
    if numbers["skipped"]:
        lines += [
            "",
            "Not computed: "
            + "; ".join(
                f"{numbers['metrics'][n]['label']} ({why})" for n, why in numbers["skipped"].items()
            )
            + ". A dataset with masks (e.g. `mnist_placed`) gives them.",
        ]
    return lines


def draw_comparison(ctx: RunContext) -> FigureType | None:
    """The comparison heatmap (methods x metrics, coloured by rank in each column), or
    None when the comparison was not run.

    Args:
        ctx: the run, evaluated.

    Returns:
        The Figure, or None.
    """
    numbers = ctx.evaluations.get("comparison", ({}, {}))[0]
    if not numbers:
        return None
    _, labels, directions, values = _columns(numbers)
    return plots.comparison_heatmap(
        values,
        column_ranks(values, directions),
        list(numbers["methods"]),
        [f"{label} {ARROWS[d]}" for label, d in zip(labels, directions)],
    )


__all__ = [
    "DIRECTIONS",
    "METRICS",
    "Metric",
    "MetricInputs",
    "average_drop",
    "column_ranks",
    "compare_methods",
    "deletion_auc",
    "draw_comparison",
    "increase",
    "insertion_auc",
    "method_maps",
    "report_comparison",
    "score_methods",
]
