"""Layers with PyTorch semantics, against numpy restatements written from PyTorch's documentation
(and against PyTorch itself where it is installed)."""

import jax
import numpy as np
import pytest
from flax import nnx

from mpc_jax.models import layers


def _np_batchnorm_train(x, scale, bias, run_mean, run_var, momentum, eps):
  """`torch.nn.BatchNorm2d` in train mode on `[N, H, W, C]`: normalise with the batch's biased
  variance; update the running statistics with the unbiased one, weight `momentum` on the batch."""
  x = x.astype(np.float64)
  n = x.size // x.shape[-1]
  mean = x.mean((0, 1, 2))
  var = ((x - mean) ** 2).mean((0, 1, 2))
  y = (x - mean) / np.sqrt(var + eps) * scale + bias
  new_mean = (1 - momentum) * run_mean + momentum * mean
  new_var = (1 - momentum) * run_var + momentum * var * n / (n - 1)
  return y, new_mean, new_var


def _batchnorm(c, rng, momentum=0.1, eps=1e-5):
  bn = layers.BatchNorm(c, eps=eps, momentum=momentum)
  params = {k: rng.normal(size=c).astype(np.float32) for k in ("scale", "bias", "mean")}
  params["var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
  for k, v in params.items():
    getattr(bn, k).set_value(jax.numpy.asarray(v))
  return bn, params


@pytest.mark.parametrize("momentum,eps", [(0.1, 1e-5), (0.03, 1e-3)])
def test_batchnorm_train_steps_and_eval_match_numpy(momentum, eps):
  rng = np.random.default_rng(0)
  c = 5
  bn, p = _batchnorm(c, rng, momentum, eps)
  run_mean, run_var = p["mean"].astype(np.float64), p["var"].astype(np.float64)
  for step in range(3):  # three train steps: the running statistics compound as in PyTorch
    x = (rng.normal(size=(2, 3, 4, c)) * (1 + step) + step).astype(np.float32)
    y = np.asarray(bn(jax.numpy.asarray(x)))
    want, run_mean, run_var = _np_batchnorm_train(x, p["scale"], p["bias"], run_mean, run_var, momentum, eps)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.mean[...]), run_mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(bn.var[...]), run_var, rtol=1e-6, atol=1e-7)
  assert int(bn.num_batches_tracked[...]) == 3
  bn.use_running_average = True
  x = rng.normal(size=(1, 2, 2, c)).astype(np.float32)
  want = (x - run_mean) / np.sqrt(run_var + eps) * p["scale"] + p["bias"]
  np.testing.assert_allclose(np.asarray(bn(jax.numpy.asarray(x))), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(bn.mean[...]), run_mean, rtol=1e-6)  # eval leaves them alone


