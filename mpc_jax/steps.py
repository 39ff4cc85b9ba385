"""The jitted steps: `(state, batch) -> (state, metrics)` for each stage, and the predict function.

Stage 1: each batch goes through the backbone as two views, with the values of the reference's two
consecutive passes (drop path draws independent masks, BatchNorm normalises each view by its own
statistics and updates its running statistics with the first view, then the second) but in one
interleaved pass (`_two_view_features`); the four per-scale maps are L2-normalised and the multi-view
pixel contrast is the loss.

Stage 2: the sigmoid focal loss on the head's logits at 1/4.

Each step is jitted once with the state replicated and the batch sharded on the mesh's `data` axis;
XLA inserts the collectives (BatchNorm statistics and the loss are those of the global batch,
gradients are all-reduced). `make_step(stage, ...)` is the default step factory of the loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mpc_jax import distributed
from mpc_jax.kmeans import forged_cluster_mask
from mpc_jax.losses import l2_normalize, multiview_pixel_contrast, multiview_pixel_contrast_sharded
from mpc_jax.losses import sigmoid_focal_loss
from mpc_jax.models.layers import BatchNorm
from mpc_jax.train_state import Parts, TrainState, merge_model


# The batch entries each stage's step reads; the loop sends nothing else to the devices.
STEP_INPUTS = {"stage1": ("image", "image_view2", "mask"), "stage2": ("image", "mask")}


def rng_seeds(config) -> dict[str, int]:
  """The named seeds of a run, all derived from `config.seed`: model init, the stage-1 loss's pixel
  sampling, k-means in stage-1 validation, and each stage's data order and augmentations."""
  s = int(config.seed)
  return {"model": s, "loss": s + 1009, "kmeans": s + 7, "data/stage1": s, "data/stage2": s + 1}


def _split_rest(model):
  return nnx.split(model, nnx.Param, ...)[2]


def _two_view_features(parts: Parts, params, frozen, rest, images_a, images_b):
  """`(flat params, frozen, rest, images_a, images_b [B, H, W, 3]) -> (view a's and view b's four
  L2-normalised maps `[B, h_s, w_s, C]` float32, new rest)`.

  One pass over both views, interleaved (`[B, 2] -> [2B]`, so a batch sharded over devices stays where
  it is), with each BatchNorm normalising each view by its own statistics and updating its running
  statistics once per view, in order (`BatchNorm.groups`): the values of two consecutive passes, as the
  reference runs them, from one backbone in the program, so it compiles in about half the time.
  Drop-path draws its masks for both views at once (the same distribution as two draws).
  """
  model = nnx.merge(parts.graphdef_train, parts.unflatten(params), frozen, rest, copy=True)
  model.set_attributes(BatchNorm, groups=2)
  images = jnp.stack([images_a, images_b], axis=1)
  maps = model.features(images.reshape(-1, *images.shape[2:]))
  maps = [l2_normalize(f.astype(jnp.float32)).reshape(-1, 2, *f.shape[1:]) for f in maps]
  return [f[:, 0] for f in maps], [f[:, 1] for f in maps], _split_rest(model)


def make_stage1_step(parts: Parts, lcfg, mesh, *, seed: int):
  """Jitted `(state, batch) -> (state, metrics)` for the multi-view pixel contrast (`lcfg`:
  `config.stage1.loss`; `seed`: the pixel sampling's, `rng_seeds(config)['loss']`)."""
  loss_key = jax.random.key(seed)
  kw = dict(
    num_samples=int(lcfg.num_samples), temperature=float(lcfg.temperature), chunk_size=int(lcfg.chunk_size)
  )

  def step(state: TrainState, batch):
    key = jax.random.fold_in(loss_key, state.step)

    def loss_fn(params):
      images_b = batch.get("image_view2", batch["image"])
      fa, fb, rest = _two_view_features(parts, params, state.frozen, state.rest, batch["image"], images_b)
      if lcfg.negatives == "global":
        loss = multiview_pixel_contrast_sharded(
          fa,
          fb,
          batch["mask"],
          key=key,
          mesh=mesh,
          negatives="global",
          bank_per_image=int(lcfg.bank_per_image),
          **kw,
        )
      else:
        loss = multiview_pixel_contrast(fa, fb, batch["mask"], key=key, negatives=lcfg.negatives, **kw)
      return loss["total"], (loss, rest)

    (_, (loss, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return _apply(parts, state, grads, rest, {f"loss/{k}": v for k, v in loss.items()})

  return _jit_step(step, mesh)


def make_stage2_step(parts: Parts, fcfg, mesh):
  """Jitted `(state, batch) -> (state, metrics)` for the focal loss on the head's logits (`fcfg`:
  `config.stage2.loss`)."""

  def step(state: TrainState, batch):
    def loss_fn(params):
      model = nnx.merge(parts.graphdef_train, parts.unflatten(params), state.frozen, state.rest, copy=True)
      logits = model(batch["image"])
      loss = sigmoid_focal_loss(
        logits.astype(jnp.float32), batch["mask"], alpha=float(fcfg.alpha), gamma=float(fcfg.gamma)
      )
      return loss, _split_rest(model)

    (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return _apply(parts, state, grads, rest, {"loss/total": loss})

  return _jit_step(step, mesh)


def make_step(stage: str, parts: Parts, config, mesh):
  """The step of `stage` ('stage1' or 'stage2'): the loop's default step factory."""
  if stage == "stage1":
    return make_stage1_step(parts, config.stage1.loss, mesh, seed=rng_seeds(config)["loss"])
  return make_stage2_step(parts, config.stage2.loss, mesh)


def _apply(parts, state, grads, rest, metrics):
  updates, opt_state = parts.tx.update(grads, state.opt_state, state.params)
  metrics = dict(metrics)
  metrics["grad_norm"] = optax.tree.norm(grads)
  metrics["lr"] = state.opt_state.hyperparams["learning_rate"]
  new = state.replace(step=state.step + 1, params=state.params + updates, rest=rest, opt_state=opt_state)
  return new, metrics


def _jit_step(step, mesh):
  rep = distributed.replicated(mesh)
  return jax.jit(
    step, in_shardings=(rep, distributed.batch_sharding(mesh)), out_shardings=(rep, rep), donate_argnums=(0,)
  )


def make_predict_fn(parts: Parts, config, stage: str, mesh):
  """Jitted `(state, images [B, H, W, 3]) -> [B, H/4, W/4]` forgery probabilities (eval mode);
  after stage 1, the k-means mask of the fused features (1 = the smaller, forged cluster), with
  `config.stage1.kmeans` and the `kmeans` seed."""
  rep, bat = distributed.replicated(mesh), distributed.batch_sharding(mesh)
  if stage == "stage1":
    kcfg = config.stage1.kmeans
    key = jax.random.key(rng_seeds(config)["kmeans"])

    def predict(state, images):
      model = merge_model(parts, state, train=False)
      feats = [l2_normalize(f.astype(jnp.float32)) for f in model.features(images)]
      return forged_cluster_mask(
        model.fuse(feats), key, num_init=int(kcfg.num_init), max_iter=int(kcfg.max_iter), tol=float(kcfg.tol)
      )
  else:

    def predict(state, images):
      model = merge_model(parts, state, train=False)
      return jax.nn.sigmoid(model(images).astype(jnp.float32))[..., 0]

  return jax.jit(predict, in_shardings=(rep, bat), out_shardings=bat)
