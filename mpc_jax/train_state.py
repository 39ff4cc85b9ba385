"""The training state and its checkpoints (resume after a stop or preemption).

`create_state(model, stage_config, mesh)` splits a model into a replicated `TrainState` pytree and
the static `Parts` the steps close over. The trained parameters travel as one flat float32 vector
(`Parts.unflatten` gives the `nnx.State` back), so AdamW and the gradient norm are a few kernels
instead of a few per parameter array: on the CPU, XLA's compile time grows with the kernel count.

Checkpoints: one orbax `CheckpointManager` per stage (`WORKDIR/<stage>/checkpoints`) with items
`state` (the TrainState; typed PRNG keys stored as key data), `data_iter` (the grain iterator's
state) and `meta` (schedule and best score, JSON). Model exports for `mpc-jax eval/predict` are
`mpc_jax.checkpoint.save_model` / `load_model`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, Callable

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.flatten_util import ravel_pytree
from orbax.checkpoint import checkpoint_managers as ocm

from mpc_jax import distributed


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 []
  params: jax.Array  # float32 [N]: the trained nnx.Param entries, flattened
  frozen: Any  # nnx.Param entries not trained
  rest: Any  # the other model state: BatchNorm statistics, counters, RNG streams
  opt_state: Any  # AdamW over `params`; the learning rate is a hyperparameter the host sets


@dataclasses.dataclass(frozen=True)
class Parts:
  """Static things the steps close over (not part of the checkpoint)."""

  graphdef_train: Any
  graphdef_eval: Any
  tx: optax.GradientTransformation
  unflatten: Callable  # float32 [N] -> the nnx.State of the trained parameters


def path_str(path) -> str:
  """An nnx state path as 'backbone/stage2/0/...'."""
  return "/".join(str(getattr(p, "key", p)) for p in path)


def trainable_pattern(scfg) -> str:
  """`scfg.trainable` when set, else everything or, with `freeze_backbone`, the head only."""
  if scfg.trainable:
    return scfg.trainable
  return "^head/" if scfg.freeze_backbone else ".*"


def make_optimizer(scfg) -> optax.GradientTransformation:
  """AdamW with PyTorch's defaults (weight decay 0.01); the rate is a hyperparameter the host sets."""
  return optax.inject_hyperparams(optax.adamw)(
    learning_rate=float(scfg.lr),
    b1=0.9,
    b2=0.999,
    eps=float(scfg.adam_eps),
    weight_decay=float(scfg.weight_decay),
  )


def set_train_modes(model, scfg) -> None:
  model.train()
  if scfg.backbone_mode == "eval":
    model.backbone.eval()


def create_state(model, scfg, mesh) -> tuple[TrainState, Parts]:
  """Splits `model` (stage config `scfg`) into a replicated TrainState and the steps' static parts."""
  set_train_modes(model, scfg)
  graphdef_train, params, rest = nnx.split(model, nnx.Param, ...)
  model.eval()
  graphdef_eval, _, _ = nnx.split(model, nnx.Param, ...)
  set_train_modes(model, scfg)
  rx = re.compile(trainable_pattern(scfg))
  trained, frozen = nnx.split_state(params, lambda path, _: bool(rx.search(path_str(path))), ...)
  if not jax.tree.leaves(trained):
    raise ValueError(f"config.trainable={scfg.trainable!r} matches no parameter")
  flat, unflatten = ravel_pytree(trained)
  tx = make_optimizer(scfg)
  state = TrainState(
    step=jnp.zeros((), jnp.int32), params=flat, frozen=frozen, rest=rest, opt_state=tx.init(flat)
  )
  return replicate(state, mesh), Parts(graphdef_train, graphdef_eval, tx, unflatten)


def merge_model(parts: Parts, state: TrainState, train: bool = True):
  """The nnx model that `state` holds (train or eval mode)."""
  g = parts.graphdef_train if train else parts.graphdef_eval
  return nnx.merge(g, parts.unflatten(state.params), state.frozen, state.rest, copy=True)


