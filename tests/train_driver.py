"""Runs `train.train_and_evaluate` on a tiny config in its own process (for the subprocess tests),
with `small_model.SmallBackbone` in place of the HRFormer: these tests are about the loop (resume,
preemption, several processes), and the small model compiles in seconds.

    python tests/train_driver.py WORKDIR OUT_JSON [--signal-at STAGE:STEP [--signal TERM|KILL]]
        [--devices N] [--process-id I --num-processes P --coordinator HOST:PORT]
        [--set key=python_literal ...]

Writes OUT_JSON: the training losses seen by this process (step -> loss/total) and, when training
finished, the number of parameter arrays (and the parameters in `params_<OUT name>.npz` next to it).

`--signal-at stage1:3` sends SIGTERM (or SIGKILL with `--signal KILL`) to this process from the
trainer's `on_step` hook right after step 3 of stage 1: the signal lands at that step whatever the
machine's speed. With SIGTERM the trainer saves step 3 and stops; OUT_JSON is written as usual.
"""

import argparse
import ast
import json
import os
import sys

p = argparse.ArgumentParser()
p.add_argument("workdir")
p.add_argument("out")
p.add_argument("--signal-at", default="", help="STAGE:STEP after which to signal this process")
p.add_argument("--signal", choices=("TERM", "KILL"), default="TERM")
p.add_argument("--devices", type=int, default=8)
p.add_argument("--process-id", type=int, default=-1)
p.add_argument("--num-processes", type=int, default=1)
p.add_argument("--coordinator", default="")
p.add_argument("--set", action="append", default=[])
args = p.parse_args()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_testlib import TEST_XLA_FLAGS  # noqa: E402

os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices} {TEST_XLA_FLAGS}"
os.environ["JAX_PLATFORMS"] = "cpu"

import signal  # noqa: E402

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from mpc_jax import train  # noqa: E402
from small_model import build_small_model  # noqa: E402
from train_testlib import tiny_config  # noqa: E402

config = tiny_config()
for kv in args.set:
  key, value = kv.split("=", 1)
  node = config
  *parents, leaf = key.split(".")
  for name in parents:
    node = node[name]
  node[leaf] = ast.literal_eval(value)
if args.process_id >= 0:
  config.distributed.enabled = True
  config.distributed.coordinator_address = args.coordinator
  config.distributed.num_processes = args.num_processes
  config.distributed.process_id = args.process_id

losses = {}
signal_stage, _, signal_step = args.signal_at.partition(":")


def on_step(stage, step, metrics):
  """Records every loss; sends the requested signal to this process at the requested step."""
  losses[step] = float(np.asarray(metrics["loss/total"].addressable_data(0)))
  if stage == signal_stage and step == int(signal_step):
    os.kill(os.getpid(), getattr(signal, f"SIG{args.signal}"))


models = []


def build_model(cfg):
  """The trainer's model, kept to save its parameters afterwards."""
  models.append(build_small_model(cfg))
  return models[-1]


result = train.train_and_evaluate(config, args.workdir, build_model=build_model, on_step=on_step)
out = {"result": result, "losses": losses}
if "preempted" not in result:
  params = {
    "/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(models[0], nnx.Param))
  }
  out["num_params"] = len(params)
  # every process writes its own copy (OUT differs per process), so a test can check they agree
  np.savez(os.path.join(os.path.dirname(args.out), f"params_{os.path.basename(args.out)}.npz"), **params)
with open(args.out, "w") as f:
  json.dump(out, f)
