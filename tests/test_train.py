"""Training steps in-process on 8 simulated CPU devices: one compilation, determinism, freezing.

These are about the steps and their wiring (negatives, precision, freezing), so they use
`small_model.SmallBackbone`, which compiles in seconds. The HRFormer's train-mode gradients, with
its BatchNorm statistics and drop-path state, are checked in `test_model` (the remat test).
"""

import jax
import numpy as np
import pytest
from flax import nnx

from mpc_jax import distributed, losses, schedules, steps, train, train_state
from mpc_jax.data.pipeline import make_train_iterator
from small_model import build_small_model
from train_testlib import tiny_config

_EVENTS = []
jax.monitoring.register_event_duration_secs_listener(lambda name, *a, **k: _EVENTS.append(name))


def _compiles():
  return sum(e == "/jax/core/compile/backend_compile_duration" for e in _EVENTS)


# One worker runs this module (`--dist loadfile`, set in pytest.ini), so the small model's
# reference stage-1 step below is compiled once and shared by the tests that need it.


@pytest.fixture(scope="module")
def setup():
  config = tiny_config()
  mesh = distributed.make_mesh()
  assert mesh.devices.size == 8
  return config, mesh


def _batches(config, mesh, n, seed=0):
  it = make_train_iterator(config.data, seed=seed, batch_size_per_process=config.stage1.batch_size)
  return [distributed.global_batch(next(it), mesh) for _ in range(n)]


def _params(tree):
  return {"/".join(map(str, k)): np.array(v[...]) for k, v in nnx.to_flat_state(tree)}


def _run(step_fn, state, batches):
  """Runs the steps; asserts nothing compiles after the first one."""
  losses = []
  for i, b in enumerate(batches):
    before = _compiles()
    state, m = step_fn(state, b)
    losses.append(float(m["loss/total"]))
    if i > 0:
      assert _compiles() == before, f"step {i + 1} compiled again"
  return state, losses


@pytest.fixture(scope="module")
def stage1_step(setup):
  """The small model's jitted stage-1 step and a fresh-state factory, shared by the tests below."""
  config, mesh = setup
  with jax.set_mesh(mesh):
    _, parts = train_state.create_state(build_small_model(config), config.stage1, mesh)
    step = steps.make_step("stage1", parts, config, mesh)

  def fresh_state():
    return train_state.create_state(build_small_model(config), config.stage1, mesh)[0]

  return step, fresh_state


def test_stage1_compiles_once_is_deterministic_and_learns_state(setup, stage1_step):
  config, mesh = setup
  step, fresh_state = stage1_step
  with jax.set_mesh(mesh):
    state_a = fresh_state()
    rest0 = _params(
      jax.tree.map(np.asarray, nnx.filter_state(train_state.host_copy(state_a.rest), nnx.BatchStat))
    )
    state_a, losses_a = _run(step, state_a, _batches(config, mesh, 3))
    # Same seed, same data: same losses (the step function is shared, so no second compile).
    before = _compiles()
    _, losses_b = _run(step, fresh_state(), _batches(config, mesh, 3))
    assert _compiles() == before
  assert np.all(np.isfinite(losses_a)) and losses_a == losses_b
  assert int(state_a.step) == 3
  rest1 = _params(
    jax.tree.map(np.asarray, nnx.filter_state(train_state.host_copy(state_a.rest), nnx.BatchStat))
  )
  assert any(not np.array_equal(rest0[k], rest1[k]) for k in rest0), "BatchNorm running stats not updated"


def _first_step(config, mesh, batch):
  state, parts = train_state.create_state(build_small_model(config), config.stage1, mesh)
  state, m = steps.make_step("stage1", parts, config, mesh)(state, batch)
  return state, {k: float(v) for k, v in m.items()}


@pytest.fixture(scope="module")
def reference_first_step(setup, stage1_step):
  """Metrics of the small model's stage-1 step on one batch: `(batch, {name: float})`."""
  config, mesh = setup
  step, fresh_state = stage1_step
  with jax.set_mesh(mesh):
    batch = _batches(config, mesh, 1, seed=3)[0]
    _, m = step(fresh_state(), batch)
  return batch, {k: float(v) for k, v in m.items()}


