"""Mesh, logical-axis rules, and the model sharded over 8 simulated CPU devices."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from empg_jax import sharding
from empg_jax.models import init_random, load_pretrained, positions_from_mask, save_pretrained
from helpers_hf import make_tiny_hf_model


def spec_of(x):
  """x's PartitionSpec padded to x.ndim (JAX drops trailing Nones after jit)."""
  spec = tuple(x.sharding.spec)
  return P(*(spec + (None,) * (x.ndim - len(spec))))


def test_eight_simulated_devices():
  assert jax.device_count() == 8


def test_make_mesh_shapes_and_auto_axes():
  mesh = sharding.make_mesh(2, 2, 2)
  assert mesh.axis_names == ('data', 'fsdp', 'tensor')
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 2, 'tensor': 2}
  assert tuple(mesh.axis_types) == (AxisType.Auto,) * 3
  assert dict(sharding.make_mesh(tensor=2).shape) == {'data': 1, 'fsdp': 4, 'tensor': 2}
  assert dict(sharding.make_mesh(data=-1, fsdp=1, devices=jax.devices()[:2]).shape)['data'] == 2


@pytest.mark.parametrize('kwargs, match', [
    (dict(data=3), 'does not divide'),
    (dict(data=2, fsdp=2, tensor=1), 'device count'),
    (dict(data=-1, fsdp=-1), 'at most one'),
    (dict(tensor=0), 'positive'),
])
def test_make_mesh_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sharding.make_mesh(**kwargs)


def test_logical_to_pspec_rules():
  assert sharding.logical_to_pspec(('vocab', 'embed')) == P('tensor', 'fsdp')
  assert sharding.logical_to_pspec(('batch', 'length', 'act_embed')) == P(('data', 'fsdp'),
                                                                          None, None)
  assert sharding.logical_to_pspec(('norm',)) == P(None)
  assert sharding.logical_to_pspec(None) == P()
  assert sharding.logical_to_pspec(('unknown', None)) == P(None, None)
  # A mesh axis is used once per array.
  assert sharding.logical_to_pspec(('heads', 'mlp')) == P('tensor', None)
  custom = (('embed', ('data', 'tensor')),)
  assert sharding.logical_to_pspec(('embed',), custom) == P(('data', 'tensor'))


def test_non_divisible_dimensions_stay_replicated():
  mesh = sharding.make_mesh(1, 2, 4)
  # 2 KV heads * 3 = 6 rows cannot split 4 ways; the embed dim can split 2 ways.
  assert sharding.logical_to_pspec(('kv_heads', 'embed'), shape=(6, 8), mesh=mesh) == P(None,
                                                                                       'fsdp')
  assert sharding.named_sharding(mesh, ('batch',), (3,)).spec == P(None)


def test_constrain_is_noop_without_mesh_and_shards_with_one():
  x = jnp.ones((8, 4))
  assert sharding.constrain(x, ('batch', None)) is x
  mesh = sharding.make_mesh(2, 2, 2)
  out = jax.jit(lambda x: sharding.constrain(x, ('batch', 'act_vocab'), mesh))(x)
  assert spec_of(out) == P(('data', 'fsdp'), 'tensor')
  with jax.set_mesh(mesh):
    out = jax.jit(lambda x: sharding.constrain(x, ('batch', None)))(x)
  assert spec_of(out) == P(('data', 'fsdp'), None)


def test_batch_sharding():
  mesh = sharding.make_mesh(2, 2, 2)
  assert sharding.batch_sharding(mesh).spec == P(('data', 'fsdp'), None)
  assert sharding.batch_sharding(mesh, ndim=3).spec == P(('data', 'fsdp'), None, None)


def test_batch_axes_come_from_the_rules():
  assert sharding.batch_axes() == ('data', 'fsdp')
  assert sharding.logical_to_pspec(('batch',)) == P(sharding.batch_axes())
  assert sharding.batch_axes((('batch', 'data'), ('batch', 'fsdp'))) == ('data',)
  assert sharding.batch_axes((('length', None),)) == ()
  assert sharding.batch_shards(sharding.make_mesh(2, 2, 2)) == 4


@pytest.fixture(scope='module')
def qwen2_dir(tmp_path_factory):
  model_dir, _ = make_tiny_hf_model(tmp_path_factory.mktemp('hf'), 'qwen2')
  return model_dir


