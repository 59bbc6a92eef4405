"""Parameter-free Flax modules that make a feature tappable by name.

A probe taps the outputs of named submodules. A function such as ``nn.relu`` or the
softmax inside ``nn.dot_product_attention`` has no name, so its output cannot be tapped;
these modules compute the same numbers as named steps:

- :class:`ReLU`: ``nn.relu`` as a Linen module (``ReLU(name="relu1")(x)``), so the
  rectified features of a conv (the usual CAM layer) can be tapped; :class:`NnxReLU` is
  the same for NNX (``self.relu1 = NnxReLU()`` in ``__init__``, tapped as ``"relu1"``).
- :func:`tappable_attention`: ``nn.dot_product_attention`` whose probabilities pass
  through :class:`AttentionProbs` named ``"probs"`` (LeGrad taps ``"block1/attn/probs"``).

Examples:
    The rectified features of a conv, and the attention probabilities (B, heads,
    queries, keys), become named intermediates:

    >>> import flax.linen as nn
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ifa_jax.modules import ReLU, tappable_attention
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return ReLU(name="relu1")(nn.Conv(2, (3, 3), name="conv1")(x)).mean((1, 2))
    >>> x = jnp.ones((1, 4, 4, 1))
    >>> variables = Net().init(jax.random.key(0), x)
    >>> _, state = Net().apply(variables, x, capture_intermediates=True)
    >>> state["intermediates"]["relu1"]["__call__"][0].shape
    (1, 4, 4, 2)
    >>> attention = nn.MultiHeadDotProductAttention(2, attention_fn=tappable_attention)
    >>> tokens = jnp.ones((1, 3, 8))
    >>> variables = attention.init(jax.random.key(0), tokens)
    >>> _, state = attention.apply(variables, tokens, capture_intermediates=True)
    >>> state["intermediates"]["probs"]["__call__"][0].shape
    (1, 2, 3, 3)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from flax.linen.dtypes import promote_dtype

__all__ = ["AttentionProbs", "NnxReLU", "ReLU", "tappable_attention"]


class ReLU(nn.Module):
    """ReLU as a (parameter-free) module, so its output can be tapped by name."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``max(x, 0)``, any shape."""
        return nn.relu(x)


class NnxReLU(nnx.Module):
    """ReLU as a (parameter-free) NNX module, so its output can be tapped by its attribute
    name with :func:`ifa_jax.nnx_probe`."""

    def __call__(self, x: jax.Array) -> jax.Array:
        """``max(x, 0)``, any shape."""
        return nnx.relu(x)


class AttentionProbs(nn.Module):
    """The identity on attention probabilities (B, heads, queries, keys): a named,
    parameter-free step, so a probe can tap them (``"block1/attn/probs"``)."""

    @nn.compact
    def __call__(self, probs: jax.Array) -> jax.Array:
        """Probabilities (B, heads, queries, keys), unchanged."""
        return probs


def tappable_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: jax.Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Any = None,
    precision: Any = None,
) -> jax.Array:
    """``nn.dot_product_attention`` (same numbers) with the post-softmax probabilities
    passed through :class:`AttentionProbs` named ``"probs"``, a child of the calling
    attention module. Pass it as ``nn.MultiHeadDotProductAttention(attention_fn=...)``:
    no parameter is added.

    Args:
        query: (B, ..., queries, heads, D).
        key: (B, ..., keys, heads, D).
        value: (B, ..., keys, heads, D).
        bias: added to the attention logits, or None.
        mask: bool, False where attention is masked out, or None.
        broadcast_dropout: use one dropout mask over the batch.
        dropout_rng: the dropout PRNG key.
        dropout_rate: the dropout rate.
        deterministic: no dropout.
        dtype: the computation's dtype (default: promoted from the inputs).
        precision: the matmuls' precision.

    Returns:
        (B, ..., queries, heads, D), as ``nn.dot_product_attention`` returns.
    """
    query, key, value = promote_dtype(query, key, value, dtype=dtype)
    probs = nn.dot_product_attention_weights(
        query,
        key,
        bias,
        mask,
        broadcast_dropout,
        dropout_rng,
        dropout_rate,
        deterministic,
        query.dtype,
        precision,
    )
    probs = AttentionProbs(name="probs")(probs)
    return jnp.einsum("...hqk,...khd->...qhd", probs, value, precision=precision)
