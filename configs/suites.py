"""Evaluation suites for `mpc-jax eval --suite FILE.py[:NAME]` (the built-in 'paper' suite is
`mpc_jax.suites.PAPER`; copy this file to define your own).

    mpc-jax eval --checkpoint runs/catnet_s2/stage2/model_best --suite paper --data-root /data/forensics
    mpc-jax eval --checkpoint ... --suite configs/suites.py:paper_prepared --data-root /data/packed

Entries (see `mpc_jax.suites.resolve_suite`): 'name'; 'spec' (any data spec, `{root}` = --data-root) and/or 'dirs'
(folder names tried under the data root) with an optional 'layout' (the public release's folder layout,
`mpc_jax.data.layouts`), 'tfds' ('NAME:SPLIT' fallback) and 'n' (the paper's image count).
"""

from mpc_jax.suites import PAPER

SUITES = {
  # the paper's ten sets, in their public layouts or images/ + masks/ folders (as `--suite paper`)
  "paper": PAPER,
  # the same sets packed by `mpc-jax prepare NAME=layout:...:DIR --out {root}/NAME`
  "paper_prepared": [
    {"name": e["name"], "spec": f"arrayrecord:{{root}}/{e['name']}", "n": e.get("n")} for e in PAPER
  ],
  # the two validation sets of configs/paper.py (the reference's .npy lists)
  "catnet_val": [
    {"name": "CASIAv1", "spec": "data/flist/CASIAv1_920.npy", "n": 920},
    {"name": "DSO-1", "spec": "data/flist/DSO_100.npy", "n": 100},
  ],
}
