"""optim_chain: optimizers as chains of small optax transforms, weight decay done right.

Adam+L2 and AdamW are the same chain with the weight-decay transform in a different place::

    >>> import optim_chain as oc
    >>> print(oc.adam_l2(1e-3, weight_decay=1e-2))
    adam_l2(
      add_l2_regularization(weight_decay=0.01, mask=None),
      estimate_moments(b1=0.9, b2=0.999, moment_dtype=None),
      correct_bias(b1=0.9, b2=0.999),
      normalize_by_second_moment(eps=1e-08, eps_root=0.0),
      scale_by_learning_rate(learning_rate=0.001),
    )
    >>> print(oc.adamw(1e-3, weight_decay=1e-2))
    adamw(
      estimate_moments(b1=0.9, b2=0.999, moment_dtype=None),
      correct_bias(b1=0.9, b2=0.999),
      normalize_by_second_moment(eps=1e-08, eps_root=0.0),
      scale_by_learning_rate(learning_rate=0.001),
      decoupled_weight_decay(weight_decay=0.01, multiplier=0.001, mask=None),
    )

The public names load on first use (PEP 562): ``import optim_chain`` is cheap, and JAX starts
when the first transform is built, so the ``optim-chain`` command answers ``--help`` at once.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Where each public name lives, module by module (``masks`` is the module itself).
_MODULES: dict[str, tuple[str, ...]] = {
    "bias_correction": ("BiasCorrectionState", "correct_bias"),
    "cautious_updates": ("caution",),
    "fusion": ("MULTI_OUTPUT_FUSION_FLAG", "multi_output_fusion_enabled", "single_pass"),
    "groups": ("describe_param_groups", "param_groups"),
    "hyperball": ("HyperballState", "adamh", "scale_on_sphere"),
    "learning_rate": ("LearningRateState", "scale_by_learning_rate"),
    "masks": ("default_decay_mask", "describe_mask"),
    "moments": (
        "CenteredState",
        "MaxSecondMomentState",
        "MomentEstimates",
        "MomentsState",
        "SecondMomentState",
        "accumulate_second_moment",
        "center_second_moment",
        "estimate_moments",
        "estimate_second_moment",
        "max_second_moment",
    ),
    "momentum": ("MomentumState", "add_momentum"),
    "monitor": ("WeightDecayMonitorState", "monitor_weight_decay"),
    "nonfinite": ("SkipNonfiniteState", "skip_nonfinite"),
    "normalization": ("normalize_by_second_moment",),
    "presets": (
        "adagrad",
        "adam",
        "adam_l2",
        "adamw",
        "decay_multiplier",
        "rmsprop",
        "sgd",
        "sgd_l2",
        "sgdw",
    ),
    "selective_projection_decay": (
        "SelectiveProjectionDecayState",
        "adam_spd",
        "with_selective_projection_decay",
    ),
    "stable_weight_decay": ("StableWeightDecayState", "adams", "with_stable_weight_decay"),
    "timescale": (
        "convert_weight_decay",
        "normalized_weight_decay",
        "timescale_of",
        "weight_decay_from_timescale",
    ),
    "transform": ("Transform", "chain"),
    "weight_decay": (
        "DecoupledWeightDecayState",
        "WeightDecayState",
        "add_l2_regularization",
        "decoupled_weight_decay",
        "with_gradient_support",
    ),
    "wrappers": ("with_decoupled_weight_decay",),
}
_SUBMODULES = ("interop", "masks")
_HOME = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted([*_HOME, *_SUBMODULES])


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f"optim_chain.{name}")
    elif name in _HOME:
        value = getattr(importlib.import_module(f"optim_chain.{_HOME[name]}"), name)
    else:
        raise AttributeError(f"module 'optim_chain' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
