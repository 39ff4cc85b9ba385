"""Model checkpoints that every tool reads: `save_model(model, dir)` / `load_model(dir)`.

A model directory holds `model_config.json` (HRFormer config, head, format) and an orbax
checkpoint `state/` of the parameters, BatchNorm statistics and batch counters. `load_model`
also accepts a training workdir, where it takes `model_best` (else `model_latest`).
"""
from __future__ import annotations

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from mpc_jax.models import build_mpc
from mpc_jax.models.layers import BatchCount

FORMAT = "mpc-jax-model/1"
_SAVED = nnx.Any(nnx.Param, nnx.BatchStat, BatchCount)


def model_config(model) -> dict:
  return {"format": FORMAT, "hrformer_config": model.backbone.config, "head": model.head.variant}


def save_model(model, path) -> pathlib.Path:
  """Writes `model` (any mode) to directory `path`, replacing an existing model there atomically."""
  path = pathlib.Path(path).absolute()
  tmp = path.with_name(path.name + ".tmp")
  if tmp.exists():
    shutil.rmtree(tmp)
  tmp.mkdir(parents=True)
  arrays = nnx.to_pure_dict(nnx.state(model, _SAVED))
  arrays = jax.tree.map(np.asarray, arrays)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp / "state", arrays)
  (tmp / "model_config.json").write_text(json.dumps(model_config(model), indent=1))
  if path.exists():
    old = path.with_name(path.name + ".old")
    if old.exists():
      shutil.rmtree(old)
    path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old)
  else:
    tmp.rename(path)
  return path


def resolve_model_dir(path) -> pathlib.Path:
  """The model directory inside `path` (itself, or a workdir's `model_best` / `model_latest`)."""
  path = pathlib.Path(path)
  for candidate in (path, path / "model_best", path / "model_latest"):
    if (candidate / "model_config.json").is_file():
      return candidate
  raise FileNotFoundError(f"no mpc-jax model at {path} (expected model_config.json there or in "
                          "model_best/ or model_latest/; convert PyTorch weights with `mpc-jax convert`)")


def load_model(path, *, dtype="float32"):
  """The model saved at `path` (a model dir or a training workdir), in eval mode."""
  mdir = resolve_model_dir(path)
  cfg = json.loads((mdir / "model_config.json").read_text())
  if cfg.get("format") != FORMAT:
    raise ValueError(f"{mdir}/model_config.json: unknown format {cfg.get('format')!r}")
  model = build_mpc(cfg["hrformer_config"], cfg["head"], dtype=dtype)
  target = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, _SAVED)))
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(mdir / "state", target)
  state = nnx.state(model, _SAVED)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, restored))
  nnx.update(model, state)
  model.eval()
  return model
