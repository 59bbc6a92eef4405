"""The application's reference Flax models: the tests, the demo and the experiments use them.

Every model takes channels-last inputs ``(B, *spatial, C_in)`` and returns logits
``(B, num_classes)``. Each docstring names the model's natural target layer.

Examples:
    A two-block CNN for 8 x 8 grey images and 3 classes, its shapes read abstractly
    (nothing is computed):

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ifa_jax.runner.models import ConvNet
    >>> model = ConvNet(ndim=2, features=(4, 8), num_classes=3)
    >>> x = jnp.zeros((2, 8, 8, 1))
    >>> logits, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), x)
    >>> logits.shape
    (2, 3)
    >>> {name: p["kernel"].shape for name, p in variables["params"].items()}
    {'conv1': (3, 3, 1, 4), 'conv2': (3, 3, 4, 8), 'head': (8, 3)}
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from ifa_jax.modules import AttentionProbs, ReLU, tappable_attention

# Re-exported: the reference models tap them, and users import them from here too.
__all__ = [
    "AttentionProbs",
    "Backbone",
    "BasicBlock",
    "BottleneckBlock",
    "ConvNet",
    "MnistCNN",
    "NestedNet",
    "NnxCNN",
    "ReLU",
    "ResNet",
    "ResNet18",
    "ResNet50",
    "ResNetStage",
    "ViT",
    "ViTBlock",
    "tappable_attention",
]


class MnistCNN(nn.Module):
    """The reference implementation's MNIST network, for 28x28x1 inputs.

    conv 5x5 (100) -> relu -> maxpool 3 -> conv 3x3 (200) -> relu -> maxpool 3
    -> dense 512 -> relu -> dense 10. Natural target layer: ``"relu2"``, the rectified
    output of the second conv, (B, 6, 6, 200) for 28x28 inputs (valid padding, as in
    PyTorch). ``"conv2"`` taps the same features before the ReLU. The reference code
    hooks the conv module, but its ReLU is in-place, so the hooked tensor ends up
    rectified: ``"relu2"`` matches what it actually analyses.
    """

    num_classes: int = 10
    width1: int = 100
    width2: int = 200
    hidden: int = 512

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (B, num_classes) of inputs x (B, *spatial, C)."""
        x = nn.Conv(self.width1, (5, 5), padding="VALID", name="conv1")(x)
        x = nn.max_pool(ReLU(name="relu1")(x), (3, 3), strides=(3, 3))
        x = nn.Conv(self.width2, (3, 3), padding="VALID", name="conv2")(x)
        x = nn.max_pool(ReLU(name="relu2")(x), (3, 3), strides=(3, 3))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden, name="fc1")(x))
        return nn.Dense(self.num_classes, name="head")(x)


class ConvNet(nn.Module):
    """A small rank-agnostic CNN: ``len(features)`` conv+relu blocks, global average pool, dense.

    ``ndim`` is the spatial rank (1: signals, 2: images, 3: volumes). The convs are named
    ``conv1 .. convN`` and their ReLUs ``relu1 .. reluN`` (modules, so they can be
    tapped). The natural target layer is the last ReLU's output: the head is linear after
    global average pooling of it, so GradCAM there equals the classic CAM of Zhou et al.
    (2016) divided by the number of grid cells. ``relu_last=False`` drops the last ReLU.

    ``ConvNet(ndim=1)`` is the reference 1-D CNN for signals ``(B, T, C)`` and
    ``ConvNet(ndim=3)`` the reference 3-D CNN for volumes ``(B, D, H, W, C)``; their target
    layer is likewise ``f"relu{len(features)}"``.
    """

    ndim: int = 2
    features: Sequence[int] = (8, 16)
    num_classes: int = 4
    kernel: int = 3
    relu_last: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (B, num_classes) of inputs x (B, *spatial, C)."""
        if x.ndim != self.ndim + 2:
            raise ValueError(
                f"ConvNet(ndim={self.ndim}) expects inputs of rank {self.ndim + 2} "
                f"(B, *spatial, C); got shape {x.shape}"
            )
        for i, f in enumerate(self.features, start=1):
            x = nn.Conv(f, (self.kernel,) * self.ndim, padding="SAME", name=f"conv{i}")(x)
            if i < len(self.features) or self.relu_last:
                x = ReLU(name=f"relu{i}")(x)
        x = jnp.mean(x, axis=tuple(range(1, self.ndim + 1)))
        return nn.Dense(self.num_classes, name="head")(x)


class Backbone(nn.Module):
    """Two conv blocks, used to test matching a nested layer by its full path."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (B, num_classes) of inputs x (B, *spatial, C)."""
        x = nn.relu(nn.Conv(8, (3, 3), padding="SAME", name="conv1")(x))
        return nn.relu(nn.Conv(16, (3, 3), padding="SAME", name="conv2")(x))


