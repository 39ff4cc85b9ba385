"""Training: the train state, the jitted step of each stage, and the loop.

    train_and_evaluate(config, workdir)   # runs config.stages in order, then the final evaluation

Stage 1 (`stage1`): each batch goes through the backbone twice (drop path draws independent masks
from the model's `droppath` RNG stream), the four per-scale maps are L2-normalised and the
multi-view pixel contrast is the loss. AdamW; reduce-on-plateau on the validation score.
Validation: k-means (k=2, cosine) on the fused features, the smaller cluster is forged.

Stage 2 (`stage2`): starts from a stage-1 model (ours or a converted PyTorch one), trains the
parameters matched by `trainable` (the head by default: `freeze_backbone`) with the sigmoid focal
loss. The frozen backbone runs in train mode by default (batch statistics, drop path, running
statistics updated), as the reference; `backbone_mode='eval'` freezes it fully. AdamW; cosine
annealing per validation.

Functional core: the model is split once into `graphdef` + states (`nnx.split`); the step is a pure
function of a `TrainState` pytree (trainable params, frozen params, the other model state: BatchNorm
statistics, batch counters and RNG streams, optimizer state, step), jitted once with every leaf
replicated and the batch sharded on the mesh's `data` axis. XLA inserts the collectives: BatchNorm
statistics and the loss are those of the global batch, gradients are all-reduced.

Checkpoints: one orbax `CheckpointManager` per stage (`WORKDIR/<stage>/checkpoints`) with items
`state` (the TrainState, typed PRNG keys stored as key data), `data_iter` (grain iterator state)
and `meta` (schedule and best score, JSON). Asynchronous saves, `max_to_keep` latest plus the best
by validation score. On (re)start the latest complete checkpoint is restored; SIGTERM saves and
stops. Model exports for `mpc-jax eval/predict`: `model_best` / `model_latest` (in the workdir for
the last stage, in `WORKDIR/<stage>/` for earlier ones).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import re
import subprocess
import sys
import time
from typing import Any, Callable

import flax
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers as ocm

from mpc_jax import compile_cache, distributed, schedules, tb_writer, validate

tb_writer.install()
from clu import metric_writers, periodic_actions  # noqa: E402  (after the TensorBoard fallback)
from mpc_jax.kmeans import forged_cluster_mask
from mpc_jax.losses import l2_normalize, multiview_pixel_contrast, multiview_pixel_contrast_sharded
from mpc_jax.losses import sigmoid_focal_loss

log = logging.getLogger(__name__)

STAGES = ("stage1", "stage2")


# ----------------------------------------------------------------------------------------- state
@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any      # trained nnx.Param entries
  frozen: Any      # nnx.Param entries not trained
  rest: Any        # everything else in the model: BatchNorm statistics, counters, RNG streams
  opt_state: Any


@dataclasses.dataclass
class Parts:
  """Static things the steps close over (not part of the checkpoint)."""
  graphdef_train: Any
  graphdef_eval: Any
  tx: optax.GradientTransformation
  trainable: Callable


def _path_str(path) -> str:
  return "/".join(str(getattr(p, "key", p)) for p in path)


def trainable_filter(pattern: str):
  """nnx filter: params whose '/'-joined path matches `pattern` (re.search)."""
  rx = re.compile(pattern)
  return lambda path, value: bool(rx.search(_path_str(path)))


def build_model(config):
  from mpc_jax.models import build_mpc

  m = config.model
  dpr = m.get("drop_path_rate", None)
  hrformer = json.loads(m.hrformer_json) if m.get("hrformer_json", "") else m.hrformer
  model = build_mpc(hrformer, m.head, dtype=m.get("dtype", "float32"), seed=int(config.seed),
                    drop_path_rate=None if dpr is None or dpr < 0 else float(dpr),
                    remat=bool(m.get("remat", False)), depthwise=m.get("depthwise", "auto"))
  return model


def load_matching(model, path: str, skip: str = "") -> dict:
  """Copies the parameters / statistics of the model saved at `path` into `model` where path and
  shape match (the reference's stage-2 `load`); `skip` is a regex of paths not to load."""
  from mpc_jax.checkpoint import load_model

  src = load_model(path)
  skip_rx = re.compile(skip) if skip else None
  src_flat = {_path_str(k): v for k, v in nnx.to_flat_state(nnx.state(src, nnx.Not(nnx.RngState)))}
  dst = nnx.state(model, nnx.Not(nnx.RngState))
  loaded, missing, mismatched = 0, [], []
  for k, var in nnx.to_flat_state(dst):
    name = _path_str(k)
    if skip_rx is not None and skip_rx.search(name):
      continue
    if name not in src_flat:
      missing.append(name)
    elif src_flat[name][...].shape != var[...].shape:
      mismatched.append(name)
    else:
      var.set_value(np.asarray(src_flat[name][...], dtype=np.asarray(var[...]).dtype))
      loaded += 1
  nnx.update(model, dst)
  log.info("loaded %d arrays from %s (%d missing, %d mismatched shape)", loaded, path, len(missing),
           len(mismatched))
  if missing:
    log.info("not in %s: %s%s", path, missing[:8], " ..." if len(missing) > 8 else "")
  return {"loaded": loaded, "missing": missing, "mismatched": mismatched}


def trainable_pattern(scfg) -> str:
  """`scfg.trainable` when set, else everything or, with `freeze_backbone`, the head only."""
  if scfg.get("trainable", ""):
    return scfg.trainable
  return "^head/" if scfg.get("freeze_backbone", False) else ".*"


def make_optimizer(scfg) -> optax.GradientTransformation:
  """AdamW with PyTorch's defaults (weight decay 0.01); the rate is a hyperparameter the host sets."""
  return optax.inject_hyperparams(optax.adamw)(
      learning_rate=float(scfg.lr), b1=0.9, b2=0.999, eps=float(scfg.get("adam_eps", 1e-8)), weight_decay=float(scfg.weight_decay))


def set_train_modes(model, scfg) -> None:
  model.train()
  if scfg.get("backbone_mode", "train") == "eval":
    model.backbone.eval()


def create_state(model, scfg, mesh) -> tuple[TrainState, Parts]:
  """Splits `model` into a replicated TrainState and the static parts of the steps."""
  set_train_modes(model, scfg)
  graphdef_train, params, rest = nnx.split(model, nnx.Param, ...)
  model.eval()
  graphdef_eval, _, _ = nnx.split(model, nnx.Param, ...)
  set_train_modes(model, scfg)
  flt = trainable_filter(trainable_pattern(scfg))
  train_p, frozen_p = nnx.split_state(params, flt, ...)
  if not jax.tree.leaves(train_p):
    raise ValueError(f"no parameter matches trainable={scfg.trainable!r}")
  tx = make_optimizer(scfg)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=train_p, frozen=frozen_p, rest=rest,
                     opt_state=tx.init(train_p))
  state = replicate(state, mesh)
  return state, Parts(graphdef_train, graphdef_eval, tx, flt)


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


