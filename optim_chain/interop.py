"""Carrying an optimizer's state over from ``torch.optim`` or ``optax``, and back.

Weights move between frameworks with well-known converters (Hugging Face's
``convert_pytorch_state_dict_to_flax``, or a transpose of each Linear ``weight`` into a
``kernel``). The optimizer's moments, buffers and step counts are what a port in the middle of
a run loses. Since the presets follow torch's and optax's formulas, their state can be filled
from the other library's state so that the next steps are the ones the other library would
have taken::

    state = oc.interop.from_torch(oc.adamw(1e-3, 0.01), params, torch_opt.state_dict(), convert)
    state = oc.interop.from_optax(oc.adamw(1e-3, 0.01), params, optax_state)
    torch_opt.load_state_dict(oc.interop.to_torch(opt, state, params, convert_back))

Every per-parameter buffer goes through the same ``convert`` as the weights (a dict of
``name -> array`` in, a params-shaped tree out), so a transposed kernel gets a transposed
first moment. Which buffer goes where is read from the optimizer's parts, by name:

==========================  ===========================  ==================================
part of ``opt``             torch field                  optax field
==========================  ===========================  ==================================
estimate_moments            ``exp_avg``, ``exp_avg_sq``  ``ScaleByAdamState.mu``, ``.nu``
max_second_moment (raw)     ``max_exp_avg_sq``           (none: optax keeps the corrected max)
max_second_moment (corr.)   (none)                       ``ScaleByAmsgradState.nu_max``
correct_bias                ``step``                     ``count``
estimate_second_moment      ``square_avg``               ``ScaleByRmsState.nu`` / ``StdDev.nu``
center_second_moment        ``grad_avg``                 ``ScaleByRStdDevState.mu``
accumulate_second_moment    ``sum``                      ``ScaleByRssState.sum_of_squares``
add_momentum                ``momentum_buffer``          ``TraceState.trace``
==========================  ===========================  ==================================

Refused, in one line naming what differs: a hyperparameter of a torch group (or of an optax
state made with ``optax.inject_hyperparams``) that differs from ``opt``'s for the same
parameter (betas, eps, weight decay, momentum, dampening, centered, amsgrad, ``maximize``);
parameters of one group with different step counts; a name of the state_dict that lands
nowhere in ``params``, or a leaf of ``params`` that no name reaches; a buffer whose shape
after ``convert`` is not its parameter's; a buffer that one side keeps and the other has no
place for. ``foreach``, ``fused``, ``capturable`` and ``differentiable`` choose torch's kernels,
not its arithmetic, and are ignored; ``maximize=True`` climbs the loss and is refused.
The learning rate is not compared: a continuation may change it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax

from optim_chain._tree import leaves_with_paths
from optim_chain.bias_correction import BiasCorrectionState
from optim_chain.learning_rate import LearningRateState
from optim_chain.masks import resolve_mask
from optim_chain.transform import Transform
from optim_chain.weight_decay import WeightDecayState

__all__ = ["from_torch", "to_torch", "from_optax", "to_optax"]

#: For each part that keeps per-parameter buffers: state attribute -> torch's name of the buffer.
_BUFFERS = {
    "estimate_moments": {"mu": "exp_avg", "nu": "exp_avg_sq"},
    "estimate_second_moment": {"nu": "square_avg"},
    "center_second_moment": {"mean": "grad_avg"},
    "accumulate_second_moment": {"nu": "sum"},
    "add_momentum": {"trace": "momentum_buffer"},
}
#: optax's AMSGrad keeps the maximum of the bias-corrected ``v``, which torch never stores.
_CORRECTED_MAX = "max_exp_avg_sq (of the bias-corrected v)"
_RAW_MAX = "max_exp_avg_sq"
_NO_BUFFER = {"correct_bias", "normalize_by_second_moment", "scale_by_learning_rate"}
_DECAYS = {"add_l2_regularization", "decoupled_weight_decay"}
_TORCH_BUFFERS = {
    "exp_avg",
    "exp_avg_sq",
    "max_exp_avg_sq",
    "momentum_buffer",
    "square_avg",
    "grad_avg",
    "sum",
}
_TORCH_CLASSES = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "rmsprop": "RMSprop", "adagrad": "Adagrad"}


# ---------------------------------------------------------------------------- what opt holds


@dataclasses.dataclass
class _Group:
    """One of ``opt``'s groups (the whole of ``opt`` when it has no param groups)."""

    label: str | None
    parts: list[Transform]
    members: list[int]
    decays: list[bool]  # per member: whether the weight-decay part reaches it
    buffer_names: dict[int, dict[str, str]]  # id(part) -> state attribute -> buffer name
    kind: str  # adam, sgd, rmsprop, adagrad
    part: dict[str, Transform]  # first part of each name

    def hyper(self, name: str, key: str, default: Any = None) -> Any:
        part = self.part.get(name)
        return default if part is None else part.hyperparams.get(key, default)

    @property
    def decay(self) -> Transform | None:
        return next((p for p in self.parts if p.name in _DECAYS), None)

    @property
    def buffers(self) -> list[str]:
        return [name for names in self.buffer_names.values() for name in names.values()]

    @property
    def counted(self) -> bool:
        """Whether some part keeps a step count (bias correction or a schedule)."""
        return (
            "correct_bias" in self.part
            or any(
                callable(p.hyperparams.get(k)) for p in self.parts for k in ("learning_rate", "weight_decay")
            )
            or any(callable(p.hyperparams.get("multiplier")) for p in self.parts)
        )


