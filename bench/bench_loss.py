"""Benchmark of the stage-1 loss (forward + backward) on this machine's CPU.

    python bench/bench_loss.py            # prints a table, writes bench/results/loss.json
    python bench/bench_loss.py --paths    # the two paths at the 256 px training shape: loss_paths.json

Plain (`chunk_size=None`, full `K x N` similarity matrices) against chunked (`chunk_size=1024`) at
`num_samples` 1000 / 5000 / 10000 on the batch `_inputs` makes, each configuration in its own subprocess so
peak RSS is its own. Per configuration (`run_one`): compile time, run time (best of the timed runs), XLA's
buffer estimate, the process's peak RSS, the matmul FLOPs executed and the achieved FLOP rate.
"""

import json
import os
import pathlib
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

B, H, W, C = 4, 128, 128, 256
SAMPLES = (1000, 5000, 10000)
CHUNK = 1024
MAX_PLAIN_BYTES = 6 * 2**30  # do not execute a plain configuration whose XLA estimate is larger
SHAPE_UNITS = dict(
  batch="images",
  num_samples="pixels per set",
  scale0="px",
  channels="count",
  chunk_size="negatives per chunk",
  compile_s="s",
)
RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "loss.json"


def _inputs():
  """4 images, scale-0 maps 128 x 128 (scales 64, 32, 16), 256 channels, half of every image forged, so
  every set has thousands of members (at 1000 samples every set fits in one chunk, so plain and chunked
  compile the same program)."""
  import numpy as np

  rng = np.random.default_rng(0)
  mask = np.zeros((B, H, W), np.float32)
  mask[:, :, : W // 2] = 1.0
  views = []
  for _ in range(2):
    v = []
    for s in range(4):
      x = rng.normal(size=(B, H >> s, W >> s, C)).astype(np.float32)
      v.append(x / np.linalg.norm(x, axis=-1, keepdims=True))
    views.append(v)
  return views[0], views[1], mask


def _set_sizes(k):
  """Slots per set (static shapes) after the five terms are padded to common sizes."""
  p0, pc = H * W, sum((H >> s) * (W >> s) for s in (1, 2, 3))
  kq = max(min(k, p0), min(k, pc))
  return kq, kq  # queries and negatives get the same slot counts here


def matmul_flops(k, chunked):
  """Similarity matmul FLOPs of one forward + backward: per image 5 terms of `K x M x C`;
  the forward does 1 matmul, the backward 2 (d queries, d negatives) plus 1 recompute when
  chunked (chunking only happens when a negative set is larger than the chunk). Executed
  FLOPs count the padded (invalid) slots too."""
  kq, m = _set_sizes(k)
  per_matmul = 2 * B * 5 * kq * m * C
  return per_matmul * (4 if chunked and m > CHUNK else 3)


def _matmul_rate():
  import jax
  import jax.numpy as jnp

  a = jnp.ones((5000, C), jnp.float32)
  b = jnp.ones((C, 5000), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  best = min(_timed(lambda: f(a, b).block_until_ready()) for _ in range(5))
  return 2 * 5000 * 5000 * C / best


def _timed(fn):
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def run_one(k, chunked):
  """One configuration (in its own process); prints a JSON line.

  XLA's buffer estimate is `memory_analysis()`'s temp + arguments + outputs; the FLOP rate is a fraction
  of a plain `[5000, 256] @ [256, 5000]` float32 matmul timed in the same run (`_matmul_rate`).
  """
  import resource

  import jax
  from mpc_jax.losses import multiview_pixel_contrast

  va, vb, mask = _inputs()
  va, vb, mask = jax.device_put((va, vb, mask))
  key = jax.random.key(0)

  def loss(va, vb):
    out = multiview_pixel_contrast(
      va, vb, mask, key=key, num_samples=k, chunk_size=CHUNK if chunked else None
    )
    return out["total"]

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  t0 = time.perf_counter()
  compiled = step.lower(va, vb).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  xla_bytes = None
  if mem is not None:
    xla_bytes = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
  row = dict(
    num_samples=k,
    mode="chunked" if chunked else "plain",
    chunk_size=CHUNK if chunked else None,
    compile_s=compile_s,
    xla_peak_bytes=xla_bytes,
    matmul_flops=matmul_flops(k, chunked),
  )
  if not chunked and xla_bytes is not None and xla_bytes > MAX_PLAIN_BYTES:
    row.update(skipped=f"XLA estimate {xla_bytes / 2**30:.1f} GiB > {MAX_PLAIN_BYTES / 2**30:.0f} GiB")
    print(json.dumps(row))
    return
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  repeats = 3 if k <= 1000 else 1
  times = [_timed(lambda: jax.block_until_ready(compiled(va, vb))) for _ in range(repeats)]
  rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  run_s = min(times)
  rate = _matmul_rate()
  row.update(
    run_s=run_s,
    peak_rss_bytes=rss1,
    rss_growth_bytes=rss1 - rss0,
    loss=float(compiled(va, vb)[0]) if repeats > 1 else None,
    achieved_flops_per_s=row["matmul_flops"] / run_s,
    matmul_flops_per_s=rate,
    fraction_of_matmul_rate=row["matmul_flops"] / run_s / rate,
  )
  print(json.dumps(row))


def _meta(batch, h, w, **extra):
  """The results file's description of the inputs (half of every image forged) and the machine."""
  return dict(
    batch=batch,
    scale0=[h, w],
    channels=C,
    forged_fraction=0.5,
    chunk_size=CHUNK,
    cpu=platform.processor() or platform.machine(),
    cores=os.cpu_count(),
    **extra,
  )


def main():
  rows = []
  for k in SAMPLES:
    for chunked in (False, True):
      cmd = [sys.executable, __file__, "--one", str(k), str(int(chunked))]
      out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
      if out.returncode != 0:
        rows.append(
          dict(
            num_samples=k, mode="chunked" if chunked else "plain", error=out.stderr.strip().splitlines()[-1:]
          )
        )
      else:
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
      print(_fmt(rows[-1]), flush=True)
  meta = _meta(
    B, H, W, note="times are one forward+backward of the jitted loss; the machine is shared, so expect noise"
  )
  from common import write_result

  units = dict(
    SHAPE_UNITS,
    run_s="s",
    xla_peak_bytes="bytes",
    peak_rss_bytes="bytes",
    rss_growth_bytes="bytes",
    matmul_flops="FLOP",
    achieved_flops_per_s="FLOP/s",
    matmul_flops_per_s="FLOP/s",
    fraction_of_matmul_rate="fraction",
    loss="loss value",
  )
  write_result(RESULTS, dict(meta=meta, rows=rows), units)


HEADER = (
  f"{'samples':>7} {'mode':>8} {'compile s':>9} {'run s':>7} {'XLA MiB':>8} "
  f"{'RSS MiB':>7} {'GFLOP':>7} {'GFLOP/s':>8} {'% matmul':>8}"
)


def _fmt(r):
  if "error" in r or "skipped" in r:
    return f"{r['num_samples']:>7} {r['mode']:>8}  {r.get('error') or r.get('skipped')}"
  mb = lambda x: f"{x / 2**20:8.0f}" if x is not None else f"{'-':>8}"
  return (
    f"{r['num_samples']:>7} {r['mode']:>8} {r['compile_s']:9.1f} {r['run_s']:7.2f} "
    f"{mb(r['xla_peak_bytes'])} {r['peak_rss_bytes'] / 2**20:7.0f} "
    f"{r['matmul_flops'] / 1e9:7.1f} {r['achieved_flops_per_s'] / 1e9:8.1f} "
    f"{100 * r['fraction_of_matmul_rate']:7.0f}%"
  )


def compare_paths(repeats: int = 5):
  """The loss at a 256 px stage-1 step's shapes (2 images, scale-0 maps 64 x 64, 256 channels, half of
  every image forged, `chunk_size` 1024), forward + backward, by its two paths in one process: the
  whole-image path (`num_samples` 5000 covers all 4096 pixels: one similarity product per image) and the
  sampled path (`num_samples` 4095: five products padded to the largest set; as no set has more than
  2048 members, it keeps every member and gives the same loss). Writes bench/results/loss_paths.json."""
  import jax
  import numpy as np

  from common import write_result
  from mpc_jax.losses import multiview_pixel_contrast

  b, h, c = 2, 64, C
  rng = np.random.default_rng(0)
  views = []
  for _ in range(2):
    maps = [rng.normal(size=(b, h >> s, h >> s, c)).astype(np.float32) for s in range(4)]
    views.append([x / np.linalg.norm(x, axis=-1, keepdims=True) for x in maps])
  mask = np.zeros((b, h, h), np.float32)
  mask[:, : h // 2] = 1.0
  va, vb, mask = jax.device_put((views[0], views[1], mask))
  rows = []
  for path, k in (("sampled", h * h - 1), ("whole image", 5000)):

    def loss(va, vb, k=k):
      return multiview_pixel_contrast(va, vb, mask, key=jax.random.key(0), num_samples=k, chunk_size=CHUNK)[
        "total"
      ]

    t0 = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(va, vb).compile()
    compile_s = time.perf_counter() - t0
    value = float(compiled(va, vb)[0])
    times = sorted(_timed(lambda f=compiled: jax.block_until_ready(f(va, vb))) for _ in range(repeats))
    mem = compiled.memory_analysis()
    rows.append(
      dict(
        path=path,
        num_samples=k,
        compile_s=compile_s,
        median_s=times[len(times) // 2],
        min_s=times[0],
        xla_temp_bytes=mem.temp_size_in_bytes if mem is not None else None,
        loss=value,
      )
    )
  for r in rows:
    r["speed_vs_sampled"] = rows[0]["median_s"] / r["median_s"]
    print(
      f"{r['path']:>12}: median {r['median_s']:.2f} s, best {r['min_s']:.2f} s, compile {r['compile_s']:.1f} s, "
      f"XLA temporaries {r['xla_temp_bytes'] / 2**20:.0f} MiB, loss {r['loss']:.6f}, {r['speed_vs_sampled']:.2f}x"
    )
  meta = _meta(b, h, h, repeats=repeats, note="forward + backward of the jitted loss")
  units = dict(
    SHAPE_UNITS,
    median_s="s",
    min_s="s",
    xla_temp_bytes="bytes",
    loss="loss value",
    speed_vs_sampled="sampled median / this median",
  )
  write_result(RESULTS.with_name("loss_paths.json"), dict(meta=meta, rows=rows), units)


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1] == "--paths":
    compare_paths()
  elif len(sys.argv) > 1 and sys.argv[1] == "--one":
    run_one(int(sys.argv[2]), bool(int(sys.argv[3])))
  else:
    print(HEADER)
    main()
