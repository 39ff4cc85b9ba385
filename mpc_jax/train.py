"""Training: the loop of MPC's two stages, `train_and_evaluate(config, workdir)`.

Stage 1 (`stage1`) pre-trains the backbone with the multi-view pixel contrast; validation runs k-means
(k=2, cosine) on the fused features, the smaller cluster is forged; reduce-on-plateau on its score.
Stage 2 (`stage2`) starts from a stage-1 model (ours or a converted PyTorch one) and trains the parameters
matched by `trainable` (the head by default) with the sigmoid focal loss; the frozen backbone runs in train
mode as in the reference (`backbone_mode='eval'` freezes it fully); cosine annealing per validation. AdamW
in both. Steps: `mpc_jax.steps`; a restart resumes from the latest checkpoint (`mpc_jax.train_state`) and
SIGTERM saves and stops; exports for `mpc-jax eval/predict`: `model_best` / `model_latest` (`export_dir`).
"""

from __future__ import annotations

import json
import logging
import pathlib
import re
import subprocess
import sys
import time
from typing import Callable

import jax
import ml_collections
import numpy as np
from flax import nnx

from mpc_jax import compile_cache, distributed, schedules, steps, validate
from mpc_jax import train_state as ts
from mpc_jax.train_config import export_dir, hrformer_config, stage_data_config

log = logging.getLogger(__name__)

STAGES = ("stage1", "stage2")
# The units of the result file's fields (`<source>/...`: per validation source).
RESULT_UNITS = {
  "wall_s": "s",
  "f1": "fraction (pixel F1 at threshold 0.5, mean over forged images)",
  "iou": "fraction (pixel IoU, the same protocol)",
  "score": "fraction (mean of F1s and IoUs)",
  "<source>/f1, <source>/iou": "fraction",
  "<source>/f1_all, <source>/iou_all": "fraction (mean over all images)",
  "<source>/num": "images",
}


class Preempted(Exception):
  """Raised after a termination signal once the checkpoint is written."""


def build_model(config):
  """The MPC model of `config.model` (random init from the `model` seed)."""
  from mpc_jax.models import build_mpc

  m = config.model
  dpr = float(m.drop_path_rate)
  return build_mpc(
    hrformer_config(m),
    m.head,
    dtype=m.dtype,
    seed=steps.rng_seeds(config)["model"],
    drop_path_rate=None if dpr < 0 else dpr,
    remat=bool(m.remat),
    depthwise=m.depthwise,
  )


def load_matching(model, path: str, skip: str = "") -> dict:
  """Copies the parameters / statistics of the model saved at `path` into `model` where path and
  shape match (the reference's stage-2 `load`); `skip` is a regex of paths not to load."""
  from mpc_jax.checkpoint import load_model

  src = load_model(path)
  skip_rx = re.compile(skip) if skip else None
  src_flat = {ts.path_str(k): v for k, v in nnx.to_flat_state(nnx.state(src, nnx.Not(nnx.RngState)))}
  dst = nnx.state(model, nnx.Not(nnx.RngState))
  loaded, missing, mismatched = 0, [], []
  for k, var in nnx.to_flat_state(dst):
    name = ts.path_str(k)
    if skip_rx is not None and skip_rx.search(name):
      continue
    if name not in src_flat:
      missing.append(name)
    elif src_flat[name][...].shape != var[...].shape:
      mismatched.append(name)
    else:
      var.set_value(np.asarray(src_flat[name][...], dtype=np.asarray(var[...]).dtype))
      loaded += 1
  nnx.update(model, dst)
  log.info(
    "loaded %d arrays from %s (%d missing, %d mismatched shape)", loaded, path, len(missing), len(mismatched)
  )
  if missing:
    log.info("not in %s: %s%s", path, missing[:8], " ..." if len(missing) > 8 else "")
  return {"loaded": loaded, "missing": missing, "mismatched": mismatched}


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir,
  *,
  build_model: Callable = build_model,
  writer=None,
  make_step: Callable = steps.make_step,
  on_step: Callable | None = None,
) -> dict:
  """Runs `config.stages` in order in `workdir`, then evaluates the final model on
  `config.data.val_sources` (the held-out set) and writes `workdir/<config.result_file>`: the final
  metrics (`f1`, `iou`, ...), `wall_s` (seconds from model building to the end of the final
  evaluation), `provenance` (date, commit, command line) and `units`.

  Seams: `build_model(config)` (called once JAX is initialised; the model is trained in place),
  `writer` (a clu metric writer;
  default: TensorBoard files and the log in `workdir`), `make_step(stage, parts, config, mesh)`
  (default `steps.make_step`) and `on_step(stage, step, metrics)`, called on the host after every
  step (after its validation, before the termination check and that step's checkpoint) with the
  step's outputs (`loss/total`, ... as replicated arrays): a signal it sends to its own process is
  acted on at that very step.

  Returns the final metrics (or `{'preempted': step}` when stopped by SIGTERM)."""
  workdir = pathlib.Path(workdir).absolute()
  for stage in config.stages:
    if stage not in STAGES:
      raise ValueError(f"config.stages: unknown stage {stage!r} (expected some of {STAGES})")
  if config.model.remat:
    distributed.keep_remat_barriers_on_cpu()
  distributed.maybe_initialize(config.distributed)
  compile_cache.enable(config.compilation_cache_dir or None)
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))
  mesh = distributed.make_mesh(int(config.mesh_devices))
  if writer is None:
    from mpc_jax import tb_writer

    writer = tb_writer.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  writer.write_hparams(_flat_config(config))
  t0 = time.time()
  provenance = run_provenance()  # the code as it starts (a checkout may change during the run)
  model = build_model(config)
  final = {}
  with jax.set_mesh(mesh):
    try:
      for i, stage in enumerate(config.stages):
        _init_stage(config, i, workdir, model)
        train_stage(config, stage, workdir, model, mesh, writer, make_step, on_step)
    except Preempted as e:
      writer.close()
      return {"preempted": e.args[0]}
    if config.final_eval and config.data.val_sources:
      final = final_evaluation(config, workdir, model, mesh, config.stages[-1], writer)
  final.update(wall_s=time.time() - t0, provenance=provenance, units=RESULT_UNITS)
  if jax.process_index() == 0 and config.result_file:
    (workdir / config.result_file).write_text(json.dumps(final, indent=1))
  writer.close()
  return final


