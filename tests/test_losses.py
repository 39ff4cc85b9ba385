"""Tests of mpc_jax.losses: reference parity, odd sizes, edge cases, chunking, sampling,
cross-device negatives (8 simulated CPU devices, see conftest.py) and the focal loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpc_jax.losses import (
  downsample_mask_nearest,
  multiview_pixel_contrast,
  multiview_pixel_contrast_sharded,
  nearest_source_index,
  sample_indices,
  sigmoid_focal_loss,
)

PARTS = ("total", "intra", "cross_scale", "cross_modality")
KEY = jax.random.key(0)


# ----------------------------------------------------------------------------- numpy reference
def _np_nearest(mask, h, w):
  """PyTorch 'nearest': src = min(floor(dst * float32(in / out)), in - 1), in float32."""

  def idx(o, i):
    if o == i:
      return np.arange(o)
    s = np.float32(i) / np.float32(o)
    return np.minimum(np.floor(np.arange(o, dtype=np.float32) * s).astype(int), i - 1)

  return mask[idx(h, mask.shape[0])][:, idx(w, mask.shape[1])]


def _np_info_nce(q, n, t=0.1):
  """Reference InfoNCE, written out with the full K x K matrix, in float64."""
  q = q.astype(np.float64)
  n = n.astype(np.float64)
  q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
  n = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
  k = len(q)
  if k < 2:
    return 0.0  # the reference gives NaN here; our contract says 0
  sim = q @ q.T
  pos = np.array([np.mean(np.delete(sim[i], i)) for i in range(k)])
  logits = np.concatenate([pos[:, None], q @ n.T], axis=1) / t
  m = logits.max(axis=1, keepdims=True)
  lse = np.log(np.exp(logits - m).sum(axis=1)) + m[:, 0]
  return float(np.mean(lse - logits[:, 0]))


def _np_image_loss(va, vb, mask, t=0.1):
  """Reference MyLoss for one image (no sampling: every set is used whole)."""
  H, W = mask.shape
  gts = [mask] + [_np_nearest(mask, H // 2**s, W // 2**s) for s in (1, 2, 3)]
  Q = [va[s][gts[s] == 0] for s in range(4)]
  N = [va[s][gts[s] == 1] for s in range(4)]
  qc, nc = np.concatenate(Q[1:]), np.concatenate(N[1:])
  q0b, n0b = vb[0][gts[0] == 0], vb[0][gts[0] == 1]
  intra = _np_info_nce(Q[0], N[0], t)
  cs = _np_info_nce(Q[0], nc, t) + _np_info_nce(qc, N[0], t)
  cm = _np_info_nce(Q[0], n0b, t) + _np_info_nce(q0b, N[0], t)
  return {"total": intra + cs + cm, "intra": intra, "cross_scale": cs, "cross_modality": cm}


def _np_batch_loss(view_a, view_b, mask):
  per = [
    _np_image_loss([v[i] for v in view_a], [v[i] for v in view_b], mask[i]) for i in range(mask.shape[0])
  ]
  return {k: float(np.mean([p[k] for p in per])) for k in PARTS}


# ----------------------------------------------------------------------------- data helpers
def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _make_batch(rng, masks, c=8, noise=0.5):
  """Two views whose embeddings depend on the mask (so the loss is not trivial)."""
  masks = np.asarray(masks, np.float32)
  B, H, W = masks.shape
  proto = rng.normal(size=(2, c))
  view_a, view_b = [], []
  for s in range(4):
    h, w = H // 2**s, W // 2**s
    m = np.stack([_np_nearest(mi, h, w) for mi in masks])
    base = proto[m.astype(int)]
    view_a.append(_unit(base + noise * rng.normal(size=(B, h, w, c))).astype(np.float32))
    view_b.append(_unit(base + noise * rng.normal(size=(B, h, w, c))).astype(np.float32))
  return view_a, view_b, masks


def _blob_mask(rng, H, W, frac=0.3):
  m = np.zeros((H, W), np.float32)
  h, w = max(1, int(H * frac)), max(1, int(W * frac))
  y, x = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
  m[y : y + h, x : x + w] = 1
  m[rng.random((H, W)) < 0.05] = 1
  return m


def _assert_parts(out, ref, rtol=1e-5):
  for k in PARTS:
    np.testing.assert_allclose(float(out[k]), ref[k], rtol=rtol, atol=1e-6, err_msg=k)


# ----------------------------------------------------------------------------- parity
# Compiling the loss takes seconds on CPU: every test jits, and shapes/configs are shared.
_fwd = jax.jit(
  multiview_pixel_contrast, static_argnames=("num_samples", "negatives", "bank_per_image", "chunk_size")
)


def _fixture_case(fixtures_dir, c):
  d = np.load(fixtures_dir / "loss_cases.npz")
  p = f"case{c}/"
  va = [d[f"{p}view1_scale{s}_hwc"][None] for s in range(4)]
  vb = [d[f"{p}view2_scale{s}_hwc"][None] for s in range(4)]
  ref = {k: float(d[f"{p}loss_{k}"]) for k in PARTS}
  return va, vb, d[p + "mask_hw"][None], ref


@pytest.mark.parity
@pytest.mark.parametrize("case", [0, 1, 2])
def test_fixture_parity(fixtures_dir, case):
  va, vb, m, ref = _fixture_case(fixtures_dir, case)
  _assert_parts(_fwd(va, vb, m, key=KEY, chunk_size=100), ref)  # 100 divides no set size
  # the numpy port of the reference agrees with the fixture too (validates the port)
  _assert_parts(_np_batch_loss(va, vb, m), ref)


@pytest.mark.parametrize("H,W", [(23, 37), (106, 9)])  # 106 // 4 rounds differently in float32
def test_odd_sizes_match_numpy_reference(H, W):
  rng = np.random.default_rng(H * 100 + W)
  masks = [_blob_mask(rng, H, W, 0.3), _blob_mask(rng, H, W, 0.6)]
  va, vb, m = _make_batch(rng, masks)
  _assert_parts(_fwd(va, vb, m, key=KEY, chunk_size=50), _np_batch_loss(va, vb, m))


def test_nearest_matches_torch():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  for n_in in list(range(1, 70)) + [106, 159, 212, 362, 511, 543]:
    for n_out in {max(1, n_in // 2), max(1, n_in // 4), max(1, n_in // 8), n_in}:
      x = torch.arange(n_in, dtype=torch.float32).reshape(1, 1, n_in, 1)
      y = F.interpolate(x, size=(n_out, 1), mode="nearest")[0, 0, :, 0].long().numpy()
      np.testing.assert_array_equal(nearest_source_index(n_out, n_in), y)
  m = np.random.default_rng(0).random((2, 45, 31)) > 0.5
  out = downsample_mask_nearest(jnp.asarray(m, jnp.float32), (11, 7))
  ref = F.interpolate(torch.tensor(m, dtype=torch.float32)[:, None], size=(11, 7), mode="nearest")[:, 0]
  np.testing.assert_array_equal(np.asarray(out), ref.numpy())


# ----------------------------------------------------------------------------- edge cases, chunks
@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _value_and_grad(va, vb, m, chunk_size):
  def f(va, vb):
    out = multiview_pixel_contrast(
      va, vb, m, key=KEY, chunk_size=chunk_size, negatives="global", bank_per_image=6
    )
    return out["total"], out

  return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(va, vb)


def test_edge_cases_finite_and_chunked_equals_plain():
  rng = np.random.default_rng(1)
  H, W = 16, 16
  authentic = np.zeros((H, W))
  forged = np.ones((H, W))
  one_query = np.ones((H, W))
  one_query[3, 5] = 0
  one_negative = np.zeros((H, W))
  one_negative[8, 8] = 1
  va, vb, m = _make_batch(rng, [authentic, forged, one_query, one_negative, _blob_mask(rng, H, W, 0.5)])
  va[0] = va[0].copy()
  va[0][3] = 0.0  # an all-zero embedding map (image 3, scale 0)
  (_, plain), g_plain = _value_and_grad(va, vb, m, chunk_size=None)
  (_, chunk), g_chunk = _value_and_grad(va, vb, m, chunk_size=7)  # 7 divides no set size
  for k in PARTS:
    assert np.isfinite(float(plain[k])) and np.isfinite(float(chunk[k])), k
    np.testing.assert_allclose(float(chunk[k]), float(plain[k]), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_chunk)):
    assert np.all(np.isfinite(np.asarray(a))) and np.all(np.isfinite(np.asarray(b)))
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
  assert float(jnp.abs(g_plain[0][0][4]).max()) > 0  # the ordinary image gets a gradient
  # per image: authentic and fully forged images give exactly 0 everywhere (reference: 0 and
  # NaN); the others agree with the reference port (zero embeddings included)
  for i in range(5):
    sub = lambda x, i=i: [v[i : i + 1] for v in x]
    out = _fwd(sub(va), sub(vb), m[i : i + 1], key=KEY)
    if i < 2:
      assert all(float(out[k]) == 0.0 for k in PARTS), i
    elif i > 2:  # image 2 has one query: the reference divides by zero there
      _assert_parts(out, _np_batch_loss(sub(va), sub(vb), m[i : i + 1]))
    assert all(np.isfinite(float(out[k])) for k in PARTS)


# ----------------------------------------------------------------------------- sampling
def test_sample_indices_uniform_without_replacement():
  valid = jnp.asarray(np.random.default_rng(3).random(100) < 0.3)
  members = set(np.flatnonzero(np.asarray(valid)))
  f = jax.jit(sample_indices, static_argnums=2)
  for k in (5, len(members), 60):
    idx, ok = f(jax.random.key(k), valid, k)
    assert idx.shape == ok.shape == (k,)
    chosen = np.asarray(idx)[np.asarray(ok)]
    assert len(chosen) == min(k, len(members)) == len(set(chosen))
    assert set(chosen) <= members
  idx, ok = sample_indices(KEY, valid, 1000)  # larger than the set: everything, in order
  np.testing.assert_array_equal(np.asarray(idx), np.arange(100))
  np.testing.assert_array_equal(np.asarray(ok), np.asarray(valid))
  # every member is equally likely
  counts = np.zeros(100)
  keys = jax.random.split(KEY, 400)
  idx, ok = jax.vmap(lambda k: sample_indices(k, valid, 10))(keys)
  np.add.at(counts, np.asarray(idx)[np.asarray(ok)], 1)
  c = counts[sorted(members)]
  assert abs(c.mean() - 4000 / len(members)) < 1e-6 and c.min() > 0.4 * c.mean()


def test_sampled_loss_static_shapes_and_close_to_full():
  rng = np.random.default_rng(4)
  m = np.zeros((2, 32, 32), np.float32)
  m[0, :, :12] = 1  # scale-0 sets: 640 authentic / 384 forged; coarse sets: 280 / 168
  m[1, 10:20, 5:25] = 1
  va, vb, m = _make_batch(rng, m, noise=0.8)
  full = _fwd(va, vb, m, key=KEY)
  outs = [_fwd(va, vb, m, key=jax.random.key(i), num_samples=600) for i in range(3)]
  assert outs[0]["intra"].shape == ()
  assert len({float(o["total"]) for o in outs}) == 3  # random
  for o in outs:  # sampling only trims the largest sets a little: close to the full value
    for k in PARTS:
      np.testing.assert_allclose(float(o[k]), float(full[k]), rtol=0.02)


@functools.partial(jax.jit, static_argnames=("num_samples", "chunk_size"))
def _global_value_and_grad(va, vb, m, num_samples, chunk_size):
  def f(va, vb):
    out = multiview_pixel_contrast(
      va,
      vb,
      m,
      key=KEY,
      num_samples=num_samples,
      chunk_size=chunk_size,
      negatives="global",
      bank_per_image=40,
    )
    return out["total"], out

  return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(va, vb)


# 100: the whole-image path runs 3 row chunks of 342 (the last padded), and 100 divides no set size
@pytest.mark.parametrize("chunk_size", [None, 100])
def test_whole_image_path_equals_the_sampled_path(chunk_size):
  """With `num_samples` at least the 32 x 32 = 1024 pixels of scale 0, the loss takes the whole-image
  path (one similarity product); with 700 it samples, and as no set here has more than 700 members the
  sampling keeps every member (in a random order). Both must give the same values and gradients."""
  rng = np.random.default_rng(5)
  m = np.zeros((3, 32, 32), np.float32)
  m[0, :, :14] = 1  # scale 0: 576 authentic, 448 forged
  m[1] = _blob_mask(rng, 32, 32, 0.6)
  m[2, 2:30, 19:31] = 1  # 336 forged: every set of every image has at most 700 members
  assert all(max(mi.sum(), mi.size - mi.sum()) <= 700 for mi in m)
  va, vb, m = _make_batch(rng, m, noise=0.8)
  (_, whole), g_whole = _global_value_and_grad(va, vb, m, 5000, chunk_size)
  (_, sampled), g_sampled = _global_value_and_grad(va, vb, m, 700, chunk_size)
  for k in PARTS:
    np.testing.assert_allclose(float(whole[k]), float(sampled[k]), rtol=2e-6, err_msg=k)
  for a, b in zip(jax.tree.leaves(g_whole), jax.tree.leaves(g_sampled)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
  assert float(jnp.abs(g_whole[1][0]).max()) > 0  # view b gets a gradient (cross-modality)


# ----------------------------------------------------------------------------- global negatives
def test_global_negatives_sharded_equals_single_device():
  assert jax.device_count() == 8, "conftest.py sets 8 simulated CPU devices"
  rng = np.random.default_rng(5)
  masks = [_blob_mask(rng, 16, 16, 0.3 + 0.03 * i) for i in range(16)]
  masks[0][:] = 1.0  # fully forged: its pixels only matter as the other images' negatives
  masks[1][:] = 0.0  # authentic: contributes nothing to the bank
  va, vb, m = _make_batch(rng, masks)  # 2 images per device
  mesh = jax.make_mesh((8,), ("data",))
  kw = dict(negatives="global", num_samples=40, bank_per_image=12, chunk_size=16)

  def single(va, vb):
    return multiview_pixel_contrast(va, vb, m, key=KEY, **kw)["total"]

  def sharded(va, vb):
    return multiview_pixel_contrast_sharded(va, vb, m, key=KEY, mesh=mesh, **kw)["total"]

  va_s, vb_s = jax.device_put((va, vb), jax.NamedSharding(mesh, jax.P("data")))
  v1, g1 = jax.jit(jax.value_and_grad(single, argnums=(0, 1)))(va, vb)
  v8, g8 = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1)))(va_s, vb_s)
  np.testing.assert_allclose(float(v8), float(v1), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-7)
  # image 0 has no terms of its own (fully forged; with negatives='image' nothing depends on
  # it), yet its pixels get a gradient through the bank, and that gradient sits on device 0,
  # which produced those negatives
  g0 = g8[0][0]
  shard0 = [s for s in g0.addressable_shards if s.device == mesh.devices.flat[0]][0]
  assert shard0.data.shape[0] == 2 and float(jnp.abs(shard0.data[0]).max()) > 0.0

  # the training step may also call the loss inside its own shard_map, with axis_name=
  spec = jax.P("data")

  @jax.jit
  def step(va, vb, m):
    f = lambda a, b, mm: multiview_pixel_contrast(a, b, mm, key=KEY, axis_name="data", **kw)
    return jax.shard_map(f, mesh=mesh, in_specs=((spec,) * 4, (spec,) * 4, spec), out_specs=jax.P())(
      tuple(va), tuple(vb), m
    )

  m_s = jax.device_put(m, jax.NamedSharding(mesh, spec))
  np.testing.assert_allclose(float(step(va_s, vb_s, m_s)["total"]), float(v1), rtol=1e-5)


# ----------------------------------------------------------------------------- focal loss
def _np_focal(logits, target, alpha=0.5, gamma=2.0):
  x = logits.astype(np.float64)
  t = target.astype(np.float64)
  p = 1 / (1 + np.exp(-x))
  ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
  p_t = p * t + (1 - p) * (1 - t)
  a_t = alpha * t + (1 - alpha) * (1 - t)
  return float(np.mean(a_t * ce * (1 - p_t) ** gamma))


def test_focal_loss_numpy_and_resize():
  rng = np.random.default_rng(6)
  logits = rng.normal(size=(2, 9, 13, 1)).astype(np.float32) * 3
  target = (rng.random((2, 9, 13)) > 0.6).astype(np.float32)
  np.testing.assert_allclose(
    float(sigmoid_focal_loss(logits, target)), _np_focal(logits[..., 0], target), rtol=1e-5
  )
  np.testing.assert_allclose(
    float(sigmoid_focal_loss(logits[..., 0], target)), _np_focal(logits[..., 0], target), rtol=1e-5
  )
  big = (rng.random((2, 37, 53)) > 0.5).astype(np.float32)  # resized to 9 x 13 by nearest
  np.testing.assert_allclose(
    float(sigmoid_focal_loss(logits, big)),
    _np_focal(logits[..., 0], np.stack([_np_nearest(b, 9, 13) for b in big])),
    rtol=1e-5,
  )
  extreme = np.array([[[[-60.0], [60.0]]]], np.float32)
  g = jax.grad(lambda x: sigmoid_focal_loss(x, jnp.array([[[1.0, 0.0]]])))(extreme)
  assert np.isfinite(float(sigmoid_focal_loss(extreme, np.array([[[1.0, 0.0]]]))))
  assert np.all(np.isfinite(np.asarray(g)))


def test_focal_loss_matches_torch():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  rng = np.random.default_rng(7)
  logits = (rng.normal(size=(2, 1, 10, 14)) * 2).astype(np.float32)
  target = (rng.random((2, 1, 40, 56)) > 0.5).astype(np.float32)
  # the reference formula (stage2/losses.py), evaluated with torch
  pred, tgt = torch.tensor(logits), F.interpolate(torch.tensor(target), size=(10, 14), mode="nearest")[:, 0]
  p = torch.sigmoid(pred[:, 0])
  ce = F.binary_cross_entropy_with_logits(pred[:, 0], tgt, reduction="none")
  p_t = p * tgt + (1 - p) * (1 - tgt)
  ref = ((0.5 * tgt + 0.5 * (1 - tgt)) * ce * (1 - p_t) ** 2).mean().item()
  out = sigmoid_focal_loss(np.transpose(logits, (0, 2, 3, 1)), target[:, 0])
  np.testing.assert_allclose(float(out), ref, rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.25, 0.75])
def test_focal_loss_alpha_weights_the_forged_class(alpha):
  # hand-computed: one forged pixel with logit 0 (p = 0.5) and one authentic pixel with logit 0:
  # each has CE = log 2 and (1 - p_t)^2 = 1/4; the forged one is weighted alpha, the other 1 - alpha
  out = float(
    sigmoid_focal_loss(np.zeros((1, 1, 2), np.float32), np.array([[[1.0, 0.0]]], np.float32), alpha=alpha)
  )
  assert out == pytest.approx((alpha + (1 - alpha)) * np.log(2) / 4 / 2)
  only_forged = float(
    sigmoid_focal_loss(np.zeros((1, 1, 1), np.float32), np.ones((1, 1, 1), np.float32), alpha=alpha)
  )
  assert only_forged == pytest.approx(alpha * np.log(2) / 4)
  rng = np.random.default_rng(11)
  logits = (rng.normal(size=(2, 7, 9)) * 2).astype(np.float32)
  target = (rng.random((2, 7, 9)) > 0.7).astype(np.float32)
  np.testing.assert_allclose(
    float(sigmoid_focal_loss(logits, target, alpha=alpha)), _np_focal(logits, target, alpha=alpha), rtol=1e-5
  )


def _np_global_batch_loss(view_a, view_b, mask, t=0.1):
  """The loss with negatives='global' and every set whole: each image's intra term also has, as
  negatives, the forged scale-0 pixels of view a of every OTHER image in the batch."""
  B = mask.shape[0]
  forged0 = [view_a[0][i][mask[i] == 1] for i in range(B)]
  per = []
  for i in range(B):
    va, vb = [v[i] for v in view_a], [v[i] for v in view_b]
    parts = _np_image_loss(va, vb, mask[i], t)
    others = [forged0[j] for j in range(B) if j != i]
    negatives = np.concatenate([va[0][mask[i] == 1]] + others)
    parts["intra"] = _np_info_nce(va[0][mask[i] == 0], negatives, t)
    parts["total"] = parts["intra"] + parts["cross_scale"] + parts["cross_modality"]
    per.append(parts)
  return {k: float(np.mean([p[k] for p in per])) for k in PARTS}


@pytest.mark.parametrize("chunk_size", [None, 8])
def test_global_negatives_match_numpy(chunk_size):
  rng = np.random.default_rng(12)
  masks = [_blob_mask(rng, 8, 8, 0.3 + 0.1 * i) for i in range(4)]
  masks[1][:] = 0.0  # authentic: nothing in the bank, but its intra term sees the others' pixels
  masks[2][:] = 1.0  # fully forged: no queries, all of its pixels are negatives for the others
  va, vb, m = _make_batch(rng, masks)
  out = _fwd(va, vb, m, key=KEY, negatives="global", num_samples=64, bank_per_image=64, chunk_size=chunk_size)
  _assert_parts(out, _np_global_batch_loss(va, vb, m), rtol=2e-5)
  # and it differs from the per-image loss (the bank matters)
  assert abs(float(out["intra"]) - _np_batch_loss(va, vb, m)["intra"]) > 1e-3
  # temperature reaches the bank's logits too
  out_t = _fwd(
    va,
    vb,
    m,
    key=KEY,
    negatives="global",
    num_samples=64,
    bank_per_image=64,
    chunk_size=chunk_size,
    temperature=0.5,
  )
  _assert_parts(out_t, _np_global_batch_loss(va, vb, m, t=0.5), rtol=2e-5)
