"""Forward time of the MPC model (HRT-base by default) at 512x512, batch 1, jit, after warm-up.

  python bench/bench_forward.py [--config hrt_base] [--size 512] [--batch 1] [--repeats 5]
         [--dtypes float32,bfloat16]

Prints a table and writes bench/results/forward.json.
"""

import argparse
import sys

import jax
from flax import nnx

sys.path.insert(0, __import__("os").path.dirname(__file__))
from common import report, time_fn  # noqa: E402

from mpc_jax.models import build_mpc, count_params  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="hrt_base")
  p.add_argument("--size", type=int, default=512)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--dtypes", default="float32,bfloat16")
  args = p.parse_args()
  rows = []
  images = jax.random.uniform(jax.random.key(0), (args.batch, args.size, args.size, 3))
  for dtype in args.dtypes.split(","):
    model = build_mpc(args.config, dtype=dtype)
    model.eval()
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda state, x, graphdef=graphdef: nnx.merge(graphdef, state)(x))
    t = time_fn(fwd, state, images, repeats=args.repeats)
    rows.append(
      {
        "model": args.config,
        "params": count_params(model),
        "dtype": dtype,
        "input": f"{args.batch}x{args.size}x{args.size}",
        "compile+first_s": t["first_call_s"],
        "median_s": t["median_s"],
        "min_s": t["min_s"],
        "images_per_s": args.batch / t["median_s"],
      }
    )
  report(
    "forward",
    rows,
    ["model", "dtype", "input", "compile+first_s", "median_s", "min_s", "images_per_s"],
    units={
      "params": "count",
      "input": "batch x height x width (px)",
      "compile+first_s": "s",
      "median_s": "s",
      "min_s": "s",
      "images_per_s": "images/s",
    },
  )


if __name__ == "__main__":
  main()