def _flatten_parts(transform: Any, where: str) -> list[Transform]:
    if not isinstance(transform, Transform):
        raise TypeError(f"{where}: part {transform!r} is not an optim_chain transform; it has no counterpart")
    if transform.name == "skip_nonfinite":
        return _flatten_parts(transform.parts[0], where)
    if transform.name == "caution":
        raise ValueError(f"{where}: caution=True masks Adam's step, which torch.optim and optax do not do")
    if transform.name == "param_groups":
        raise ValueError(f"{where}: param_groups inside a group has no counterpart")
    if transform.parts:
        return [leaf for part in transform.parts for leaf in _flatten_parts(part, where)]
    return [transform]


def _kind(parts: list[Transform], where: str) -> str:
    names = [p.name for p in parts]
    core = [n for n in names if n not in _DECAYS]
    if names and names[0] == "decoupled_weight_decay" or any(n == "add_l2_regularization" for n in names[1:]):
        raise ValueError(f"{where}: weight decay sits where no counterpart puts it: {', '.join(names)}")
    if "decoupled_weight_decay" in names[:-1]:
        raise ValueError(f"{where}: decoupled weight decay must come last, got {', '.join(names)}")
    shapes = {
        "adam": [
            ["estimate_moments", "max_second_moment", "correct_bias", "normalize_by_second_moment"],
            ["estimate_moments", "correct_bias", "max_second_moment", "normalize_by_second_moment"],
            ["estimate_moments", "correct_bias", "normalize_by_second_moment"],
        ],
        "sgd": [["add_momentum"], []],
        "rmsprop": [
            ["estimate_second_moment", *c, "normalize_by_second_moment", *m]
            for c in ([], ["center_second_moment"])
            for m in ([], ["add_momentum"])
        ],
        "adagrad": [["accumulate_second_moment", "normalize_by_second_moment"]],
    }
    for kind, options in shapes.items():
        if any(core == [*option, "scale_by_learning_rate"] for option in options):
            return kind
    raise ValueError(f"{where}: the chain ({', '.join(names)}) has no torch.optim or optax counterpart")


def _groups(opt: Any, params: Any, where: str) -> list[_Group]:
    inner = opt
    while isinstance(inner, Transform) and inner.name == "skip_nonfinite":
        inner = inner.parts[0]
    count = len(jax.tree.leaves(params))
    if isinstance(inner, Transform) and inner.name == "param_groups":
        labels = jax.tree.leaves(inner.hyperparams["labels"](params))
        names = _group_labels(inner)
        members = {name: [i for i, label in enumerate(labels) if label == name] for name in names}
        pairs = [(name, part, members[name]) for name, part in zip(names, inner.parts)]
    else:
        pairs = [(None, opt, list(range(count)))]
    structure = jax.tree.structure(params)
    leaves = jax.tree.leaves(params)
    groups = []
    for label, transform, member_list in pairs:
        at = where if label is None else f"{where} ({label})"
        parts = _flatten_parts(transform, at)
        kind = _kind(parts, at)
        buffer_names: dict[int, dict[str, str]] = {}
        bias_seen = False
        for part in parts:
            if part.name == "correct_bias":
                bias_seen = True
            if part.name == "max_second_moment":
                buffer_names[id(part)] = {"nu_max": _CORRECTED_MAX if bias_seen else _RAW_MAX}
            elif part.name in _BUFFERS:
                buffer_names[id(part)] = dict(_BUFFERS[part.name])
        first = {}
        for part in parts:
            first.setdefault(part.name, part)
        decays = [False] * len(member_list)
        decay = next((p for p in parts if p.name in _DECAYS), None)
        if decay is not None:
            h = decay.hyperparams
            if "anchor" in h or h.get("cautious_weight_decay") or h.get("lazy_weight_decay"):
                raise ValueError(f"{at}: {decay.name} with {_options(h)} has no counterpart")
            chosen = set(member_list)
            masked = jax.tree.unflatten(
                structure, [x if i in chosen else optax.MaskedNode() for i, x in enumerate(leaves)]
            )
            decays = resolve_mask(h.get("mask"), masked, f"{at} mask")
        groups.append(_Group(label, parts, member_list, list(decays), buffer_names, kind, first))
    return groups


def _group_labels(transform: Transform) -> list[str]:
    """The labels of :func:`~optim_chain.param_groups`' groups, in the order of its parts."""
    return [f"group_{i}" for i in range(len(transform.parts) - 1)] + ["default"]


def _options(hyperparams: Mapping[str, Any]) -> str:
    shown = [k for k in ("anchor", "cautious_weight_decay", "lazy_weight_decay") if k in hyperparams]
    return ", ".join(f"{k}={hyperparams[k]!r}" for k in shown)


def _walk(transform: Any, state: Any, visit: Callable[..., Any], label: str | None = None) -> Any:
    """Rebuilds ``state`` with ``visit(part, part_state, label)`` at every part that has no parts."""
    if transform.name == "skip_nonfinite":
        return state._replace(inner_state=_walk(transform.parts[0], state.inner_state, visit, label))
    if transform.name == "param_groups":
        parts = dict(zip(_group_labels(transform), transform.parts))  # jit sorts the dict's keys
        inner = {
            name: masked._replace(inner_state=_walk(parts[name], masked.inner_state, visit, name))
            for name, masked in state.inner_states.items()
        }
        return state._replace(inner_states=inner)
    if transform.parts:
        return tuple(_walk(p, s, visit, label) for p, s in zip(transform.parts, state))
    return visit(transform, state, label)