def set_learning_rate(state: TrainState, lr: float, mesh) -> TrainState:
  hp = dict(state.opt_state.hyperparams)
  hp["learning_rate"] = replicate(jnp.asarray(lr, jnp.float32), mesh)
  return state.replace(opt_state=state.opt_state._replace(hyperparams=hp))


def merge_model(parts: Parts, state: TrainState, train: bool = True):
  g = parts.graphdef_train if train else parts.graphdef_eval
  return nnx.merge(g, state.params, state.frozen, state.rest, copy=True)


def _features_fn(graphdef):
  """(params, frozen, rest, images) -> (4 L2-normalised maps, new rest)."""
  def fn(params, frozen, rest, images):
    model = nnx.merge(graphdef, params, frozen, rest, copy=True)
    feats = [l2_normalize(f.astype(jnp.float32)) for f in model.features(images)]
    return feats, _split_rest(model)
  # An inner jit: the stage-1 step calls this twice, and tracing the backbone once instead of twice
  # cuts the step's lowering time about 6x (hrt_tiny on CPU: 47 s -> 8 s); the program is the same.
  return jax.jit(fn)


def _split_rest(model):
  return nnx.split(model, nnx.Param, ...)[2]


# ----------------------------------------------------------------------------------------- steps
def make_stage1_step(parts: Parts, config, mesh):
  """Jitted `(state, batch) -> (state, metrics)` for the multi-view pixel contrast."""
  lcfg = config.stage1.loss
  feats = _features_fn(parts.graphdef_train)
  loss_key = jax.random.key(int(config.seed) + 1009)
  kw = dict(num_samples=int(lcfg.num_samples), temperature=float(lcfg.temperature),
            chunk_size=int(lcfg.get("chunk_size", 1024)))

  def step(state: TrainState, batch):
    key = jax.random.fold_in(loss_key, state.step)
    views = (batch["image"], batch.get("image_view2", batch["image"]))

    def loss_fn(params):
      # Two consecutive passes, as the reference: the model state (BatchNorm running statistics,
      # drop-path RNG) threads from the first into the second. (A 2-step `lax.scan` would compile
      # one backbone, but on CPU it compiled no faster and ran 7x slower.)
      def one_view(rest, images):
        f, rest = feats(params, state.frozen, rest, images)
        return rest, f

      rest, fa = one_view(state.rest, views[0])
      rest, fb = one_view(rest, views[1])
      if lcfg.negatives == "global":
        parts_ = multiview_pixel_contrast_sharded(
            fa, fb, batch["mask"], key=key, mesh=mesh, negatives="global",
            bank_per_image=int(lcfg.get("bank_per_image", 256)), **kw)
      else:
        parts_ = multiview_pixel_contrast(fa, fb, batch["mask"], key=key, negatives=lcfg.negatives, **kw)
      return parts_["total"], (parts_, rest)

    (_, (loss_parts, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return _apply(parts, state, grads, rest, {f"loss/{k}": v for k, v in loss_parts.items()})

  return _jit_step(step, mesh)


def make_stage2_step(parts: Parts, config, mesh):
  """Jitted `(state, batch) -> (state, metrics)` for the focal loss on the head's logits."""
  fcfg = config.stage2.loss

  def step(state: TrainState, batch):
    def loss_fn(params):
      model = nnx.merge(parts.graphdef_train, params, state.frozen, state.rest, copy=True)
      logits = model(batch["image"])
      loss = sigmoid_focal_loss(logits.astype(jnp.float32), batch["mask"],
                                alpha=float(fcfg.alpha), gamma=float(fcfg.gamma))
      return loss, _split_rest(model)

    (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return _apply(parts, state, grads, rest, {"loss/total": loss})

  return _jit_step(step, mesh)


def _apply(parts, state, grads, rest, metrics):
  updates, opt_state = parts.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics)
  metrics["grad_norm"] = optax.tree.norm(grads)
  metrics["lr"] = state.opt_state.hyperparams["learning_rate"]
  new = state.replace(step=state.step + 1, params=params, rest=rest, opt_state=opt_state)
  return new, metrics


def _jit_step(step, mesh):
  rep = distributed.replicated(mesh)
  return jax.jit(step, in_shardings=(rep, distributed.batch_sharding(mesh)),
                 out_shardings=(rep, rep), donate_argnums=(0,))


def make_predict_fn(parts: Parts, config, stage: str, mesh):
  """Jitted `(state, images) -> [B, h, w]` forgery probabilities at 1/4 (eval mode)."""
  rep, bat = distributed.replicated(mesh), distributed.batch_sharding(mesh)
  if stage == "stage1":
    kcfg = config.stage1.kmeans
    key = jax.random.key(int(config.seed) + 7)

    def predict(state, images):
      model = merge_model(parts, state, train=False)
      feats = [l2_normalize(f.astype(jnp.float32)) for f in model.features(images)]
      fused = model.fuse(feats)
      return forged_cluster_mask(fused, key, num_init=int(kcfg.num_init),
                                 max_iter=int(kcfg.max_iter), tol=float(kcfg.tol))
  else:
    def predict(state, images):
      model = merge_model(parts, state, train=False)
      return jax.nn.sigmoid(model(images).astype(jnp.float32))[..., 0]
  return jax.jit(predict, in_shardings=(rep, bat), out_shardings=bat)


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
  policies = [ocm.preservation_policy.LatestN(n=int(scfg.max_to_keep))]
  if int(scfg.get("keep_best", 1)) > 0:
    policies.append(ocm.preservation_policy.BestN(
        get_metric_fn=lambda m: m["score"], reverse=False, n=int(scfg.keep_best),
        keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=bool(scfg.get("async_checkpointing", True)),
      best_fn=lambda m: m["score"], best_mode="max",
      preservation_policy=ocm.preservation_policy.AnyPreservationPolicy(policies),
      cleanup_tmp_directories=True, create=True)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options,
                               item_names=("state", "data_iter", "meta"))


def save_checkpoint(mngr, state, data_iter, meta, metrics=None, force=False):
  args = ocp.args.Composite(
      state=ocp.args.StandardSave(_to_saveable(state)),
      data_iter=grain.checkpoint.CheckpointSave(data_iter),
      meta=ocp.args.JsonSave(meta))
  return mngr.save(int(state.step), args=args, metrics=metrics, force=force)


def restore_checkpoint(mngr, step, template: TrainState, data_iter):
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_saveable(template))
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract),
      data_iter=grain.checkpoint.CheckpointRestore(data_iter),
      meta=ocp.args.JsonRestore()))
  return _from_saveable(restored["state"], template), restored["meta"]


