"""Evaluation of CAMs and feature subsets (docs/method.md section 6).

Pure functions on arrays (host NumPy, float64) for the statistics, and batched, jitted
functions where the model is run. One module per concern, all re-exported here
(``from ifa_jax import metrics; metrics.pearson(...)``):

* :mod:`~ifa_jax.metrics.correlation`: :func:`pearson`, :func:`spearman`,
  :func:`consistency` between a CAM's activation level (:func:`activation_level`) and the
  target score; :func:`auroc`.
* :mod:`~ifa_jax.metrics.confidence` (runs the model): :func:`confidence_scores` /
  :func:`drop_increase` / :func:`confidence_change` (average drop and increase in
  confidence, Chattopadhyay et al. 2018) and :func:`model_scorer`.
* :mod:`~ifa_jax.metrics.insertion_deletion` (runs the model): :func:`insertion_deletion`
  curves and AUCs (Petsiuk et al. 2018), windows of any spatial rank ranked by saliency,
  every step of an image in one forward batch.
* :mod:`~ifa_jax.metrics.subsets` (runs the model): :func:`subset_accuracy` /
  :func:`subset_accuracy_curve`: accuracy when only selected channels at the layer are
  kept.
* faithfulness (run the model): :func:`road` (ROAD, Rong et al. 2022: MoRF, LeRF and
  combined, with :func:`noisy_linear_imputation`; :mod:`~ifa_jax.metrics.road`),
  :func:`arcc` (:mod:`~ifa_jax.metrics.arcc`), :func:`faithfulness_correlation` and
  :func:`pixel_flipping` (:mod:`~ifa_jax.metrics.faithfulness`).
* sanity check (Adebayo et al. 2018): :func:`cascading_randomization` in the order of
  :func:`top_down_order` (:mod:`~ifa_jax.metrics.randomization`), :func:`rank_correlation`
  and :func:`ssim`
  (:mod:`~ifa_jax.metrics.similarity`).
* localisation given masks (:mod:`~ifa_jax.metrics.localisation`): :func:`pointing_game`,
  :func:`energy_pointing_game`, :func:`relevance_mass_accuracy`,
  :func:`relevance_rank_accuracy`; complexity (:mod:`~ifa_jax.metrics.complexity`):
  :func:`sparseness`, :func:`complexity`; robustness to input noise (runs an explanation
  function, :mod:`~ifa_jax.metrics.robustness`): :func:`sensitivity`,
  :func:`max_sensitivity`, :func:`average_sensitivity`; the random-logit test
  (:mod:`~ifa_jax.metrics.random_logit`): :func:`random_logit`. They return
  :class:`Scores` (:mod:`~ifa_jax.metrics.scores`): values (B,) with a flag for the
  undefined ones.

Undefined statistics (too few samples, a constant input, a single class) are ``None`` with
a ``reason`` string, never NaN. Bad inputs raise ``ValueError`` naming the values and the fix.

Score functions for the confidence and insertion/deletion metrics have the signature
``score_fn(x (N, *in, C), target (N,) int) -> (N,)``: the target travels with each row
because insertion/deletion stacks many steps of many images in one batch.
:func:`model_scorer` builds one from a probe; passing the same object again reuses the
compiled computation (it is a :class:`jax.tree_util.Partial`, so the model variables are
arguments of the jitted function, not constants baked into it).

Examples:
    Activation levels that rise with the target score, and an undefined correlation:

    >>> from ifa_jax import metrics
    >>> metrics.consistency([0.1, 0.4, 0.35, 0.8], [1.0, 2.0, 3.0, 4.0])["spearman"]
    0.8
    >>> metrics.consistency([0.5, 0.5, 0.5], [1.0, 2.0, 3.0])
    {'pearson': None, 'spearman': None, 'n': 3, 'reason': 'constant activation'}
    >>> metrics.drop_increase([0.8, 0.5], [0.4, 0.6])
    {'average_drop': 25.0, 'average_increase': 50.0, 'n': 2}
"""

from ifa_jax.metrics.arcc import ARCC, arcc, cam_explainer, coherency
from ifa_jax.metrics.complexity import complexity, sparseness
from ifa_jax.metrics.confidence import (
    ScoreFn,
    confidence_change,
    confidence_scores,
    drop_increase,
    model_scorer,
)
from ifa_jax.metrics.correlation import (
    MIN_SAMPLES,
    activation_level,
    auroc,
    consistency,
    pearson,
    rankdata,
    spearman,
)
from ifa_jax.metrics.faithfulness import (
    FaithfulnessCorrelation,
    PixelFlipping,
    faithfulness_correlation,
    pixel_flipping,
    random_subsets,
)
from ifa_jax.metrics.insertion_deletion import (
    BASELINES,
    InsertionDeletion,
    blur,
    curve_auc,
    insertion_deletion,
    window_ids,
)
from ifa_jax.metrics.localisation import (
    energy_pointing_game,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)
from ifa_jax.metrics.random_logit import other_classes, random_logit
from ifa_jax.metrics.randomization import LayerOrder, cascading_randomization, top_down_order
from ifa_jax.metrics.road import (
    ROAD,
    ROAD_PERCENTILES,
    neighbour_weights,
    noisy_linear_imputation,
    road,
    road_masks,
)
from ifa_jax.metrics.robustness import (
    ExplainFn,
    Sensitivity,
    average_sensitivity,
    max_sensitivity,
    sensitivity,
)
from ifa_jax.metrics.scores import Scores
from ifa_jax.metrics.similarity import rank_correlation, ssim
from ifa_jax.metrics.subsets import (
    DEFAULT_RATIOS,
    ROW_MODES,
    subset_accuracy,
    subset_accuracy_curve,
)

__all__ = [
    "BASELINES",
    "DEFAULT_RATIOS",
    "MIN_SAMPLES",
    "ROW_MODES",
    "InsertionDeletion",
    "LayerOrder",
    "ScoreFn",
    "activation_level",
    "auroc",
    "blur",
    "cascading_randomization",
    "confidence_change",
    "confidence_scores",
    "consistency",
    "curve_auc",
    "drop_increase",
    "insertion_deletion",
    "model_scorer",
    "pearson",
    "rank_correlation",
    "rankdata",
    "spearman",
    "ssim",
    "top_down_order",
    "subset_accuracy",
    "subset_accuracy_curve",
    "window_ids",
    "ARCC",
    "FaithfulnessCorrelation",
    "PixelFlipping",
    "ROAD",
    "ROAD_PERCENTILES",
    "arcc",
    "cam_explainer",
    "coherency",
    "faithfulness_correlation",
    "neighbour_weights",
    "noisy_linear_imputation",
    "pixel_flipping",
    "random_subsets",
    "road",
    "road_masks",
    "ExplainFn",
    "Scores",
    "Sensitivity",
    "average_sensitivity",
    "complexity",
    "energy_pointing_game",
    "max_sensitivity",
    "other_classes",
    "pointing_game",
    "random_logit",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "sensitivity",
    "sparseness",
]
