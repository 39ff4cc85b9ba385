"""Shared bits of the benchmarks: timing, a machine description, table + JSON output."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from mpc_jax import host_memory  # noqa: E402

# What `mpc-jax train/eval/predict` do before JAX makes its CPU client; the benches measure that setting.
RETAINED_FREED_MEMORY = host_memory.retain_freed_memory()
RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def machine() -> dict:
  dev = jax.devices()[0]
  return {
    "platform": dev.platform,
    "device": dev.device_kind,
    "devices": jax.device_count(),
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "retained_freed_memory": RETAINED_FREED_MEMORY,
  }


def provenance() -> dict:
  """When, at which commit (`-dirty` with uncommitted changes to tracked files other than results)
  and with which command line a result was measured."""
  from mpc_jax.train import run_provenance

  return run_provenance(_command())


def _command() -> str:
  """This process's command line, the script's path relative to the repository."""
  argv = list(sys.argv)
  try:
    argv[0] = str(pathlib.Path(argv[0]).resolve().relative_to(RESULTS.parents[1]))
  except ValueError:
    pass
  return " ".join(["python", *argv])


def write_result(path: pathlib.Path, payload: dict, units: dict, quiet: bool = False) -> pathlib.Path:
  """Writes `payload` to `path` as JSON with `provenance` (date, commit, command line) and `units`
  (field name -> unit of its values) first; says so unless `quiet`."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"provenance": provenance(), "units": units, **payload}, indent=1) + "\n")
  if not quiet:
    print(f"wrote {path}")
  return path


def compile_forward(hrformer: str, size: int, depthwise: str = "auto") -> dict:
  """An eval-mode MPC forward on one random `[1, size, size, 3]` image, lowered and compiled:
  `compiled`, `args` (call it as `compiled(*args)`), `build_s`, `lower_s`, `compile_s`."""
  import numpy as np
  from flax import nnx

  from mpc_jax.models import build_mpc

  t0 = time.perf_counter()
  model = build_mpc(hrformer, depthwise=depthwise)
  model.eval()
  graphdef, state = nnx.split(model)
  t1 = time.perf_counter()
  fn = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x))
  x = jax.numpy.asarray(np.random.default_rng(0).random((1, size, size, 3), np.float32))
  lowered = fn.lower(state, x)
  t2 = time.perf_counter()
  compiled = lowered.compile()
  t3 = time.perf_counter()
  return dict(compiled=compiled, args=(state, x), build_s=t1 - t0, lower_s=t2 - t1, compile_s=t3 - t2)


def step_runner(compiled, state, batch):
  """`run()`: one call of a compiled training step on `batch`, returning its metrics. The step donates
  its state, so each call passes on the state the previous one returned."""
  holder = [state]

  def run():
    holder[0], metrics = compiled(holder[0], batch)
    return metrics

  return run


def time_fn(fn, *args, warmup: int = 1, repeats: int = 5) -> dict:
  """Median/min wall seconds of `fn(*args)` (blocked on its outputs) after `warmup` calls."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  for _ in range(warmup - 1):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return {"first_call_s": first, "median_s": statistics.median(times), "min_s": min(times), "runs": repeats}


def report(
  name: str, rows: list[dict], columns: list[str], units: dict, extra: dict | None = None
) -> pathlib.Path:
  """Prints `rows` as a Markdown table and writes them with the machine facts, the provenance and
  the `units` of the row fields to results/NAME.json."""
  print("| " + " | ".join(columns) + " |")
  print("|" + "---|" * len(columns))
  for row in rows:
    cells = [f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
    print("| " + " | ".join(cells) + " |")
  return write_result(RESULTS / f"{name}.json", {"machine": machine(), "rows": rows, **(extra or {})}, units)
