"""AdamW with a decay mask in a Flax linen ``TrainState`` loop, on a small transformer.

Run:  python examples/flax_linen_trainstate.py [--steps 300]

The model (optim_chain.lab.models.Transformer) has token and position embeddings, LayerNorms,
attention and MLP blocks with biases: the mask decides which of them decay. The data is a
character-level corpus made of the documentation that ships with Python, so nothing is
downloaded. The optimizer is an ordinary optax transformation, so ``TrainState`` takes it as is.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from flax.training import train_state

import optim_chain as oc
from optim_chain import masks
from optim_chain.lab import data, models
from optim_chain.lab.training import loss_and_accuracy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    text = data.text(seq_len=64, test_fraction=0.02)
    model = models.Transformer(vocab_size=text.num_classes, max_len=64)
    params = jax.jit(model.init)(jax.random.key(0), text.x_train[:1])["params"]

    # Which parameters decay: embeddings and kernels yes; biases and LayerNorm scale/bias no.
    print(masks.describe_mask(params, masks.DEFAULT_DECAY))
    tx = oc.adamw(1e-3, weight_decay=0.1, mask=masks.DEFAULT_DECAY)
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    @jax.jit
    def train_step(state: train_state.TrainState, x: jax.Array, y: jax.Array):
        def loss_fn(params):
            return loss_and_accuracy(state.apply_fn({"params": params}, x), y)[0]

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    @jax.jit
    def evaluate(params, x, y):
        return loss_and_accuracy(model.apply({"params": params}, x), y)

    rng = np.random.default_rng(0)
    for step in range(1, args.steps + 1):
        index = rng.integers(0, len(text.x_train), args.batch_size)
        state, loss = train_step(state, text.x_train[index], text.y_train[index])
        if step % 100 == 0 or step == args.steps:
            test_loss, test_accuracy = evaluate(state.params, text.x_test, text.y_test)
            print(
                f"step {step:4d}  train loss {float(loss):.3f}  test loss {float(test_loss):.3f}  "
                f"next-char accuracy {float(test_accuracy):.3f}"
            )


if __name__ == "__main__":
    main()
