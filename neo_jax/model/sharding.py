"""All partitioning decisions of the model in one place.

Every parameter carries `logical_axes` metadata (one name per dimension, set where it is
created in decoder.py). `LOGICAL_RULES` maps each logical name to mesh axes of a
('data', 'fsdp', 'tensor') mesh; nothing else in the library names mesh axes.

Parameters: the 'embed' dimension is split over 'fsdp' (ZeRO-3 style: gathered per layer by the
compiler), heads / MLP hidden / vocabulary over 'tensor' (Megatron style). Activations: the
batch over ('data', 'fsdp'). A parameter dimension that a rule splits must divide evenly; if a
checkpoint's head count does not (SmolLM2 has 9 heads), pass rules with that name mapped to
None rather than relying on uneven shards.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')

MeshAxes = str | tuple[str, ...] | None

LOGICAL_RULES: dict[str, MeshAxes] = {
    # Parameters.
    'vocab': 'tensor',
    'embed': 'fsdp',
    'q_heads': 'tensor',
    'kv_heads': 'tensor',
    'head_dim': None,
    'mlp': 'tensor',
    'layers': None,
    'norm': None,
    # Activations and the KV cache.
    'batch': ('data', 'fsdp'),
    'length': None,
    'cache_length': None,
    'act_embed': None,
    'act_heads': 'tensor',
    'act_kv_heads': 'tensor',
    'act_mlp': 'tensor',
    'act_vocab': 'tensor',
}

# Logical axes of the KV cache fields (see decoder.Cache).
CACHE_AXES = {
    'k': ('layers', 'batch', 'cache_length', 'kv_heads', 'head_dim'),
    'v': ('layers', 'batch', 'cache_length', 'kv_heads', 'head_dim'),
    'valid_BxS': ('batch', 'cache_length'),
    'end': (),
}


class _RulesContext(threading.local):

  def __init__(self):
    super().__init__()
    self.stack: list[Mapping[str, MeshAxes]] = []


_RULES_CONTEXT = _RulesContext()


@contextlib.contextmanager
def axis_rules(rules: Mapping[str, MeshAxes]):
  """Rules that activation constraints (`constrain`) use while tracing inside this block.

  The rules are read when a function is traced: enter the block before the first call of a
  jitted function, not around an already-compiled one.
  """
  _RULES_CONTEXT.stack.append(dict(rules))
  try:
    yield
  finally:
    _RULES_CONTEXT.stack.pop()


def current_rules() -> Mapping[str, MeshAxes]:
  return _RULES_CONTEXT.stack[-1] if _RULES_CONTEXT.stack else LOGICAL_RULES


def make_mesh(data: int, fsdp: int, tensor: int, *, devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh over data * fsdp * tensor devices.

  Axes are `Auto`, so shardings of intermediates are left to the compiler (guided by the
  parameter shardings and `constrain`).
  """
  shape = (data, fsdp, tensor)
  if any(not isinstance(s, int) or s < 1 for s in shape):
    raise ValueError(f'mesh sizes must be positive ints, got data={data}, fsdp={fsdp}, '
                     f'tensor={tensor}')
  available = len(devices) if devices is not None else jax.device_count()
  if math.prod(shape) != available:
    raise ValueError(f'mesh data*fsdp*tensor = {math.prod(shape)} but {available} devices '
                     'are available')
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices)


def mesh_axes_of(name: str, rules: Mapping[str, MeshAxes]) -> tuple[str, ...]:
  """The mesh axes the logical axis `name` is split over by `rules` (() : replicated)."""
  if name not in rules:
    raise KeyError(f'logical axis {name!r} has no entry in the sharding rules; known: '
                   f'{sorted(rules)}')
  axes = rules[name]
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(logical_axes: Sequence[str | None],
                    rules: Mapping[str, MeshAxes] = LOGICAL_RULES) -> PartitionSpec:
  """The PartitionSpec of logical axis names (None = replicated dimension)."""
  spec, used = [], {}
  for name in logical_axes:
    axes = () if name is None else mesh_axes_of(name, rules)
    for a in axes:
      if a in used:
        raise ValueError(f'mesh axis {a!r} is used by both logical axes {used[a]!r} and '
                         f'{name!r} of {tuple(logical_axes)}')
      used[a] = name
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*spec)


