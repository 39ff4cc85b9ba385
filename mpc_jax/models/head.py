"""The localization head: BN + ReLU before each 1x1 conv on the fused 1024-channel map."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mpc_jax.models.layers import Act, BatchNorm, Init, conv, run_sequence

HEAD_WIDTHS = {
  "catnet": (1024, 512, 256, 128, 1),  # MPC_CATNet_stage2_weights
  "casiav2": (1024, 512, 256, 128, 64, 1),  # MPC_CASIAv2_stage2_weights
}


class LocalizationHead(nnx.Module, pytree=False):
  """`[B, h, w, 1024] -> [B, h, w, 1]` logits; layer indices match the reference's `classifier`."""

  def __init__(self, variant: str = "catnet", *, init: Init, dtype=jnp.float32):
    if variant not in HEAD_WIDTHS:
      raise ValueError(f"unknown head {variant!r}; choose one of {sorted(HEAD_WIDTHS)}")
    widths = HEAD_WIDTHS[variant]
    layers = [BatchNorm(widths[0]), Act("relu")]
    for k, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
      layers.append(conv(cin, cout, 1, dtype=dtype, init=init))
      if k < len(widths) - 2:
        layers += [BatchNorm(cout), Act("relu")]
    self.classifier = nnx.List(layers)
    self.variant = variant

  def __call__(self, fused):
    return run_sequence(self.classifier, fused).astype(jnp.float32)
