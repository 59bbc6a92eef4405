"""Probes: run a model and return a layer's activations ``A`` and the gradients ``G`` of a
target score with respect to them, one forward pass and one vjp, with no edit to the model.

Every factory returns a :class:`LayerProbe`, called ``probe(variables, x, target)``, and
takes the layer(s) second (None: the model's natural target layer, shown as
``probe.layer``), then the keywords ``output=`` (the logits in the model's output) and
``reshape=`` (a token layer as a grid), then its framework's own:

* :func:`linen_probe` (:mod:`.linen`), :func:`nnx_probe` (:mod:`.nnx`) for Flax;
* :func:`equinox_probe` (:mod:`.equinox`), :func:`haiku_probe` (:mod:`.haiku`);
* :func:`hf_probe` (:mod:`.hf`) for Hugging Face transformers' Flax models;
* :func:`function_probe` (:mod:`.function`) for a model written as two functions;
* :func:`legrad_probe` (:mod:`.legrad`), LeGrad's probe of attention probabilities.

``variables`` is what the model's framework keeps apart from the model: Linen's and
Haiku's ``init`` output, a function's params. An NNX, Equinox or Hugging Face Flax model
holds its own, and its probe carries them as ``probe.variables``. :mod:`.tokens` lays
token layers on grids; :mod:`.layers` chooses the layer; :mod:`.core` is the probe
itself.

Examples:
    A Linen model's probe at its conv layer, explaining output 0:

    >>> import jax
    >>> import flax.linen as nn
    >>> import ifa_jax
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         a = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
    ...         return nn.Dense(3, name="head")(a.mean(axis=(1, 2)))
    >>> net = Net()
    >>> x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
    >>> variables = net.init(jax.random.key(1), x)
    >>> probe = ifa_jax.linen_probe(net, "conv")
    >>> out = probe(variables, x, target=0)
    >>> out.activations.shape, out.gradients.shape, out.logits.shape, out.score.shape
    ((2, 8, 8, 4), (2, 8, 8, 4), (2, 3), (2,))
    >>> out.target.tolist()
    [0, 0]
"""

from ifa_jax.probes.core import (
    SCORES,
    LayerProbe,
    Output,
    ProbeResult,
    Target,
    ZeroGradientWarning,
    select_output,
    target_scores,
)
from ifa_jax.probes.equinox import equinox_layers, equinox_probe
from ifa_jax.probes.function import function_probe
from ifa_jax.probes.haiku import haiku_calls, haiku_layers, haiku_natural_layer, haiku_probe
from ifa_jax.probes.hf import hf_probe, hf_variables
from ifa_jax.probes.layers import LayerCall, TokenLayerWarning, natural_layer, resolve_layer
from ifa_jax.probes.legrad import legrad_probe, vit_projection
from ifa_jax.probes.linen import linen_calls, linen_layers, linen_natural_layer, linen_probe
from ifa_jax.probes.nnx import nnx_layers, nnx_natural_layer, nnx_probe
from ifa_jax.probes.tokens import (
    AttentionGrid,
    GridTapped,
    Reshape,
    TokenGrid,
    attention_to_grid,
    tokens_to_grid,
)

__all__ = [
    "SCORES",
    "AttentionGrid",
    "GridTapped",
    "LayerCall",
    "LayerProbe",
    "Output",
    "ProbeResult",
    "Reshape",
    "Target",
    "TokenGrid",
    "TokenLayerWarning",
    "ZeroGradientWarning",
    "attention_to_grid",
    "equinox_layers",
    "equinox_probe",
    "function_probe",
    "haiku_calls",
    "haiku_layers",
    "haiku_natural_layer",
    "haiku_probe",
    "hf_probe",
    "hf_variables",
    "legrad_probe",
    "linen_calls",
    "linen_layers",
    "linen_natural_layer",
    "linen_probe",
    "natural_layer",
    "nnx_layers",
    "nnx_natural_layer",
    "nnx_probe",
    "resolve_layer",
    "select_output",
    "target_scores",
    "tokens_to_grid",
    "vit_projection",
]