# ----------------------------------------------------------------- the state, leaf by leaf


@dataclasses.dataclass
class _Values:
    """Buffers and step counts per leaf of ``params`` (in flattening order)."""

    buffers: dict[str, dict[int, np.ndarray]]
    steps: dict[int, int]


def _read(opt: Any, state: Any, groups: list[_Group]) -> _Values:
    by_label = {g.label: g for g in groups}
    values = _Values({}, {})

    def visit(part: Transform, part_state: Any, label: str | None) -> Any:
        group = by_label[label]
        for attr, name in group.buffer_names.get(id(part), {}).items():
            leaves = jax.tree.leaves(getattr(part_state, attr))
            store = values.buffers.setdefault(name, {})
            for index, leaf in zip(group.members, leaves, strict=True):
                store[index] = np.asarray(leaf)
        if isinstance(part_state, BiasCorrectionState) or (
            isinstance(part_state, (LearningRateState, WeightDecayState)) and "correct_bias" not in group.part
        ):
            for index in group.members:
                values.steps[index] = int(part_state.count)
        return part_state

    _walk(opt, state, visit)
    return values


def _write(opt: Any, params: Any, groups: list[_Group], values: _Values, where: str) -> Any:
    template = opt.init(params)
    by_label = {g.label: g for g in groups}
    paths = [path for path, _ in leaves_with_paths(params)]
    group_steps = {}
    for group in groups:
        steps = {values.steps[i] for i in group.members if i in values.steps}
        if len(steps) > 1:
            first, second = sorted(steps)[:2]
            a = next(paths[i] for i in group.members if values.steps.get(i) == first)
            b = next(paths[i] for i in group.members if values.steps.get(i) == second)
            raise ValueError(
                f"{where}: parameters {a!r} (step {first}) and {b!r} (step {second}) have different step "
                "counts, but opt keeps one count per group"
            )
        step = steps.pop() if steps else None
        if step is None and group.counted and group.members and _any_buffer(group, values):
            raise ValueError(
                f"{where}: opt counts steps (bias correction or a schedule) but the state it continues "
                "stores no step count"
            )
        group_steps[group.label] = step

    def visit(part: Transform, part_state: Any, label: str | None) -> Any:
        group = by_label[label]
        step = group_steps[label]
        for attr, name in group.buffer_names.get(id(part), {}).items():
            tree = getattr(part_state, attr)
            leaves, treedef = jax.tree.flatten(tree)
            store = values.buffers.get(name, {})
            new = []
            for index, leaf in zip(group.members, leaves, strict=True):
                if index not in store:
                    if step is None and not values.buffers or name == "momentum_buffer":
                        new.append(leaf)  # never stepped (or torch's first step, which equals zeros)
                        continue
                    raise ValueError(f"{where}: no {name} for parameter {paths[index]!r}, which opt needs")
                new.append(_place(store[index], leaf))
            part_state = part_state._replace(**{attr: jax.tree.unflatten(treedef, new)})
        if (
            step is not None
            and hasattr(part_state, "count")
            and isinstance(part_state, (BiasCorrectionState, LearningRateState, WeightDecayState))
        ):
            part_state = part_state._replace(count=jax.numpy.asarray(step, part_state.count.dtype))
        return part_state

    return _walk(opt, template, visit)


def _any_buffer(group: _Group, values: _Values) -> bool:
    return any(i in store for store in values.buffers.values() for i in group.members)


def _place(value: np.ndarray, like: jax.Array) -> jax.Array:
    """``value`` in ``like``'s dtype, on ``like``'s sharding (the parameter's)."""
    array = np.asarray(value).astype(like.dtype)
    sharding = getattr(like, "sharding", None)
    return jax.device_put(array, sharding) if sharding is not None else jax.numpy.asarray(array)


# ------------------------------------------------------------------------------------- torch


def _numpy(value: Any) -> np.ndarray:
    """A torch tensor or array as numpy (bfloat16 tensors through float32, which holds them exactly)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _torch_names(state_dict: Mapping[str, Any], names: Sequence[str] | None) -> dict[Any, tuple[str, int]]:
    """torch's parameter id -> (name, group index)."""
    groups = state_dict["param_groups"]
    ids = [i for g in groups for i in g["params"]]
    if names is None:
        if not all("param_names" in g for g in groups):
            raise ValueError(
                "from_torch: the state_dict has no param_names (build the torch optimizer from "
                "model.named_parameters(), or pass names=[...] in torch's order)"
            )
        listed = [n for g in groups for n in g["param_names"]]
    else:
        listed = list(names)
        if len(listed) != len(ids):
            raise ValueError(
                f"from_torch: names has {len(listed)} entries but the state_dict holds {len(ids)}"
            )
    where = {i: k for k, g in enumerate(groups) for i in g["params"]}
    return {i: (name, where[i]) for i, name in zip(ids, listed)}


def _paths_of(tree: Any, params_paths: list[str], what: str) -> dict[str, np.ndarray]:
    out = {}
    known = set(params_paths)
    for path, leaf in leaves_with_paths(tree):
        if path not in known:
            raise ValueError(f"{what} places a value at {path!r}, which is not a leaf of params (extra name)")
        out[path] = np.asarray(leaf)
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a == b
    # a value stored in float32 (an injected hyperparameter) holds the number to its precision
    dtypes = [np.asarray(x).dtype for x in (a, b)]
    tolerance = max([4 * float(np.finfo(d).eps) for d in dtypes if np.issubdtype(d, np.floating)] + [1e-12])
    return math.isclose(_float(a), _float(b), rel_tol=tolerance, abs_tol=0.0)


