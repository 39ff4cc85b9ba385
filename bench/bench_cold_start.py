"""Cold start: one image predicted by a fresh process, the PyTorch reference beside `mpc-jax predict`.

  python bench/bench_cold_start.py --reference PATH/TO/MPC [--repeats 3] [--out NAME]

Each run is a new process, timed from its start to its exit: it loads HRT-base weights from a file,
reads one 640x480 JPEG, resizes it to 512x512, predicts, and writes the mask at the image's size.
The reference runs its stage-2 model as its `test.py` does (random weights saved once with
`torch.save`); mpc-jax runs `mpc-jax predict IMAGE --checkpoint DIR --out DIR` on the same weights
converted once with `mpc-jax convert`. mpc-jax is timed with an empty compilation cache (its first
run on a machine) and with the cache its earlier runs wrote, each with the default `--programs auto`
(one image: the model compiled module by module) and with `--programs whole`. Writes
bench/results/NAME.json (default `cold_start_PLATFORM`).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_reference import REFERENCE_STUBS  # noqa: E402
from common import report  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

SAVE_REFERENCE_WEIGHTS = (
  REFERENCE_STUBS
  + r"""
root, weights = sys.argv[1:3]
sys.path.insert(0, root + "/CATNet_dataset_train/stage2")
from model import MyModel
torch.manual_seed(0)
torch.save(MyModel().state_dict(), weights)
"""
)

REFERENCE_PREDICT = (
  REFERENCE_STUBS
  + r"""
import cv2
root, weights, image, out = sys.argv[1:5]
sys.path.insert(0, root + "/CATNet_dataset_train/stage2")
from model import MyModel
model = MyModel().eval()
model.load_state_dict(torch.load(weights))
img = cv2.imread(image)[..., ::-1]
h, w = img.shape[:2]
x = torch.from_numpy(cv2.resize(img, (512, 512)).astype("float32") / 255.0).permute(2, 0, 1)[None]
with torch.no_grad():
    prob = torch.sigmoid(model(x))[0, 0].numpy()
cv2.imwrite(out, ((cv2.resize(prob, (w, h)) > 0.5) * 255).astype("uint8"))
"""
)


def timed(cmd: list[str], env: dict | None = None) -> float:
  """Wall seconds of one process from start to exit; a failure stops the bench with its last line."""
  t = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  wall = time.perf_counter() - t
  if proc.returncode != 0:
    raise SystemExit(f"bench_cold_start: {' '.join(cmd[:4])} failed: {proc.stderr.strip().splitlines()[-1:]}")
  return wall


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--reference", required=True, help="a checkout of github.com/multimediaFor/MPC")
  p.add_argument("--repeats", type=int, default=3, help="runs of each kind (the median is reported)")
  p.add_argument("--out", default="", help="results name (default cold_start_PLATFORM)")
  args = p.parse_args(argv)
  if not (pathlib.Path(args.reference) / "CATNet_dataset_train/stage2/model.py").is_file():
    p.error(f"--reference {args.reference!r} is not a checkout of multimediaFor/MPC")
  import cv2
  import numpy as np

  py = sys.executable
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    rng = np.random.default_rng(0)
    image = tmp / "photo.jpg"
    cv2.imwrite(str(image), cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (5, 5), 0))
    weights = tmp / "weights.pth"
    timed([py, "-c", SAVE_REFERENCE_WEIGHTS, args.reference, str(weights)])
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    env.pop("XLA_FLAGS", None)
    timed([py, "-m", "mpc_jax.main", "convert", str(weights), "--out", str(tmp / "ckpt")], env)

    def ours(cache: pathlib.Path, k: int, programs: str = "auto") -> float:
      out = tmp / f"pred_{cache.name}_{k}"
      cmd = [
        py,
        "-m",
        "mpc_jax.main",
        "predict",
        str(image),
        "--checkpoint",
        str(tmp / "ckpt"),
        "--out",
        str(out),
      ]
      cmd += ["--no-progress", "--programs", programs]
      return timed(cmd, dict(env, MPC_JAX_COMPILATION_CACHE=str(cache)))

    walls = {"reference": [], "cold": [], "warm": [], "cold_whole": [], "warm_whole": []}
    warm_cache = tmp / "cache_warm"
    ours(warm_cache, -1)  # fills the cache the warm runs read
    ours(warm_cache, -1, "whole")
    for k in range(args.repeats):
      walls["reference"].append(
        timed(
          [py, "-c", REFERENCE_PREDICT, args.reference, str(weights), str(image), str(tmp / f"ref{k}.png")]
        )
      )
      walls["cold"].append(ours(tmp / f"cache_cold{k}", k))
      walls["warm"].append(ours(warm_cache, k))
      walls["cold_whole"].append(ours(tmp / f"cache_cold_whole{k}", k, "whole"))
      walls["warm_whole"].append(ours(warm_cache, k, "whole"))
      print({key: round(v[-1], 2) for key, v in walls.items()}, flush=True)
  ref = statistics.median(walls["reference"])
  labels = {
    "reference": "reference (torch), load + predict",
    "cold": "mpc-jax predict, empty compilation cache",
    "warm": "mpc-jax predict, compilation cache from an earlier run",
    "cold_whole": "mpc-jax predict --programs whole, empty compilation cache",
    "warm_whole": "mpc-jax predict --programs whole, compilation cache from an earlier run",
  }
  rows = [
    dict(
      impl=labels[key],
      median_s=statistics.median(v),
      min_s=min(v),
      runs_s=[round(x, 2) for x in v],
      speed_vs_reference=ref / statistics.median(v),
    )
    for key, v in walls.items()
  ]
  report(
    args.out or "cold_start_cpu",
    rows,
    ["impl", "median_s", "min_s", "speed_vs_reference"],
    {
      "median_s": "s (process start to exit)",
      "min_s": "s",
      "runs_s": "s",
      "speed_vs_reference": "reference median / this median",
      "repeats": "runs of each kind",
    },
    extra={"image": "640x480 JPEG, resized to 512x512", "repeats": args.repeats},
  )


if __name__ == "__main__":
  main()
