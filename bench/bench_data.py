"""Training-pipeline throughput: grain (0/1/2 worker processes) vs a plain Python loop doing the same work.

    python bench/bench_data.py [--num-images 48] [--examples 160] [--out bench/results/data.json]

Per example (both sides): decode PNG image + mask from disk (512x512 synthetic forgeries), the reference
augmentation chain with probability 0.75, resize to 512 / mask to 128, mask pyramid; batches of 8.
The baseline is the PyTorch-style loop without a DataLoader: read, augment, stack, in one Python thread.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402


def bench_grain(folder, num_workers, read_threads, examples, batch):
    from mpc_jax.data import pipeline

    cfg = pipeline.default_data_config()
    cfg.sources = [{"spec": folder, "weight": 1.0}]
    cfg.input_size, cfg.augment = 512, True
    cfg.num_workers, cfg.read_threads, cfg.read_prefetch = num_workers, read_threads, 16
    it = pipeline.make_train_iterator(cfg, seed=0, process_index=0, process_count=1, batch_size_per_process=batch)
    next(it)  # start-up (worker spawn, imports) not counted
    n_batches = max(1, examples // batch)
    t = time.perf_counter()
    for _ in range(n_batches):
        b = next(it)
    dt = time.perf_counter() - t
    assert b["image"].shape == (batch, 512, 512, 3)
    del it
    return n_batches * batch / dt


def bench_loop(folder, examples, batch):
    from mpc_jax.data.sources import source_from_spec
    from mpc_jax.data.transforms import TrainTransform
    from mpc_jax.data.pipeline import train_batch_fn

    src = source_from_spec(folder, on_bad_example="skip")
    tr = TrainTransform(512, 4, augment=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(src))
    tr.random_map(src[0], rng)  # warm-up (lazy imports)
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


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--num-images", type=int, default=48)
    p.add_argument("--examples", type=int, default=160)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "data.json"))
    a = p.parse_args(argv)
    from mpc_jax.data.synthetic import write_dataset

    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        write_dataset(d, a.num_images, seed=0, size=(512, 512))
        gen_s = time.perf_counter() - t
        rows = []
        base = bench_loop(d, a.examples, a.batch)
        rows.append({"pipeline": "plain Python loop (baseline)", "workers": 0, "threads": 1, "examples_per_s": base})
        print(f"baseline loop: {base:.1f} ex/s", flush=True)
        for nw, th in ((0, 1), (0, 2), (1, 1), (2, 1)):
            eps = bench_grain(d, nw, th, a.examples, a.batch)
            rows.append({"pipeline": "grain", "workers": nw, "threads": th, "examples_per_s": eps})
            print(f"grain workers={nw} threads={th}: {eps:.1f} ex/s ({eps / base:.2f}x)", flush=True)
    for r in rows:
        r["ratio_vs_loop"] = r["examples_per_s"] / base
    res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
           "input_size": 512, "batch": a.batch, "examples_timed": a.examples,
           "source": f"{a.num_images} synthetic 512x512 PNG pairs on local disk",
           "synthetic_generation_s_per_example_512": gen_s / a.num_images, "rows": rows}
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import write_result

    write_result(a.out, res, {"input_size": "px", "batch": "examples", "examples_timed": "examples",
                              "synthetic_generation_s_per_example_512": "s", "examples_per_s": "examples/s",
                              "workers": "processes", "threads": "threads",
                              "ratio_vs_loop": "ratio (this row's rate / the loop's)"})
    print("| pipeline | worker processes | threads | examples/s | vs loop |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pipeline']} | {r['workers']} | {r['threads']} | {r['examples_per_s']:.1f} | {r['ratio_vs_loop']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