def _float(value: Any) -> float:
    """A Python float from a number or a scalar array."""
    return float(np.asarray(value))


def _constant(value: Any, step: int | None) -> Any:
    """A hyperparameter as a number (a schedule read at ``step``)."""
    if callable(value):
        return _float(value(step or 0))
    return _float(value) if not isinstance(value, bool) else value


def _torch_hyper(group: _Group, decays: bool, step: int | None, where: str) -> dict[str, Any]:
    """The torch group entries that ``group`` implies for one of its parameters."""
    decay = group.decay
    wd = _constant(decay.hyperparams["weight_decay"], step) if decay is not None and decays else 0.0
    if group.kind == "adam":
        if group.hyper("correct_bias", "nesterov"):
            raise ValueError(
                f"{where}: nesterov=True is optax's NAdam; torch.optim.NAdam schedules its momentum "
                "(momentum_decay) and follows another trajectory"
            )
        if "max_second_moment" in group.part and _CORRECTED_MAX in group.buffers:
            raise ValueError(
                f"{where}: amsgrad_max_of='corrected' keeps the maximum of the corrected v; torch keeps "
                "it of the raw v (use amsgrad_max_of='raw')"
            )
        if group.hyper("normalize_by_second_moment", "eps_root", 0.0):
            raise ValueError(f"{where}: eps_root has no torch counterpart (torch adds eps outside the root)")
        out = {
            "betas": (group.hyper("estimate_moments", "b1"), group.hyper("estimate_moments", "b2")),
            "eps": group.hyper("normalize_by_second_moment", "eps"),
            "weight_decay": wd,
            "amsgrad": "max_second_moment" in group.part,
        }
        if wd and decay is not None:
            out["decoupled_weight_decay"] = decay.name == "decoupled_weight_decay"
            if decay.name == "decoupled_weight_decay":
                _check_multiplier(group, decay, where)
        return out
    if group.kind == "sgd":
        if decay is not None and decay.name == "decoupled_weight_decay" and wd:
            raise ValueError(f"{where}: SGDW (decoupled decay on SGD) has no torch.optim counterpart")
        momentum = group.hyper("add_momentum", "momentum", 0.0)
        return {
            "momentum": momentum,
            "nesterov": bool(group.hyper("add_momentum", "nesterov", False)),
            "dampening": 0.0,
            "weight_decay": wd,
        }
    if group.hyper("normalize_by_second_moment", "eps_root", 0.0):
        raise ValueError(f"{where}: eps_root has no torch counterpart (torch adds eps outside the root)")
    if decay is not None and decay.name == "decoupled_weight_decay" and wd:
        raise ValueError(f"{where}: decoupled decay on {group.kind} has no torch.optim counterpart")
    if group.kind == "rmsprop":
        return {
            "alpha": group.hyper("estimate_second_moment", "decay"),
            "eps": group.hyper("normalize_by_second_moment", "eps"),
            "centered": "center_second_moment" in group.part,
            "momentum": group.hyper("add_momentum", "momentum", 0.0),
            "weight_decay": wd,
        }
    return {"eps": group.hyper("normalize_by_second_moment", "eps"), "lr_decay": 0.0, "weight_decay": wd}


def _check_multiplier(group: _Group, decay: Transform, where: str) -> None:
    lr = group.hyper("scale_by_learning_rate", "learning_rate")
    multiplier = decay.hyperparams["multiplier"]
    if multiplier is lr or (not callable(multiplier) and not callable(lr) and _same(multiplier, lr)):
        return
    raise ValueError(
        f"{where}: the decay is scaled by {multiplier!r}, torch's by the learning rate {lr!r} "
        "(use decay_scaling='learning_rate')"
    )


def _check_torch_group(theirs: Mapping[str, Any], ours: Mapping[str, Any], index: int, name: str) -> None:
    if theirs.get("maximize", False):
        raise ValueError(f"from_torch: param_groups[{index}] has maximize=True; opt minimizes")
    if "momentum_decay" in theirs:
        raise ValueError(
            f"from_torch: param_groups[{index}] is torch.optim.NAdam's, whose momentum follows a schedule "
            "(momentum_decay); no preset follows it"
        )
    for key, value in ours.items():
        if key == "decoupled_weight_decay" and key not in theirs:
            continue  # older torch versions do not say whether a group is AdamW's
        if key not in theirs:
            if key in ("dampening", "lr_decay") and not value:
                continue
            raise ValueError(
                f"from_torch: param_groups[{index}] has no {key!r}: it is not the optimizer opt continues "
                f"(parameter {name!r})"
            )
        if not _same(theirs[key], value):
            raise ValueError(
                f"from_torch: param_groups[{index}] has {key}={theirs[key]!r} but opt has {key}={value!r} "
                f"for parameter {name!r}"
            )


