"""Small building blocks with PyTorch semantics, in NHWC.

Every stateful layer keeps the attribute names of its PyTorch twin (`kernel`/`bias` for convs,
`scale`/`bias`/`mean`/`var` for norms), and sequences are `nnx.List`s whose indices match the
reference's `nn.Sequential` indices (stateless entries hold the place of ReLU/Upsample), so
`mpc_jax.convert` maps state-dict keys to parameter paths without a hand-written table.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class BatchCount(nnx.Variable):
  """PyTorch's `num_batches_tracked`: not learned, kept so an export round-trips bit-exactly."""


class Init:
  """Where parameters come from: a host-side numpy generator, or with `random=False` zeros that saved
  values will replace, and the `nnx.Rngs` that drop path draws its masks from (stream `droppath`).
  Weights are numpy arrays on the host: `build_mpc` moves a whole model to the device in one transfer
  (no device compile or copy per array at build time)."""

  def __init__(self, seed: int = 0, random: bool = True):
    self.np = np.random.default_rng(seed) if random else None
    self.rngs = nnx.Rngs(params=seed, droppath=seed + 1)

  def uniform(self, shape, bound):
    if self.np is None:  # weights that saved values will replace
      return constant(shape, 0.0)
    return self.np.uniform(-bound, bound, shape).astype(np.float32)

  def trunc_normal(self, shape, std):
    if self.np is None:
      return constant(shape, 0.0)
    return (np.clip(self.np.standard_normal(shape), -2.0, 2.0) * std).astype(np.float32)


def constant(shape, value, dtype=np.float32):
  """A host array of `value` (see `Init`: `jnp.full` would compile a program per shape)."""
  return np.full(shape, value, dtype)


def to_device(module):
  """`module` with every array moved to the default device in one batched transfer; returns it."""
  nnx.update(module, jax.device_put(nnx.state(module)))
  return module


# How depth-wise convolutions (groups == channels) run, per `Conv.depthwise`: 'xla' (XLA's grouped
# convolution), 'shift' (`depthwise_conv`) or 'auto' (the default: 'shift' on the CPU, 'xla' on
# accelerators). On the CPU the shifted form is several times faster forward and backward at
# HRT-base's shapes (`bench/bench_depthwise.py`; figures in the README), and with its hand-written
# gradient a training step keeps no more than with XLA's form (one HRT-base block's gradient at
# 2x64x64: 146 MiB of temporaries against 155 MiB, 4.6x faster).
DEPTHWISE_CHOICES = ("auto", "shift", "xla")


def depthwise_conv(x, kernel, stride: int, padding: int):
  """Depth-wise 2D convolution as `kh * kw` shifted multiply-adds, accumulated in float32.

  `x [B, H, W, C]`, `kernel [kh, kw, 1, C]` -> `[B, H', W', C]` in `x.dtype`, the same as
  `grouped_conv(x, kernel, stride, padding, groups=C)`. The 'same' case (stride 1, odd square
  kernel, padding (kh - 1) / 2: HRFormer's MLP) has a hand-written gradient (`_same_depthwise`).
  """
  kh, kw = kernel.shape[:2]
  if stride == 1 and kh == kw == 2 * padding + 1:
    return _same_depthwise(x, kernel)
  return _shifted_taps(x, kernel, stride, padding)


def _shifted_taps(x, kernel, stride: int, padding: int):
  b, h, w, c = x.shape
  kh, kw = kernel.shape[:2]
  p, s = padding, stride
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  ho, wo = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
  k = kernel.astype(jnp.float32)
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = jax.lax.slice(xp, (0, i, j, 0), (b, i + s * (ho - 1) + 1, j + s * (wo - 1) + 1, c), (1, s, s, 1))
      term = tap.astype(jnp.float32) * k[i, j, 0]
      out = term if out is None else out + term
  return out.astype(x.dtype)


