"""Defaults shared by the `configs/*.py` files: `base_config()` and one `stage_config(stage)`.

Every field the trainer reads is here, with the paper's values; config files override what differs.
"""

from __future__ import annotations

import json
import pathlib

import ml_collections

from mpc_jax.data.config import default_data_config


def stage_config(stage: str) -> ml_collections.ConfigDict:
  """`config.stage1` / `config.stage2` defaults (the reference's optimizers and schedules)."""
  c = ml_collections.ConfigDict()
  c.num_steps = 100_000
  c.batch_size = 4  # global batch (the reference: 4 on one GPU)
  c.eval_batch_size = 8  # global, padded
  c.weight_decay = 0.01  # torch.optim.AdamW's default
  c.adam_eps = 1e-8  # torch.optim.AdamW's default
  c.log_every = 50
  c.eval_every = 2_000  # the reference validates every 1% of an epoch
  c.checkpoint_every = 1_000
  c.max_to_keep = 2  # latest checkpoints kept (plus `keep_best` best by score)
  c.keep_best = 1
  c.async_checkpointing = True
  c.init_from = ""  # model dir / workdir to start from ('' = previous stage's best)
  c.init_skip = ""  # regex of parameter paths not to load from `init_from`
  c.trainable = ""  # regex of trained parameter paths ('' = see freeze_backbone)
  c.backbone_mode = "train"  # 'train' (reference: BN batch stats, drop path) | 'eval'
  c.data_overrides = ml_collections.ConfigDict()  # fields of config.data changed for this stage
  c.schedule = ml_collections.ConfigDict()
  if stage == "stage1":
    c.lr = 1e-4
    c.freeze_backbone = False
    c.schedule.kind = "plateau"  # ReduceLROnPlateau(mode='max') on the validation score
    c.schedule.factor = 0.5
    c.schedule.patience = 3
    c.schedule.min_lr = 1e-8
    c.schedule.t_max = 20
    c.loss = ml_collections.ConfigDict(
      dict(num_samples=5000, temperature=0.1, negatives="image", bank_per_image=256, chunk_size=1024)
    )
    c.kmeans = ml_collections.ConfigDict(dict(num_init=8, max_iter=100, tol=1e-4))
  else:
    c.lr = 1e-6
    c.freeze_backbone = True  # train the head only (the paper)
    c.schedule.kind = "cosine"  # CosineAnnealingLR(T_max=20 validations, eta_min=1e-8)
    c.schedule.t_max = 20
    c.schedule.min_lr = 1e-8
    c.schedule.factor = 0.5
    c.schedule.patience = 3
    c.loss = ml_collections.ConfigDict(dict(alpha=0.5, gamma=2.0))
  return c


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = ("stage1", "stage2")
  c.model = ml_collections.ConfigDict(
    dict(
      hrformer="hrt_base",
      hrformer_json="",  # preset name, or a yacs-layout dict as JSON
      head="catnet",
      drop_path_rate=-1.0,  # < 0: the preset's rate
      dtype="float32",  # compute dtype: float32 or bfloat16 (parameters stay float32)
      remat=False,  # rematerialise the backbone module by module: less memory, ~10% more compute
      depthwise="auto",
    )
  )  # depth-wise convs: 'auto' (shifted adds on the CPU), 'shift', 'xla'
  c.data = default_data_config()  # mpc_jax.data.config.DataConfig's fields and defaults
  c.stage1 = stage_config("stage1")
  c.stage2 = stage_config("stage2")
  c.mesh_devices = -1  # devices on the 'data' axis (-1: all)
  c.distributed = ml_collections.ConfigDict(
    dict(enabled=False, coordinator_address="", num_processes=-1, process_id=-1, local_device_ids="")
  )
  c.compilation_cache_dir = ""  # "": $MPC_JAX_COMPILATION_CACHE or ~/.cache/mpc_jax/jax; "off"
  c.compile_in_child = True  # CPU: each step compiled by a child process (compile_cache)
  c.export_models = True  # write model_best / model_latest for eval/predict
  c.final_eval = True  # evaluate the final model on data.val_sources
  c.result_file = "final_result.json"
  c.num_sample_images = 4
  c.print_progress = True
  return c


def hrformer_config(model_config):
  """`config.model`'s HRFormer: a preset name (`hrformer`) or, when `hrformer_json` is set, the
  yacs-layout dict it holds as JSON (a string, so `--config.model.hrformer_json=...` can set it)."""
  return json.loads(model_config.hrformer_json) if model_config.hrformer_json else model_config.hrformer


def stage_data_config(config, stage: str) -> ml_collections.ConfigDict:
  """`config.data` with `config.<stage>.data_overrides` applied: the data one stage trains on.
  `config` may be a ConfigDict or the dict of a run's `config.json`."""
  data = config["data"]
  data = ml_collections.ConfigDict(data.to_dict() if hasattr(data, "to_dict") else dict(data))
  overrides = (config.get(stage) or {}).get("data_overrides") or {}
  data.update(overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides))
  return data


def export_dir(config, workdir, stage: str):
  """Where `stage` writes its `model_best` / `model_latest`: the workdir for the last stage of
  `config.stages`, `WORKDIR/<stage>/` for earlier ones."""
  workdir = pathlib.Path(workdir)
  return workdir if list(config["stages"])[-1] == stage else workdir / stage
