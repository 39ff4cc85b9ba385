"""`mpc-jax train --config configs/X.py --workdir DIR [--config.field=value ...]`."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import sys

from absl import flags
from ml_collections import config_flags

from mpc_jax.main import UsageError, version_line

USAGE = "usage: mpc-jax train --config configs/demo.py --workdir DIR [--config.FIELD=VALUE ...]"
HELP = f"""{USAGE}

Train stage 1 (pixel-contrastive pre-training) and/or stage 2 (localization head) as the config says,
resuming from the checkpoints in DIR when it holds some.

flags:
  --config FILE[:VARIANT]   a config file with get_config(), relative to the current folder:
                            configs/demo.py (tiny model, synthetic data, both stages, minutes on a CPU),
                            configs/paper.py:catnet_stage1 (or :catnet_stage2, :casiav2_stage1,
                            :casiav2_stage2: the paper's settings)
  --workdir DIR             where checkpoints, TensorBoard logs, model_best/model_latest and results go
  --config.FIELD=VALUE      override a config field, e.g. --config.stage2.num_steps=200
                            or --config.data.input_size=128
  --version                 print the version and exit
  --debug                   show the full traceback of an error
  -h, --help                this help

After training: WORKDIR/model_best is the model for `mpc-jax eval` and `mpc-jax predict`
(`--checkpoint WORKDIR`), `tensorboard --logdir WORKDIR` shows the curves."""
_NOISE = ("Requested `tracked_metric`",)


def _flags():
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config", None, "Training config file (get_config()).", lock_config=True, flag_values=fv
  )
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and models.", flag_values=fv)
  return fv


def resolve_config_arg(argv: list[str]) -> list[str]:
  """`argv` with the `--config` file made absolute (relative to the current folder); a missing
  file is a UsageError that names it."""
  argv = list(argv)
  for i, a in enumerate(argv):
    if a == "--config" and i + 1 < len(argv):
      j, value, prefix = i + 1, argv[i + 1], ""
    elif a.startswith("--config="):
      j, value, prefix = i, a[len("--config=") :], "--config="
    else:
      continue
    path, sep, variant = value.partition(":")
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
      shipped = pathlib.Path(__file__).resolve().parents[1] / "configs"
      hint = f"; the shipped configs are in {shipped}" if shipped.is_dir() else ""
      where = "" if p.is_absolute() else f" (looked in {os.getcwd()})"
      raise UsageError(f"--config {path}: no such file{where}{hint}")
    argv[j] = prefix + str(p.absolute()) + sep + variant
    break
  return argv


def _config_error(e: BaseException, argv) -> str:
  """One line for an error raised while loading the config or applying `--config.X=Y` overrides."""
  if isinstance(e, flags.Error):
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if len(lines) > 1 and "Traceback" in str(e):  # an exception inside get_config()
      return lines[-1].split(": ", 1)[-1]
    return lines[0] if lines else type(e).__name__
  msg = e
  while isinstance(msg, BaseException) and msg.args:
    msg = msg.args[0]
  text = str(msg).replace("\n", "; ")
  key = text.split(";")[0].strip("'\"")
  bad = [a.split("=")[0] for a in argv if a.startswith("--config.") and key in a.split("=")[0].split(".")]
  where = f"{bad[0]}: " if bad else ""
  return f"{where}no config field {key!r}{text[len(key) + 2 :]}" if key and bad else f"{where}{text}"


class _DropNoise(logging.Filter):
  def filter(self, record):
    return not str(record.msg).startswith(_NOISE)


def _exports(config, workdir: pathlib.Path):
  """(model dir, stage) of every model export the run can have written."""
  from mpc_jax.train_config import export_dir

  for stage in config.stages:
    for name in ("model_best", "model_latest"):
      yield export_dir(config, workdir, stage) / name, stage


def use_saved_model_config(config) -> None:
  """When a stage starts from a saved model (`init_from`) whose HRFormer config differs from
  `config.model`'s, the saved one is used (it is what the weights fit), with a note."""
  from mpc_jax.checkpoint import read_model_config
  from mpc_jax.models import get_hrformer_config
  from mpc_jax.train_config import hrformer_config

  m = config.model
  ours = get_hrformer_config(hrformer_config(m))
  for stage in config.stages:
    init = config[stage].init_from
    if not init:
      continue
    try:
      saved = read_model_config(init)["hrformer_config"]
    except (FileNotFoundError, ValueError):
      continue  # the trainer reports a missing init_from
    strip = lambda c: {k: v for k, v in c.items() if k != "DROP_PATH_RATE"}  # noqa: E731
    if strip(saved) != strip(ours):
      saved = dict(saved, DROP_PATH_RATE=ours.get("DROP_PATH_RATE", saved.get("DROP_PATH_RATE", 0.0)))
      m.hrformer_json = json.dumps(saved)
      print(
        f"mpc-jax train: note: config.{stage}.init_from={init} was saved with another HRFormer config "
        f"than config.model ({m.hrformer!r}); using the saved one",
        file=sys.stderr,
      )
      return


def summary(config, workdir: pathlib.Path, result: dict) -> str:
  """Closing lines: where the model, the results and the TensorBoard logs went."""
  lines = ["", "written:"]
  models = [str(d) for d, _ in _exports(config, workdir) if d.is_dir()]
  if models:
    lines.append(f"  models       {', '.join(models)}")
  result_file = workdir / config.result_file
  if config.result_file and result_file.is_file():
    lines.append(f"  results      {result_file}")
  if (workdir / "samples").is_dir():
    lines.append(f"  samples      {workdir / 'samples'}/")
  lines.append(f"  checkpoints  {', '.join(str(workdir / s / 'checkpoints') for s in config.stages)}")
  lines.append(f"  TensorBoard  tensorboard --logdir {workdir}")
  if models and list(config.stages)[-1] == "stage1":
    lines.append(
      f"next: stage 2 from this backbone, --config.stage2.init_from={workdir} (its head is untrained)"
    )
  elif models:
    lines.append(f"next: mpc-jax predict IMAGES --checkpoint {workdir} --out predictions/")
  return "\n".join(lines)


def cli_main(argv) -> int:
  argv = list(argv)
  if any(a in ("-h", "--help", "--helpfull", "-help") for a in argv):
    print(HELP)
    return 0
  if "--version" in argv:
    print(version_line())
    return 0
  argv = [a for a in argv if a != "--debug"]
  fv = _flags()
  argv = resolve_config_arg(argv)
  try:
    fv(["mpc-jax train"] + argv)
  except flags.Error as e:
    raise UsageError(_config_error(e, argv)) from e
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # a bad --config.X=Y override
    raise UsageError(_config_error(e, argv)) from e
  if fv.config is None or not fv.workdir:
    raise UsageError(f"--config and --workdir are required\n{USAGE}")
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.INFO)
  logging.getLogger().setLevel(logging.INFO)
  for noisy in ("orbax", "jax", "grain", "absl"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  logging.getLogger("absl").addFilter(_DropNoise())
  use_saved_model_config(fv.config)
  from mpc_jax import train

  workdir = pathlib.Path(fv.workdir).expanduser().absolute()
  result = train.train_and_evaluate(fv.config, workdir)
  for mdir, stage in _exports(fv.config, workdir):
    if (mdir / "model_config.json").is_file():
      from mpc_jax.checkpoint import record_training
      from mpc_jax.train_config import stage_data_config

      record_training(
        mdir, {"input_size": int(stage_data_config(fv.config, stage).input_size), "stage": stage}
      )
  if "preempted" in result:
    print(f"stopped at step {result['preempted']} by a termination signal; rerun the same command to resume")
    return 0
  print(summary(fv.config, workdir, result))
  return 0