@jax.custom_vjp
def _same_depthwise(x, kernel):
  return _shifted_taps(x, kernel, 1, (kernel.shape[0] - 1) // 2)


def _same_depthwise_fwd(x, kernel):
  return _same_depthwise(x, kernel), (x, kernel)


def _same_depthwise_bwd(residuals, g):
  """The input's gradient is the same convolution of `g` with the flipped kernel; the kernel's is
  summed a few rows at a time in a loop: XLA:CPU's one-pass reduction over B, H and W (what
  autodiff gives) ran 4x slower at HRT-base's shapes (`bench/bench_depthwise.py`)."""
  x, kernel = residuals
  k, p = kernel.shape[0], (kernel.shape[0] - 1) // 2
  b, h, w, c = x.shape
  dx = _shifted_taps(g, kernel[::-1, ::-1], 1, p).astype(x.dtype)
  rows = 4
  blocks = -(-h // rows)
  extra = blocks * rows - h  # zero rows of g add nothing
  xp = jnp.pad(x, ((0, 0), (p, p + extra), (p, p), (0, 0)))
  gp = jnp.pad(g, ((0, 0), (0, extra), (0, 0), (0, 0)))

  def block(i, acc):
    xs = jax.lax.dynamic_slice(xp, (0, i * rows, 0, 0), (b, rows + k - 1, w + k - 1, c)).astype(jnp.float32)
    gs = jax.lax.dynamic_slice(gp, (0, i * rows, 0, 0), (b, rows, w, c)).astype(jnp.float32)
    taps = [
      jnp.sum(xs[:, di : di + rows, dj : dj + w] * gs, axis=(0, 1, 2)) for di in range(k) for dj in range(k)
    ]
    return acc + jnp.stack(taps)

  dk = jax.lax.fori_loop(0, blocks, block, jnp.zeros((k * k, c), jnp.float32))
  return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


_same_depthwise.defvjp(_same_depthwise_fwd, _same_depthwise_bwd)


def pointwise_conv(x, kernel):
  """A 1x1 convolution as a matrix product: `x [B, H, W, cin]`, `kernel [1, 1, cin, cout]` ->
  `[B, H, W, cout]`. The same values as `grouped_conv`, and faster forward and backward on the CPU,
  where XLA's convolution is several times slower."""
  b, h, w, c = x.shape
  return (x.reshape(b * h * w, c) @ kernel.reshape(c, -1)).reshape(b, h, w, -1)


def grouped_conv(x, kernel, stride: int, padding: int, groups: int = 1):
  """XLA's 2D convolution in NHWC/HWIO with PyTorch's symmetric zero padding: `x [B, H, W, cin]`,
  `kernel [kh, kw, cin / groups, cout]` -> `[B, H', W', cout]`."""
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    (stride, stride),
    ((padding, padding), (padding, padding)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=groups,
  )


def use_shifted_depthwise(depthwise: str) -> bool:
  """Whether a depth-wise convolution runs as `depthwise_conv` (see `DEPTHWISE_CHOICES`)."""
  if depthwise not in DEPTHWISE_CHOICES:
    raise ValueError(f"depthwise must be one of {DEPTHWISE_CHOICES}, got {depthwise!r}")
  return depthwise == "shift" or (depthwise == "auto" and jax.default_backend() == "cpu")


class Conv(nnx.Module, pytree=False):
  """2D convolution `[B, H, W, cin] -> [B, H', W', cout]` with PyTorch's padding arithmetic.

  `kernel` is `[kh, kw, cin / groups, cout]` (float32, PyTorch's default init: uniform in
  +-1/sqrt(fan_in), bias too); compute runs in `dtype`. 1x1 convolutions run as `pointwise_conv`
  (a matrix product). Depth-wise convolutions (`groups == cin == cout`) may run as
  `depthwise_conv`: `depthwise` picks the form (see `DEPTHWISE_CHOICES`;
  `model.set_attributes(depthwise=...)` sets it everywhere).
  """

  def __init__(self, cin, cout, k, *, init, stride=1, padding=0, groups=1, bias=True, dtype=jnp.float32):
    bound = 1.0 / math.sqrt(k * k * cin // groups)  # PyTorch's default Conv2d init
    self.kernel = nnx.Param(init.uniform((k, k, cin // groups, cout), bound))
    self.bias = nnx.Param(init.uniform((cout,), bound)) if bias else None
    self.stride, self.padding, self.groups, self.dtype = stride, padding, groups, dtype
    self.depthwise = "auto"

  def __call__(self, x):
    p = self.padding
    kernel = self.kernel[...]
    if kernel.shape[:2] == (1, 1) and self.stride == 1 and p == 0 and self.groups == 1:
      y = pointwise_conv(x.astype(self.dtype), kernel.astype(self.dtype))
    elif (
      self.groups > 1
      and kernel.shape[2] == 1
      and kernel.shape[3] == self.groups
      and use_shifted_depthwise(self.depthwise)
    ):
      y = depthwise_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, p)
    else:
      y = grouped_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, p, self.groups)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


def conv(cin, cout, kernel, *, init, stride=1, padding=0, groups=1, bias=True, dtype=jnp.float32):
  """Shorthand for `Conv` with PyTorch's positional order."""
  return Conv(
    cin, cout, kernel, init=init, stride=stride, padding=padding, groups=groups, bias=bias, dtype=dtype
  )


class Linear(nnx.Module, pytree=False):
  """`[..., cin] -> [..., cout]`; `kernel` is `[cin, cout]` (truncated normal, std 0.02)."""

  def __init__(self, cin, cout, *, init, dtype=jnp.float32):
    self.kernel = nnx.Param(init.trunc_normal((cin, cout), 0.02))
    self.bias = nnx.Param(constant((cout,), 0.0))
    self.dtype = dtype

  def __call__(self, x):
    return x.astype(self.dtype) @ self.kernel[...].astype(self.dtype) + self.bias[...].astype(self.dtype)


# BatchNorm's gradient is written by hand (`_moments`, `_normalize`): autodiff of the formula gives
# about five per-channel reductions backward, this gives two (sum dy, sum dy * (x - mean)). Fewer
# kernels compile faster (the HRFormer has ~80 BatchNorms per pass) and make fewer passes over the
# activations; `tests/test_layers.py` checks it against autodiff of the plain formula. Both work on
# `x [n, G, m, C]`: `G` independent groups (the views of a two-view batch), each with its own statistics
# `[G, C]` over its `n * m` positions.


@jax.custom_vjp
def _moments(x):
  """Per-group, per-channel mean and biased variance `[G, C]` of `x [n, G, m, C]` (two passes, as
  PyTorch)."""
  mean = jnp.mean(x, (0, 2))
  return mean, jnp.mean(jnp.square(x - mean[:, None]), (0, 2))


def _moments_fwd(x):
  mean, var = _moments(x)
  return (mean, var), (x, mean)


def _moments_bwd(res, g):
  x, mean = res
  g_mean, g_var = g
  n = x.shape[0] * x.shape[2]
  return ((g_mean[:, None] + 2.0 * g_var[:, None] * (x - mean[:, None])) / n,)


_moments.defvjp(_moments_fwd, _moments_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _normalize(x, mean, var, scale, bias, eps):
  """`(x - mean) / sqrt(var + eps) * scale + bias`: `x [n, G, m, C]`, `mean, var [G, C]`, the others
  `[C]`."""
  return (x - mean[:, None]) * jax.lax.rsqrt(var + eps)[:, None] * scale + bias


def _normalize_fwd(x, mean, var, scale, bias, eps):
  return _normalize(x, mean, var, scale, bias, eps), (x, mean, var, scale)


def _normalize_bwd(eps, res, dy):
  x, mean, var, scale = res
  inv = jax.lax.rsqrt(var + eps)  # [G, C]
  d_shift = jnp.sum(dy, (0, 2))  # [G, C]
  d_centred = jnp.sum(dy * (x - mean[:, None]), (0, 2))  # times inv: the gradient of scale
  d_mean = -d_shift * scale * inv
  d_var = -0.5 * d_centred * scale * inv**3
  dx = dy * (scale * inv)[:, None]
  return dx, d_mean, d_var, jnp.sum(d_centred * inv, 0), jnp.sum(d_shift, 0)


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


class BatchNorm(nnx.Module, pytree=False):
  """BatchNorm over `[..., C]` exactly as `torch.nn.BatchNorm2d`.

  Training mode normalises with the (global) batch's biased variance and updates the running
  statistics with the unbiased one, `running = (1 - momentum) * running + momentum * batch`
  (`momentum` in PyTorch's convention). Eval mode uses the running statistics. With `groups = G`
  (set by `model.set_attributes(groups=G)`), the batch interleaves `G` independent batches (item `i`
  belongs to group `i % G`, e.g. the two views of each image): each is normalised with its own
  statistics and the running statistics are updated once per group, in order, exactly as `G`
  consecutive passes would.
  """

  def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1):
    self.scale = nnx.Param(constant((num_features,), 1.0))
    self.bias = nnx.Param(constant((num_features,), 0.0))
    self.mean = nnx.BatchStat(constant((num_features,), 0.0))
    self.var = nnx.BatchStat(constant((num_features,), 1.0))
    self.num_batches_tracked = BatchCount(constant((), 0, np.int32))
    self.eps = eps
    self.momentum = momentum
    self.use_running_average = False
    self.groups = 1

  def __call__(self, x):
    dtype = x.dtype
    c, g = x.shape[-1], self.groups
    if x.shape[0] % g:
      raise ValueError(f"BatchNorm: a batch of {x.shape[0]} does not split into groups={g}")
    xf = x.astype(jnp.float32).reshape(x.shape[0] // g, g, -1, c)
    if self.use_running_average:
      mean, var = self.mean[...][None], self.var[...][None]
    else:
      mean, var = _moments(xf)
      n = xf.shape[0] * xf.shape[2]
      unbiased = var * (n / max(n - 1, 1))
      m = self.momentum
      running_mean, running_var = self.mean[...], self.var[...]
      for i in range(g):
        running_mean = (1 - m) * running_mean + m * jax.lax.stop_gradient(mean[i])
        running_var = (1 - m) * running_var + m * jax.lax.stop_gradient(unbiased[i])
      # Whole-value writes: an indexed write (`v[...] = x`) on a tracer costs time proportional to
      # the program traced so far, which made tracing quadratic in the model's size.
      self.mean.set_value(running_mean)
      self.var.set_value(running_var)
      self.num_batches_tracked.set_value(self.num_batches_tracked[...] + g)
    y = _normalize(xf, mean, var, self.scale[...], self.bias[...], self.eps)
    return y.reshape(x.shape).astype(dtype)


class LayerNorm(nnx.Module, pytree=False):
  """LayerNorm over the last axis, as `torch.nn.LayerNorm` (computed in float32)."""

  def __init__(self, num_features: int, *, eps: float = 1e-6):
    self.scale = nnx.Param(constant((num_features,), 1.0))
    self.bias = nnx.Param(constant((num_features,), 0.0))
    self.eps = eps

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, -1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), -1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
    return y.astype(x.dtype)


def gelu(x):
  """PyTorch's default (exact) GELU, `x/2 (1 + erf(x/sqrt 2))`, in PyTorch's own form: `jax.nn.gelu`
  uses `erfc`, which XLA:CPU runs 2.4x slower (1.8x for the gradient)."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(math.sqrt(0.5))))


class Act(nnx.Module, pytree=False):
  """A stateless activation: 'relu' or 'gelu' (`gelu`)."""

  def __init__(self, kind: str = "relu"):
    self.kind = kind

  def __call__(self, x):
    if self.kind == "relu":
      return jax.nn.relu(x)
    return gelu(x)


class Identity(nnx.Module, pytree=False):
  """Holds the place of a `None` or `nn.Identity` entry of the reference."""

  def __call__(self, x):
    return x


class UpsampleNearest(nnx.Module, pytree=False):
  """`nn.Upsample(scale_factor=s, mode='nearest')`: `[B, H, W, C] -> [B, sH, sW, C]`."""

  def __init__(self, scale: int):
    self.scale = scale

  def __call__(self, x):
    return jnp.repeat(jnp.repeat(x, self.scale, axis=1), self.scale, axis=2)


def run_sequence(layers, x):
  """Applies the entries of an `nnx.List` in order (a PyTorch `nn.Sequential`)."""
  for layer in layers:
    x = layer(x)
  return x


def _next_key(stream):
  """`stream()` of an `nnx.RngStream` (the same keys), counting with a whole-value write: the
  stream's own indexed write (`count[...] += 1`) costs time proportional to the program traced
  so far."""
  key = jax.random.fold_in(stream.key[...], stream.count[...])
  stream.count.set_value(stream.count[...] + 1)
  return key


class DropPath(nnx.Module, pytree=False):
  """Stochastic depth per sample: `x / keep * floor(keep + U[0, 1))`, as timm's `drop_path`.

  Active when `deterministic` is False (`model.train()`); its randomness comes from the
  `droppath` stream of the shared `nnx.Rngs`, so two passes of one batch draw different masks.
  """

  def __init__(self, rate: float, rngs: nnx.Rngs):
    self.rate = float(rate)
    self.rngs = rngs
    self.deterministic = False

  def __call__(self, x):
    if self.deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    u = jax.random.uniform(_next_key(self.rngs.droppath), (x.shape[0],) + (1,) * (x.ndim - 1), jnp.float32)
    return (x / keep) * jnp.floor(keep + u).astype(x.dtype)


def _align_corners_weights(n_in: int, n_out: int):
  """Source indices and weights of a 1-D linear resize with `align_corners=True`."""
  if n_out == 1 or n_in == 1:
    src = np.zeros((n_out,), np.float64)
  else:
    src = np.arange(n_out, dtype=np.float64) * ((n_in - 1) / (n_out - 1))
  lo = np.clip(np.floor(src).astype(np.int32), 0, n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  w = (src - lo).astype(np.float32)
  return lo, hi, w


def resize_bilinear_align_corners(x, out_hw):
  """`F.interpolate(x, size, mode='bilinear', align_corners=True)` for `[B, H, W, C]` arrays."""
  h, w = x.shape[1], x.shape[2]
  oh, ow = int(out_hw[0]), int(out_hw[1])
  if (h, w) == (oh, ow):
    return x
  lo, hi, wt = _align_corners_weights(h, oh)
  wt = jnp.asarray(wt, x.dtype)[None, :, None, None]
  x = x[:, lo] * (1 - wt) + x[:, hi] * wt
  lo, hi, wt = _align_corners_weights(w, ow)
  wt = jnp.asarray(wt, x.dtype)[None, None, :, None]
  return x[:, :, lo] * (1 - wt) + x[:, :, hi] * wt
