"""Inference speed of HRT-base MPC at 512x512 on this machine's CPU (the eval protocol's input size).

Random-init `hrt_base` + `catnet` head (weights do not change the speed), float32, through
`mpc_jax.predict.Predictor` (one jitted program per batch shape). Per batch size: compile time (first
call), then the best and median of `--iters` timed calls -> images/s of the model alone; and
`predict_arrays` end to end on one 640x480 uint8 image in the reference protocol (resize to 512,
upsample the 1/4 map, threshold), which adds the cv2 resizes; and a folder of `--folder` mixed-size
JPEG/PNG files through `predict_paths` (what `mpc-jax predict DIR` runs: decode, resize, predict,
upsample, write the maps), whose images/s is compared with the batch-1 forward's in the same run.

    python bench/bench_predict.py [--batch 1 2] [--iters 3] [--folder 20]   # bench/results/predict.json
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "predict.json"


def time_folder(model, n: int, size: int) -> dict:
  """`predict_paths` over a folder of `n` images of mixed sizes and formats (resize mode, batch 1), twice:
  the first pass is the warm-up, the second is timed. Compares its images/s with the batch-1 forward's,
  timed right after it (`n // 2` calls), so both see the same state of the machine."""
  import tempfile

  import cv2
  import numpy as np

  from mpc_jax.predict import predict_paths

  rng = np.random.default_rng(1)
  with tempfile.TemporaryDirectory() as tmp:
    folder = pathlib.Path(tmp) / "images"
    folder.mkdir()
    sizes = []
    for i in range(n):
      h, w = (int(v) for v in rng.integers(300, 1400, 2))
      img = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (5, 5), 0)
      cv2.imwrite(str(folder / f"im{i:02d}.{'jpg' if i % 2 else 'png'}"), img)
      sizes.append([h, w])
    passes = []
    for k in range(2):
      t = time.time()
      rows = predict_paths(
        model, [str(folder)], out_dir=str(pathlib.Path(tmp) / f"out{k}"), size=size, batch_size=1
      )
      passes.append(time.time() - t)
    assert all(r["ok"] for r in rows) and len(rows) == n
  from mpc_jax.predict import Predictor

  pred, x = Predictor(model, batch_size=1), rng.random((1, size, size, 3), dtype=np.float32)
  pred(x)  # compiled already; one call to be sure
  calls = max(2, n // 2)
  t = time.time()
  for _ in range(calls):
    pred(x)
  forward_images_per_s = calls / (time.time() - t)
  rate = n / passes[1]
  return dict(
    images=n,
    sizes_hw=sizes,
    warmup_pass_s=round(passes[0], 2),
    timed_pass_s=round(passes[1], 2),
    images_per_s=round(rate, 4),
    forward_images_per_s=round(forward_images_per_s, 4),
    ratio_to_forward=round(rate / forward_images_per_s, 3),
  )


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="hrt_base")
  ap.add_argument("--size", type=int, default=512)
  ap.add_argument("--batch", type=int, nargs="+", default=[1, 2])
  ap.add_argument("--iters", type=int, default=3)
  ap.add_argument("--folder", type=int, default=20, help="mixed-size images in the folder run (0: skip)")
  ap.add_argument("--out", default=str(RESULTS))
  args = ap.parse_args()

  import jax
  import numpy as np

  from mpc_jax.models import build_mpc, count_params
  from mpc_jax.predict import PredictConfig, Predictor, predict_arrays

  t = time.time()
  model = build_mpc(args.config, seed=0)
  model.eval()
  build_s = time.time() - t
  rng = np.random.default_rng(0)
  report = dict(
    config=args.config,
    params=count_params(model),
    size=args.size,
    dtype="float32",
    backend=jax.default_backend(),
    devices=str(jax.devices()),
    cpu_count=os.cpu_count(),
    machine=platform.machine(),
    processor=platform.processor(),
    jax=jax.__version__,
    build_s=round(build_s, 2),
    load_avg_start=[round(v, 2) for v in os.getloadavg()],
    runs=[],
  )
  for b in args.batch:
    pred = Predictor(model, batch_size=b)
    x = rng.random((b, args.size, args.size, 3), dtype=np.float32)
    t = time.time()
    pred(x)
    compile_s = time.time() - t
    times = []
    for _ in range(args.iters):
      t = time.time()
      pred(x)
      times.append(time.time() - t)
    best, med = min(times), statistics.median(times)
    row = dict(
      batch=b,
      compile_plus_first_s=round(compile_s, 2),
      best_s=round(best, 3),
      median_s=round(med, 3),
      images_per_s_best=round(b / best, 3),
      images_per_s_median=round(b / med, 3),
    )
    report["runs"].append(row)
    print(json.dumps(row), flush=True)
  # end to end on one image, reference protocol (the batch-1 program is already compiled)
  img = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
  cfg = PredictConfig(mode="resize", size=args.size, batch_size=1)
  pred = Predictor(model, batch_size=1)
  predict_arrays(pred, img, cfg)
  times = []
  for _ in range(args.iters):
    t = time.time()
    predict_arrays(pred, img, cfg)
    times.append(time.time() - t)
  report["end_to_end_640x480_resize512"] = dict(
    best_s=round(min(times), 3), images_per_s=round(1 / min(times), 3)
  )
  print(json.dumps(report["end_to_end_640x480_resize512"]))
  if args.folder:
    report["folder"] = time_folder(model, args.folder, args.size)
    print(json.dumps(report["folder"]), flush=True)
  report["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]  # > cpu_count: shared, timings inflated
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from common import write_result

  write_result(
    args.out,
    report,
    {
      "params": "count",
      "size": "px",
      "batch": "images",
      "cpu_count": "cores",
      "build_s": "s",
      "compile_plus_first_s": "s",
      "best_s": "s",
      "median_s": "s",
      "images_per_s_best": "images/s",
      "images_per_s_median": "images/s",
      "images_per_s": "images/s",
      "forward_images_per_s": "images/s (batch-1 forward, timed after the folder)",
      "ratio_to_forward": "folder images/s / forward images/s",
      "warmup_pass_s": "s",
      "timed_pass_s": "s",
      "sizes_hw": "px",
      "load_avg_start": "runnable processes (1/5/15-min load average)",
      "load_avg_end": "runnable processes (1/5/15-min load average)",
    },
  )


if __name__ == "__main__":
  main()
