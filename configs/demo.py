"""The demo: tiny HRFormer on in-memory synthetic forgeries, both stages, ~minutes on 2 CPU cores.

    mpc-jax train --config configs/demo.py --workdir /tmp/mpc_demo

Held-out evaluation: 64 synthetic images from another seed (never seen in training); the pixel F1
(threshold 0.5, mean over forged images) is printed and written to WORKDIR/demo_result.json,
sample predictions to WORKDIR/samples/ and TensorBoard.
"""

import copy
import json

from mpc_jax.models.hrformer import HRFORMER_CONFIGS
from mpc_jax.train_config import base_config


def tiny_hrformer(window: int = 4) -> dict:
  """`hrt_tiny` with another attention window. At 64 px the 1/16 and 1/32 maps are 4x4 and 2x2:
  a 7x7 window would be mostly zero padding (attended to, unmasked, as in the reference)."""
  cfg = copy.deepcopy(HRFORMER_CONFIGS["hrt_tiny"])
  for stage in ("STAGE2", "STAGE3", "STAGE4"):
    cfg[stage]["NUM_WINDOW_SIZES"] = [window] * cfg[stage]["NUM_BRANCHES"]
  return cfg


def get_config(arg=None):
  del arg
  c = base_config()
  c.model.hrformer = "hrt_tiny"
  c.model.hrformer_json = json.dumps(tiny_hrformer(4))
  c.model.head = "catnet"
  c.model.drop_path_rate = 0.1
  S = 64  # 128 px would quadruple the step time on 2 CPU cores
  d = c.data
  d.input_size = S
  d.augment = False
  d.read_threads = 2
  d.synthetic.num = 1024
  d.synthetic.seed = 0
  d.synthetic.size = S
  d.synthetic.difficulty = 0.0  # loud noise-level traces: learnable in minutes
  d.synthetic.authentic_prob = 0.0
  d.val_sources = (f"synthetic:64:12345:{S}:0.0",)  # another seed: never seen in training

  s1 = c.stage1  # a short contrastive warm-up of the backbone, validated (k-means) once at its end
  s1.num_steps = 100
  s1.batch_size = 8
  s1.lr = 1e-3
  s1.log_every = 25
  s1.eval_every = 100
  s1.checkpoint_every = 100
  s1.eval_batch_size = 16
  s1.loss.num_samples = 1024
  s1.kmeans.num_init = 4
  s1.kmeans.max_iter = 30

  s2 = c.stage2
  s2.num_steps = 800
  s2.batch_size = 8
  s2.lr = 1e-3
  s2.log_every = 50
  s2.eval_every = 100
  s2.checkpoint_every = 250
  s2.eval_batch_size = 16
  s2.freeze_backbone = False  # the demo fine-tunes everything in stage 2 (the paper: head only)
  s2.schedule.kind = "cosine"  # one cosine period over the stage: 8 validations
  s2.schedule.t_max = 8
  s2.schedule.min_lr = 1e-5
  c.result_file = "demo_result.json"
  return c