def _variant(config, **changes):
  c = config.copy_and_resolve_references()
  for key, value in changes.items():
    node = c
    *parents, leaf = key.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = value
  return c


def test_stage1_two_views_in_one_pass_equal_two_consecutive_passes(setup):
  """The stage-1 step runs both views in one interleaved pass with per-view BatchNorm statistics
  (`steps._two_view_features`): on 8 devices, its maps, running statistics and gradients are those of
  two consecutive passes of the model (drop-path off, so both are deterministic)."""
  config, mesh = setup
  config = _variant(config, **{"model.drop_path_rate": 0.0})
  jnp = jax.numpy
  with jax.set_mesh(mesh):
    state, parts = train_state.create_state(build_small_model(config), config.stage1, mesh)
    batch = _batches(config, mesh, 1, seed=5)[0]
    images_b = batch["image"][:, :, ::-1] * 0.5  # a second view unlike the first
    assert not np.allclose(np.asarray(batch["image"]), np.asarray(images_b))

    def one_pass(params):
      fa, fb, rest = steps._two_view_features(
        parts, params, state.frozen, state.rest, batch["image"], images_b
      )
      return sum(jnp.sum(jnp.sin(3.0 * f)) for f in fa + fb), (fa + fb, rest)

    def consecutive(params):
      model = nnx.merge(parts.graphdef_train, parts.unflatten(params), state.frozen, state.rest, copy=True)
      maps = [losses.l2_normalize(f) for f in model.features(batch["image"])]
      maps += [losses.l2_normalize(f) for f in model.features(images_b)]
      return sum(jnp.sum(jnp.sin(3.0 * f)) for f in maps), (maps, nnx.split(model, nnx.Param, ...)[2])

    (_, (maps, rest)), grads = jax.jit(jax.value_and_grad(one_pass, has_aux=True))(state.params)
    (_, (maps_want, rest_want)), grads_want = jax.jit(jax.value_and_grad(consecutive, has_aux=True))(
      state.params
    )
  for got, want in zip(maps, maps_want):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  got_stats, want_stats = (
    _params(jax.tree.map(np.asarray, nnx.filter_state(r, nnx.BatchStat))) for r in (rest, rest_want)
  )
  assert got_stats.keys() == want_stats.keys() and got_stats
  for k in got_stats:
    np.testing.assert_allclose(got_stats[k], want_stats[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # biases ahead of a BatchNorm have a gradient of 0 up to float32 cancellation, hence the atol
  grads, grads_want = np.asarray(grads), np.asarray(grads_want)
  np.testing.assert_allclose(grads, grads_want, rtol=1e-4, atol=1e-4 * np.abs(grads_want).max())


def test_stage1_global_negatives_only_add_intra_negatives(setup, reference_first_step):
  """'global' negatives (shard_map, all-gathered bank) only add negatives to the intra term: it
  grows and the other terms stay."""
  config, mesh = setup
  batch, ref = reference_first_step
  glob = _variant(config, **{"stage1.loss.negatives": "global", "stage1.loss.bank_per_image": 16})
  with jax.set_mesh(mesh):
    _, got = _first_step(glob, mesh, batch)
  assert got["loss/intra"] > ref["loss/intra"] + 1e-3
  for k in ("loss/cross_scale", "loss/cross_modality"):
    np.testing.assert_allclose(got[k], ref[k], rtol=1e-5)
  assert np.isfinite(got["grad_norm"]) and got["grad_norm"] > 0


def test_stage1_bfloat16_step_tracks_float32(setup, reference_first_step):
  """bfloat16 compute keeps float32 parameters and tracks the float32 loss."""
  config, mesh = setup
  batch, ref = reference_first_step
  with jax.set_mesh(mesh):
    state, low = _first_step(_variant(config, **{"model.dtype": "bfloat16"}), mesh, batch)
  assert train_state.host_copy(state.params).dtype == np.float32
  np.testing.assert_allclose(low["loss/total"], ref["loss/total"], rtol=0.05)
  assert np.isfinite(low["grad_norm"]) and low["grad_norm"] > 0


def test_remat_config_reaches_the_backbone(setup):
  """`model.remat` builds the rematerialised HRFormer (its values and gradients are those of the
  plain one: `test_model.test_remat_gives_same_values_and_gradients_with_less_memory`)."""
  config, _ = setup
  assert not train.build_model(config).backbone.remat
  assert train.build_model(_variant(config, **{"model.remat": True})).backbone.remat


@pytest.mark.parametrize("backbone_mode", ["train", "eval"])
def test_stage2_leaves_backbone_weights_untouched(setup, backbone_mode):
  config, mesh = setup
  config = config.copy_and_resolve_references()
  config.stage2.backbone_mode = backbone_mode
  with jax.set_mesh(mesh):
    state, parts = train_state.create_state(build_small_model(config), config.stage2, mesh)
    before = _params(train_state.host_copy(state.frozen))
    head_before = _params(parts.unflatten(train_state.host_copy(state.params)))
    stats_before = _params(nnx.filter_state(train_state.host_copy(state.rest), nnx.BatchStat))
    assert all(k.startswith("head/") for k in head_before) and not any(k.startswith("head/") for k in before)
    step = steps.make_step("stage2", parts, config, mesh)
    state, losses = _run(step, state, _batches(config, mesh, 2))
  after = _params(train_state.host_copy(state.frozen))
  head_after = _params(parts.unflatten(train_state.host_copy(state.params)))
  stats_after = _params(nnx.filter_state(train_state.host_copy(state.rest), nnx.BatchStat))
  assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
  assert any(not np.array_equal(head_before[k], head_after[k]) for k in head_before)
  backbone_stats_same = all(
    np.array_equal(stats_before[k], stats_after[k]) for k in stats_before if k.startswith("backbone/")
  )
  # Reference default: the frozen backbone still runs in train mode and updates running stats.
  assert backbone_stats_same == (backbone_mode == "eval")
  assert np.all(np.isfinite(losses))


def test_reduce_on_plateau_matches_torch_semantics():
  s = schedules.ReduceOnPlateau(1e-4, factor=0.5, patience=3, min_lr=1e-8)
  lrs = [s.step(v) for v in [0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.59, 0.7]]
  # 0.6 best at step 2; 3 bad validations are tolerated, the 4th halves the rate.
  assert lrs == [1e-4, 1e-4, 1e-4, 1e-4, 1e-4, 5e-5, 5e-5, 5e-5]
  s2 = schedules.ReduceOnPlateau(1e-7, factor=0.5, patience=0, min_lr=1e-8)
  # 1e-7 -> 5e-8 -> 2.5e-8 -> 1.25e-8, then the cut to 1e-8 is below eps (1e-8): torch keeps 1.25e-8.
  assert [s2.step(0.1) for _ in range(6)][-1] == 1.25e-8


def test_cosine_annealing_matches_torch_closed_form():
  s = schedules.CosineAnnealing(1e-6, t_max=20, min_lr=1e-8)
  lrs = [s.step() for _ in range(40)]
  assert abs(lrs[9] - (1e-8 + (1e-6 - 1e-8) / 2)) < 1e-15  # t = 10 = t_max / 2
  assert abs(lrs[19] - 1e-8) < 1e-15 and abs(lrs[39] - 1e-6) < 1e-15


def test_validation_programs_are_compiled_by_a_child_when_configured(monkeypatch):
  """Validation's and the final evaluation's predict functions go through `compiled_by_child` with
  `config.compile_in_child` (the default), and are the plain jitted function without it."""
  from mpc_jax import compile_cache

  jitted = object()
  monkeypatch.setattr(steps, "make_predict_fn", lambda *a: jitted)
  monkeypatch.setattr(compile_cache, "compiled_by_child", lambda fn: ("by a child", fn))
  config = tiny_config()
  assert config.compile_in_child
  assert train._predict_fn(None, config, "stage2", None) == ("by a child", jitted)
  config.compile_in_child = False
  assert train._predict_fn(None, config, "stage2", None) is jitted
