"""Shared bits of the benchmarks: timing, a machine description, table + JSON output."""
from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import jax

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def machine() -> dict:
  dev = jax.devices()[0]
  return {"platform": dev.platform, "device": dev.device_kind, "devices": jax.device_count(),
          "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__}


def provenance() -> dict:
  """When, at which commit and with which command line a result was measured."""
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=RESULTS.parent, capture_output=True,
                            text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit = "unknown"
  return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": commit, "command": " ".join(sys.argv)}


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


def report(name: str, rows: list[dict], columns: list[str], extra: dict | None = None) -> pathlib.Path:
  """Prints `rows` as a Markdown table and writes them with the machine facts to results/NAME.json."""
  print("| " + " | ".join(columns) + " |")
  print("|" + "---|" * len(columns))
  for row in rows:
    cells = [f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
    print("| " + " | ".join(cells) + " |")
  RESULTS.mkdir(parents=True, exist_ok=True)
  out = RESULTS / f"{name}.json"
  out.write_text(json.dumps({**provenance(), "machine": machine(), "rows": rows, **(extra or {})}, indent=1))
  print(f"wrote {out}")
  return out
