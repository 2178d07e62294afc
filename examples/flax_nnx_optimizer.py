"""AdamW with a decay mask through ``nnx.Optimizer``, on the NNX twin of the small transformer.

Run:  python examples/flax_nnx_optimizer.py [--steps 300]

In NNX the parameters are an ``nnx.State``; optim_chain's masks read its paths
(``blocks/0/norm_mlp/scale``, ``token_embed/embedding`` ...) just as they read linen dicts.
"""

from __future__ import annotations

import argparse

import numpy as np
from flax import nnx

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
    model = models.NNXTransformer(text.num_classes, max_len=64, rngs=nnx.Rngs(0))
    print(masks.describe_mask(nnx.state(model, nnx.Param), masks.DEFAULT_DECAY))
    optimizer = nnx.Optimizer(
        model, oc.adamw(1e-3, weight_decay=0.1, mask=masks.DEFAULT_DECAY), wrt=nnx.Param
    )

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return loss_and_accuracy(model(x), y)[0]

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def evaluate(model, x, y):
        return loss_and_accuracy(model(x), y)

    rng = np.random.default_rng(0)
    for step in range(1, args.steps + 1):
        index = rng.integers(0, len(text.x_train), args.batch_size)
        loss = train_step(model, optimizer, text.x_train[index], text.y_train[index])
        if step % 100 == 0 or step == args.steps:
            test_loss, test_accuracy = evaluate(model, text.x_test, text.y_test)
            print(
                f"step {step:4d}  train loss {float(loss):.3f}  test loss {float(test_loss):.3f}  "
                f"next-char accuracy {float(test_accuracy):.3f}"
            )


if __name__ == "__main__":
    main()