# ----------------------------------------------------------------------------------------- loop
def _stage_is_last(config, stage) -> bool:
  return list(config.stages)[-1] == stage


def _export(model_from_state, directory: pathlib.Path, name: str):
  if jax.process_count() > 1 and jax.process_index() != 0:
    return
  from mpc_jax.checkpoint import save_model

  try:
    save_model(model_from_state(), directory / name)
  except Exception:  # noqa: BLE001 - an export failure must not lose the training run
    log.exception("could not export %s to %s", name, directory)


def train_stage(config, stage: str, workdir: pathlib.Path, model, mesh, writer,
                on_step: Callable | None = None) -> dict:
  """Trains one stage to `config.<stage>.num_steps` (resuming from its checkpoints); returns the
  last validation metrics (empty when the stage was already finished and nothing ran).

  `on_step(stage, step, metrics)`, when given, is called on the host after every step (after its
  validation, before the termination check and the checkpoint of that step); `metrics` are the
  step's outputs (`loss/total`, ... as replicated arrays). A hook for tests and tools: a signal the
  callback sends to its own process is acted on at that very step."""
  scfg = config[stage]
  sdir = workdir / stage
  export_dir = workdir if _stage_is_last(config, stage) else sdir
  state, parts = create_state(model, scfg, mesh)
  step_fn = (make_stage1_step if stage == "stage1" else make_stage2_step)(parts, config, mesh)
  predict_fn = make_predict_fn(parts, config, stage, mesh)
  sched = schedules.make_schedule(scfg.schedule, float(scfg.lr))
  batch_size = int(scfg.batch_size)
  data_it = _train_iterator(config, stage, batch_size, mesh)
  val_sources = validate.build_val_sources(config.data)
  mngr = make_checkpoint_manager(sdir / "checkpoints", scfg)
  meta = {"schedule": sched.state_dict(), "best_score": None, "stage": stage}

  latest = mngr.latest_step()
  if latest is not None:
    state, meta = restore_checkpoint(mngr, latest, state, data_it)
    sched.load_state_dict(meta["schedule"])
    log.info("%s: resumed from step %d (%s)", stage, latest, mngr.directory)
  state = set_learning_rate(state, sched.lr, mesh)

  def current_model():
    return merge_model(parts, host_copy(state), train=False)

  num_steps = int(scfg.num_steps)
  step = int(state.step)
  if step >= num_steps:
    log.info("%s: already at step %d of %d", stage, step, num_steps)
    mngr.close()
    nnx.update(model, nnx.state(current_model()))
    return {}

  guard = distributed.PreemptionGuard()
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=tb_writer.Prefixed(writer, stage),
                                           every_steps=int(scfg.log_every))
  log_every, eval_every = int(scfg.log_every), int(scfg.eval_every)
  ckpt_every = int(scfg.checkpoint_every)
  last_eval: dict = {}
  pending, t_log, step_log = [], time.time(), step
  preempted = False
  first_step = True
  log.info("%s: training steps %d..%d, global batch %d on %d devices", stage, step, num_steps,
           batch_size, mesh.devices.size)
  while step < num_steps:
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      local = next(data_it)
      batch = distributed.global_batch(local, mesh)
      if first_step:
        # Compile before the first step (the jitted call below reuses this executable), then wait
        # for every process: a process that finished compiling first would otherwise sit in the
        # step's first collective while the others compile, past its timeout (seen with gloo).
        step_fn.lower(state, batch).compile()
        distributed.barrier(f"{stage} step compiled")
        first_step = False
      state, m = step_fn(state, batch)
    step += 1
    step_metrics = m
    pending.append(m)
    report(step)
    if step % log_every == 0 or step == num_steps:
      m = jax.tree.map(lambda *xs: float(np.mean([float(np.asarray(x.addressable_data(0))) for x in xs])),
                       *pending)
      pending = []
      dt = time.time() - t_log
      sps = (step - step_log) / max(dt, 1e-9)
      m.update({"steps_per_sec": sps, "examples_per_sec": sps * batch_size})
      writer.write_scalars(step, {f"{stage}/{k}": v for k, v in m.items()})
      eta = (num_steps - step) / max(sps, 1e-9)
      log_line = (f"{stage} step {step}/{num_steps} loss {m['loss/total']:.4f} lr {m['lr']:.2e} | "
                  f"{sps:.2f} steps/s {sps * batch_size:.1f} ex/s ETA {_fmt_time(eta)}")
      _console(config, log_line)
      t_log, step_log = time.time(), step
    metrics = None
    if val_sources and (step % eval_every == 0 or step == num_steps):
      scalars, samples = validate.evaluate(predict_fn, state, config.data, val_sources,
                                           batch_size=int(scfg.eval_batch_size), mesh=mesh,
                                           num_images=int(config.get("num_sample_images", 4)))
      lr = sched.step(scalars["score"])
      state = set_learning_rate(state, lr, mesh)
      meta["schedule"] = sched.state_dict()
      is_best = meta["best_score"] is None or scalars["score"] > meta["best_score"]
      if is_best:
        meta["best_score"] = scalars["score"]
      writer.write_scalars(step, {f"{stage}/val/{k}": v for k, v in scalars.items()})
      if samples is not None:
        writer.write_images(step, {f"{stage}/val/samples": samples})
      line = (f"{stage} val step {step}: F1 {scalars['f1']:.4f} IoU {scalars['iou']:.4f} "
              f"score {scalars['score']:.4f}{' (best)' if is_best else ''} next lr {lr:.2e}")
      _console(config, line)
      metrics = {"score": scalars["score"]}
      last_eval = scalars
      if is_best and config.get("export_models", True):
        _export(current_model, export_dir, "model_best")
      t_log = time.time()
    if on_step is not None:
      on_step(stage, step, step_metrics)
    preempted = guard.should_stop()
    if metrics is not None or step % ckpt_every == 0 or step == num_steps or preempted:
      save_checkpoint(mngr, state, data_it, meta, metrics=metrics, force=True)
    if preempted:
      log.warning("%s: stopping at step %d after a termination signal (checkpoint saved)", stage, step)
      break
  mngr.wait_until_finished()
  mngr.close()
  guard.restore()
  writer.flush()
  if preempted:
    raise Preempted(step)
  if config.get("export_models", True):
    _export(current_model, export_dir, "model_latest")
  nnx.update(model, nnx.state(current_model()))
  return last_eval


