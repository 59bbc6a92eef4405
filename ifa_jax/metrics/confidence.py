"""Average drop and increase in confidence (Chattopadhyay et al. 2018), and the score
functions the model-running metrics share.

A score function has the signature ``score_fn(x (N, *in, C), target (N,) int) -> (N,)``:
the target travels with each row because insertion/deletion stacks many steps of many
images in one batch. :func:`model_scorer` builds one from a probe; passing the same object
again reuses the compiled computation (it is a :class:`jax.tree_util.Partial`, so the
model variables are arguments of the jitted function, not constants baked into it).

Examples:
    A score function that reads the mean brightness (standing in for a model's
    probability): masking away the upper half of two uniform images halves it:

    >>> import numpy as np
    >>> from ifa_jax.metrics.confidence import confidence_change, drop_increase
    >>> def score(x, target):
    ...     return x.mean(axis=(1, 2, 3))
    >>> x = np.ones((2, 4, 4, 1), np.float32)
    >>> saliency = np.zeros((2, 4, 4))
    >>> saliency[:, 2:] = 1.0
    >>> confidence_change(score, x, saliency, 0)
    {'average_drop': 50.0, 'average_increase': 0.0, 'n': 2}
    >>> drop_increase([0.8, 0.5], [0.4, 0.6])
    {'average_drop': 25.0, 'average_increase': 50.0, 'n': 2}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial
from jax.typing import ArrayLike

from ifa_jax._checks import index_targets, one_of
from ifa_jax.metrics._common import as_scorer, check_inputs, check_scores, paired_values
from ifa_jax.probes import SCORES, LayerProbe, target_scores

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


@dataclasses.dataclass(frozen=True)
class _ProbeScore:
    """Hashable callable (variables, x, target) -> (N,): the probe's target score."""

    probe: LayerProbe
    score: str

    def __call__(self, variables, x, target):
        logits = self.probe.forward(variables, x)
        outputs = logits.shape[-1] if logits.ndim == 2 else 1
        # NaN, not the probe's 0, for a target the model has no output for: the metrics
        # check their scores outside jit and then name it.
        valid = (target >= 0) & (target < outputs)
        return jnp.where(valid, target_scores(logits, target, self.score), jnp.nan)


def model_scorer(probe: LayerProbe, variables: Any, score: str = "probability") -> Partial:
    """``score_fn(x, target) -> (N,)``: the model's probability (or logit) of ``target``
    (NaN for a target outside the model's outputs, which the metrics then refuse).

    A :class:`jax.tree_util.Partial` over ``variables``: the same probe and score reuse
    one compiled computation for any variables of the same structure.

    Args:
        probe: the model's :class:`~ifa_jax.probes.LayerProbe`.
        variables: the model's variables.
        score: 'probability' or 'logit'.

    Returns:
        The score function.

    Raises:
        ValueError: an unknown score.
    """
    one_of("score", score, SCORES)
    return Partial(_ProbeScore(probe, score), variables)


@jax.jit
def _confidence_core(score_fn, x, saliency, target):
    both = jnp.concatenate([x, x * saliency[..., None]])
    return score_fn(both, jnp.concatenate([target, target]))


def confidence_scores(
    score_fn: ScoreFn, x: Array, saliency: ArrayLike, target: Any
) -> tuple[Array, Array]:
    """Target scores of the inputs and of the inputs masked by their saliency.

    Masked input = ``x * saliency[..., None]``. One jitted forward of 2B rows.

    Args:
        score_fn: ``(x, target) -> (N,)``, e.g. from :func:`model_scorer`.
        x: (B, *in, C) inputs.
        saliency: (B, *in) in [0, 1] on the input grid.
        target: an int or (B,) ints.

    Returns:
        (y (B,), y_masked (B,)).

    Raises:
        ValueError: shapes that do not fit, or scores of the wrong shape or not finite.
    """
    x, saliency = check_inputs(x, saliency)
    B = x.shape[0]
    y = _confidence_core(
        as_scorer(score_fn), x, saliency, index_targets(target, B, indices_only=True)
    )
    check_scores("unmasked and masked inputs", y, (2 * B,))
    return y[:B], y[B:]


def drop_increase(y: Any, y_masked: Any) -> dict[str, Any]:
    """Average drop and increase in confidence (Chattopadhyay et al. 2018), in percent.

    drop = mean(max(0, y - y_masked) / y) * 100; increase = mean(y_masked > y) * 100.
    y must be positive (use probabilities). Concatenate y over batches before calling, so
    the averages are over samples.

    Args:
        y: (N,) target scores of the inputs, > 0.
        y_masked: (N,) those of the masked inputs.

    Returns:
        ``{'average_drop', 'average_increase', 'n'}``.

    Raises:
        ValueError: arrays of different sizes, or y <= 0.
    """
    y, ym = paired_values(("y", "y_masked"), y, y_masked)
    bad = np.flatnonzero(y <= 0)
    if bad.size:
        raise ValueError(
            f"average drop divides by the unmasked score y, but y <= 0 for {bad.size} "
            f"sample(s) (first at index {bad[0]}: {y[bad[0]]:.4g}); use positive scores, "
            "e.g. probabilities (score='probability')"
        )
    drop = np.maximum(0.0, y - ym) / y
    return {
        "average_drop": float(drop.mean() * 100),
        "average_increase": float(np.mean(ym > y) * 100),
        "n": int(y.size),
    }


def confidence_change(
    score_fn: ScoreFn, x: Array, saliency: ArrayLike, target: Any
) -> dict[str, Any]:
    """:func:`drop_increase` of :func:`confidence_scores` for one batch.

    Args:
        score_fn: as for :func:`confidence_scores`.
        x: (B, *in, C) inputs.
        saliency: (B, *in) in [0, 1].
        target: an int or (B,) ints.

    Returns:
        ``{'average_drop', 'average_increase', 'n'}``.

    Raises:
        ValueError: as for :func:`confidence_scores` and :func:`drop_increase`.
    """
    y, ym = confidence_scores(score_fn, x, saliency, target)
    return drop_increase(np.asarray(y), np.asarray(ym))
