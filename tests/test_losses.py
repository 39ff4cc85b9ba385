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


def _np_image_loss(va, vb, mask):
    """Reference MyLoss for one image (no sampling: every set is used whole)."""
    H, W = mask.shape
    gts = [mask] + [_np_nearest(mask, H // 2**s, W // 2**s) for s in (1, 2, 3)]
    Q = [va[s][gts[s] == 0] for s in range(4)]
    N = [va[s][gts[s] == 1] for s in range(4)]
    qc, nc = np.concatenate(Q[1:]), np.concatenate(N[1:])
    q0b, n0b = vb[0][gts[0] == 0], vb[0][gts[0] == 1]
    intra = _np_info_nce(Q[0], N[0])
    cs = _np_info_nce(Q[0], nc) + _np_info_nce(qc, N[0])
    cm = _np_info_nce(Q[0], n0b) + _np_info_nce(q0b, N[0])
    return {"total": intra + cs + cm, "intra": intra, "cross_scale": cs, "cross_modality": cm}


def _np_batch_loss(view_a, view_b, mask):
    per = [_np_image_loss([v[i] for v in view_a], [v[i] for v in view_b], mask[i])
           for i in range(mask.shape[0])]
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
    m[y:y + h, x:x + w] = 1
    m[rng.random((H, W)) < 0.05] = 1
    return m


def _assert_parts(out, ref, rtol=1e-5):
    for k in PARTS:
        np.testing.assert_allclose(float(out[k]), ref[k], rtol=rtol, atol=1e-6, err_msg=k)


# ----------------------------------------------------------------------------- parity
def _fixture_case(fixtures_dir, c):
    d = np.load(fixtures_dir / "loss_cases.npz")
    p = f"case{c}/"
    va = [d[f"{p}view1_scale{s}_hwc"][None] for s in range(4)]
    vb = [d[f"{p}view2_scale{s}_hwc"][None] for s in range(4)]
    ref = {k: float(d[f"{p}loss_{k}"]) for k in PARTS}
    return va, vb, d[p + "mask_hw"][None], ref


@pytest.mark.parametrize("chunk_size", [None, 64])
@pytest.mark.parametrize("case", [0, 1, 2])
def test_fixture_parity(fixtures_dir, case, chunk_size):
    va, vb, m, ref = _fixture_case(fixtures_dir, case)
    out = multiview_pixel_contrast(va, vb, m, key=KEY, chunk_size=chunk_size)
    _assert_parts(out, ref)
    # the numpy port of the reference agrees with the fixture too (validates the port)
    _assert_parts(_np_batch_loss(va, vb, m), ref)


def test_fixture_batched(fixtures_dir):
    """A batch of an image and its flipped copy: the mean of the two per-image values."""
    va, vb, m, ref = _fixture_case(fixtures_dir, 1)
    flip = lambda x: np.concatenate([x, x[:, ::-1]], axis=0)
    out = multiview_pixel_contrast([flip(v) for v in va], [flip(v) for v in vb], flip(m),
                                   key=KEY)
    ref2 = _np_batch_loss([flip(v) for v in va], [flip(v) for v in vb], flip(m))
    _assert_parts(out, ref2)


@pytest.mark.parametrize("H,W", [(23, 37), (106, 9), (15, 17)])
def test_odd_sizes_match_numpy_reference(H, W):
    rng = np.random.default_rng(H * 100 + W)
    masks = [_blob_mask(rng, H, W, 0.3), _blob_mask(rng, H, W, 0.6)]
    va, vb, m = _make_batch(rng, masks)
    out = jax.jit(functools.partial(multiview_pixel_contrast, chunk_size=50))(va, vb, m, key=KEY)
    _assert_parts(out, _np_batch_loss(va, vb, m))


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
    ref = F.interpolate(torch.tensor(m, dtype=torch.float32)[:, None], size=(11, 7),
                        mode="nearest")[:, 0]
    np.testing.assert_array_equal(np.asarray(out), ref.numpy())


# ----------------------------------------------------------------------------- edge cases
def _loss_and_grad(va, vb, m, **kw):
    def f(va, vb):
        out = multiview_pixel_contrast(va, vb, m, key=KEY, **kw)
        return out["total"], out
    (_, out), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(va, vb)
    return out, grads


def test_edge_cases_finite():
    rng = np.random.default_rng(1)
    H, W = 16, 16
    authentic = np.zeros((H, W))
    forged = np.ones((H, W))
    one_query = np.ones((H, W)); one_query[3, 5] = 0
    one_negative = np.zeros((H, W)); one_negative[8, 8] = 1
    va, vb, m = _make_batch(rng, [authentic, forged, one_query, one_negative])
    va[0] = va[0].copy(); va[0][3] = 0.0  # an all-zero embedding map (image 3, scale 0)
    for kw in ({}, {"chunk_size": 8}, {"negatives": "global", "bank_per_image": 4}):
        out, grads = _loss_and_grad(va, vb, m, **kw)
        for k in PARTS:
            assert np.isfinite(float(out[k])), (kw, k)
        for g in jax.tree.leaves(grads):
            assert np.all(np.isfinite(np.asarray(g))), kw
    # per-image values: authentic and fully forged images contribute 0, like the reference
    for i in (0, 1):
        sub = lambda x: [v[i:i + 1] for v in x]
        out = multiview_pixel_contrast(sub(va), sub(vb), m[i:i + 1], key=KEY)
        for k in PARTS:
            assert float(out[k]) == 0.0, (i, k)
    # the single-negative image agrees with the reference port (zero embeddings included)
    sub = lambda x: [v[3:4] for v in x]
    _assert_parts(multiview_pixel_contrast(sub(va), sub(vb), m[3:4], key=KEY),
                  _np_batch_loss(sub(va), sub(vb), m[3:4]))


# ----------------------------------------------------------------------------- chunking
def test_chunked_equals_plain_values_and_grads():
    rng = np.random.default_rng(2)
    va, vb, m = _make_batch(rng, [_blob_mask(rng, 20, 24, 0.5), _blob_mask(rng, 20, 24, 0.4)])
    plain_out, plain_g = _loss_and_grad(va, vb, m, chunk_size=None)
    chunk_out, chunk_g = _loss_and_grad(va, vb, m, chunk_size=7)  # 7 divides no set size
    for k in PARTS:
        np.testing.assert_allclose(float(chunk_out[k]), float(plain_out[k]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(plain_g), jax.tree.leaves(chunk_g)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(plain_g)) > 0


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
    va, vb, m = _make_batch(rng, [_blob_mask(rng, 32, 32, 0.6), _blob_mask(rng, 32, 32, 0.5)],
                            noise=0.8)
    full = multiview_pixel_contrast(va, vb, m, key=KEY)
    f = jax.jit(functools.partial(multiview_pixel_contrast, num_samples=300))
    outs = [f(va, vb, m, key=jax.random.key(i)) for i in range(3)]
    assert len({float(o["total"]) for o in outs}) == 3  # random
    for o in outs:  # sets of ~400-700 sampled to 300: close to the full value
        for k in PARTS:
            np.testing.assert_allclose(float(o[k]), float(full[k]), rtol=0.03)
    small = multiview_pixel_contrast(va, vb, m, key=KEY, num_samples=20)
    assert all(np.isfinite(float(small[k])) for k in PARTS)


# ----------------------------------------------------------------------------- global negatives
def _global_batch(n=8):
    rng = np.random.default_rng(5)
    masks = [_blob_mask(rng, 16, 16, 0.3 + 0.05 * i) for i in range(n)]
    masks[0][:] = 1.0  # fully forged: its pixels only matter as other images' negatives
    masks[1][:] = 0.0  # authentic: contributes nothing to the bank
    return _make_batch(rng, masks)


def test_global_negatives_sharded_equals_single_device():
    assert jax.device_count() == 8, "conftest.py sets 8 simulated CPU devices"
    va, vb, m = _global_batch(16)  # 2 images per device
    mesh = jax.make_mesh((8,), ("data",))
    kw = dict(negatives="global", num_samples=40, bank_per_image=12, chunk_size=16)

    def single(va, vb):
        return multiview_pixel_contrast(va, vb, m, key=KEY, **kw)["total"]

    def sharded(va, vb):
        return multiview_pixel_contrast_sharded(va, vb, m, key=KEY, mesh=mesh, **kw)["total"]

    sharding = jax.NamedSharding(mesh, jax.P("data"))
    va_s, vb_s = jax.device_put((va, vb), sharding)
    v1, g1 = jax.value_and_grad(single)(va, vb)
    v8, g8 = jax.jit(jax.value_and_grad(sharded))(va_s, vb_s)
    np.testing.assert_allclose(float(v8), float(v1), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-7)
    # 'global' really differs from 'image', and the sharded 'image' option matches too
    v_img = multiview_pixel_contrast(va, vb, m, key=KEY, **{**kw, "negatives": "image"})
    assert abs(float(v_img["total"]) - float(v1)) > 1e-4
    v_img8 = multiview_pixel_contrast_sharded(va_s, vb_s, m, key=KEY, mesh=mesh,
                                              **{**kw, "negatives": "image"})
    _assert_parts(v_img8, {k: float(v) for k, v in v_img.items()})

    # image 0 is fully forged: with per-image negatives nothing depends on it; with global
    # negatives its bank entries get a gradient, and it lives on device 0 (its producer)
    g_img = jax.grad(lambda a: multiview_pixel_contrast(
        a, vb, m, key=KEY, **{**kw, "negatives": "image"})["total"])(va)
    assert float(jnp.abs(g_img[0][0]).max()) == 0.0
    g0 = g8[0][0]
    assert float(jnp.abs(g0[0]).max()) > 0.0
    shard0 = [s for s in g8[0].addressable_shards if s.device == mesh.devices.flat[0]][0]
    assert float(jnp.abs(shard0.data[0]).max()) > 0.0


def test_global_negatives_inside_user_shard_map():
    """`axis_name=` lets the training step call the loss inside its own shard_map."""
    va, vb, m = _global_batch(8)
    mesh = jax.make_mesh((8,), ("data",))
    kw = dict(negatives="global", num_samples=40, bank_per_image=8)
    spec = jax.P("data")

    @jax.jit
    def step(va, vb, m):
        f = lambda a, b, mm: multiview_pixel_contrast(a, b, mm, key=KEY, axis_name="data", **kw)
        return jax.shard_map(f, mesh=mesh, in_specs=((spec,) * 4, (spec,) * 4, spec),
                             out_specs=jax.P())(tuple(va), tuple(vb), m)

    out = step(va, vb, m)
    _assert_parts(out, {k: float(v) for k, v in
                        multiview_pixel_contrast(va, vb, m, key=KEY, **kw).items()})


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
    np.testing.assert_allclose(float(sigmoid_focal_loss(logits, target)),
                               _np_focal(logits[..., 0], target), rtol=1e-5)
    np.testing.assert_allclose(float(sigmoid_focal_loss(logits[..., 0], target)),
                               _np_focal(logits[..., 0], target), rtol=1e-5)
    big = (rng.random((2, 37, 53)) > 0.5).astype(np.float32)  # resized to 9 x 13 by nearest
    np.testing.assert_allclose(float(sigmoid_focal_loss(logits, big)),
                               _np_focal(logits[..., 0], np.stack([_np_nearest(b, 9, 13)
                                                                   for b in big])), rtol=1e-5)
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
    pred, tgt = torch.tensor(logits), F.interpolate(torch.tensor(target), size=(10, 14),
                                                    mode="nearest")[:, 0]
    p = torch.sigmoid(pred[:, 0])
    ce = F.binary_cross_entropy_with_logits(pred[:, 0], tgt, reduction="none")
    p_t = p * tgt + (1 - p) * (1 - tgt)
    ref = ((0.5 * tgt + 0.5 * (1 - tgt)) * ce * (1 - p_t) ** 2).mean().item()
    out = sigmoid_focal_loss(np.transpose(logits, (0, 2, 3, 1)), target[:, 0])
    np.testing.assert_allclose(float(out), ref, rtol=1e-5)
