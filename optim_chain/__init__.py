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
"""

from optim_chain import masks
from optim_chain.bias_correction import BiasCorrectionState, correct_bias
from optim_chain.fusion import MULTI_OUTPUT_FUSION_FLAG, multi_output_fusion_enabled, single_pass
from optim_chain.learning_rate import LearningRateState, scale_by_learning_rate
from optim_chain.masks import default_decay_mask, describe_mask
from optim_chain.moments import (
    CenteredState,
    MaxSecondMomentState,
    MomentEstimates,
    MomentsState,
    SecondMomentState,
    accumulate_second_moment,
    center_second_moment,
    estimate_moments,
    estimate_second_moment,
    max_second_moment,
)
from optim_chain.momentum import MomentumState, add_momentum
from optim_chain.nonfinite import SkipNonfiniteState, skip_nonfinite
from optim_chain.normalization import normalize_by_second_moment
from optim_chain.param_groups import describe_param_groups, param_groups
from optim_chain.presets import (
    adagrad,
    adam,
    adam_l2,
    adamw,
    decay_multiplier,
    rmsprop,
    sgd,
    sgd_l2,
    sgdw,
)
from optim_chain.timescale import (
    convert_weight_decay,
    normalized_weight_decay,
    timescale_of,
    weight_decay_from_timescale,
)
from optim_chain.transform import Transform, chain
from optim_chain.weight_decay import (
    DecoupledWeightDecayState,
    WeightDecayState,
    add_l2_regularization,
    decoupled_weight_decay,
)
from optim_chain.wrappers import with_decoupled_weight_decay

__version__ = "0.1.0"

__all__ = [
    "MULTI_OUTPUT_FUSION_FLAG",
    "BiasCorrectionState",
    "CenteredState",
    "DecoupledWeightDecayState",
    "LearningRateState",
    "MaxSecondMomentState",
    "MomentEstimates",
    "MomentsState",
    "MomentumState",
    "SecondMomentState",
    "SkipNonfiniteState",
    "Transform",
    "WeightDecayState",
    "accumulate_second_moment",
    "adagrad",
    "adam",
    "adam_l2",
    "adamw",
    "add_l2_regularization",
    "add_momentum",
    "center_second_moment",
    "chain",
    "convert_weight_decay",
    "correct_bias",
    "decay_multiplier",
    "decoupled_weight_decay",
    "default_decay_mask",
    "describe_mask",
    "describe_param_groups",
    "estimate_moments",
    "estimate_second_moment",
    "masks",
    "max_second_moment",
    "multi_output_fusion_enabled",
    "normalize_by_second_moment",
    "normalized_weight_decay",
    "param_groups",
    "rmsprop",
    "scale_by_learning_rate",
    "sgd",
    "sgd_l2",
    "sgdw",
    "single_pass",
    "skip_nonfinite",
    "timescale_of",
    "weight_decay_from_timescale",
    "with_decoupled_weight_decay",
]
