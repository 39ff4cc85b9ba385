"""Model checkpoints that every tool reads: `save_model(model, dir)` / `load_model(dir)`.

A model directory holds `model_config.json` (HRFormer config, head, format, and `training`: the
input size the model was trained at and its last stage) and `weights.safetensors`: the parameters,
BatchNorm statistics and batch counters, one tensor per path (`backbone/conv1/kernel`). Models
saved before that format hold an orbax checkpoint `state/` instead, which `load_model` still reads.
`load_model` also accepts a training workdir, where it takes `model_best` (else `model_latest`).
Paths may be relative to the current directory.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import weakref

import jax
import numpy as np
import safetensors.numpy
from flax import nnx

from mpc_jax.models import build_mpc
from mpc_jax.models.layers import BatchCount

FORMAT = "mpc-jax-model/1"
WEIGHTS = "weights.safetensors"
_SAVED = nnx.Any(nnx.Param, nnx.BatchStat, BatchCount)
_INFO: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def model_config(model, training=None) -> dict:
  cfg = {"format": FORMAT, "hrformer_config": model.backbone.config, "head": model.head.variant}
  if training:
    cfg["training"] = dict(training)
  return cfg


def save_model(model, path, training=None) -> pathlib.Path:
  """Writes `model` (any mode) to directory `path`, replacing an existing model there atomically.

  `training`: what the model was trained for, e.g. `{"input_size": 512, "stage": "stage2"}`."""
  path = pathlib.Path(path).expanduser().absolute()
  tmp = path.with_name(path.name + ".tmp")
  if tmp.exists():
    shutil.rmtree(tmp)
  tmp.mkdir(parents=True)
  saved = nnx.to_pure_dict(nnx.state(model, _SAVED))
  tensors = {name: np.ascontiguousarray(a) for name, a in _named_arrays(saved).items()}
  (tmp / WEIGHTS).write_bytes(safetensors.numpy.save(tensors))  # save_file would make it owner-only
  (tmp / "model_config.json").write_text(json.dumps(model_config(model, training), indent=1))
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
  """The absolute model directory inside `path` (itself, or a workdir's `model_best` / `model_latest`)."""
  path = pathlib.Path(path).expanduser().absolute()
  for candidate in (path, path / "model_best", path / "model_latest"):
    if (candidate / "model_config.json").is_file():
      return candidate
  if not path.exists():
    raise FileNotFoundError(f"no mpc-jax model at {path}: that folder does not exist")
  raise FileNotFoundError(
    f"no mpc-jax model in {path} (expected model_config.json there or in model_best/ or "
    "model_latest/); convert official weights with `mpc-jax convert WEIGHTS --out DIR`"
  )


def read_model_config(path) -> dict:
  """`model_config.json` of the model at `path`, with `training` filled in from the training workdir's
  `config.json` when the model sits in one (`WORKDIR/model_*` or `WORKDIR/<stage>/model_*`)."""
  mdir = resolve_model_dir(path)
  try:
    cfg = json.loads((mdir / "model_config.json").read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{mdir / 'model_config.json'} is not valid JSON ({e})") from None
  if cfg.get("format") != FORMAT:
    raise ValueError(f"{mdir}/model_config.json: unknown format {cfg.get('format')!r} (expected {FORMAT!r})")
  if "training" not in cfg:
    cfg["training"] = _training_from_workdir(mdir)
  return cfg


def _training_from_workdir(mdir: pathlib.Path) -> dict:
  stages = ("stage1", "stage2")
  if (mdir.parent / "config.json").is_file():
    workdir, stage = mdir.parent, None
  elif mdir.parent.name in stages and (mdir.parent.parent / "config.json").is_file():
    workdir, stage = mdir.parent.parent, mdir.parent.name
  else:
    return {}
  from mpc_jax.train_config import stage_data_config

  try:
    config = json.loads((workdir / "config.json").read_text())
    stage = stage or list(config["stages"])[-1]
    return {"input_size": int(stage_data_config(config, stage).input_size), "stage": stage}
  except (ValueError, KeyError, TypeError, IndexError):
    return {}


def training_info(model) -> dict:
  """What a model returned by `load_model` was trained for: `input_size`, `stage` (empty when unknown)."""
  return dict(_INFO.get(getattr(model, "model", model), {}))


def record_training(path, training: dict) -> None:
  """Adds `training` to the `model_config.json` of the model directory `path`."""
  f = pathlib.Path(path) / "model_config.json"
  cfg = json.loads(f.read_text())
  cfg["training"] = dict(training)
  f.write_text(json.dumps(cfg, indent=1))


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def _named_arrays(saved: dict) -> dict:
  """The leaves of a pure dict of saved arrays by path name, `{'backbone/conv1/kernel': array, ...}`."""
  return {_path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]}


def _read_weights(mdir: pathlib.Path, template: dict) -> dict:
  """`template` (the model's saved arrays as a pure dict) filled with numpy arrays read from
  `weights.safetensors`, or from `state/` in folders of the older format."""
  if (mdir / "state").is_dir() and not (mdir / WEIGHTS).is_file():
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
      return ckptr.restore(mdir / "state", jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), template))
  if not (mdir / WEIGHTS).is_file():
    raise FileNotFoundError(f"{mdir} holds model_config.json but no {WEIGHTS}: the export is incomplete")
  try:
    arrays = safetensors.numpy.load_file(str(mdir / WEIGHTS))
  except Exception as e:  # noqa: BLE001 - a truncated or foreign file, named below
    raise ValueError(f"{mdir / WEIGHTS} is not a readable safetensors file ({e})") from None
  missing = sorted(set(_named_arrays(template)) - set(arrays))
  if missing:
    raise ValueError(
      f"{mdir / WEIGHTS} lacks {len(missing)} of the model's arrays (first: {missing[0]}); "
      "its model_config.json describes another model"
    )

  def take(path, want):
    name = _path_name(path)
    got = arrays[name]
    if got.size != want.size:
      raise ValueError(f"{mdir / WEIGHTS}: {name} has shape {got.shape}, the model {want.shape}")
    return got.reshape(want.shape).astype(want.dtype, copy=False)  # safetensors keeps scalars as [1]

  return jax.tree_util.tree_map_with_path(take, template)


