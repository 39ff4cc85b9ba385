"""A small stand-in for the HRFormer, for tests of the training loop (import it after JAX's
platform and device count are set: `conftest` and `train_driver` do that first)."""

import jax
import jax.numpy as jnp
from flax import nnx

from mpc_jax import steps
from mpc_jax.models.layers import BatchNorm, DropPath, Init, conv, to_device
from mpc_jax.models.mpc import MPC


class SmallBackbone(nnx.Module):
  """A stand-in for the HRFormer in tests of the training loop, which compiles in seconds where the
  tiny HRFormer's stage-1 step takes about 40 s. `[B, H, W, 3]` -> four maps `[B, H/4/2^s, W/4/2^s,
  256]`, s = 0..3, from 1x1 convolutions on average-pooled images. It holds what the loop must carry:
  parameters, BatchNorm statistics (train and eval mode) and a drop-path branch drawing per-sample
  masks from the `droppath` stream."""

  def __init__(self, init: Init, *, drop_path_rate: float = 0.1, dtype=jnp.float32, width: int = 8):
    self.stem = conv(3, width, 1, init=init, dtype=dtype)
    self.stem_bn = BatchNorm(width)
    self.branch = conv(width, width, 1, init=init, dtype=dtype)
    self.branch_bn = BatchNorm(width)
    self.drop_path = DropPath(drop_path_rate, init.rngs)
    self.outputs = nnx.List([conv(width, 256, 1, init=init, dtype=dtype) for _ in range(4)])

  def __call__(self, images):
    b, h, w, c = images.shape
    x = images.reshape(b, h // 4, 4, w // 4, 4, c).mean((2, 4))
    x = jax.nn.relu(self.stem_bn(self.stem(x)))
    x = x + self.drop_path(jax.nn.relu(self.branch_bn(self.branch(x))))
    maps = []
    for out in self.outputs:
      maps.append(out(x))
      b, h, w, c = x.shape
      x = x.reshape(b, max(h // 2, 1), min(h, 2), max(w // 2, 1), min(w, 2), c).mean((2, 4))
    return maps


def build_small_model(config):
  """`train.build_model`'s MPC with `SmallBackbone` in place of the HRFormer (same seed, head, dtype
  and drop-path rate)."""
  m = config.model
  init = Init(steps.rng_seeds(config)["model"])
  dtype = jnp.dtype(m.dtype)
  rate = float(m.drop_path_rate)
  backbone = SmallBackbone(init, drop_path_rate=0.1 if rate < 0 else rate, dtype=dtype)
  return to_device(MPC(head=m.head, init=init, dtype=dtype, backbone=backbone))
