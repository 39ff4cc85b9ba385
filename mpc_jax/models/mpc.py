"""The MPC model: HRFormer backbone + localization head on the fused multi-scale map."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mpc_jax.models.head import LocalizationHead
from mpc_jax.models.hrformer import HRFormer
from mpc_jax.models.pieces import apply, call_piece
from mpc_jax.models.layers import DEPTHWISE_CHOICES, Init, resize_bilinear_align_corners, to_device


def fuse(features):
  """Four maps `[B, h_s, w_s, 256]` -> `[B, h_0, w_0, 1024]` (bilinear, align_corners=True)."""
  size = features[0].shape[1:3]
  return jnp.concatenate([resize_bilinear_align_corners(f, size) for f in features], axis=-1)


class MPC(nnx.Module, pytree=False):
  """`features(images)` gives the backbone's four maps; `__call__(images)` the 1/4-res logits.

  `images`: float32 `[B, H, W, 3]`, RGB in [0, 1] (no mean/std), any H and W. `backbone`, when
  given, replaces the HRFormer: any module mapping images to four 256-channel maps at 1/4 ... 1/32
  (the training loop's tests use a small one that compiles in seconds).
  """

  def __init__(
    self,
    hrformer_config=None,
    head: str = "catnet",
    *,
    init: Init,
    dtype=jnp.float32,
    drop_path_rate=None,
    remat=False,
    backbone: nnx.Module | None = None,
  ):
    if backbone is None:
      backbone = HRFormer(hrformer_config, init=init, dtype=dtype, drop_path_rate=drop_path_rate, remat=remat)
    self.backbone = backbone
    self.head = LocalizationHead(head, init=init, dtype=dtype)
    self.pieces = False  # eval only: jitted module by module (`models.pieces`), set by the Predictor

  def features(self, images):
    """`[B, H, W, 3] -> [4 x [B, h_s, w_s, 256]]`, before L2 normalisation."""
    return self.backbone(images)

  def fuse(self, features):
    return fuse(features)

  def __call__(self, images):
    """`[B, H, W, 3] -> [B, h_0, w_0, 1]` logits (float32)."""
    if not self.pieces:
      return _fused_head(self.head, self.features(images))
    if isinstance(self.backbone, HRFormer):  # runs its own modules as pieces
      features = self.backbone(images)
    else:
      features = call_piece(apply, self.backbone, images)
    return call_piece(_fused_head, self.head, features)


def _fused_head(head, features):
  return head(fuse(features))


def build_mpc(
  hrformer_config="hrt_base",
  head: str = "catnet",
  *,
  dtype=jnp.float32,
  seed: int = 0,
  drop_path_rate=None,
  remat: bool = False,
  depthwise: str = "auto",
  random_init: bool = True,
) -> MPC:
  """A randomly initialised MPC model (train mode). `dtype` is the compute dtype; params stay f32.

  `hrformer_config`: a preset name (`hrt_tiny`, `hrt_small`, `hrt_base`, `hrt_base_win13`,
  `hrt_base_win15`) or a yacs-layout dict. Drop path draws from the `droppath` RNG stream.
  `remat` rematerialises the backbone module by module (less memory for gradients, same values).
  `depthwise`: how depth-wise convolutions run, 'auto' (shifted multiply-adds on the CPU, XLA's
  grouped convolution on accelerators), 'shift' or 'xla'; the same values either way.
  `random_init=False` draws no random weights: zeros on the host (not moved to the device), for
  loading saved values over them.
  """
  if depthwise not in DEPTHWISE_CHOICES:
    raise ValueError(f"depthwise must be one of {DEPTHWISE_CHOICES}, got {depthwise!r}")
  if isinstance(dtype, str):
    if dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    dtype = jnp.dtype(dtype)
  model = MPC(
    hrformer_config,
    head,
    init=Init(seed, random=random_init),
    dtype=dtype,
    drop_path_rate=drop_path_rate,
    remat=bool(remat),
  )
  model.set_attributes(depthwise=depthwise)
  return to_device(model) if random_init else model


def count_params(model) -> int:
  """Number of learned parameters (`nnx.Param` entries; buffers and BN statistics excluded)."""
  return sum(int(x.size) for x in __import__("jax").tree.leaves(nnx.state(model, nnx.Param)))
