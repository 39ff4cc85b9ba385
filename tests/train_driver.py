"""Runs `train.train_and_evaluate` on a tiny config in its own process (for the subprocess tests).

    python tests/train_driver.py WORKDIR OUT_JSON [--step-delay S] [--devices N]
        [--process-id I --num-processes P --coordinator HOST:PORT] [--set key=python_literal ...]

Writes OUT_JSON: the training losses seen by this process (step -> loss/total) and, when training
finished, the number of parameter arrays (and the parameters in `params_<OUT name>.npz` next to it).
"""
import argparse
import ast
import json
import os
import sys

p = argparse.ArgumentParser()
p.add_argument("workdir")
p.add_argument("out")
p.add_argument("--step-delay", type=float, default=0.0)
p.add_argument("--devices", type=int, default=8)
p.add_argument("--process-id", type=int, default=-1)
p.add_argument("--num-processes", type=int, default=1)
p.add_argument("--coordinator", default="")
p.add_argument("--set", action="append", default=[])
args = p.parse_args()
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import time  # noqa: E402

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from mpc_jax import distributed, train  # noqa: E402
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

losses, models = {}, []
_build, _jit_step, _global_batch = train.build_model, train._jit_step, distributed.global_batch


def build_model(cfg):
  models.append(_build(cfg))
  return models[-1]


def _recording(fn):
  def wrapped(state, batch):
    state, m = fn(state, batch)
    losses[int(np.asarray(state.step.addressable_data(0)))] = float(np.asarray(m["loss/total"].addressable_data(0)))
    return state, m
  return wrapped


def jit_step(step, mesh):
  """The trainer's jitted step, recording every loss; `.lower` (the trainer's ahead-of-time
  compile) is the jitted function's own."""
  fn = _jit_step(step, mesh)
  wrapped = _recording(fn)
  wrapped.lower = fn.lower
  return wrapped


def global_batch(local, mesh):
  if args.step_delay:
    time.sleep(args.step_delay)
  return _global_batch(local, mesh)


train.build_model, train._jit_step, distributed.global_batch = build_model, jit_step, global_batch
result = train.train_and_evaluate(config, args.workdir)
out = {"result": result, "losses": losses}
if "preempted" not in result:
  params = {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(models[0], nnx.Param))}
  out["num_params"] = len(params)
  # every process writes its own copy (OUT differs per process), so a test can check they agree
  np.savez(os.path.join(os.path.dirname(args.out), f"params_{os.path.basename(args.out)}.npz"), **params)
with open(args.out, "w") as f:
  json.dump(out, f)