def load_model(path, *, dtype="float32"):
  """The model saved at `path` (a model dir or a training workdir), in eval mode."""
  mdir = resolve_model_dir(path)
  cfg = read_model_config(mdir)
  graphdef, saved, rest = _eval_skeleton(cfg["hrformer_config"], cfg["head"], dtype)
  arrays = _named_arrays(_read_weights(mdir, nnx.to_pure_dict(saved)))
  paths, treedef = jax.tree_util.tree_flatten_with_path(saved)  # each path ends at a Variable's `.value`
  leaves = [
    arrays[_path_name(p for p in path if not isinstance(p, jax.tree_util.GetAttrKey))] for path, _ in paths
  ]
  model = nnx.merge(graphdef, jax.tree.unflatten(treedef, jax.device_put(leaves)), rest)
  _INFO[model] = dict(cfg.get("training") or {}, path=str(mdir))
  return model


def _eval_skeleton(hrformer_config, head: str, dtype) -> tuple:
  """`(graph definition, saved state with abstract [ShapeDtypeStruct] leaves, other state)` of the
  eval-mode model of that configuration: built once per machine and kept in the compilation cache
  (`compile_cache.stored_object`), since building HRT-base's modules takes a second."""
  from mpc_jax import compile_cache

  def build():
    model = build_mpc(hrformer_config, head, dtype=dtype, random_init=False)
    model.eval()
    graphdef, saved, rest = nnx.split(model, _SAVED, ...)
    return graphdef, jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), saved), rest

  key = json.dumps(["eval-skeleton", hrformer_config, head, str(np.dtype(dtype))], sort_keys=True)
  return compile_cache.stored_object(key, build)
