"""A PyTorch BERT trained with torch.optim.AdamW, continued in Flax with oc.adamw mid-run.

Run:  python examples/bert_torch_to_flax.py [--steps 20]

A Hugging Face ``BertForSequenceClassification`` is built from a tiny config (nothing is
downloaded) and trained a few steps in PyTorch with ``torch.optim.AdamW``. The weights go to
``FlaxBertForSequenceClassification`` through Hugging Face's own converter,
``convert_pytorch_state_dict_to_flax``; the same converter carries AdamW's moments over, through
``oc.interop.from_torch``. Then both runs take the same batches: PyTorch with its optimizer,
Flax with ``oc.adamw`` from the converted state. The losses are printed side by side.

Both sides compute in float32, with their own kernels (XLA and ATen sum in different orders),
so the two runs agree to float32 noise, not bit for bit.
"""

from __future__ import annotations

import argparse
import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from transformers import BertConfig, BertForSequenceClassification, FlaxBertForSequenceClassification
from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

import optim_chain as oc

LR, WEIGHT_DECAY, WARMUP_STEPS = 5e-3, 0.01, 3
CONFIG = {
    "vocab_size": 64,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 16,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "num_labels": 3,
}


def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids and labels, the same for both frameworks at a given step."""
    rng = np.random.default_rng(step)
    return rng.integers(1, CONFIG["vocab_size"], size=(8, 12)), rng.integers(0, CONFIG["num_labels"], size=8)


def torch_loss(model: torch.nn.Module, step: int) -> torch.Tensor:
    tokens, labels = batch(step)
    return model(input_ids=torch.from_numpy(tokens), labels=torch.from_numpy(labels)).loss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps after the switch")
    args = parser.parse_args(argv)

    config = BertConfig(**CONFIG)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    torch_opt = torch.optim.AdamW(model.named_parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    for step in range(WARMUP_STEPS):  # the PyTorch part of the run
        torch_opt.zero_grad()
        torch_loss(model, step).backward()
        torch_opt.step()

    # The switch: weights and optimizer state through the same converter.
    flax_model = FlaxBertForSequenceClassification(config, seed=0)

    def convert(arrays: dict[str, np.ndarray]) -> dict:
        return convert_pytorch_state_dict_to_flax(dict(arrays), flax_model)

    params = convert({name: p.detach().numpy().copy() for name, p in model.named_parameters()})
    opt = oc.adamw(LR, weight_decay=WEIGHT_DECAY)
    state = oc.interop.from_torch(opt, params, copy.deepcopy(torch_opt.state_dict()), convert)

    def flax_loss(params: dict, tokens: jax.Array, labels: jax.Array) -> jax.Array:
        logits = flax_model(tokens, params=params, train=False).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def flax_step(params: dict, state: optax.OptState, tokens: jax.Array, labels: jax.Array):
        loss, grads = jax.value_and_grad(flax_loss)(params, tokens, labels)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    # For comparison: the same switch with a fresh optimizer state (moments and step count lost).
    fresh_params, fresh_state = params, opt.init(params)

    print(f"switched after {WARMUP_STEPS} torch steps; the two continuations (and a fresh-state one):")
    columns = ("step", "torch AdamW", "flax oc.adamw", "relative diff", "fresh state")
    print("  ".join(f"{c:>{w}}" for c, w in zip(columns, (4, 12, 13, 13, 11))))
    worst = 0.0
    for step in range(WARMUP_STEPS, WARMUP_STEPS + args.steps):
        torch_opt.zero_grad()
        loss = torch_loss(model, step)
        loss.backward()
        torch_opt.step()
        tokens, labels = batch(step)
        params, state, flax_value = flax_step(params, state, jnp.asarray(tokens), jnp.asarray(labels))
        fresh_params, fresh_state, fresh_value = flax_step(
            fresh_params, fresh_state, jnp.asarray(tokens), jnp.asarray(labels)
        )
        ours, theirs = float(flax_value), loss.item()
        difference = abs(ours - theirs) / abs(theirs)
        worst = max(worst, difference)
        print(f"{step:>4}  {theirs:>12.7f}  {ours:>13.7f}  {difference:>13.2e}  {float(fresh_value):>11.7f}")
    print(f"largest relative difference of the losses: {worst:.2e}")


if __name__ == "__main__":
    main()
