"""HRFormer backbone, localization head and the MPC model.

The modules are nnx graph nodes, not JAX pytrees (`pytree=False`): nnx then skips its check of every
attribute set, a third of what loading HRT-base took (1.9 s to 1.2 s), and the transforms used here
(`nnx.split`/`merge`, `nnx.jit`) work on graph nodes alike.
"""

from mpc_jax.models.head import HEAD_WIDTHS, LocalizationHead
from mpc_jax.models.hrformer import HRFORMER_CONFIGS, HRFormer, get_hrformer_config, output_size
from mpc_jax.models.mpc import MPC, build_mpc, count_params, fuse

__all__ = [
  "HEAD_WIDTHS",
  "HRFORMER_CONFIGS",
  "HRFormer",
  "LocalizationHead",
  "MPC",
  "build_mpc",
  "count_params",
  "fuse",
  "get_hrformer_config",
  "output_size",
]
