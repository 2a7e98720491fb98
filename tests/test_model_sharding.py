"""Sharding: rules -> specs, and sharded == unsharded on 8 fake CPU devices (subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from jax.sharding import PartitionSpec as P

from neo_jax.model import sharding

_SCRIPT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    from neo_jax.model import config as config_lib, sharding
    from neo_jax.model.decoder import Decoder, init_cache
    from neo_jax.model.vocab import extend_vocab

    assert jax.device_count() == 8, jax.devices()
    cfg = config_lib.get_config('tiny', tie_embeddings=False, qkv_bias=True)
    B, L, W = 8, 16, 6
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (B, L)).astype(np.int32)
    segments = np.repeat([[1] * 9 + [2] * 5 + [0] * 2], B, 0).astype(np.int32)
    positions = np.concatenate([np.arange(9), np.arange(5), [0, 0]])[None].repeat(B, 0)
    positions = positions.astype(np.int32)
    valid = np.arange(W)[None, :] >= rng.integers(0, W, B)[:, None]
    pre_pos = np.maximum(np.cumsum(valid, 1) - 1, 0).astype(np.int32)
    step_tok = rng.integers(0, cfg.vocab_size, (B, 1)).astype(np.int32)
    step_pos = valid.sum(1, keepdims=True).astype(np.int32)

    def run(model):
      logits = model(tokens, positions, segments)
      cache = init_cache(model.cfg, B, 8)
      pre, cache = model.decode(tokens[:, :W], pre_pos, cache, valid)
      step, cache = model.decode(step_tok, step_pos, cache)
      return logits, pre, step

    ref = ref_params = None
    for shape in [(8, 1, 1), (2, 2, 2)]:
      mesh = sharding.make_mesh(*shape)
      model = sharding.create_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), mesh)
      if ref is None:
        # The unsharded reference: the same weights, copied to one device.
        ref_params = {p: np.asarray(v.get_value())
                      for p, v in nnx.to_flat_state(nnx.state(model))}
        graphdef, state = nnx.split(model)
        ref_model = nnx.merge(graphdef, jax.tree.map(
            lambda x: jax.device_put(np.asarray(x), jax.devices()[0]), state))
        assert len(ref_model.embed_tokens.get_value().devices()) == 1
        ref = [np.asarray(x) for x in nnx.jit(run)(ref_model)]
      for path, var in nnx.to_flat_state(nnx.state(model)):
        value = var.get_value()
        want_spec = sharding.logical_to_spec(var.logical_axes)
        assert value.sharding.spec == want_spec, (path, value.sharding, want_spec)
        assert value.sharding.mesh.shape == mesh.shape
        # Creation does not depend on the mesh (partitionable threefry).
        np.testing.assert_array_equal(np.asarray(value), ref_params[path])
      emb = model.embed_tokens.get_value()
      shard = emb.addressable_shards[0].data.shape
      assert shard == (512 // shape[2], 64 // shape[1]), shard
      with jax.set_mesh(mesh):
        got = nnx.jit(run)(model)
      # The batch stays split over data x fsdp (the activation constraints).
      rows = {s.data.shape[0] for s in got[0].addressable_shards}
      assert rows == {B // (shape[0] * shape[1])}, (rows, got[0].sharding)
      for g, r, name in zip(got, ref, ('forward', 'prefill', 'step')):
        err = float(np.abs(np.asarray(g) - r).max())
        assert err < 1e-5, (shape, name, err)
      # Growing the vocabulary keeps the layout (600 rows still split over 'tensor').
      before = np.asarray(model.lm_head.get_value())
      extend_vocab(model, 600, rng=jax.random.key(0))
      for var in (model.embed_tokens, model.lm_head):
        grown = var.get_value()
        assert grown.shape == (600, 64) and grown.sharding.spec == P('tensor', 'fsdp')
      np.testing.assert_array_equal(np.asarray(model.lm_head.get_value())[:512], before)
      print('OK', shape)
''')


def test_sharded_equals_unsharded_on_8_fake_devices():
  env = dict(os.environ)
  # Optimisation level 0: XLA's CPU backend otherwise spends most of this test compiling.
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
                      ' --xla_backend_optimization_level=0').strip()
  env['JAX_PLATFORMS'] = 'cpu'
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
  proc = subprocess.run([sys.executable, '-c', _SCRIPT], env=env, capture_output=True,
                        text=True, timeout=300, cwd=root)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
  assert proc.stdout.split() == ['OK', '(8,', '1,', '1)', 'OK', '(2,', '2,', '2)']


def test_logical_rules_to_specs():
  assert sharding.logical_to_spec(('vocab', 'embed')) == P('tensor', 'fsdp')
  assert sharding.logical_to_spec(('layers', 'embed', 'q_heads', 'head_dim')) == P(
      None, 'fsdp', 'tensor', None)
  assert sharding.logical_to_spec(('batch', 'length')) == P(('data', 'fsdp'), None)
  with pytest.raises(KeyError, match='no entry'):
    sharding.logical_to_spec(('nonsense',))
  with pytest.raises(ValueError, match='used by both'):
    sharding.logical_to_spec(('q_heads', 'kv_heads'))


def test_indivisible_parameter_dimension_is_a_clear_error():
  import jax
  from flax import nnx

  from neo_jax.model import config as config_lib
  from neo_jax.model.decoder import Decoder

  # SmolLM2's 3 kv heads cannot split 2 ways; shapes only, nothing is allocated.
  abstract = nnx.eval_shape(
      lambda: Decoder(config_lib.get_config('smollm2-135m'), rngs=nnx.Rngs(0)))
  mesh = jax.sharding.AbstractMesh((1, 1, 2), sharding.MESH_AXES)
  with pytest.raises(ValueError, match=r"kv_heads.*not divisible.*map 'kv_heads' to None"):
    sharding.param_shardings(abstract, mesh)
  rules = dict(sharding.LOGICAL_RULES, q_heads=None, kv_heads=None)
  specs = sharding.param_shardings(abstract, mesh, rules)
  assert specs['layers']['k_proj'].get_value().spec == P(None, 'fsdp', None, None)
  assert specs['embed_tokens'].get_value().spec == P('tensor', 'fsdp')