@pytest.fixture(scope='module')
def mesh():
  return sharding.make_mesh(2, 2, 2)


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, state, ids, mask):
  return nnx.merge(graphdef, state)(ids, mask)


@functools.partial(jax.jit, static_argnums=0)
def _forward_cached(graphdef, state, ids, positions, cache, cache_index, kv_mask):
  model = nnx.merge(graphdef, state)
  hidden, cache = model.forward_cached(ids, positions, cache, cache_index, kv_mask)
  return model.logits(hidden[:, -1]), cache


IDS = (np.arange(8 * 16, dtype=np.int32).reshape(8, 16) * 37) % 384
MASK = np.ones_like(IDS)
MASK[3, :6] = 0


def test_sharded_load_places_params_on_their_shardings(qwen2_dir, mesh):
  model = load_pretrained(qwen2_dir, mesh=mesh)
  layers = model.model.layers  # stacked: the leading layer axis is never split
  expected = [
      (model.model.embed_tokens.weight, P('tensor', 'fsdp')),
      (model.lm_head.weight, P('tensor', 'fsdp')),
      (layers.self_attn.q_proj.weight, P(None, 'tensor', 'fsdp')),
      (layers.self_attn.q_proj.bias, P(None, 'tensor')),
      (layers.self_attn.k_proj.weight, P(None, 'tensor', 'fsdp')),
      (layers.self_attn.o_proj.weight, P(None, 'fsdp', 'tensor')),
      (layers.mlp.gate_proj.weight, P(None, 'tensor', 'fsdp')),
      (layers.mlp.down_proj.weight, P(None, 'fsdp', 'tensor')),
      (layers.input_layernorm.weight, P(None, None)),
  ]
  for variable, spec in expected:
    value = variable.get_value()
    assert isinstance(value.sharding, NamedSharding) and value.sharding.mesh == mesh
    assert spec_of(value) == spec
  # Really split: each device holds a quarter of q_proj (tensor x fsdp = 2 x 2).
  q = layers.self_attn.q_proj.weight.get_value()
  assert {s.data.shape for s in q.addressable_shards} == {
      (q.shape[0], q.shape[1] // 2, q.shape[2] // 2)}
  # The same values as an unsharded load.
  np.testing.assert_array_equal(np.asarray(q), np.asarray(
      load_pretrained(qwen2_dir).model.layers.self_attn.q_proj.weight.get_value()))


def test_sharded_forward_equals_single_device(qwen2_dir, mesh):
  single = load_pretrained(qwen2_dir)
  sharded = load_pretrained(qwen2_dir, mesh=mesh)
  reference = np.asarray(_logits(*nnx.split(single), IDS, MASK))
  ids = jax.device_put(IDS, sharding.batch_sharding(mesh))
  mask = jax.device_put(MASK, sharding.batch_sharding(mesh))
  out = _logits(*nnx.split(sharded), ids, mask)
  assert spec_of(out) == P(('data', 'fsdp'), None, 'tensor')
  np.testing.assert_allclose(np.asarray(out), reference, rtol=0, atol=1e-5)


def test_sharded_cache_and_decode_equal_single_device(qwen2_dir, mesh):
  single = load_pretrained(qwen2_dir)
  sharded = load_pretrained(qwen2_dir, mesh=mesh)
  cache = sharded.init_cache(8, 20)
  assert all(spec_of(c) == P(None, ('data', 'fsdp'), 'tensor', None, None)
             for c in (cache.k, cache.v))
  kv_mask = np.zeros((8, 20), np.int32)
  kv_mask[:, :16] = MASK
  positions = np.asarray(positions_from_mask(MASK))
  outs = []
  for model, cache in ((single, single.init_cache(8, 20)), (sharded, cache)):
    graphdef, state = nnx.split(model)
    prefill, cache = _forward_cached(graphdef, state, IDS, positions, cache, 0, kv_mask)
    step_mask = kv_mask.copy()
    step_mask[:, 16] = 1
    decode, cache = _forward_cached(graphdef, state, IDS[:, :1], positions[:, -1:] + 1, cache,
                                    jnp.int32(16), step_mask)
    outs.append((np.asarray(prefill), np.asarray(decode)))
  assert all(spec_of(c) == P(None, ('data', 'fsdp'), 'tensor', None, None)
             for c in (cache.k, cache.v))
  np.testing.assert_allclose(outs[1][0], outs[0][0], rtol=0, atol=1e-5)
  np.testing.assert_allclose(outs[1][1], outs[0][1], rtol=0, atol=1e-5)


def test_init_random_with_mesh_is_sharded_and_matches_unsharded(qwen2_dir, mesh):
  config = load_pretrained(qwen2_dir).config
  sharded = init_random(config, seed=1, mesh=mesh)
  single = init_random(config, seed=1)
  weight = sharded.model.layers.mlp.up_proj.weight.get_value()
  assert spec_of(weight) == P(None, 'tensor', 'fsdp')
  # Same random stream; jitted vs eager sampling may differ in the last ulp.
  np.testing.assert_allclose(
      np.asarray(weight), np.asarray(single.model.layers.mlp.up_proj.weight.get_value()),
      rtol=1e-6, atol=1e-9)


def test_state_shardings_cover_optimizer_state(qwen2_dir, mesh):
  model = load_pretrained(qwen2_dir, mesh=mesh)
  optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
  shardings = sharding.state_shardings(nnx.state(optimizer, nnx.optimizer.OptState), mesh)
  specs = {s.get_value().spec for s in jax.tree.leaves(
      shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))}
  # Adam moments inherit the parameters' logical axes.
  assert P(None, 'tensor', 'fsdp') in specs and P(None, 'fsdp', 'tensor') in specs
  placed = sharding.shard_params(nnx.state(model, nnx.Param), mesh)
  assert placed['lm_head']['weight'].get_value().sharding.spec == P('tensor', 'fsdp')
  abstract = sharding.abstract_state_with_sharding(nnx.state(model, nnx.Param), mesh)
  leaf = abstract['lm_head']['weight'].get_value()
  assert isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding.spec == P('tensor', 'fsdp')


def test_save_from_sharded_model_round_trips(qwen2_dir, mesh, tmp_path):
  sharded = load_pretrained(qwen2_dir, mesh=mesh)
  save_pretrained(sharded, tmp_path / 'out', max_shard_size='100KB')
  reloaded = load_pretrained(tmp_path / 'out')
  for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(sharded, nnx.Param)),
                               nnx.to_flat_state(nnx.state(reloaded, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()),
                                  err_msg=str(path))