def test_batchnorm_gradient_equals_autodiff_of_the_formula():
  """BatchNorm's hand-written gradient (`_moments`, `_normalize`) equals JAX's autodiff of the plain
  formula, for x, scale and bias, including cotangents on the batch mean and variance; `x [n, G, m, C]`
  with G = 3 groups, each with its own statistics."""
  jnp = jax.numpy
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(2.0, 3.0, (2, 3, 4, 5)) * np.arange(1, 4)[:, None, None], jnp.float32)
  scale, bias = (jnp.asarray(rng.normal(size=5), jnp.float32) for _ in range(2))
  w = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  eps = 1e-3

  def plain(x, scale, bias):
    per_group = jnp.moveaxis(x, 1, 0).reshape(3, -1, 5)  # [G, n * m, C]
    mean = jnp.mean(per_group, 1)
    var = jnp.mean(jnp.square(per_group - mean[:, None]), 1)
    y = (x - mean[:, None]) / jnp.sqrt(var + eps)[:, None] * scale + bias
    return jnp.sum(y * w) + jnp.sum(jnp.sin(mean)) + jnp.sum(jnp.cos(var))

  def ours(x, scale, bias):
    mean, var = layers._moments(x)
    y = layers._normalize(x, mean, var, scale, bias, eps)
    return jnp.sum(y * w) + jnp.sum(jnp.sin(mean)) + jnp.sum(jnp.cos(var))

  np.testing.assert_allclose(ours(x, scale, bias), plain(x, scale, bias), rtol=1e-6)
  for got, want in zip(jax.grad(ours, (0, 1, 2))(x, scale, bias), jax.grad(plain, (0, 1, 2))(x, scale, bias)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


def test_batchnorm_groups_equal_consecutive_passes():
  """A BatchNorm with `groups=2` on an interleaved batch gives what one BatchNorm gives on each group in
  turn: outputs, running statistics, the count of batches, and the gradients."""
  jnp = jax.numpy
  rng = np.random.default_rng(4)
  a = jnp.asarray(rng.normal(1.0, 2.0, (3, 4, 5, 6)), jnp.float32)
  b = jnp.asarray(rng.normal(-1.0, 0.5, (3, 4, 5, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 2, 4, 5, 6)), jnp.float32)
  bn = layers.BatchNorm(6, momentum=0.3)
  bn.scale.set_value(jnp.asarray(rng.normal(size=6), jnp.float32))
  bn.mean.set_value(jnp.full((6,), 0.5))
  graphdef, params, stats = nnx.split(bn, nnx.Param, ...)

  def grouped(params, x):
    m = nnx.merge(graphdef, params, stats, copy=True)
    m.groups = 2
    y = m(x.reshape(6, 4, 5, 6)).reshape(3, 2, 4, 5, 6)
    return jnp.sum(y * w), (y, nnx.state(m, nnx.Not(nnx.Param)))

  def consecutive(params, a, b):
    m = nnx.merge(graphdef, params, stats, copy=True)
    ya, yb = m(a), m(b)
    return jnp.sum(ya * w[:, 0]) + jnp.sum(yb * w[:, 1]), (
      jnp.stack([ya, yb], 1),
      nnx.state(m, nnx.Not(nnx.Param)),
    )

  (_, (y, got)), (g_params, g_x) = jax.value_and_grad(grouped, (0, 1), has_aux=True)(
    params, jnp.stack([a, b], 1)
  )
  (_, (y_want, want)), (g_params_want, g_a, g_b) = jax.value_and_grad(consecutive, (0, 1, 2), has_aux=True)(
    params, a, b
  )
  np.testing.assert_allclose(np.asarray(y), np.asarray(y_want), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(g_x), np.stack([g_a, g_b], 1), rtol=1e-4, atol=1e-5)
  for got_leaf, want_leaf in zip(jax.tree.leaves(g_params), jax.tree.leaves(g_params_want)):
    np.testing.assert_allclose(np.asarray(got_leaf), np.asarray(want_leaf), rtol=1e-4, atol=1e-5)
  for got_leaf, want_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(want)):  # running stats, count
    np.testing.assert_allclose(np.asarray(got_leaf), np.asarray(want_leaf), rtol=1e-6)
  assert int(got["num_batches_tracked"][...]) == 2
  assert not np.allclose(np.asarray(got["mean"][...]), 0.5)  # the running mean moved


