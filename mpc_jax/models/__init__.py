"""HRFormer backbone, localization head and the MPC model."""

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