class NestedNet(nn.Module):
    """A model whose layers live in a nested submodule: ``backbone/conv2`` is the target."""

    num_classes: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (B, num_classes) of inputs x (B, *spatial, C)."""
        x = Backbone(name="backbone")(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


class NnxCNN(nnx.Module):
    """NNX twin of :class:`ConvNet` for 2-D inputs; natural target layer ``"conv2"``."""

    def __init__(
        self,
        in_channels: int = 1,
        features: Sequence[int] = (8, 16),
        num_classes: int = 4,
        *,
        rngs: nnx.Rngs,
    ):
        self.conv1 = nnx.Conv(in_channels, features[0], (3, 3), padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(features[0], features[1], (3, 3), padding="SAME", rngs=rngs)
        self.head = nnx.Linear(features[1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (B, num_classes) of inputs x (B, *spatial, C)."""
        x = nnx.relu(self.conv1(x))
        x = nnx.relu(self.conv2(x))
        return self.head(jnp.mean(x, axis=(1, 2)))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3^d convs with BatchNorm, identity or 1^d projection shortcut."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits of x (B, *spatial, C); ``train`` puts BatchNorm in training mode."""
        d = x.ndim - 2
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
        y = nn.Conv(
            self.features,
            (3,) * d,
            (self.strides,) * d,
            padding="SAME",
            use_bias=False,
            name="conv1",
        )(x)
        y = nn.relu(norm(name="bn1")(y))
        y = nn.Conv(self.features, (3,) * d, padding="SAME", use_bias=False, name="conv2")(y)
        y = norm(name="bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1,) * d, (self.strides,) * d, use_bias=False, name="proj")(
                x
            )
            x = norm(name="proj_bn")(x)
        return nn.relu(x + y)


