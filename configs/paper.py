"""The paper's settings (HRT-base, 512 px, batch 4), at the two training scales, one stage each.

    mpc-jax train --config configs/paper.py:catnet_stage1 --workdir runs/catnet_s1
    mpc-jax train --config configs/paper.py:catnet_stage2 --workdir runs/catnet_s2 \
        --config.stage2.init_from=runs/catnet_s1      # or a `mpc-jax convert`ed PyTorch stage-1 model
    mpc-jax train --config configs/paper.py:casiav2_stage1 --workdir runs/casiav2_s1
    mpc-jax train --config configs/paper.py:casiav2_stage2 --workdir runs/casiav2_s2 \
        --config.stage2.init_from=runs/casiav2_s1

`catnet`: the CAT-Net training mixture of the reference (tampCOCO sp/cm/bcm x1, CASIAv2 x40,
IMD2020 x20), validation on CASIAv1 + DSO-1, head 'catnet'. `casiav2`: CASIAv2 only, validation on
CASIAv1, head 'casiav2'. File lists (the reference's `generate_flist.py` .npy lists, or any spec
`mpc_jax.data.sources.source_from_spec` reads) are expected under `data/flist/`; change
`config.data.sources` / `val_sources` for other locations. The reference validates every 1% of an
epoch; `eval_every` is that many steps for its mixture (~844k images / 100 / batch 4).
"""

from mpc_jax.train_config import base_config

FLIST = "data/flist/"
CATNET_SOURCES = [
  {"spec": FLIST + "tampCOCO_sp_199999.npy", "weight": 1.0},
  {"spec": FLIST + "tampCOCO_cm_199429.npy", "weight": 1.0},
  {"spec": FLIST + "tampCOCO_bcm_199443.npy", "weight": 1.0},
  {"spec": FLIST + "CASIA2_5123.npy", "weight": 40.0},
  {"spec": FLIST + "IMD_2010.npy", "weight": 20.0},
]


VARIANTS = ("catnet_stage1", "catnet_stage2", "casiav2_stage1", "casiav2_stage2")


def get_config(arg="catnet_stage1"):
  if arg not in VARIANTS:
    raise ValueError(
      f"unknown variant {arg!r} of configs/paper.py; use one of: "
      + ", ".join(f"configs/paper.py:{v}" for v in VARIANTS)
    )
  scale, stage = arg.split("_")
  c = base_config()
  c.model.hrformer = "hrt_base"
  c.model.head = "catnet" if scale == "catnet" else "casiav2"
  c.data.input_size = 512
  c.data.augment = True
  c.data.num_workers = 4
  if scale == "catnet":
    c.data.sources = CATNET_SOURCES
    c.data.val_sources = (FLIST + "CASIAv1_920.npy", FLIST + "DSO_100.npy")
    eval_every, num_steps = 2_100, 300_000
  else:
    c.data.sources = [{"spec": FLIST + "CASIA2_5123.npy", "weight": 1.0}]
    c.data.val_sources = (FLIST + "CASIAv1_920.npy",)
    eval_every, num_steps = 128, 40_000
  c.stages = (stage,)
  for s in ("stage1", "stage2"):
    c[s].batch_size = 4
    c[s].eval_batch_size = 8
    c[s].eval_every = eval_every
    c[s].checkpoint_every = eval_every
    c[s].num_steps = num_steps
    c[s].log_every = 80
  c.result_file = f"{arg}_result.json"
  return c
