"""Integrated feature analysis: streaming dataset statistics of channel contributions.

One pass over a dataset collects, per class, the distribution of each feature channel's
contribution at one layer. The pieces, each usable alone:

* :mod:`~ifa_jax.analysis.state`: the streaming state :class:`Stats` (a pytree) and its
  pure ``init / update / merge / finalize`` (merges are exact, over devices and hosts);
* :mod:`~ifa_jax.analysis.step`: the per-batch step, probe + CAM + statistics update in
  one jitted call (:data:`analysis_step`);
* :mod:`~ifa_jax.analysis.adapters`: the batches accepted (tuples, :class:`ifa_jax.inputs.Batch`,
  dicts, :func:`record_batches` of single records) and the bins of a float target
  (:func:`quantile_bins`);
* :mod:`~ifa_jax.analysis.driver`: :func:`analyze` (one method -> :class:`Analysis`) and
  :func:`analyze_methods` (several from one probe call -> ``{method: Analysis}``).

Examples:
    One pass of GradCAM over two batches of 3 samples of 3 classes (random weights,
    so every sample is counted, ``count='all'``):

    >>> import jax
    >>> import flax.linen as nn
    >>> import ifa_jax
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         a = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
    ...         return nn.Dense(3, name="head")(a.mean(axis=(1, 2)))
    >>> net = Net()
    >>> x = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1))
    >>> variables = net.init(jax.random.key(1), x)
    >>> import numpy as np
    >>> from ifa_jax import analysis
    >>> y = np.array([0, 1, 2, 0, 1, 2])
    >>> batches = [(np.asarray(x[:3]), y[:3]), (np.asarray(x[3:]), y[3:])]
    >>> probe = ifa_jax.linen_probe(net, "conv")
    >>> result = analysis.analyze(probe, variables, batches, num_classes=3, method="gradcam",
    ...                           count="all", progress=False)
    >>> s = result.summary
    >>> s.im_class.shape, s.covariance.shape, s.cam_mean.shape, s.class_counts.tolist()
    ((3, 4), (4, 4), (3, 8, 8), [2.0, 2.0, 2.0])
    >>> result.samples["cam_max"].shape
    (6,)
"""

from ifa_jax._checks import IntegerInputWarning as IntegerInputWarning
from ifa_jax.analysis.adapters import (
    DEFAULT_KEYS,
    RecordBatches,
    quantile_bins,
    record_batches,
)
from ifa_jax.analysis.driver import analyze, analyze_methods
from ifa_jax.analysis.options import check_layer_methods
from ifa_jax.analysis.result import Analysis
from ifa_jax.analysis.state import (
    BatchStats,
    MissingClassesWarning,
    NothingCountedError,
    Stats,
    Summary,
    finalize,
    finalize_all,
    from_batch,
    init,
    merge,
    update,
)
from ifa_jax.analysis.step import COUNT_MODES, Array, PerSample, analysis_step, batch_stats

__all__ = [
    "COUNT_MODES",
    "DEFAULT_KEYS",
    "Analysis",
    "Array",
    "BatchStats",
    "IntegerInputWarning",
    "MissingClassesWarning",
    "NothingCountedError",
    "PerSample",
    "RecordBatches",
    "Stats",
    "Summary",
    "analysis_step",
    "analyze",
    "analyze_methods",
    "batch_stats",
    "check_layer_methods",
    "finalize",
    "finalize_all",
    "from_batch",
    "init",
    "merge",
    "quantile_bins",
    "record_batches",
    "update",
]
