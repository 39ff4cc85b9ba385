"""Shared by the tests: a training config small enough to compile and run in seconds on 2 cores, and
the time limit of every subprocess a test starts."""

import json
import os

from mpc_jax.train_config import base_config

# The smallest HRFormer of the reference's layout: one module per stage, one block per branch.
TINY_HRFORMER = {
  "DROP_PATH_RATE": 0.1,
  "STAGE1": {
    "NUM_MODULES": 1,
    "NUM_BRANCHES": 1,
    "NUM_BLOCKS": [1],
    "NUM_CHANNELS": [8],
    "BLOCK": "BOTTLENECK",
  },
  "STAGE2": {
    "NUM_MODULES": 1,
    "NUM_BRANCHES": 2,
    "NUM_BLOCKS": [1, 1],
    "NUM_CHANNELS": [8, 16],
    "NUM_HEADS": [1, 1],
    "NUM_MLP_RATIOS": [2, 2],
    "NUM_WINDOW_SIZES": [4, 4],
    "BLOCK": "TRANSFORMER_BLOCK",
  },
  "STAGE3": {
    "NUM_MODULES": 1,
    "NUM_BRANCHES": 3,
    "NUM_BLOCKS": [1, 1, 1],
    "NUM_CHANNELS": [8, 16, 16],
    "NUM_HEADS": [1, 1, 1],
    "NUM_MLP_RATIOS": [2, 2, 2],
    "NUM_WINDOW_SIZES": [4, 4, 4],
    "BLOCK": "TRANSFORMER_BLOCK",
  },
  "STAGE4": {
    "NUM_MODULES": 1,
    "NUM_BRANCHES": 4,
    "NUM_BLOCKS": [1, 1, 1, 1],
    "NUM_CHANNELS": [8, 16, 16, 16],
    "NUM_HEADS": [1, 1, 1, 1],
    "NUM_MLP_RATIOS": [2, 2, 2, 2],
    "NUM_WINDOW_SIZES": [4, 4, 4, 4],
    "BLOCK": "TRANSFORMER_BLOCK",
  },
}


# XLA:CPU compile options for the tests' tiny programs, which compile about 1.7x faster with them and
# run as correctly: LLVM's optimisation passes off, and the older elemental emitters for fusions
# instead of the MLIR ones. Production code keeps XLA's defaults: at HRT-base size these options
# make the forward 3.9x slower per call and compile no faster (`python bench/bench_compile.py`).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def timeout_s(base_s: float) -> float:
  """The time limit of a test's subprocess: `base_s` times MPC_JAX_TEST_TIMEOUT_SCALE (default 1).
  Each `base_s` is sized for a machine three times slower than the loaded 2-core development
  machine (a cold compilation cache included); set the variable above 1 on slower machines. A limit
  only stops a hung run: no test asserts how long anything took."""
  return float(base_s) * float(os.environ.get("MPC_JAX_TEST_TIMEOUT_SCALE", "1"))


def tiny_config(stages=("stage1", "stage2")):
  c = base_config()
  c.stages = tuple(stages)
  c.model.hrformer_json = json.dumps(TINY_HRFORMER)
  c.data.input_size = 32
  c.data.augment = False
  c.data.read_threads = 1
  c.data.synthetic.num = 64
  c.data.synthetic.size = 32
  c.data.synthetic.difficulty = 0.2
  c.data.val_sources = ("synthetic:8:777:32:0.2",)
  for s in ("stage1", "stage2"):
    sc = c[s]
    sc.num_steps = 4
    sc.batch_size = 8
    sc.eval_batch_size = 8
    sc.log_every = 2
    sc.eval_every = 1000
    sc.checkpoint_every = 2
    sc.lr = 1e-3
  c.stage1.loss.num_samples = 512
  c.stage1.kmeans.num_init = 2
  c.stage1.kmeans.max_iter = 5
  c.final_eval = False
  c.print_progress = False
  c.result_file = ""
  return c
