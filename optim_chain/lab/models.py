"""Small Flax models for the experiments, in both Flax APIs (linen and NNX).

Each model has the kinds of parameters a decay mask has to tell apart: weight matrices
(``kernel``), embeddings (``embedding``), biases and LayerNorm ``scale``/``bias``.

* :class:`MLP` / :class:`NNXMLP`: a classifier for flat inputs (the digits, MNIST-1D).
* :class:`CNN`: the MNIST-1D paper's convolutional network for 1-D signals.
* :class:`Transformer` / :class:`NNXTransformer`: a small pre-LayerNorm causal transformer for
  character-level language modelling (token and position embeddings, attention and MLP blocks
  with biases, a final LayerNorm).

Example::

    >>> import jax, jax.numpy as jnp
    >>> from optim_chain import masks
    >>> from optim_chain.lab import models
    >>> params = models.MLP(hidden=(64,)).init(jax.random.key(0), jnp.zeros((1, 64)))["params"]
    >>> print(masks.describe_mask(params))
    path               shape     dtype     decays
    Dense_0/bias       (64,)     float32   no
    Dense_0/kernel     (64, 64)  float32   yes
    Dense_1/bias       (10,)     float32   no
    Dense_1/kernel     (64, 10)  float32   yes
    LayerNorm_0/bias   (64,)     float32   no
    LayerNorm_0/scale  (64,)     float32   no
    2 of 6 leaves decay (4,736 of 4,938 parameters)
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

# ------------------------------------------------------------------------------------- linen


class MLP(nn.Module):
    """Dense -> [LayerNorm] -> ReLU for each hidden width, then a Dense classifier."""

    hidden: Sequence[int] = (128,)
    num_classes: int = 10
    layer_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.Dense(width)(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = nn.relu(x)
        return nn.Dense(self.num_classes)(x)


class Conv1D(nn.Module):
    """A 1-D convolution written as one matrix product over gathered windows.

    The same function and parameters as ``nn.Conv(features, (kernel,), strides=(stride,),
    padding=[(padding, padding)])`` (``kernel: [kernel, in, features]``, ``bias: [features]``,
    the same initializers). Many runs vmapped over their weights make XLA:CPU emit a grouped
    convolution, which is slow; a batched matrix product is not (the sweeps train about six
    times faster this way).
    """

    features: int
    kernel: int
    stride: int = 2
    padding: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        x = jnp.pad(x, ((0, 0), (self.padding, self.padding), (0, 0)))
        outputs = (x.shape[1] - self.kernel) // self.stride + 1
        span = self.stride * (outputs - 1) + 1
        windows = jnp.stack([x[:, i : i + span : self.stride] for i in range(self.kernel)], axis=2)
        return jnp.einsum("bokc,kcf->bof", windows, kernel) + bias


class CNN(nn.Module):
    """The convolutional network of the MNIST-1D paper, for ``[batch, length]`` signals.

    Three 1-D convolutions with ``channels`` filters (kernel 5, then 3 and 3; stride 2; padding
    1; ReLU), flattened into one linear layer: 5,210 parameters for 40-point signals, whose
    published test accuracy is 94% (Greydanus & Kobak, ICML 2024).

    ``layer_norm=True`` puts a LayerNorm over the channels of each position between every
    convolution and its ReLU (150 more parameters). It normalizes each example by itself, so a
    run's function does not depend on the rest of its batch and there are no running
    statistics to carry, and it makes each convolution's kernel scale-invariant, as BatchNorm
    does in the paper's ResNet: scaling the kernel changes nothing but the size of the next
    gradient, which is what lets weight decay act as a learning-rate control.
    """

    num_classes: int = 10
    channels: int = 25
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x[..., None]  # [batch, length, 1]
        for index, kernel in enumerate((5, 3, 3)):
            x = Conv1D(self.channels, kernel, name=f"Conv_{index}")(x)
            if self.layer_norm:
                x = nn.LayerNorm(name=f"LayerNorm_{index}")(x)
            x = nn.relu(x)
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: causal self-attention, then a GELU MLP."""

    d_model: int
    num_heads: int
    mlp_ratio: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        mask = nn.make_causal_mask(jnp.ones(x.shape[:-1], jnp.int32))
        h = nn.LayerNorm(name="norm_attention")(x)
        x = x + nn.MultiHeadDotProductAttention(self.num_heads, name="attention")(h, mask=mask)
        h = nn.LayerNorm(name="norm_mlp")(x)
        h = nn.gelu(nn.Dense(self.mlp_ratio * self.d_model, name="mlp_in")(h))
        return x + nn.Dense(self.d_model, name="mlp_out")(h)


class Transformer(nn.Module):
    """A small causal transformer over token ids ``int[batch, seq]``, returning next-token logits."""

    vocab_size: int
    max_len: int = 64
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 2

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        positions = jnp.arange(tokens.shape[-1])
        x = nn.Embed(self.vocab_size, self.d_model, name="token_embed")(tokens)
        x = x + nn.Embed(self.max_len, self.d_model, name="position_embed")(positions)
        for i in range(self.num_layers):
            x = Block(self.d_model, self.num_heads, name=f"block_{i}")(x)
        x = nn.LayerNorm(name="norm_final")(x)
        return nn.Dense(self.vocab_size, name="head")(x)


# --------------------------------------------------------------------------------------- NNX


class NNXMLP(nnx.Module):
    """The NNX twin of :class:`MLP`."""

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (128,),
        num_classes: int = 10,
        layer_norm: bool = True,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        widths = [in_features, *hidden]
        self.dense = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.norm = nnx.List([nnx.LayerNorm(w, rngs=rngs) for w in hidden] if layer_norm else [])
        self.head = nnx.Linear(widths[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.dense):
            x = layer(x)
            if len(self.norm):
                x = self.norm[i](x)
            x = nnx.relu(x)
        return self.head(x)


class NNXBlock(nnx.Module):
    """The NNX twin of :class:`Block`."""

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: int = 4, *, rngs: nnx.Rngs) -> None:
        self.norm_attention = nnx.LayerNorm(d_model, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(num_heads, d_model, decode=False, rngs=rngs)
        self.norm_mlp = nnx.LayerNorm(d_model, rngs=rngs)
        self.mlp_in = nnx.Linear(d_model, mlp_ratio * d_model, rngs=rngs)
        self.mlp_out = nnx.Linear(mlp_ratio * d_model, d_model, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        mask = nnx.make_causal_mask(jnp.ones(x.shape[:-1], jnp.int32))
        x = x + self.attention(self.norm_attention(x), mask=mask)
        return x + self.mlp_out(nnx.gelu(self.mlp_in(self.norm_mlp(x))))


class NNXTransformer(nnx.Module):
    """The NNX twin of :class:`Transformer`."""

    def __init__(
        self,
        vocab_size: int,
        max_len: int = 64,
        d_model: int = 64,
        num_heads: int = 4,
        num_layers: int = 2,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        self.token_embed = nnx.Embed(vocab_size, d_model, rngs=rngs)
        self.position_embed = nnx.Embed(max_len, d_model, rngs=rngs)
        self.blocks = nnx.List([NNXBlock(d_model, num_heads, rngs=rngs) for _ in range(num_layers)])
        self.norm_final = nnx.LayerNorm(d_model, rngs=rngs)
        self.head = nnx.Linear(d_model, vocab_size, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.token_embed(tokens) + self.position_embed(jnp.arange(tokens.shape[-1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm_final(x))