class BottleneckBlock(nn.Module):
    """ResNet-50 bottleneck: 1^d conv to ``features``, 3^d conv (strided), 1^d conv to
    ``4 * features``, each with BatchNorm; identity or 1^d projection shortcut."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Output (B, *spatial', 4 * features) of x (B, *spatial, C)."""
        d = x.ndim - 2
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
        out = 4 * self.features
        y = nn.Conv(self.features, (1,) * d, use_bias=False, name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = nn.Conv(
            self.features,
            (3,) * d,
            (self.strides,) * d,
            padding="SAME",
            use_bias=False,
            name="conv2",
        )(y)
        y = nn.relu(norm(name="bn2")(y))
        y = nn.Conv(out, (1,) * d, use_bias=False, name="conv3")(y)
        y = norm(name="bn3")(y)
        if self.strides != 1 or x.shape[-1] != out:
            x = nn.Conv(out, (1,) * d, (self.strides,) * d, use_bias=False, name="proj")(x)
            x = norm(name="proj_bn")(x)
        return nn.relu(x + y)


BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


class ResNetStage(nn.Module):
    """``num_blocks`` blocks (``block``: 'basic' or 'bottleneck'), the first may downsample.
    Output: (B, *spatial, features), times 4 for bottleneck blocks."""

    features: int
    num_blocks: int = 2
    strides: int = 1
    block: str = "basic"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits of x (B, *spatial, C); ``train`` puts BatchNorm in training mode."""
        block = BLOCKS[self.block]
        for i in range(self.num_blocks):
            x = block(self.features, self.strides if i == 0 else 1, name=f"block{i + 1}")(x, train)
        return x


class ResNet(nn.Module):
    """A ResNet with BatchNorm, by default in the ResNet-18 layout (4 stages x 2 basic blocks).

    Rank-agnostic: inputs ``(B, *spatial, C)`` with 1, 2 or 3 spatial axes. Stage widths are
    ``width * (1, 2, 4, 8)`` (``width=64`` is ResNet-18); stages 2-4 halve the grid.
    The stem is a 3^d conv (stride 1) for small inputs (``stem="small"``: 32-64 px) or the
    ImageNet 7^d stride-2 conv + 3^d stride-2 max-pool (``stem="large"``: 96-224 px);
    ``"auto"`` picks "large" when the smallest spatial side is >= 96.
    Call with ``train=True`` (and ``mutable=["batch_stats"]``) to train, ``train=False`` to use
    the running statistics. Natural target layer: ``"stage4"``, whose output is the last
    feature map, (B, 4, 4, 8 * width) for 32x32 inputs and (B, 7, 7, 8 * width) for 224x224.
    ``block="bottleneck"`` uses bottleneck blocks (4x wider outputs):
    ``ResNet(stage_sizes=(3, 4, 6, 3), block="bottleneck")`` is ResNet-50 (:data:`ResNet50`).
    """

    num_classes: int = 10
    width: int = 64
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    stem: str = "auto"
    block: str = "basic"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits of x (B, *spatial, C); ``train`` puts BatchNorm in training mode."""
        d = x.ndim - 2
        if d not in (1, 2, 3):
            raise ValueError(
                f"ResNet expects (B, *spatial, C) with 1-3 spatial axes; got {x.shape}"
            )
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {', '.join(BLOCKS)}; got {self.block!r}")
        if self.stem not in ("auto", "small", "large"):
            raise ValueError(f"stem must be 'auto', 'small' or 'large'; got {self.stem!r}")
        large = self.stem == "large" or (self.stem == "auto" and min(x.shape[1:-1]) >= 96)
        if large:
            x = nn.Conv(
                self.width,
                (7,) * d,
                (2,) * d,
                padding=[(3, 3)] * d,
                use_bias=False,
                name="stem_conv",
            )(x)
        else:
            x = nn.Conv(self.width, (3,) * d, padding="SAME", use_bias=False, name="stem_conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="stem_bn")(x)
        x = nn.relu(x)
        if large:
            # flax leaves max_pool unannotated, so pyright infers padding: str from its default;
            # it documents (low, high) pairs as well
            x = nn.max_pool(x, (3,) * d, (2,) * d, padding=[(1, 1)] * d)  # pyright: ignore[reportArgumentType]
        for i, n in enumerate(self.stage_sizes):
            stage = ResNetStage(
                self.width * 2**i, n, 1 if i == 0 else 2, self.block, name=f"stage{i + 1}"
            )
            x = stage(x, train)
        x = jnp.mean(x, axis=tuple(range(1, d + 1)))
        return nn.Dense(self.num_classes, name="head")(x)


ResNet18 = ResNet
"""Alias: :class:`ResNet` defaults to the ResNet-18 layout (``width=64``, 2-2-2-2 blocks)."""


ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck")
"""ResNet-50: :class:`ResNet` with bottleneck blocks in the 3-4-6-3 layout (2048 channels
at ``"stage4"``)."""


class ViTBlock(nn.Module):
    """Pre-norm transformer encoder block on tokens (B, N, D) -> (B, N, D):
    ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` (MLP: fc1, GELU, fc2). The
    attention's probabilities (B, heads, N, N) are the tappable layer ``"attn/probs"``
    (:func:`tappable_attention`)."""

    num_heads: int = 4
    mlp_dim: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Tokens (B, N, D) -> tokens (B, N, D)."""
        y = nn.LayerNorm(name="norm1")(x)
        attention = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, attention_fn=tappable_attention, name="attn"
        )
        x = x + attention(y)
        y = nn.LayerNorm(name="norm2")(x)
        y = nn.Dense(x.shape[-1], name="fc2")(nn.gelu(nn.Dense(self.mlp_dim, name="fc1")(y)))
        return x + y


class ViT(nn.Module):
    """A small Vision Transformer: patch embedding, class token, learned position
    embedding, ``depth`` pre-norm blocks (:class:`ViTBlock`), final norm, head on the class
    token. Defaults suit 28x28 MNIST: ``patch=7`` gives a 4x4 grid (16 patch tokens plus
    the class token, N = 17); ``patch=4`` gives 7x7. Rank-agnostic like the CNNs: inputs
    (B, *spatial, C) with 1-3 spatial axes, each divisible by ``patch``.

    Submodules: ``patch_embed`` (a conv with stride = patch), ``block1 .. block{depth}``
    (each with ``norm1``, ``attn``, ``norm2``, ``fc1``, ``fc2``), ``norm``, ``head``. Each
    ``attn`` has a parameter-free ``probs`` child, its attention probabilities (B, heads,
    N, N): tap ``"block1/attn/probs"`` with ``reshape=ifa_jax.attention_to_grid()``
    (LeGrad, :mod:`ifa_jax.probes.legrad`).

    Natural target layer: ``f"block{depth}/norm1"``, the norm before the last block's
    attention (pytorch-grad-cam's documented choice), read as a grid with
    ``reshape=ifa_jax.tokens_to_grid()``. Not the last block's output (``f"block{depth}"``)
    nor ``"norm"``: the head reads only the class token, and after the last attention
    nothing mixes tokens any more, so the gradient at every patch token there is exactly 0.
    """

    num_classes: int = 10
    patch: int = 7
    dim: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (B, num_classes) of inputs x (B, *spatial, C)."""
        d = x.ndim - 2
        if d not in (1, 2, 3) or any(n % self.patch for n in x.shape[1:-1]):
            raise ValueError(
                f"ViT(patch={self.patch}) expects inputs (B, *spatial, C) with 1-3 spatial "
                f"axes, each divisible by {self.patch}; got shape {x.shape}"
            )
        p = (self.patch,) * d
        x = nn.Conv(self.dim, p, strides=p, padding="VALID", name="patch_embed")(x)
        x = x.reshape(x.shape[0], -1, self.dim)  # (B, patches, D), row-major over the grid
        cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.dim))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.dim)), x], axis=1)
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], self.dim))
        x = x + pos
        for i in range(self.depth):
            x = ViTBlock(self.num_heads, self.mlp_dim, name=f"block{i + 1}")(x)
        x = nn.LayerNorm(name="norm")(x)
        return nn.Dense(self.num_classes, name="head")(x[:, 0])