def set_learning_rate(state: TrainState, lr: float, mesh) -> TrainState:
  hp = dict(state.opt_state.hyperparams)
  hp["learning_rate"] = replicate(jnp.asarray(lr, jnp.float32), mesh)
  return state.replace(opt_state=state.opt_state._replace(hyperparams=hp))


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def replicate(tree, mesh):
  """Every leaf as a fully replicated global array (each process holds the same values)."""
  sharding = distributed.replicated(mesh)

  def put(x):
    if _is_key(x):
      impl = jax.random.key_impl(x)
      return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=impl)
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))

  return jax.tree.map(put, tree)


def host_copy(tree):
  """This process's copy of replicated arrays (single-device arrays; works with several processes)."""

  def get(x):
    if _is_key(x):
      return jax.random.wrap_key_data(get(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array):
      return np.asarray(x.addressable_data(0))
    return x

  return jax.tree.map(get, tree)


# ----------------------------------------------------------------------------------------- checkpoints
def _to_saveable(state: TrainState) -> dict:
  """A flat dict `name -> array` (typed keys as key data) that orbax stores and restores."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    flat[name] = jax.random.key_data(leaf) if _is_key(leaf) else leaf
  return flat


def _from_saveable(flat: dict, template: TrainState) -> TrainState:
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  out = []
  for path, leaf in leaves:
    x = flat[jax.tree_util.keystr(path, simple=True, separator="/")]
    out.append(jax.random.wrap_key_data(x, impl=jax.random.key_impl(leaf)) if _is_key(leaf) else x)
  return jax.tree_util.tree_unflatten(treedef, out)


def make_checkpoint_manager(directory, scfg) -> ocp.CheckpointManager:
  """Keeps the `max_to_keep` latest checkpoints and the `keep_best` best by validation score."""
  policies = [ocm.preservation_policy.LatestN(n=int(scfg.max_to_keep))]
  if int(scfg.keep_best) > 0:
    policies.append(
      ocm.preservation_policy.BestN(
        get_metric_fn=lambda m: m["score"],
        reverse=False,
        n=int(scfg.keep_best),
        keep_checkpoints_without_metrics=False,
      )
    )
  options = ocp.CheckpointManagerOptions(
    enable_async_checkpointing=bool(scfg.async_checkpointing),
    best_fn=lambda m: m["score"],
    best_mode="max",
    preservation_policy=ocm.preservation_policy.AnyPreservationPolicy(policies),
    cleanup_tmp_directories=True,
    create=True,
  )
  return ocp.CheckpointManager(
    pathlib.Path(directory).absolute(), options=options, item_names=("state", "data_iter", "meta")
  )


def save_checkpoint(mngr, state, data_iter, meta, metrics=None, force=False):
  args = ocp.args.Composite(
    state=ocp.args.StandardSave(_to_saveable(state)),
    data_iter=grain.checkpoint.CheckpointSave(data_iter),
    meta=ocp.args.JsonSave(meta),
  )
  return mngr.save(int(state.step), args=args, metrics=metrics, force=force)


def restore_checkpoint(mngr, step, template: TrainState, data_iter):
  """The state and `meta` saved at `step`; `data_iter` is restored in place."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_saveable(template))
  try:
    restored = _restore(mngr, step, abstract, data_iter)
  except ValueError as e:
    if "do not match" not in str(e) and "mismatch" not in str(e):
      raise
    raise ValueError(
      f"the checkpoint {mngr.directory / str(step)} holds a train state of another layout (another model "
      "config or an older mpc-jax) and cannot be resumed; train in a new --workdir, or delete "
      f"{mngr.directory} to start this stage over"
    ) from None
  return _from_saveable(restored["state"], template), restored["meta"]


def _restore(mngr, step, abstract, data_iter):
  return mngr.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract),
      data_iter=grain.checkpoint.CheckpointRestore(data_iter),
      meta=ocp.args.JsonRestore(),
    ),
  )


def stage_started(stage_dir: pathlib.Path) -> bool:
  """Whether the stage in `stage_dir` has saved a checkpoint (a restart resumes it)."""
  ck = stage_dir / "checkpoints"
  return ck.is_dir() and any(p.name.isdigit() for p in ck.iterdir())