def from_torch(
    opt: optax.GradientTransformation,
    params: Any,
    state_dict: Mapping[str, Any],
    convert: Callable[[dict[str, np.ndarray]], Any],
    names: Sequence[str] | None = None,
) -> Any:
    r"""The state of ``opt`` that continues a ``torch.optim`` run exactly.

    Each per-parameter buffer of torch (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``,
    ``momentum_buffer``, ``square_avg``, ``grad_avg``, ``sum``) is gathered into a dict
    ``name -> array`` and passed through ``convert``, the function that converts the weights;
    the step count becomes the count of :func:`~optim_chain.correct_bias` (and of any schedule).
    Which torch name reaches which leaf is found by converting arrays filled with each
    parameter's index once, so the hyperparameters and step counts are compared per leaf.

    ====================================  ==============================================
    torch                                 preset
    ====================================  ==============================================
    ``Adam``, ``Adam(amsgrad=True)``      ``adam``, ``adam(amsgrad=True)``
    ``Adam(weight_decay=w)``              ``adam_l2(weight_decay=w)``
    ``AdamW(weight_decay=w)``             ``adamw(weight_decay=w)``
    ``SGD(momentum, nesterov, wd)``       ``sgd``, ``sgd_l2``
    ``RMSprop(alpha, centered, mom.)``    ``rmsprop(decay=alpha, ...)``
    ``Adagrad``                           ``adagrad``
    ====================================  ==============================================

    torch groups that differ only by weight decay map onto one group of ``opt`` with a
    ``mask``; :func:`~optim_chain.param_groups` maps each group onto the torch group that holds
    its leaves. ``skip_nonfinite`` starts with no skipped steps; ``moment_dtype`` sets the
    buffers' dtype; every buffer lands on its parameter's sharding.

    Args:
      opt: the preset to continue with (its hyperparameters must be torch's).
      params: the converted weights.
      state_dict: ``torch_optimizer.state_dict()`` (tensors or numpy arrays).
      convert: ``dict[name -> np.ndarray] -> params-shaped tree``, applied to each buffer.
      names: the parameter names in torch's order, when the state_dict has no
        ``param_names`` (torch records them when built from ``model.named_parameters()``).

    Returns:
      A state of ``opt`` for ``params``.

    Raises:
      ValueError: in one line, for a hyperparameter that differs, different step counts in one
        group, a missing or extra name, a buffer of the wrong shape.

    Example::

      >>> import numpy as np, torch, jax.numpy as jnp, optim_chain as oc
      >>> layer = torch.nn.Linear(3, 2)
      >>> torch_opt = torch.optim.AdamW(layer.named_parameters(), lr=1e-3)
      >>> layer(torch.ones(4, 3)).sum().backward(); torch_opt.step()
      >>> convert = lambda d: {"kernel": jnp.asarray(d["weight"].T), "bias": jnp.asarray(d["bias"])}
      >>> params = convert({k: v.detach().numpy() for k, v in layer.state_dict().items()})
      >>> state = oc.interop.from_torch(oc.adamw(1e-3), params, torch_opt.state_dict(), convert)
      >>> int(state[1].count), state[0].mu["kernel"].shape
      (1, (3, 2))
    """
    where = "from_torch"
    groups = _groups(opt, params, where)
    params_items = leaves_with_paths(params)
    paths = [p for p, _ in params_items]
    index_of = {p: i for i, p in enumerate(paths)}
    named = _torch_names(state_dict, names)
    raw = state_dict["state"]

    fields: dict[Any, dict[str, np.ndarray]] = {}
    steps: dict[Any, int] = {}
    for pid, entry in raw.items():
        if pid not in named:
            continue
        for key, value in entry.items():
            if key == "step":
                steps[pid] = int(round(float(_numpy(value))))
            elif key in _TORCH_BUFFERS:
                if value is not None:
                    fields.setdefault(pid, {})[key] = _numpy(value)
            elif key != "mu_product":
                raise ValueError(
                    f"{where}: torch keeps {key!r} for parameter {named[pid][0]!r}, which opt has no "
                    "place for"
                )

    # Which torch parameter reaches which leaf: convert arrays filled with each parameter's index.
    shapes = {pid: next(iter(f.values())).shape for pid, f in fields.items()}
    sources: dict[int, set[Any]] = {}
    if shapes:
        # 1, 2, ...: a leaf that convert fills with zeros is reached by no name
        markers = {named[pid][0]: np.full(shape, k + 1.0) for k, (pid, shape) in enumerate(shapes.items())}
        order = list(shapes)
        for path, marker in _paths_of(convert(markers), paths, "convert").items():
            found = {order[int(k) - 1] for k in np.unique(marker) if 0 < k <= len(order)}
            if found:
                sources[index_of[path]] = found
        reached = set().union(*sources.values()) if sources else set()
        for pid in order:
            if pid not in reached:
                raise ValueError(
                    f"{where}: {named[pid][0]!r} of the state_dict lands nowhere in params (extra name)"
                )

    values = _Values({}, {})
    for field in sorted({f for entry in fields.values() for f in entry}):
        chunk = {named[pid][0]: entry[field] for pid, entry in fields.items() if field in entry}
        converted = _paths_of(convert(dict(chunk)), paths, "convert")
        for path, array in converted.items():
            expected = np.shape(params_items[index_of[path]][1])
            if array.shape != expected:
                raise ValueError(
                    f"{where}: {field} of {path!r} has shape {array.shape} after convert but the "
                    f"parameter has {expected}"
                )
            values.buffers.setdefault(field, {})[index_of[path]] = array
    for index, pids in sources.items():
        found = {steps[pid] for pid in pids if pid in steps}
        if len(found) == 1:
            values.steps[index] = found.pop()

    torch_groups = state_dict["param_groups"]
    for group in groups:
        needs = set(group.buffers)
        for index, decays in zip(group.members, group.decays, strict=True):
            if needs and index not in sources and fields:
                raise ValueError(
                    f"{where}: no name of the state_dict reaches parameter {paths[index]!r} (missing name)"
                )
            ours = _torch_hyper(group, decays, values.steps.get(index), f"{where} ({paths[index]})")
            pids = sources.get(index) or (named if len(groups) == 1 and not group.decay else set())
            for pid in pids:
                name, g = named[pid]
                _check_torch_group(torch_groups[g], ours, g, name)
        for field, store in values.buffers.items():
            if field not in needs and any(i in store for i in group.members):
                raise ValueError(f"{where}: torch keeps {field}, which opt has no place for")
    return _write(opt, params, groups, values, where)