def _init_stage(config, index: int, workdir: pathlib.Path, model) -> None:
  """Before a stage's first step: loads `init_from` (default: the previous stage's best model)."""
  stage = config.stages[index]
  init = config[stage].init_from
  if not init and index > 0:
    prev = export_dir(config, workdir, config.stages[index - 1])
    init = str(prev / "model_best") if (prev / "model_best").exists() else str(prev / "model_latest")
  if not init or ts.stage_started(workdir / stage):
    return
  if pathlib.Path(init).exists():
    load_matching(model, init, config[stage].init_skip)
  elif config[stage].init_from:
    raise FileNotFoundError(f"config.{stage}.init_from: {init} does not exist")


def train_stage(
  config,
  stage: str,
  workdir: pathlib.Path,
  model,
  mesh,
  writer,
  make_step: Callable = steps.make_step,
  on_step: Callable | None = None,
) -> dict:
  """Trains one stage to `config.<stage>.num_steps`, resuming from its checkpoints, and leaves the
  trained values in `model`; returns the last validation metrics (empty when nothing ran)."""
  scfg = config[stage]
  state, parts = ts.create_state(model, scfg, mesh)
  step_fn = make_step(stage, parts, config, mesh)
  sched = schedules.make_schedule(scfg.schedule, float(scfg.lr))
  data_it = _train_iterator(config, stage, mesh)
  mngr = ts.make_checkpoint_manager(workdir / stage / "checkpoints", scfg)
  meta = {"schedule": sched.state_dict(), "best_score": None, "stage": stage}
  if mngr.latest_step() is not None:
    state, meta = ts.restore_checkpoint(mngr, mngr.latest_step(), state, data_it)
    sched.load_state_dict(meta["schedule"])
    log.info("%s: resumed from step %d (%s)", stage, int(state.step), mngr.directory)
  state = ts.set_learning_rate(state, sched.lr, mesh)
  val = _Validation(config, stage, parts, mesh, writer, export_dir(config, workdir, stage))
  progress = _Progress(config, stage, writer, start=int(state.step), num_devices=mesh.devices.size)
  guard = distributed.PreemptionGuard()
  step, num_steps, preempted = int(state.step), int(scfg.num_steps), False
  inputs = steps.STEP_INPUTS[stage]
  while step < num_steps and not preempted:
    batch = distributed.global_batch({k: v for k, v in next(data_it).items() if k in inputs}, mesh)
    if step == progress.start:
      # Compile before the first step (the call below reuses this executable), then wait for every
      # process: one that finished compiling first would sit in the step's first collective while
      # the others compile, past its timeout (seen with gloo).
      t0 = time.time()
      lowered = step_fn.lower(state, batch)
      t1 = time.time()
      if config.compile_in_child:
        where = compile_cache.compile_in_child(lowered)[1]
      else:
        lowered.compile()
        where = "here"
      note = {"child": " (by a child process)", "cache": " (read from the compilation cache)"}.get(where, "")
      console(config, f"{stage} step compiled: lower {t1 - t0:.1f} s, compile {time.time() - t1:.1f} s{note}")
      distributed.barrier(f"{stage} step compiled")
      progress.restart_clock()  # steps/s and the ETA count steps, not the compile
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      state, metrics = step_fn(state, batch)
    step += 1
    progress.update(step, metrics)
    score = None
    if val.sources and (step % int(scfg.eval_every) == 0 or step == num_steps):
      score = val.run(state, step, meta, sched)
      state = ts.set_learning_rate(state, sched.lr, mesh)
      progress.restart_clock()
    if on_step is not None:
      on_step(stage, step, metrics)
    preempted = guard.should_stop()
    if score is not None or step % int(scfg.checkpoint_every) == 0 or step == num_steps or preempted:
      ts.save_checkpoint(
        mngr, state, data_it, meta, force=True, metrics=None if score is None else {"score": score}
      )
  mngr.wait_until_finished()
  mngr.close()
  guard.restore()
  writer.flush()
  if preempted:
    log.warning("%s: stopped at step %d after a termination signal (checkpoint saved)", stage, step)
    raise Preempted(step)
  nnx.update(model, nnx.state(ts.merge_model(parts, ts.host_copy(state), train=False)))
  if progress.ran and config.export_models:
    _export(model, val.export_dir, "model_latest")
  return val.last