def test_trainer_optimizer_state_is_sharded_like_the_params(qwen2_dir, mesh):
  """AdamW's mu and nu follow the parameters' shardings (a jitted init put them on one
  device and on_mesh then replicated them: a whole fp32 copy of both on every device)."""
  from empg_jax.trainer import init_opt_state
  from empg_jax.update import make_optimizer
  import ml_collections
  model = load_pretrained(qwen2_dir, mesh=mesh)
  params = nnx.state(model, nnx.Param)
  tx, _ = make_optimizer(ml_collections.ConfigDict(dict(
      lr=1e-6, warmup_updates=0, grad_clip=1.0, b1=0.9, b2=0.999, weight_decay=0.01)))
  opt_state = init_opt_state(tx, params, mesh)
  adam, = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(
      x, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)]
  for moments in (adam.mu, adam.nu):
    for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(moments)):
      assert m.sharding.is_equivalent_to(p.sharding, p.ndim), (m.sharding, p.sharding)
  mesh_devices = set(mesh.devices.flat)
  assert all(set(x.sharding.device_set) == mesh_devices for x in jax.tree.leaves(opt_state))


def test_trainer_optimizer_state_on_one_device_compiles_the_update_once(qwen2_dir):
  """On a one-device mesh the counters are on the mesh too: the update step returns them
  there, so the second step reuses the first step's program."""
  from empg_jax.compilations import record_compilations
  from empg_jax.trainer import init_opt_state
  from empg_jax.update import make_optimizer
  import ml_collections
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  params = nnx.state(load_pretrained(qwen2_dir, mesh=mesh), nnx.Param)
  tx, _ = make_optimizer(ml_collections.ConfigDict(dict(
      lr=1e-6, warmup_updates=0, grad_clip=1.0, b1=0.9, b2=0.999, weight_decay=0.01)))
  opt_state = init_opt_state(tx, params, mesh)
  assert all(isinstance(x.sharding, NamedSharding) for x in jax.tree.leaves(opt_state))

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state):
    grads = jax.tree.map(jnp.ones_like, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  with record_compilations() as compiled:
    for _ in range(3):
      params, opt_state = step(params, opt_state)
  assert compiled.count() == 1
