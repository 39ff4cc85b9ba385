"""The train state and its checkpoints, on a small module (no HRFormer, nothing slow to compile)."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mpc_jax import distributed, train_state
from mpc_jax.models.layers import BatchNorm
from mpc_jax.train_config import stage_config


class Small(nnx.Module):
  """A 'backbone' (linear + BatchNorm + drop-path RNG stream) and a 'head'."""

  def __init__(self):
    rngs = nnx.Rngs(0, droppath=1)
    self.backbone = nnx.Linear(3, 4, rngs=rngs)
    self.norm = BatchNorm(4)
    self.head = nnx.Linear(4, 1, rngs=rngs)
    self.droppath = rngs.droppath


def _flat(state):
  return {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(state)}


def test_trained_parameters_travel_flat_and_merge_back():
  mesh = distributed.make_mesh()
  model = Small()
  want = _flat(nnx.state(model, nnx.Param))
  scfg = stage_config("stage2")  # trains the head only
  with jax.set_mesh(mesh):
    state, parts = train_state.create_state(model, scfg, mesh)
  assert state.params.ndim == 1 and state.params.dtype == jnp.float32
  trained = _flat(parts.unflatten(train_state.host_copy(state.params)))
  assert set(trained) == {k for k in want if k.startswith("head/")}
  assert state.params.size == sum(v.size for v in trained.values())
  for k, v in trained.items():
    np.testing.assert_array_equal(v, want[k])
  merged = _flat(nnx.state(train_state.merge_model(parts, train_state.host_copy(state)), nnx.Param))
  assert merged.keys() == want.keys() and all(np.array_equal(merged[k], want[k]) for k in want)


def test_checkpoint_restores_state_meta_and_data_position(tmp_path):
  mesh = distributed.make_mesh()
  scfg = stage_config("stage1")
  scfg.async_checkpointing = False
  with jax.set_mesh(mesh):
    state, _ = train_state.create_state(Small(), scfg, mesh)
    changed = state.replace(step=state.step + 5, params=state.params + 1.0)
    data = grain.MapDataset.range(20).to_iter_dataset()
    it = iter(data)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    meta = {"schedule": {"lr": 5e-5, "best": 0.25, "num_bad": 2}, "best_score": 0.25, "stage": "stage1"}
    mngr = train_state.make_checkpoint_manager(tmp_path / "stage1" / "checkpoints", scfg)
    train_state.save_checkpoint(mngr, changed, it, meta, metrics={"score": 0.25}, force=True)
    mngr.wait_until_finished()
    assert [next(it) for _ in range(2)] == [3, 4]  # moves on after the save

    fresh, _ = train_state.create_state(Small(), scfg, mesh)
    it2 = iter(data)
    restored, meta2 = train_state.restore_checkpoint(mngr, mngr.latest_step(), fresh, it2)
    mngr.close()
  assert meta2 == meta
  assert next(it2) == 3  # the data position of the save, not the fresh iterator's
  assert int(restored.step) == 5
  got, want = train_state.host_copy(restored), train_state.host_copy(changed)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert train_state.stage_started(tmp_path / "stage1") and not train_state.stage_started(tmp_path / "stage2")


def test_checkpoint_of_another_layout_is_a_one_line_error(tmp_path):
  """A workdir written with another model config (or an older train-state layout) does not resume
  silently wrong or with orbax's tree dump: one message that names the checkpoint and the fix."""
  import pytest

  mesh = distributed.make_mesh()
  scfg = stage_config("stage1")
  scfg.async_checkpointing = False
  data = grain.MapDataset.range(4).to_iter_dataset()
  with jax.set_mesh(mesh):
    state, _ = train_state.create_state(Small(), scfg, mesh)
    mngr = train_state.make_checkpoint_manager(tmp_path / "checkpoints", scfg)
    train_state.save_checkpoint(mngr, state, iter(data), {"stage": "stage1"}, force=True)
    mngr.wait_until_finished()
    other, _ = train_state.create_state(Small(), stage_config("stage2"), mesh)  # head only: other layout
    with pytest.raises(
      ValueError, match=r"checkpoints/0 holds a train state of another layout.*new --workdir"
    ):
      train_state.restore_checkpoint(mngr, 0, other, iter(data))
    mngr.close()