class _Progress:
  """Logs mean step metrics every `log_every` steps: TensorBoard scalars (with `steps_per_sec`,
  `examples_per_sec` and `uptime`, seconds since the stage started) and one console line with
  steps/s and the ETA."""

  def __init__(self, config, stage, writer, start: int, num_devices: int):
    self.config, self.stage, self.writer, self.start = config, stage, writer, start
    self.num_steps, self.every = int(config[stage].num_steps), int(config[stage].log_every)
    self.batch_size = int(config[stage].batch_size)
    self.pending, self.ran, self.t0 = [], False, time.time()
    self.restart_clock()
    if start >= self.num_steps:
      log.info("%s: already at step %d of %d", stage, start, self.num_steps)
    else:
      log.info(
        "%s: training steps %d..%d, global batch %d on %d devices",
        stage,
        start,
        self.num_steps,
        self.batch_size,
        num_devices,
      )

  def restart_clock(self):
    self.t, self.t_step = time.time(), None

  def update(self, step: int, metrics: dict) -> None:
    self.ran = True
    self.pending.append(metrics)
    if self.t_step is None:
      self.t_step = step - 1
    if step % self.every and step != self.num_steps:
      return
    mean = jax.tree.map(
      lambda *xs: float(np.mean([float(np.asarray(x.addressable_data(0))) for x in xs])), *self.pending
    )
    self.pending = []
    sps = (step - self.t_step) / max(time.time() - self.t, 1e-9)
    mean.update(steps_per_sec=sps, examples_per_sec=sps * self.batch_size, uptime=time.time() - self.t0)
    self.writer.write_scalars(step, {f"{self.stage}/{k}": v for k, v in mean.items()})
    eta = (self.num_steps - step) / max(sps, 1e-9)
    console(
      self.config,
      f"{self.stage} step {step}/{self.num_steps} loss {mean['loss/total']:.4f} "
      f"lr {mean['lr']:.2e} | {sps:.2f} steps/s {sps * self.batch_size:.1f} ex/s "
      f"ETA {_fmt_time(eta)}",
    )
    self.restart_clock()
    self.t_step = step


def _predict_fn(parts, config, stage: str, mesh):
  """`steps.make_predict_fn`, compiled by a child process where `config.compile_in_child` (on the CPU, a
  program compiled by the training process slows its steps down, as the steps' own compile would)."""
  fn = steps.make_predict_fn(parts, config, stage, mesh)
  return compile_cache.compiled_by_child(fn) if config.compile_in_child else fn


