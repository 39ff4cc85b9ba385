"""`mpc-jax train --config configs/X.py --workdir DIR [--config.field=value ...]`."""
from __future__ import annotations

import logging
import sys

from absl import flags
from ml_collections import config_flags


def _flags():
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "Training config file (get_config()).",
                                  lock_config=True, flag_values=fv)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and models.", flag_values=fv)
  return fv


def cli_main(argv) -> int:
  fv = _flags()
  try:
    fv(["mpc-jax train"] + list(argv))
  except flags.Error as e:
    print(f"mpc-jax train: {e}\n\nusage: mpc-jax train --config configs/demo.py --workdir DIR "
          "[--config.field=value ...]", file=sys.stderr)
    return 2
  if fv.config is None or not fv.workdir:
    print("mpc-jax train: --config and --workdir are required", file=sys.stderr)
    return 2
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.INFO)
  logging.getLogger().setLevel(logging.INFO)
  for noisy in ("orbax", "jax", "grain", "absl"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from mpc_jax import train

  result = train.train_and_evaluate(fv.config, fv.workdir)
  if "preempted" in result:
    print(f"stopped at step {result['preempted']} by a termination signal; rerun the same command to resume")
  return 0
