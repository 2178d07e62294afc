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
import importlib.metadata
import warnings
from typing import TYPE_CHECKING, Any

try:
    #: The installed distribution's version (``pyproject.toml`` sets it; nothing else restates it).
    __version__ = importlib.metadata.version("optim_chain")
except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"

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
#: Names on their way out: old name -> (the public name to use instead, the release that removes
#: it). Each still works, with a ``DeprecationWarning``, for at least one minor release (see the
#: Stability page of the docs).
_DEPRECATED: dict[str, tuple[str, str]] = {}

if TYPE_CHECKING:
    # What type checkers read: the same names as ``_MODULES``, imported eagerly (at run time they
    # load on first use through ``__getattr__``; a test keeps the two lists equal).
    from optim_chain import interop as interop
    from optim_chain import masks as masks
    from optim_chain.bias_correction import BiasCorrectionState as BiasCorrectionState
    from optim_chain.bias_correction import correct_bias as correct_bias
    from optim_chain.cautious_updates import caution as caution
    from optim_chain.fusion import MULTI_OUTPUT_FUSION_FLAG as MULTI_OUTPUT_FUSION_FLAG
    from optim_chain.fusion import multi_output_fusion_enabled as multi_output_fusion_enabled
    from optim_chain.fusion import single_pass as single_pass
    from optim_chain.groups import describe_param_groups as describe_param_groups
    from optim_chain.groups import param_groups as param_groups
    from optim_chain.hyperball import HyperballState as HyperballState
    from optim_chain.hyperball import adamh as adamh
    from optim_chain.hyperball import scale_on_sphere as scale_on_sphere
    from optim_chain.learning_rate import LearningRateState as LearningRateState
    from optim_chain.learning_rate import scale_by_learning_rate as scale_by_learning_rate
    from optim_chain.masks import default_decay_mask as default_decay_mask
    from optim_chain.masks import describe_mask as describe_mask
    from optim_chain.moments import CenteredState as CenteredState
    from optim_chain.moments import MaxSecondMomentState as MaxSecondMomentState
    from optim_chain.moments import MomentEstimates as MomentEstimates
    from optim_chain.moments import MomentsState as MomentsState
    from optim_chain.moments import SecondMomentState as SecondMomentState
    from optim_chain.moments import accumulate_second_moment as accumulate_second_moment
    from optim_chain.moments import center_second_moment as center_second_moment
    from optim_chain.moments import estimate_moments as estimate_moments
    from optim_chain.moments import estimate_second_moment as estimate_second_moment
    from optim_chain.moments import max_second_moment as max_second_moment
    from optim_chain.momentum import MomentumState as MomentumState
    from optim_chain.momentum import add_momentum as add_momentum
    from optim_chain.monitor import WeightDecayMonitorState as WeightDecayMonitorState
    from optim_chain.monitor import monitor_weight_decay as monitor_weight_decay
    from optim_chain.nonfinite import SkipNonfiniteState as SkipNonfiniteState
    from optim_chain.nonfinite import skip_nonfinite as skip_nonfinite
    from optim_chain.normalization import normalize_by_second_moment as normalize_by_second_moment
    from optim_chain.presets import adagrad as adagrad
    from optim_chain.presets import adam as adam
    from optim_chain.presets import adam_l2 as adam_l2
    from optim_chain.presets import adamw as adamw
    from optim_chain.presets import decay_multiplier as decay_multiplier
    from optim_chain.presets import rmsprop as rmsprop
    from optim_chain.presets import sgd as sgd
    from optim_chain.presets import sgd_l2 as sgd_l2
    from optim_chain.presets import sgdw as sgdw
    from optim_chain.selective_projection_decay import (
        SelectiveProjectionDecayState as SelectiveProjectionDecayState,
    )
    from optim_chain.selective_projection_decay import adam_spd as adam_spd
    from optim_chain.selective_projection_decay import (
        with_selective_projection_decay as with_selective_projection_decay,
    )
    from optim_chain.stable_weight_decay import StableWeightDecayState as StableWeightDecayState
    from optim_chain.stable_weight_decay import adams as adams
    from optim_chain.stable_weight_decay import with_stable_weight_decay as with_stable_weight_decay
    from optim_chain.timescale import convert_weight_decay as convert_weight_decay
    from optim_chain.timescale import normalized_weight_decay as normalized_weight_decay
    from optim_chain.timescale import timescale_of as timescale_of
    from optim_chain.timescale import weight_decay_from_timescale as weight_decay_from_timescale
    from optim_chain.transform import Transform as Transform
    from optim_chain.transform import chain as chain
    from optim_chain.weight_decay import DecoupledWeightDecayState as DecoupledWeightDecayState
    from optim_chain.weight_decay import WeightDecayState as WeightDecayState
    from optim_chain.weight_decay import add_l2_regularization as add_l2_regularization
    from optim_chain.weight_decay import decoupled_weight_decay as decoupled_weight_decay
    from optim_chain.weight_decay import with_gradient_support as with_gradient_support
    from optim_chain.wrappers import with_decoupled_weight_decay as with_decoupled_weight_decay

# Checkers read the imports above for the public names; they cannot follow a computed __all__.
# pyright: reportUnsupportedDunderAll=false
__all__ = sorted([*_HOME, *_SUBMODULES])


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        new, removal = _DEPRECATED[name]
        warnings.warn(
            f"optim_chain.{name} is deprecated and will be removed in {removal}; use optim_chain.{new}",
            DeprecationWarning,
            stacklevel=2,
        )
        return __getattr__(new)  # not cached, so that every use warns
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
