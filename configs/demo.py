"""The demo: tiny HRFormer on in-memory synthetic forgeries, both stages, ~minutes on 2 CPU cores.

    mpc-jax train --config configs/demo.py --workdir /tmp/mpc_demo

Held-out evaluation: 64 synthetic images from another seed (never seen in training); the pixel F1
(threshold 0.5, mean over forged images) is printed and written to WORKDIR/demo_result.json,
sample predictions to WORKDIR/samples/ and TensorBoard.
"""
from mpc_jax.train_config import base_config


def get_config(arg=None):
  del arg
  c = base_config()
  c.model.hrformer = "hrt_tiny"
  c.model.head = "catnet"
  c.model.drop_path_rate = 0.1
  S = 64  # 128 px triples the step time on 2 CPU cores; see the note below
  d = c.data
  d.input_size = S
  d.augment = False
  d.read_threads = 2
  d.synthetic.num = 512
  d.synthetic.seed = 0
  d.synthetic.size = S
  d.synthetic.difficulty = 0.0
  d.synthetic.authentic_prob = 0.0
  d.val_sources = (f"synthetic:64:12345:{S}:0.0",)

  s1 = c.stage1
  s1.num_steps = 150
  s1.batch_size = 8
  s1.lr = 1e-3
  s1.log_every = 25
  s1.eval_every = 150
  s1.checkpoint_every = 100
  s1.eval_batch_size = 16
  s1.loss.num_samples = 1024
  s1.kmeans.num_init = 4
  s1.kmeans.max_iter = 30

  s2 = c.stage2
  s2.num_steps = 400
  s2.batch_size = 8
  s2.lr = 1e-3
  s2.log_every = 25
  s2.eval_every = 200
  s2.checkpoint_every = 100
  s2.eval_batch_size = 16
  s2.freeze_backbone = False  # the demo fine-tunes everything in stage 2 (the paper: head only)
  s2.schedule.kind = "constant"
  c.result_file = "demo_result.json"
  # Status (2026-11-25): on the 2-core CPU this finishes in minutes but the held-out pixel F1 is
  # far below the 0.6 target of the demo: a tiny HRFormer trained from scratch for a few hundred
  # steps at 64 px does not yet pick up the synthetic traces. Tuning it is open work (issue 5).
  return c