def _spec_for_shape(logical_axes, shape, mesh_shape: Mapping[str, int], rules, *, strict: bool,
                    what: str) -> PartitionSpec:
  if len(logical_axes) != len(shape):
    raise ValueError(f'{what}: logical axes {tuple(logical_axes)} do not match its shape '
                     f'{tuple(shape)}')
  spec = logical_to_spec(logical_axes, rules)
  out = []
  for dim, (size, entry) in enumerate(zip(shape, spec)):
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    for a in axes:
      if a not in mesh_shape:
        raise ValueError(f'{what}: mesh axis {a!r} (from logical axis '
                         f'{logical_axes[dim]!r}) is not in the mesh {dict(mesh_shape)}')
    ways = math.prod(mesh_shape[a] for a in axes)
    if size % ways:
      if strict:
        raise ValueError(
            f'{what}: dimension {dim} ({logical_axes[dim]!r}, size {size}) is not divisible '
            f'by mesh axes {axes} ({ways} ways); map {logical_axes[dim]!r} to None (or to '
            'other mesh axes) in the rules')
      entry = None
    out.append(entry)
  return PartitionSpec(*out)


def _logical_axes_of(var: nnx.Variable, path) -> tuple[str, ...]:
  axes = var.get_metadata().get('logical_axes')
  if axes is None:
    if getattr(var.get_value(), 'ndim', 0) == 0:
      return ()
    raise ValueError(f'variable {"/".join(map(str, path))} of shape '
                     f'{var.get_value().shape} has no logical_axes metadata')
  return tuple(axes)


def param_shardings(model_or_state: nnx.Module | nnx.State, mesh: jax.sharding.Mesh,
                    rules: Mapping[str, MeshAxes] = LOGICAL_RULES) -> nnx.State:
  """NamedShardings for every variable, shaped like `nnx.state(model)`.

  Works on concrete or abstract (nnx.eval_shape) models and states. Variables keep their
  type and metadata, only the value is replaced by its sharding, so the result can be given
  to `jax.jit(out_shardings=...)` / `jax.device_put` for the matching state.
  """
  state = (nnx.state(model_or_state) if isinstance(model_or_state, nnx.Module)
           else model_or_state)
  mesh_shape = dict(mesh.shape)
  flat = []
  for path, var in nnx.to_flat_state(state):
    what = 'parameter ' + '/'.join(map(str, path))
    spec = _spec_for_shape(_logical_axes_of(var, path), var.get_value().shape, mesh_shape,
                           rules, strict=True, what=what)
    flat.append((path, var.replace(NamedSharding(mesh, spec))))
  return nnx.from_flat_state(flat)


def cache_shardings(cache: Any, mesh: jax.sharding.Mesh,
                    rules: Mapping[str, MeshAxes] = LOGICAL_RULES) -> Any:
  """NamedShardings for a decoder.Cache (same pytree type)."""
  mesh_shape = dict(mesh.shape)
  fields = {}
  for name, axes in CACHE_AXES.items():
    value = getattr(cache, name)
    spec = _spec_for_shape(axes, value.shape, mesh_shape, rules, strict=True,
                           what=f'cache.{name}')
    fields[name] = NamedSharding(mesh, spec)
  return cache.replace(**fields)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """A sharding hint for an activation; the identity when no mesh is set (`jax.set_mesh`).

  Dimensions that do not divide evenly over their mesh axes are left to the compiler: this is
  a layout hint, never a correctness requirement.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = _spec_for_shape(tuple(logical_axes), x.shape, dict(mesh.shape), current_rules(),
                         strict=False, what='activation')
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def create_sharded(model_fn, mesh: jax.sharding.Mesh,
                   rules: Mapping[str, MeshAxes] = LOGICAL_RULES):
  """Builds `model_fn()` (an nnx.Module factory, e.g. `lambda: Decoder(cfg, rngs=...)`) with
  every parameter created in place on its shards: shapes come from nnx.eval_shape, the
  initialiser runs under jit with `out_shardings`, so no device ever holds the whole model.
  With JAX's partitionable threefry (the default) the values equal the unsharded model's.
  """
  abstract = nnx.eval_shape(model_fn)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = param_shardings(abstract_state, mesh, rules)

  init = jax.jit(lambda: nnx.split(model_fn())[1], out_shardings=shardings)
  with jax.set_mesh(mesh), axis_rules(rules):
    state = init()
  return nnx.merge(graphdef, state)