def _console(config, line: str, always: bool = False) -> None:
  """One console line: printed by process 0 (with `print_progress`, or `always`), else logged."""
  if jax.process_index() == 0 and (always or config.get("print_progress", True)):
    print(line, flush=True)
  else:
    log.info(line)


class Preempted(Exception):
  """Raised after a termination signal once the checkpoint is written."""


def _fmt_time(s: float) -> str:
  s = int(s)
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _train_iterator(config, stage, batch_size, mesh):
  from mpc_jax.data.pipeline import make_train_iterator

  data = config.data
  overrides = config[stage].get("data_overrides", None)
  if overrides:
    data = ml_collections.ConfigDict(data.to_dict())
    data.update(overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides))
  seed = int(config.seed) + (0 if stage == "stage1" else 1)
  block, num_blocks = distributed.process_batch_block(batch_size, mesh)
  return make_train_iterator(data, seed=seed, process_index=block, process_count=num_blocks,
                             batch_size_per_process=distributed.local_batch_size(batch_size, mesh))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, on_step: Callable | None = None) -> dict:
  """Runs `config.stages` in order in `workdir`, then evaluates the final model on
  `config.data.val_sources` (the held-out set) and writes `workdir/<config.result_file>`: the final
  metrics (`f1`, `iou`, ...), `wall_s` (seconds from model building to the end of the final
  evaluation), `provenance` (date, commit, command line) and `units`. `on_step`: see `train_stage`.

  Returns the final metrics (or `{'preempted': step}` when stopped by SIGTERM)."""
  workdir = pathlib.Path(workdir).absolute()
  if config.model.get("remat", False):
    distributed.keep_remat_barriers_on_cpu()
  distributed.maybe_initialize(config.get("distributed", None))
  compile_cache.enable(config.get("compilation_cache_dir", "") or None)
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))
  mesh = distributed.make_mesh(int(config.get("mesh_devices", -1)))
  writer = metric_writers.create_default_writer(str(workdir), just_logging=jax.process_index() > 0)
  writer.write_hparams({k: v for k, v in _flat_config(config).items()})
  t0 = time.time()
  provenance = run_provenance()  # the code as it starts (a checkout may change during the run)
  model = build_model(config)
  results = {}
  with jax.set_mesh(mesh):
    try:
      for i, stage in enumerate(config.stages):
        if stage not in STAGES:
          raise ValueError(f"unknown stage {stage!r} (expected one of {STAGES})")
        init = config[stage].get("init_from", "")
        if not init and i > 0:
          prev = workdir / config.stages[i - 1]
          init = str(prev / "model_best") if (prev / "model_best").exists() else str(prev / "model_latest")
        if init and not _stage_started(workdir / stage):
          if pathlib.Path(init).exists():
            load_matching(model, init, config[stage].get("init_skip", ""))
          elif config[stage].get("init_from", ""):
            raise FileNotFoundError(f"config.{stage}.init_from: {init} does not exist")
        results[stage] = train_stage(config, stage, workdir, model, mesh, writer, on_step=on_step)
    except Preempted as e:
      writer.close()
      return {"preempted": e.args[0]}
    final = {}
    if config.get("final_eval", True) and config.data.val_sources:
      final = final_evaluation(config, workdir, model, mesh, config.stages[-1], writer)
  final["wall_s"] = time.time() - t0
  final["provenance"] = provenance
  final["units"] = RESULT_UNITS
  if jax.process_index() == 0 and config.get("result_file", ""):
    (workdir / config.result_file).write_text(json.dumps(final, indent=1))
  writer.close()
  return final