def test_batchnorm_train_step_matches_torch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  c = 4
  bn, p = _batchnorm(c, rng)
  ref = torch.nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)
  with torch.no_grad():
    ref.weight.copy_(torch.tensor(p["scale"]))
    ref.bias.copy_(torch.tensor(p["bias"]))
    ref.running_mean.copy_(torch.tensor(p["mean"]))
    ref.running_var.copy_(torch.tensor(p["var"]))
  ref.train()
  for _ in range(2):
    x = rng.normal(size=(2, 5, 3, c)).astype(np.float32)
    want = ref(torch.tensor(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    np.testing.assert_allclose(np.asarray(bn(jax.numpy.asarray(x))), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(bn.mean[...]), ref.running_mean.numpy(), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(bn.var[...]), ref.running_var.numpy(), rtol=1e-6, atol=1e-7)


def test_layernorm_matches_numpy_with_eps_1e6():
  rng = np.random.default_rng(2)
  c = 6
  ln = layers.LayerNorm(c)
  scale, bias = rng.normal(size=c).astype(np.float32), rng.normal(size=c).astype(np.float32)
  ln.scale.set_value(jax.numpy.asarray(scale))
  ln.bias.set_value(jax.numpy.asarray(bias))
  # tiny variance, so eps (1e-6, PyTorch's nn.LayerNorm(eps=1e-6) of HRFormer) matters
  x = (rng.normal(size=(3, c)) * 1e-3).astype(np.float32)
  xd = x.astype(np.float64)
  var = xd.var(-1, keepdims=True)
  want = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(var + 1e-6) * scale + bias
  np.testing.assert_allclose(np.asarray(ln(jax.numpy.asarray(x))), want, rtol=1e-4, atol=1e-5)


def test_gelu_is_exact_erf():
  """`Act('gelu')` and the MLP's `gelu` are the exact GELU, tails included, and so is their gradient."""
  from math import erf, exp, pi, sqrt

  x = np.array([-9.0, -3.0, -1.0, -0.3, 0.0, 0.7, 2.5, 9.0], np.float32)
  x64 = x.astype(np.float64)
  want = np.array([v * 0.5 * (1 + erf(v / sqrt(2))) for v in x64])
  want_grad = np.array([0.5 * (1 + erf(v / sqrt(2))) + v * exp(-v * v / 2) / sqrt(2 * pi) for v in x64])
  for f in (layers.Act("gelu"), layers.gelu):
    np.testing.assert_allclose(np.asarray(f(jax.numpy.asarray(x))), want, rtol=1e-6, atol=1e-7)
  grad = jax.vmap(jax.grad(layers.gelu))(jax.numpy.asarray(x))
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-6, atol=1e-7)


def test_bilinear_align_corners_matches_numpy():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(1, 3, 5, 2)).astype(np.float32)

  def weights(n_in, n_out):  # output i samples input position i * (n_in - 1) / (n_out - 1)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
      src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
      lo = min(int(np.floor(src)), n_in - 1)
      hi = min(lo + 1, n_in - 1)
      m[i, lo] += 1 - (src - lo)
      m[i, hi] += src - lo
    return m

  for oh, ow in [(7, 9), (12, 20), (2, 3)]:
    want = np.einsum("ih,bhwc,jw->bijc", weights(3, oh), x.astype(np.float64), weights(5, ow))
    np.testing.assert_allclose(
      np.asarray(layers.resize_bilinear_align_corners(jax.numpy.asarray(x), (oh, ow))),
      want,
      rtol=1e-5,
      atol=1e-6,
    )


def test_drop_path_drops_whole_samples_and_rescales_the_kept():
  from flax import nnx

  rate = 0.25
  dp = layers.DropPath(rate, nnx.Rngs(droppath=0))
  x = np.ones((4000, 2, 3, 1), np.float32)
  y = np.asarray(dp(jax.numpy.asarray(x)))
  per_sample = y.reshape(len(y), -1)
  assert np.all(per_sample == per_sample[:, :1])  # one draw per sample
  kept = per_sample[:, 0] != 0
  np.testing.assert_allclose(per_sample[kept, 0], 1 / (1 - rate), rtol=1e-6)  # timm: x / keep
  assert abs(1 - kept.mean() - rate) < 0.03  # ~Binomial(4000, 0.25): sd 0.007
  assert not np.array_equal(y, np.asarray(dp(jax.numpy.asarray(x))))  # a new mask each call
  dp.deterministic = True
  np.testing.assert_array_equal(np.asarray(dp(jax.numpy.asarray(x))), x)


def test_pointwise_conv_is_the_1x1_convolution():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 5, 7, 6)).astype(np.float32)
  kernel = rng.normal(size=(1, 1, 6, 9)).astype(np.float32)
  want = np.einsum("bhwc,cd->bhwd", x.astype(np.float64), kernel[0, 0].astype(np.float64))
  got = layers.pointwise_conv(jax.numpy.asarray(x), jax.numpy.asarray(kernel))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  conv = layers.Conv(6, 9, 1, init=layers.Init(0))
  conv.kernel.set_value(jax.numpy.asarray(kernel))
  np.testing.assert_allclose(
    np.asarray(conv(jax.numpy.asarray(x))), want + np.asarray(conv.bias[...]), rtol=1e-5, atol=1e-5
  )
