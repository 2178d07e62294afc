"""Sharding parameters and optimizer state over a device mesh (data parallel plus FSDP/ZeRO).

An Adam-type optimizer keeps two arrays per parameter, so its state is about twice the size of
the model. Fully sharded data parallelism (FSDP, ZeRO stage 3) splits every large parameter
*and* its optimizer state across the devices of one mesh axis, so that each device holds
``1 / fsdp`` of both; the batch is split across all devices. This module gives the few helpers
that setup needs on top of :mod:`jax.sharding`:

* :func:`data_fsdp_mesh`: a 2-D ``("data", "fsdp")`` mesh whose axes let the compiler choose
  the communication (``AxisType.Auto``).
* :func:`fsdp_partition_spec` / :func:`fsdp_shardings` / :func:`shard_params`: split each leaf
  along its largest dimension that the ``fsdp`` axis divides; small or indivisible leaves are
  replicated.
* :func:`state_shardings`: the optimizer state's shardings, each per-parameter state leaf laid
  out exactly like its parameter, for ``jax.jit(..., out_shardings=...)``.
* :func:`per_device_bytes`: how many bytes of a pytree each device holds.

optim_chain builds its zero-initialised state from each parameter leaf (not from its shape
alone), so ``opt.init`` keeps the parameters' sharding eagerly and under ``jax.jit`` even
without ``out_shardings``; :func:`state_shardings` makes the layout explicit and checkable.

Example::

    >>> import jax, jax.numpy as jnp, optim_chain as oc
    >>> from optim_chain import sharding
    >>> params = {"dense": {"kernel": jnp.ones((64, 32)), "bias": jnp.zeros(32)}}
    >>> mesh = sharding.data_fsdp_mesh(data=1)           # FSDP over every device (here: 1)
    >>> params, param_sh = sharding.shard_params(params, mesh)
    >>> opt = oc.adamw(1e-3, 0.1, mask=oc.default_decay_mask)
    >>> state_sh = sharding.state_shardings(opt, params, param_sh)
    >>> state = jax.jit(opt.init, out_shardings=state_sh)(params)
    >>> sum(sharding.per_device_bytes(state).values())   # m and v: 2 x 4 x (64*32 + 32) bytes
    16644

Reference: Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models", SC 2020 (https://arxiv.org/abs/1910.02054).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

from optim_chain._tree import path_to_str

__all__ = [
    "DATA_AXIS",
    "FSDP_AXIS",
    "DEFAULT_MIN_SIZE",
    "data_fsdp_mesh",
    "batch_sharding",
    "fsdp_partition_spec",
    "fsdp_shardings",
    "shard_params",
    "state_shardings",
    "per_device_bytes",
    "replicated",
]

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
#: Leaves with fewer elements than this are replicated by default: splitting a bias or a norm
#: scale saves almost nothing and costs one more collective per step.
DEFAULT_MIN_SIZE = 1024


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _check_mesh(mesh: Any, abstract_ok: bool = False) -> None:
    kinds = (Mesh, AbstractMesh) if abstract_ok else (Mesh,)
    if not isinstance(mesh, kinds):
        names = " or ".join(f"jax.sharding.{k.__name__}" for k in kinds)
        raise TypeError(f"mesh must be a {names}, got {type(mesh).__name__}")


def _check_axis(mesh: Mesh | AbstractMesh, axis: Any, argument: str = "axis") -> None:
    if axis not in mesh.axis_names:
        raise ValueError(
            f"{argument} {axis!r} is not an axis of the mesh; its axes are {tuple(mesh.axis_names)}"
        )


def data_fsdp_mesh(
    data: int = 1,
    fsdp: int | None = None,
    # jax exports Device by assignment, which pyright does not read as a type
    devices: Sequence[jax.Device] | None = None,  # pyright: ignore[reportInvalidTypeForm]
) -> Mesh:
    """A ``("data", "fsdp")`` mesh over ``devices`` with ``AxisType.Auto`` axes.

    Parameters and optimizer state are split along ``"fsdp"`` and replicated along ``"data"``;
    a batch is split along both. ``data=1`` is plain FSDP over every device, ``fsdp=1`` plain
    data parallelism. Auto axes leave the placement of collectives to the compiler, so the
    same jitted step runs unchanged on any mesh shape, one device included (recent jax makes
    ``Explicit`` axes the default of ``jax.make_mesh``; this asks for Auto).

    Args:
      data: the size of the data-parallel axis.
      fsdp: the size of the sharding axis; ``None`` takes ``len(devices) // data``.
      devices: the devices, in mesh order; ``None`` takes ``jax.devices()`` (every device of
        every process in a multi-host run).

    Returns:
      A :class:`jax.sharding.Mesh` of shape ``(data, fsdp)``.

    Raises:
      ValueError: a size is not a positive int, or ``data * fsdp`` is not the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must not be empty")
    _check_positive_int("data", data)
    if fsdp is None:
        if len(devices) % data:
            raise ValueError(f"data={data} does not divide the {len(devices)} devices")
        fsdp = len(devices) // data
    _check_positive_int("fsdp", fsdp)
    if data * fsdp != len(devices):
        raise ValueError(
            f"data * fsdp = {data} * {fsdp} = {data * fsdp}, but there are {len(devices)} devices"
        )
    return jax.make_mesh(
        (data, fsdp), (DATA_AXIS, FSDP_AXIS), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices
    )


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that keeps a full copy of an array on every device of ``mesh``."""
    _check_mesh(mesh)
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, axes: Sequence[str] | None = None) -> NamedSharding:
    """Splits the leading (batch) dimension of an input over ``axes`` (default: every mesh axis).

    The batch size must be divisible by the product of those axes' sizes.
    """
    _check_mesh(mesh)
    axes = tuple(mesh.axis_names) if axes is None else tuple(axes)
    for axis in axes:
        _check_axis(mesh, axis, "batch axis")
    return NamedSharding(mesh, PartitionSpec(axes))


def fsdp_partition_spec(
    leaf: Any,
    mesh: Mesh | AbstractMesh,
    axis: str = FSDP_AXIS,
    min_size: int = DEFAULT_MIN_SIZE,
) -> PartitionSpec:
    """How to split one array over the mesh axis ``axis``: along its largest divisible dimension.

    The leaf is split along the largest dimension whose length the axis size divides (the
    first such dimension on a tie), and replicated over every other mesh axis. It is replicated
    outright when it has fewer than ``min_size`` elements, when no dimension is divisible, or
    when the axis has size 1.

    Args:
      leaf: an array or anything with a ``shape`` (``jax.ShapeDtypeStruct`` works).
      mesh: the mesh; a :class:`~jax.sharding.AbstractMesh` (sizes and names, no devices) also
        works, for planning a layout before the devices exist.
      axis: the name of the mesh axis to split over.
      min_size: leaves with fewer elements are replicated; ``0`` splits every divisible leaf.

    Returns:
      A :class:`~jax.sharding.PartitionSpec`, e.g. ``P(None, "fsdp")`` or ``P()``.

    Example: on a mesh whose ``fsdp`` axis has 4 devices, a ``(97, 64)`` embedding gets
    ``P(None, "fsdp")`` (97 is not divisible by 4) and a ``(64,)`` bias ``P()``.
    """
    _check_mesh(mesh, abstract_ok=True)
    _check_axis(mesh, axis)
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ValueError(f"min_size must be an int >= 0, got {min_size!r}")
    shape = tuple(np.shape(leaf))
    size = mesh.shape[axis]
    if size == 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    divisible = [d for d, n in enumerate(shape) if n % size == 0 and n >= size]
    if not divisible:
        return PartitionSpec()
    best = max(divisible, key=lambda d: (shape[d], -d))
    return PartitionSpec(*[axis if d == best else None for d in range(len(shape))])


def fsdp_shardings(
    params: Any,
    mesh: Mesh,
    axis: str = FSDP_AXIS,
    min_size: int = DEFAULT_MIN_SIZE,
) -> Any:
    """A pytree of :class:`~jax.sharding.NamedSharding` like ``params``, from :func:`fsdp_partition_spec`."""
    _check_mesh(mesh)
    fsdp_partition_spec(np.zeros(()), mesh, axis, min_size)  # validates the arguments once
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_partition_spec(x, mesh, axis, min_size)), params)


def shard_params(
    params: Any,
    mesh: Mesh,
    axis: str = FSDP_AXIS,
    min_size: int = DEFAULT_MIN_SIZE,
) -> tuple[Any, Any]:
    """Places ``params`` on ``mesh`` split FSDP-style; returns ``(sharded_params, shardings)``.

    ``shardings`` is the pytree of :class:`~jax.sharding.NamedSharding` to pass on to
    :func:`state_shardings` and to ``jax.jit``'s ``in_shardings``/``out_shardings``.
    In a multi-process run every process must pass the same full ``params`` (for example,
    initialised from the same seed); to create parameters directly in their shards, jit the
    model's init with ``out_shardings=fsdp_shardings(jax.eval_shape(init, ...), mesh)``.
    """
    shardings = fsdp_shardings(params, mesh, axis, min_size)
    return jax.device_put(params, shardings), shardings


def state_shardings(
    opt: Any,
    params: Any,
    param_shardings: Any,
    unmatched: Literal["error", "replicate"] = "error",
) -> Any:
    """The shardings of ``opt``'s state: each per-parameter leaf gets its parameter's sharding.

    The state's shapes come from ``jax.eval_shape(opt.init, params)``, so nothing is computed
    or allocated. Every subtree of the state whose leaves sit at the params' key paths with the
    params' shapes (moments ``m`` and ``v``, momentum buffers, the inner states of
    ``optax.masked`` with their ``MaskedNode`` gaps) takes the params' shardings leaf by leaf;
    scalars (step counts, injected hyperparameters) are replicated.

    Args:
      opt: a gradient transformation (anything with ``init``), e.g. ``oc.adamw(...)``.
      params: the parameters, or their ``jax.ShapeDtypeStruct`` s.
      param_shardings: a pytree like ``params`` of :class:`~jax.sharding.NamedSharding`, all on
        one mesh (from :func:`shard_params` or :func:`fsdp_shardings`).
      unmatched: what to do with a state leaf that has dimensions but matches no parameter:
        ``"error"`` raises (so no large buffer is silently copied to every device),
        ``"replicate"`` puts a full copy on every device.

    Returns:
      A pytree with the state's structure and a ``NamedSharding`` at every leaf, ready for
      ``jax.jit(opt.init, out_shardings=...)`` and the training step's shardings.

    Raises:
      ValueError: the shardings do not match the params, lie on different meshes, or a
        non-scalar state leaf matches no parameter and ``unmatched="error"``.
    """
    if not hasattr(opt, "init"):
        raise TypeError(f"opt must be a gradient transformation with an init method, got {opt!r}")
    if unmatched not in ("error", "replicate"):
        raise ValueError(f"unmatched must be 'error' or 'replicate', got {unmatched!r}")
    param_items = jax.tree_util.tree_flatten_with_path(params)[0]
    sharding_items = jax.tree_util.tree_flatten_with_path(
        param_shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)
    )[0]
    if [p for p, _ in param_items] != [p for p, _ in sharding_items]:
        raise ValueError(
            "param_shardings must have the params' structure; got paths "
            f"{[path_to_str(p) for p, _ in sharding_items][:5]} for params "
            f"{[path_to_str(p) for p, _ in param_items][:5]}"
        )
    meshes = set()
    for path, s in sharding_items:
        if not isinstance(s, NamedSharding):
            raise TypeError(
                f"param_shardings leaf {path_to_str(path)!r} must be a NamedSharding, got {type(s).__name__}"
            )
        meshes.add(s.mesh)
    if len(meshes) > 1:
        raise ValueError(f"param_shardings lie on {len(meshes)} different meshes; use one mesh")
    if not meshes:
        raise ValueError("params has no leaves, so there is no mesh to place the state on")
    full_copy = replicated(meshes.pop())
    by_path = {p: (tuple(np.shape(x)), s) for (p, x), (_, s) in zip(param_items, sharding_items)}
    abstract = jax.eval_shape(opt.init, params)

    def as_param_tree(node: Any) -> Any | None:
        """``node``'s shardings when every leaf is a parameter's state, else ``None``."""
        items, treedef = jax.tree_util.tree_flatten_with_path(node)
        if not items:
            return None
        out = []
        for path, leaf in items:
            match = by_path.get(path)
            if match is None or match[0] != tuple(leaf.shape):
                return None
            out.append(match[1])
        return jax.tree.unflatten(treedef, out)

    def assign(node: Any, path: tuple[Any, ...]) -> Any:
        matched = as_param_tree(node)
        if matched is not None:
            return matched
        # one level down: every child counts as a leaf, so only ``node`` itself is opened
        keyed, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
        if len(keyed) == 1 and keyed[0][1] is node:  # an array leaf
            if node.ndim == 0 or unmatched == "replicate":
                return full_copy
            raise ValueError(
                f"optimizer state leaf {path_to_str(path) or '<root>'!r} of shape {node.shape} matches "
                "no parameter's path and shape, so its sharding is unknown; pass "
                "unmatched='replicate' to keep a full copy on every device"
            )
        return jax.tree.unflatten(treedef, [assign(child, path + key) for key, child in keyed])

    return assign(abstract, ())


# jax exports Device by assignment, which pyright does not read as a type
def per_device_bytes(tree: Any) -> dict[jax.Device, int]:  # pyright: ignore[reportInvalidTypeForm]
    """Bytes of ``tree``'s arrays held on each device (from every array's addressable shards).

    A replicated array counts in full on every device, a split one only its shard. Devices of
    other processes are not addressable and do not appear.

    Raises:
      TypeError: a leaf is not a ``jax.Array`` (a NumPy array or a Python number lives on the
        host, not on a device).
    """
    totals: dict[jax.Device, int] = {}  # pyright: ignore[reportInvalidTypeForm] (as above)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not isinstance(leaf, jax.Array):
            raise TypeError(
                f"leaf {path_to_str(path)!r} is a {type(leaf).__name__}, not a jax.Array on a device"
            )
        for shard in leaf.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return totals