class _Validation:
  """Scores the model on `config.data.val_sources`, steps the schedule, tracks and exports the best."""

  def __init__(self, config, stage, parts, mesh, writer, export_to: pathlib.Path):
    self.config, self.stage, self.parts, self.mesh, self.writer = config, stage, parts, mesh, writer
    self.export_dir = export_to
    self.sources = validate.build_val_sources(config.data)
    self.predict_fn = _predict_fn(parts, config, stage, mesh)
    self.last: dict = {}

  def run(self, state, step: int, meta: dict, sched) -> float:
    """Validates `state` at `step`; updates `meta` (schedule, best score) and `sched`; returns the score."""
    scalars, samples = validate.evaluate(
      self.predict_fn,
      state,
      self.config.data,
      self.sources,
      batch_size=int(self.config[self.stage].eval_batch_size),
      mesh=self.mesh,
      num_images=int(self.config.num_sample_images),
    )
    lr = sched.step(scalars["score"])
    meta["schedule"] = sched.state_dict()
    is_best = meta["best_score"] is None or scalars["score"] > meta["best_score"]
    if is_best:
      meta["best_score"] = scalars["score"]
    self.writer.write_scalars(step, {f"{self.stage}/val/{k}": v for k, v in scalars.items()})
    if samples is not None:
      self.writer.write_images(step, {f"{self.stage}/val/samples": samples})
    console(
      self.config,
      f"{self.stage} val step {step}: F1 {scalars['f1']:.4f} IoU {scalars['iou']:.4f} "
      f"score {scalars['score']:.4f}{' (best)' if is_best else ''} next lr {lr:.2e}",
    )
    if is_best and self.config.export_models:
      _export(ts.merge_model(self.parts, ts.host_copy(state), train=False), self.export_dir, "model_best")
    self.last = scalars
    return scalars["score"]


def _export(model, directory: pathlib.Path, name: str):
  if jax.process_index() != 0:
    return
  from mpc_jax.checkpoint import save_model

  try:
    save_model(model, directory / name)
  except Exception:  # noqa: BLE001 - an export failure must not lose the training run
    log.exception("could not export %s to %s", name, directory)


def console(config, line: str, always: bool = False) -> None:
  """One console line: printed by process 0 (with `print_progress`, or `always`), else logged."""
  if jax.process_index() == 0 and (always or config.print_progress):
    print(line, flush=True)
  else:
    log.info(line)


def _fmt_time(s: float) -> str:
  s = int(s)
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _train_iterator(config, stage, mesh):
  """This process's iterator over its block of `config.<stage>.batch_size` (global) batches."""
  from mpc_jax.data.pipeline import make_train_iterator

  batch_size = int(config[stage].batch_size)
  block, num_blocks = distributed.process_batch_block(batch_size, mesh)
  return make_train_iterator(
    stage_data_config(config, stage),
    seed=steps.rng_seeds(config)[f"data/{stage}"],
    process_index=block,
    process_count=num_blocks,
    batch_size_per_process=distributed.local_batch_size(batch_size, mesh),
  )


def final_evaluation(config, workdir, model, mesh, stage, writer) -> dict:
  """Evaluates `model` (eval mode) on `config.data.val_sources`; writes sample PNGs."""
  scfg = config[stage]
  state, parts = ts.create_state(model, scfg, mesh)
  model.eval()
  predict_fn = _predict_fn(parts, config, stage, mesh)
  sources = validate.build_val_sources(config.data)
  scalars, samples = validate.evaluate(
    predict_fn,
    state,
    config.data,
    sources,
    batch_size=int(scfg.eval_batch_size),
    mesh=mesh,
    num_images=int(config.num_sample_images),
  )
  if samples is not None and jax.process_index() == 0:
    from PIL import Image

    out = workdir / "samples"
    out.mkdir(exist_ok=True)
    for i, tile in enumerate(samples):
      Image.fromarray((np.clip(tile, 0, 1) * 255).astype(np.uint8)).save(out / f"sample_{i}.png")
    writer.write_images(int(scfg.num_steps), {"final/samples": samples})
  writer.write_scalars(int(scfg.num_steps), {f"final/{k}": v for k, v in scalars.items()})
  console(
    config,
    f"final ({stage}) on held-out {', '.join(name for name, _ in sources)}: "
    f"pixel F1 {scalars['f1']:.4f} IoU {scalars['iou']:.4f} (threshold 0.5, mean over forged images)",
    always=True,
  )
  return {"stage": stage, **scalars}


def run_provenance(command: str | None = None) -> dict:
  """When, at which commit of this package (`-dirty` with uncommitted changes to tracked files
  other than bench/results; `unknown` outside a git checkout) and with which command line (default:
  this process's) a result was produced."""
  src = pathlib.Path(__file__).resolve().parent

  def git(*args):
    return subprocess.run(
      ["git", *args], cwd=src, capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()

  try:
    commit = git("rev-parse", "--short", "HEAD")
    if git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":(exclude,top)bench/results"):
      commit += "-dirty"
  except (OSError, subprocess.SubprocessError):
    commit = "unknown"
  if command is None:
    command = " ".join([pathlib.Path(sys.argv[0]).name, *sys.argv[1:]])
  return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": commit, "command": command}


def _flat_config(config) -> dict:
  out = {}

  def walk(prefix, d):
    for k, v in d.items():
      if isinstance(v, (dict, ml_collections.ConfigDict)):
        walk(f"{prefix}{k}.", v)
      elif isinstance(v, (int, float, str, bool)):
        out[f"{prefix}{k}"] = v

  walk("", config)
  return out
