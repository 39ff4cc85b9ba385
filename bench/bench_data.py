"""Input pipeline throughput: ArrayRecord shards (`mpc-jax prepare`) against one file per image.

    python bench/bench_data.py [--num-images 32] [--examples 64] [--batch 8] [--repeats 3] [--name data]

Per example, for both readers: read + decode a 512x512 synthetic forgery (PNG files, or the same bytes in
shards), the reference augmentation chain with probability 0.75, resize to 512 / mask to 128. Rows: read +
decode only (one thread), the full example in one Python thread (= examples/s per host core) and the grain
pipeline (2 threads), each the best of `--repeats` runs (other jobs only ever slow a run down), and how
many host cores keep up with the training step rates (`step_rates`). Writes bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from bench.common import RESULTS, report  # noqa: E402


def step_rates() -> dict:
  """{'stage1'|'stage2': (images/s, 'file: row')} of HRT-base at 512 px from the train results.

  GPU rows where present, else the fastest CPU row; the cores that keep up with a stage are
  ceil(its images/s / examples/s per core).
  """
  best = {}
  files = sorted(glob.glob(str(RESULTS / "train_*.json")))
  gpu = [f for f in files if "_gpu_" in os.path.basename(f)]
  for f in gpu + [f for f in files if f not in gpu]:
    with open(f) as fh:
      d = json.load(fh)
    kind = d.get("machine", {}).get("device", "?")
    for r in d.get("rows", []):
      if (
        r.get("model") != "hrt_base"
        or not str(r.get("input", "")).endswith("512x512")
        or not r.get("images_per_s")
      ):
        continue
      st = r["stage"]
      is_gpu = f in gpu
      cur = best.get(st)
      if cur is None or (is_gpu and not cur[2]) or (is_gpu == cur[2] and r["images_per_s"] > cur[0]):
        best[st] = (float(r["images_per_s"]), f"{os.path.basename(f)} ({kind}, batch {r['input']})", is_gpu)
  return {k: (v[0], v[1]) for k, v in best.items()}


def bench_read(src, n) -> float:
  order = np.random.default_rng(0).permutation(len(src))
  src[int(order[0])]  # warm-up (lazy imports, opening shards)
  t = time.perf_counter()
  for k in range(n):
    src[int(order[k % len(order)])]
  return n / (time.perf_counter() - t)


def bench_loop(src, examples, batch) -> float:
  from mpc_jax.data.pipeline import train_batch_fn
  from mpc_jax.data.transforms import TrainTransform

  tr = TrainTransform(512, 4, augment=True)
  rng = np.random.default_rng(0)
  order = rng.permutation(len(src))
  tr.random_map(src[0], rng)  # warm-up
  t = time.perf_counter()
  done, k = 0, 0
  while done < examples:
    items = []
    for _ in range(batch):
      items.append(tr.random_map(src[int(order[k % len(order)])], rng))
      k += 1
    train_batch_fn(items)
    done += batch
  return done / (time.perf_counter() - t)


def bench_grain(spec, threads, examples, batch) -> float:
  from mpc_jax.data import pipeline

  cfg = pipeline.default_data_config()
  cfg.sources = [{"spec": spec, "weight": 1.0}]
  cfg.input_size, cfg.augment = 512, True
  cfg.num_workers, cfg.read_threads, cfg.read_prefetch = 0, threads, 16
  it = pipeline.make_train_iterator(
    cfg, seed=0, process_index=0, process_count=1, batch_size_per_process=batch
  )
  next(it)  # start-up not counted
  n_batches = max(1, examples // batch)
  t = time.perf_counter()
  for _ in range(n_batches):
    b = next(it)
  dt = time.perf_counter() - t
  assert b["image"].shape == (batch, 512, 512, 3)
  return n_batches * batch / dt


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--num-images", type=int, default=32)
  p.add_argument("--examples", type=int, default=64)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--repeats", type=int, default=3, help="runs per row; the best is kept")
  p.add_argument("--name", default="data", help="results file bench/results/<name>.json")
  a = p.parse_args(argv)
  from mpc_jax import prepare
  from mpc_jax.data.sources import source_from_spec
  from mpc_jax.data.synthetic import write_dataset

  rates = step_rates()
  rows = []
  with tempfile.TemporaryDirectory() as d:
    folder = os.path.join(d, "files")
    write_dataset(folder, a.num_images, seed=0, size=(512, 512))
    t = time.perf_counter()
    man = prepare.prepare(
      [folder], os.path.join(d, "ar"), shard_size=max(1, a.num_images // 4), workers=1, progress=False
    )
    pack_s = time.perf_counter() - t
    specs = {"files (PNG per image)": folder, "arrayrecord": f"arrayrecord:{os.path.join(d, 'ar')}"}
    for reader, spec in specs.items():
      src = source_from_spec(spec, on_bad_example="skip")
      for what, threads, fn in (
        ("read + decode", 1, lambda src=src: bench_read(src, a.examples)),
        (
          "read + decode + augment + batch (per core)",
          1,
          lambda src=src: bench_loop(src, a.examples, a.batch),
        ),
        ("grain pipeline", 2, lambda spec=spec: bench_grain(spec, 2, a.examples, a.batch)),
      ):
        eps = max(fn() for _ in range(a.repeats))
        row = {"reader": reader, "work": what, "threads": threads, "examples_per_s": eps}
        rows.append(row)
        print(f"{reader} | {what} | {threads} thread(s): {eps:.1f} examples/s", flush=True)
  for r in rows:
    per_core = r["examples_per_s"] / r["threads"]
    for st in ("stage1", "stage2"):
      r[f"cores_{st}"] = math.ceil(rates[st][0] / per_core) if st in rates and "augment" in r["work"] else ""
  units = {
    "examples_per_s": "examples/s (512x512, the reference augmentation chain, batch 8)",
    "threads": "threads",
    "cores_stage1": "host cores that keep up with the stage-1 step rate (ceil(images/s / per-core))",
    "cores_stage2": "host cores that keep up with the stage-2 step rate",
    "batch": "examples per batch",
    "examples_timed": "examples per timed run",
    "repeats_best_of": "timed runs per row (the best is kept)",
  }
  extra = {
    "step_rates_images_per_s": {k: {"images_per_s": v[0], "from": v[1]} for k, v in rates.items()},
    "source": f"{a.num_images} synthetic 512x512 PNG pairs on local disk, and the same packed "
    f"({man['bytes'] / 2**20:.1f} MiB of shards, {pack_s:.1f} s to pack with 1 worker)",
    "batch": a.batch,
    "examples_timed": a.examples,
    "repeats_best_of": a.repeats,
    "notes": [
      "Cores are counted from the one-thread row (decode + augment in one Python thread per core); "
      "grain worker processes scale that row across cores; a host feeding D devices needs D times "
      "the cores of one device's rate.",
      "Step rates: " + "; ".join(f"{k}: {v[0]:.3g} images/s from {v[1]}" for k, v in rates.items()),
    ],
  }
  report(
    a.name,
    rows,
    ["reader", "work", "threads", "examples_per_s", "cores_stage1", "cores_stage2"],
    units,
    extra,
  )
  for k, v in rates.items():
    print(f"{k} step rate: {v[0]:.3g} images/s ({v[1]})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
