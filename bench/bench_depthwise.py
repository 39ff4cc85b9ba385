"""Depth-wise 3x3 convolution: XLA's grouped convolution vs `layers.depthwise_conv` (shifted adds).

  python bench/bench_depthwise.py [--repeats 5] [--out NAME]

Shapes are the HRFormer MLP's depth-wise convolutions of HRT-base at 512x512 input, batch 2
(branch 1: 128x128x312, branch 2: 64x64x624), plus a stride-2 one from the fuse layers. For each
shape and implementation: median seconds of the jitted forward and of the backward (gradients
for the input and the kernel), and the speedup of the shifted form in the same run. Writes
bench/results/NAME.json (default `depthwise_PLATFORM`).
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __import__("os").path.dirname(__file__))
from common import report, time_fn  # noqa: E402

from mpc_jax.models.layers import depthwise_conv, grouped_conv  # noqa: E402


def xla_depthwise(x, kernel, stride, padding):
  return grouped_conv(x, kernel, stride, padding, groups=x.shape[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", default="", help="results name (default depthwise_PLATFORM)")
  args = p.parse_args()
  rows = []
  for shape, stride in (((2, 128, 128, 312), 1), ((2, 64, 64, 624), 1), ((2, 128, 128, 78), 2)):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 1, shape[-1])) * 0.1, jnp.float32)
    times = {}
    for name, fn in (("xla", xla_depthwise), ("shift", depthwise_conv)):
      fwd = jax.jit(lambda x, k, fn=fn, stride=stride: fn(x, k, stride, 1))
      ct = jnp.ones_like(fwd(x, kernel))
      bwd = jax.jit(lambda x, k, fn=fn, ct=ct, s=stride: jax.vjp(lambda a, b: fn(a, b, s, 1), x, k)[1](ct))
      times[name] = (
        time_fn(fwd, x, kernel, repeats=args.repeats)["median_s"],
        time_fn(bwd, x, kernel, repeats=args.repeats)["median_s"],
      )
      rows.append(
        {
          "shape": "x".join(map(str, shape)),
          "stride": stride,
          "impl": name,
          "fwd_s": times[name][0],
          "bwd_s": times[name][1],
        }
      )
    for r in rows[-2:]:
      r["fwd_speedup"] = times["xla"][0] / r["fwd_s"]
      r["bwd_speedup"] = times["xla"][1] / r["bwd_s"]
  report(
    args.out or f"depthwise_{jax.devices()[0].platform}",
    rows,
    ["shape", "stride", "impl", "fwd_s", "bwd_s", "fwd_speedup", "bwd_speedup"],
    units={
      "shape": "batch x height x width x channels",
      "stride": "px",
      "fwd_s": "s",
      "bwd_s": "s",
      "fwd_speedup": "ratio (the xla row's time / this row's)",
      "bwd_speedup": "ratio (the xla row's time / this row's)",
    },
  )


if __name__ == "__main__":
  main()
