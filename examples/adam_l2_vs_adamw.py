"""Adam+L2 and AdamW built from the same primitives, trained on the same problem.

Run:  python examples/adam_l2_vs_adamw.py [--steps 300]

The two chains differ only in where the weight-decay transform sits. The script trains a small
MLP classifier on scikit-learn's bundled digits data (8x8 images, shipped with the package)
with each, and prints what differs: the chain, accuracy, weight norms, and the effective
per-weight decay that Adam+L2 applies (lr * lambda / (sqrt(vhat) + eps)) next to AdamW's
single value lr * lambda.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import optim_chain as oc

LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-2
STEPS = 300
BATCH = 128


def init_mlp(key: jax.Array, sizes: tuple[int, ...]) -> dict:
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        key, sub = jax.random.split(key)
        params[f"Dense_{i}"] = {
            "kernel": jax.random.normal(sub, (fan_in, fan_out)) * jnp.sqrt(2.0 / fan_in),
            "bias": jnp.zeros(fan_out),
        }
    return params


def forward(params: dict, x: jax.Array) -> jax.Array:
    layers = sorted(params)
    for name in layers[:-1]:
        x = jax.nn.relu(x @ params[name]["kernel"] + params[name]["bias"])
    return x @ params[layers[-1]]["kernel"] + params[layers[-1]]["bias"]


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()


def train(
    opt: optax.GradientTransformation, data: tuple, seed: int = 0, steps: int = STEPS
) -> tuple[dict, object]:
    x_train, y_train = data
    params = init_mlp(jax.random.key(seed), (64, 128, 10))
    state = opt.init(params)

    @jax.jit
    def step(params, state, idx):
        grads = jax.grad(loss_fn)(params, x_train[idx], y_train[idx])
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        params, state = step(params, state, rng.integers(0, len(y_train), BATCH))
    return params, state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Adam+L2 vs AdamW on the digits")
    parser.add_argument("--steps", type=int, default=STEPS)
    steps = parser.parse_args(argv).steps
    digits = load_digits()
    x = jnp.asarray(digits.data / 16.0, jnp.float32)
    y = jnp.asarray(digits.target)
    split = int(0.8 * len(y))
    train_data, (x_test, y_test) = (x[:split], y[:split]), (x[split:], y[split:])

    optimizers = {
        "Adam+L2": oc.adam_l2(LEARNING_RATE, WEIGHT_DECAY, mask=oc.default_decay_mask),
        "AdamW": oc.adamw(LEARNING_RATE, WEIGHT_DECAY, mask=oc.default_decay_mask),
    }
    for name, opt in optimizers.items():
        print(f"{name} =\n{opt}\n")

    for name, opt in optimizers.items():
        params, state = train(opt, train_data, steps=steps)
        accuracy = float((forward(params, x_test).argmax(-1) == y_test).mean())
        kernel_norm = float(jnp.sqrt(sum(jnp.sum(p["kernel"] ** 2) for p in params.values())))
        nu = optax.tree_utils.tree_get(state, "nu")["Dense_0"]["kernel"]  # raw second moment v
        vhat = nu / (1 - 0.999**steps)
        effective = LEARNING_RATE * WEIGHT_DECAY / (jnp.sqrt(vhat) + 1e-8)
        print(
            f"{name:8s} test accuracy {accuracy:.3f}  test loss {float(loss_fn(params, x_test, y_test)):.4f}"
            f"  kernel norm {kernel_norm:.2f}"
        )
        if name == "Adam+L2":
            q = np.quantile(np.asarray(effective), [0.05, 0.5, 0.95])
            print(
                f"         effective decay per step on Dense_0/kernel: 5%={q[0]:.2e} "
                f"median={q[1]:.2e} 95%={q[2]:.2e} (spread x{q[2] / q[0]:.0f})"
            )
        else:
            print(f"         decay per step on every decayed weight: {LEARNING_RATE * WEIGHT_DECAY:.2e}")


if __name__ == "__main__":
    main()