# The units of the result file's fields (`<source>/...`: per validation source).
RESULT_UNITS = {"wall_s": "s", "f1": "fraction (pixel F1 at threshold 0.5, mean over forged images)",
                "iou": "fraction (pixel IoU, the same protocol)", "score": "fraction (mean of F1s and IoUs)",
                "<source>/f1, <source>/iou": "fraction", "<source>/f1_all, <source>/iou_all": "fraction (mean over all images)",
                "<source>/num": "images"}


def run_provenance(command: str | None = None) -> dict:
  """When, at which commit of this package (`-dirty` with uncommitted changes to tracked files
  other than bench/results; `unknown` outside a git checkout) and with which command line (default:
  this process's) a result was produced."""
  src = pathlib.Path(__file__).resolve().parent

  def git(*args):
    return subprocess.run(["git", *args], cwd=src, capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()

  try:
    commit = git("rev-parse", "--short", "HEAD")
    if git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":(exclude,top)bench/results"):
      commit += "-dirty"
  except (OSError, subprocess.SubprocessError):
    commit = "unknown"
  if command is None:
    command = " ".join([pathlib.Path(sys.argv[0]).name, *sys.argv[1:]])
  return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": commit, "command": command}


def _stage_started(sdir: pathlib.Path) -> bool:
  ck = sdir / "checkpoints"
  return ck.is_dir() and any(p.name.isdigit() for p in ck.iterdir())