def _torch_module() -> Any:
    import torch  # noqa: PLC0415 - torch is needed only here, never by the library itself

    return torch


def to_torch(
    opt: optax.GradientTransformation,
    state: Any,
    params: Any,
    convert_back: Callable[[Any], Mapping[str, Any]],
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A ``state_dict`` that the matching ``torch.optim`` optimizer loads as it is.

    ``convert_back`` (params-shaped tree -> ``dict[name -> array]``, the function that turns the
    weights back into torch's) is applied to each buffer. The parameters are listed in the
    order of ``names`` (torch's order), or in the order ``convert_back`` returns them; they fall
    into one torch group per group of ``opt`` and weight decay (a ``mask`` splits a group into
    the parameters that decay and those that do not), in order of first appearance. Each group
    carries ``param_names``, so the torch optimizer can be built in that layout::

        named = dict(model.named_parameters())
        state_dict = oc.interop.to_torch(opt, state, params, convert_back)
        torch_opt = torch.optim.AdamW([{"params": [named[n] for n in g["param_names"]]}
                                       for g in state_dict["param_groups"]])
        torch_opt.load_state_dict(state_dict)

    The class is ``Adam`` (``adam``, ``adam_l2``), ``AdamW``, ``SGD`` (``sgd``, ``sgd_l2``),
    ``RMSprop`` or ``Adagrad``; the groups carry that class's defaults with ``opt``'s values
    over them (the learning rate at the current step for a schedule). torch is imported here
    only.

    Raises:
      ValueError: ``opt`` has no torch counterpart (SGDW, NAdam, ``eps_root``, ...), or
        ``names`` and ``convert_back`` disagree.
    """
    torch = _torch_module()
    where = "to_torch"
    groups = _groups(opt, params, where)
    values = _read(opt, state, groups)
    leaves, treedef = jax.tree.flatten(params)
    owner = {i: (k, d) for k, g in enumerate(groups) for i, d in zip(g.members, g.decays)}

    markers = jax.tree.unflatten(treedef, [np.full(np.shape(x), float(i)) for i, x in enumerate(leaves)])
    back = {name: _numpy(v) for name, v in convert_back(markers).items()}
    source = {name: int(np.unique(v)[0]) for name, v in back.items() if np.size(v)}
    order = list(names) if names is not None else list(back)
    missing = [n for n in order if n not in source]
    if missing:
        raise ValueError(f"{where}: convert_back gives no {missing[0]!r} (missing name)")
    extra = [n for n in source if n not in set(order)]
    if extra:
        raise ValueError(f"{where}: convert_back gives {extra[0]!r}, which names does not list (extra name)")

    kinds = {g.kind for g in groups if g.members}
    classes = set()
    layout: dict[tuple[int, bool], list[str]] = {}
    for name in order:
        k, decays = owner[source[name]]
        layout.setdefault((k, decays), []).append(name)
    torch_groups: list[dict[str, Any]] = []
    torch_state: dict[int, dict[str, Any]] = {}
    fields = {}
    for field, store in values.buffers.items():
        tree = jax.tree.unflatten(
            treedef, [store.get(i, np.zeros(np.shape(x))) for i, x in enumerate(leaves)]
        )
        fields[field] = {n: _numpy(v) for n, v in convert_back(tree).items()}
    pid = 0
    for (k, decays), members in layout.items():
        group = groups[k]
        step = next((values.steps[i] for i in group.members if i in values.steps), None)
        hyper = _torch_hyper(group, decays, step, f"{where} ({members[0]})")
        hyper.pop("decoupled_weight_decay", None)
        kind = group.kind
        if kind == "adam" and group.decay is not None and group.decay.name == "decoupled_weight_decay":
            kind = "adamw"
        classes.add(kind)
        entry = dict(getattr(torch.optim, _TORCH_CLASSES[kind])([torch.zeros(1)]).defaults)
        entry.update(hyper)
        if kind == "adamw":
            entry["decoupled_weight_decay"] = True
        lr = group.hyper("scale_by_learning_rate", "learning_rate")
        entry["lr"] = _constant(lr, step)
        if kind == "adagrad":
            entry["initial_accumulator_value"] = group.hyper("accumulate_second_moment", "initial_value")
        entry["params"] = list(range(pid, pid + len(members)))
        entry["param_names"] = list(members)
        torch_groups.append(entry)
        for name in members:
            index = source[name]
            buffers = {f: torch.from_numpy(np.array(fields[f][name])) for f in group.buffers if f in fields}
            if buffers or (kind != "sgd" and step is not None):
                torch_state[pid] = {}
                if kind != "sgd":
                    torch_state[pid]["step"] = torch.tensor(float(values.steps.get(index, 0) or 0))
                torch_state[pid].update(buffers)
            pid += 1
    if len(classes) > 1 or len(kinds) > 1:
        raise ValueError(f"{where}: opt's groups need different torch optimizers ({sorted(classes)})")
    return {"state": torch_state, "param_groups": torch_groups}


# ------------------------------------------------------------------------------------- optax


def _optax_nodes(tree: Any) -> list[Any]:
    """Every optax state record of interest inside ``tree`` (wrappers such as masks and
    injected hyperparameters are looked through)."""
    kinds = (
        optax.ScaleByAdamState,
        optax.ScaleByAmsgradState,
        optax.TraceState,
        optax.ScaleByRmsState,
        optax.ScaleByRStdDevState,
        optax.ScaleByRssState,
        optax.ScaleByScheduleState,
        optax.InjectStatefulHyperparamsState,
    )
    found = []

    def visit(node: Any) -> None:
        if isinstance(node, kinds):
            found.append(node)
            if isinstance(node, optax.InjectStatefulHyperparamsState):
                visit(node.inner_state)
            return
        if isinstance(node, Mapping):
            for value in node.values():
                visit(value)
        elif isinstance(node, tuple) and hasattr(node, "_fields"):
            for value in node:
                visit(value)
        elif isinstance(node, (tuple, list)):
            for value in node:
                visit(value)

    visit(tree)
    return found


#: optax record -> (its attribute -> buffer name).
def _optax_fields(node: Any) -> dict[str, str]:
    if isinstance(node, optax.ScaleByAmsgradState):
        return {"mu": "exp_avg", "nu": "exp_avg_sq", "nu_max": _CORRECTED_MAX}
    if isinstance(node, optax.ScaleByAdamState):
        return {"mu": "exp_avg", "nu": "exp_avg_sq"}
    if isinstance(node, optax.TraceState):
        return {"trace": "momentum_buffer"}
    if isinstance(node, optax.ScaleByRStdDevState):
        return {"mu": "grad_avg", "nu": "square_avg"}
    if isinstance(node, optax.ScaleByRmsState):
        return {"nu": "square_avg"}
    if isinstance(node, optax.ScaleByRssState):
        return {"sum_of_squares": "sum"}
    return {}


def _rms_momentum_scale(groups: list[_Group], nodes: list[Any], where: str) -> dict[int, float]:
    """optax's rmsprop keeps its momentum after the learning rate (``-lr`` times torch's buffer)."""
    if not any(isinstance(n, (optax.ScaleByRmsState, optax.ScaleByRStdDevState)) for n in nodes):
        return {}
    scale = {}
    for group in groups:
        lr = group.hyper("scale_by_learning_rate", "learning_rate")
        if callable(lr) and "add_momentum" in group.part:
            raise ValueError(
                f"{where}: optax's rmsprop momentum holds lr-scaled steps; opt's lr must be a constant"
            )
        for index in group.members:
            scale[index] = -float(lr) if not callable(lr) else 1.0
    return scale


def _optax_hyper(group: _Group) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if group.kind == "adam":
        out["b1"] = group.hyper("estimate_moments", "b1")
        out["b2"] = group.hyper("estimate_moments", "b2")
        out["eps"] = group.hyper("normalize_by_second_moment", "eps")
        out["eps_root"] = group.hyper("normalize_by_second_moment", "eps_root")
    if group.kind == "rmsprop":
        out["decay"] = group.hyper("estimate_second_moment", "decay")
    if "add_momentum" in group.part:
        out["momentum"] = group.hyper("add_momentum", "momentum")
    if group.decay is not None and not callable(group.decay.hyperparams["weight_decay"]):
        out["weight_decay"] = group.decay.hyperparams["weight_decay"]
    return out


def from_optax(opt: optax.GradientTransformation, params: Any, optax_state: Any) -> Any:
    """The state of ``opt`` that continues an optax run exactly.

    Reads the records of ``optax.adam``, ``adamw``, ``nadam``, ``nadamw``, ``amsgrad``,
    ``sgd`` (with momentum), ``rmsprop`` (plain, centered, with momentum) and ``adagrad``,
    looking through ``optax.inject_hyperparams``, masks and ``optax.chain``. optax's state keeps
    no hyperparameters, so they are compared only when it was built with
    ``optax.inject_hyperparams`` (``b1``, ``b2``, ``eps``, ``eps_root``, ``decay``,
    ``momentum``, ``weight_decay``). Choose ``opt`` to match: ``oc.adamw`` for
    ``optax.adamw``, ``oc.adamw(nesterov=True)`` for ``optax.nadamw``,
    ``oc.adam(amsgrad=True, amsgrad_max_of="corrected")`` for ``optax.amsgrad``,
    ``oc.rmsprop(decay, eps=0.0, eps_root=eps)`` for optax's default ``eps_in_sqrt=True``,
    ``oc.adagrad(eps=0.0, eps_root=eps)`` for ``optax.adagrad``. optax's rmsprop keeps its
    momentum after the learning rate; it is divided by ``-lr`` (a constant) on the way in.

    Args:
      opt: the preset to continue with.
      params: the parameters (the tree the optax state was built for).
      optax_state: the optax optimizer's state.

    Returns:
      A state of ``opt`` for ``params``, on the parameters' sharding and in ``moment_dtype``.

    Example::

      >>> import jax.numpy as jnp, optax, optim_chain as oc
      >>> params = {"w": jnp.ones(3)}
      >>> tx = optax.adamw(1e-3, weight_decay=1e-2)
      >>> updates, optax_state = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
      >>> state = oc.interop.from_optax(oc.adamw(1e-3, 1e-2), params, optax_state)
      >>> int(state[1].count)
      1
    """
    where = "from_optax"
    groups = _groups(opt, params, where)
    nodes = _optax_nodes(optax_state)
    paths = [p for p, _ in leaves_with_paths(params)]
    values = _Values({}, {})
    counts: set[int] = set()
    for node in nodes:
        if isinstance(node, optax.InjectStatefulHyperparamsState):
            for group in groups:
                for key, value in _optax_hyper(group).items():
                    if key in node.hyperparams and not _same(node.hyperparams[key], value):
                        raise ValueError(
                            f"{where}: the optax state has {key}={_float(node.hyperparams[key])!r} but "
                            f"opt has {key}={value!r}"
                        )
            continue
        if "count" in node._fields:
            counts.add(int(node.count))
        for attr, field in _optax_fields(node).items():
            tree = getattr(node, attr)
            if jax.tree.structure(tree) != jax.tree.structure(params):
                raise ValueError(f"{where}: {field} of the optax state is not shaped like params")
            store = values.buffers.setdefault(field, {})
            if store:
                raise ValueError(
                    f"{where}: the optax state holds two {field} buffers; it reads one optimizer"
                )
            for index, (leaf, param) in enumerate(zip(jax.tree.leaves(tree), jax.tree.leaves(params))):
                if np.shape(leaf) != np.shape(param):
                    raise ValueError(
                        f"{where}: {field} of {paths[index]!r} has shape {np.shape(leaf)} but the parameter "
                        f"has {np.shape(param)}"
                    )
                store[index] = np.asarray(leaf)
    if len(counts) > 1:
        raise ValueError(f"{where}: the optax state holds different step counts {sorted(counts)}")
    if counts:
        count = counts.pop()
        values.steps = dict.fromkeys(range(len(paths)), count)
    scale = _rms_momentum_scale(groups, nodes, where)
    if scale and "momentum_buffer" in values.buffers:
        store = values.buffers["momentum_buffer"]
        values.buffers["momentum_buffer"] = {i: v / scale[i] for i, v in store.items()}
    for group in groups:
        needs = set(group.buffers)
        for field, store in values.buffers.items():
            if field not in needs and any(i in store for i in group.members):
                raise ValueError(f"{where}: the optax state holds {field}, which opt has no place for")
    return _write(opt, params, groups, values, where)


def to_optax(
    opt: optax.GradientTransformation, state: Any, params: Any, optax_opt: optax.GradientTransformation
) -> Any:
    """The state of ``optax_opt`` that continues ``opt``'s run exactly (the reverse of :func:`from_optax`).

    ``optax_opt.init(params)`` gives the layout; its buffers and counts are filled from
    ``state``. Every group of ``opt`` must be at the same step (optax keeps one count).

    Example::

      >>> import jax.numpy as jnp, optax, optim_chain as oc
      >>> params = {"w": jnp.ones(3)}
      >>> opt = oc.adamw(1e-3, 1e-2)
      >>> _, state = opt.update({"w": jnp.ones(3)}, opt.init(params), params)
      >>> optax_state = oc.interop.to_optax(opt, state, params, optax.adamw(1e-3, weight_decay=1e-2))
      >>> int(optax_state[0].count)
      1
    """
    where = "to_optax"
    groups = _groups(opt, params, where)
    values = _read(opt, state, groups)
    template = optax_opt.init(params)
    nodes = _optax_nodes(template)
    steps = set(values.steps.values())
    if len(steps) > 1:
        raise ValueError(
            f"{where}: opt's groups are at different steps {sorted(steps)}; optax keeps one count"
        )
    step = steps.pop() if steps else None
    scale = _rms_momentum_scale(groups, nodes, where)
    leaves, treedef = jax.tree.flatten(params)
    paths = [p for p, _ in leaves_with_paths(params)]
    wanted = {field for node in nodes for field in _optax_fields(node).values()}
    for field, store in values.buffers.items():
        if field not in wanted and store:
            raise ValueError(f"{where}: opt keeps {field}, which optax_opt's state has no place for")

    def fill(node: Any) -> Any:
        if isinstance(node, optax.InjectStatefulHyperparamsState):
            return node._replace(
                inner_state=jax.tree.map(fill, node.inner_state, is_leaf=_is_record),
                count=_count_like(node.count, step),
            )
        if not _is_record(node):
            return node
        changes = {}
        for attr, field in _optax_fields(node).items():
            store = values.buffers.get(field, {})
            new = []
            for index, leaf in enumerate(jax.tree.leaves(getattr(node, attr))):
                if index not in store:
                    if step is None:
                        new.append(leaf)
                        continue
                    raise ValueError(
                        f"{where}: opt keeps no {field} for {paths[index]!r}, which optax_opt needs"
                    )
                value = store[index] * scale[index] if field == "momentum_buffer" and scale else store[index]
                new.append(_place(value, leaf))
            changes[attr] = jax.tree.unflatten(treedef, new)
        if "count" in node._fields:
            changes["count"] = _count_like(node.count, step)
        return node._replace(**changes)

    return jax.tree.map(fill, template, is_leaf=_is_record)


def _is_record(node: Any) -> bool:
    return bool(_optax_fields(node)) or isinstance(
        node, (optax.ScaleByScheduleState, optax.InjectStatefulHyperparamsState)
    )


def _count_like(count: jax.Array, step: int | None) -> jax.Array:
    return count if step is None else jax.numpy.asarray(step, count.dtype)