def final_evaluation(config, workdir, model, mesh, stage, writer) -> dict:
  """Evaluates `model` (eval mode) on `config.data.val_sources`; writes sample PNGs."""
  model.eval()
  scfg = config[stage]
  state, parts = create_state(model, scfg, mesh)
  predict_fn = make_predict_fn(parts, config, stage, mesh)
  scalars, samples = validate.evaluate(predict_fn, state, config.data, validate.build_val_sources(config.data),
                                       batch_size=int(scfg.eval_batch_size), mesh=mesh,
                                       num_images=int(config.get("num_sample_images", 4)))
  if samples is not None and jax.process_index() == 0:
    from PIL import Image

    out = workdir / "samples"
    out.mkdir(exist_ok=True)
    for i, tile in enumerate(samples):
      Image.fromarray((np.clip(tile, 0, 1) * 255).astype(np.uint8)).save(out / f"sample_{i}.png")
    writer.write_images(int(scfg.num_steps), {"final/samples": samples})
  writer.write_scalars(int(scfg.num_steps), {f"final/{k}": v for k, v in scalars.items()})
  line = (f"final ({stage}) on held-out {', '.join(s for s in config.data.val_sources)}: "
          f"pixel F1 {scalars['f1']:.4f} IoU {scalars['iou']:.4f} (threshold 0.5, mean over forged images)")
  _console(config, line, always=True)
  return {"stage": stage, **scalars}


def _flat_config(config) -> dict:
  out = {}

  def walk(prefix, d):
    for k, v in d.items():
      if isinstance(v, (dict, ml_collections.ConfigDict)):
        walk(f"{prefix}{k}.", v)
      elif isinstance(v, (int, float, str, bool)):
        out[f"{prefix}{k}"] = v
  walk("", config)
  return out
