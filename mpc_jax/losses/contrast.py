"""Stage-1 loss of MPC: multi-view pixel contrast (InfoNCE over pixel embeddings).

Within each image, authentic pixels are pulled together and pushed away from forged ones, at one scale,
across scales and across two views (two stochastic forward passes), so the backbone learns features that
separate tampered from authentic pixels. Every shape is static (pixel sets sampled with validity masks)
and memory is bounded (negatives in chunks), so the loss jits once and fits at 512 px; negatives can also
come from the other images of the global batch (`negatives='global'`). The terms are defined in
`info_nce` and `_image_terms`; when nothing needs sampling, `_whole_image_terms` gets the same values from
one similarity product per image. `multiview_pixel_contrast_sharded` runs the loss on a device mesh.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools

import jax
import jax.numpy as jnp

from mpc_jax.losses.sampling import downsample_mask_nearest, sample_indices

_NEG = -1e30  # logit of a masked-out negative: exp() is exactly 0, and no inf/nan in gradients
PARTS = ("total", "intra", "cross_scale", "cross_modality")


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """`x / max(||x||, eps)` on the last axis (as `F.normalize`); zero vectors stay zero, and the
  gradient is finite everywhere."""
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def _negative_lse(q, n, n_ok, inv_t, chunk_size):
  """`log sum_j exp(q . n_j / T)` over valid `j`, for every query: `[K]`.

  `q [K, C]`, `n [M, C]`, `n_ok [M]`. With `chunk_size` smaller than `M`, the negatives are
  processed `chunk_size` at a time (padded with invalid rows) and each chunk's similarities are
  recomputed in the backward pass, so at most `K x chunk_size` of them are alive.
  A query with no valid negative gets about `-1e30`.
  """
  m = n.shape[0]
  if m == 0:
    return jnp.full(q.shape[:1], _NEG, q.dtype)

  def block(n_blk, ok_blk):
    s = jnp.einsum("kc,mc->km", q, n_blk) * inv_t
    return jax.nn.logsumexp(jnp.where(ok_blk[None, :], s, _NEG), axis=1)

  if chunk_size is None or m <= chunk_size:
    return block(n, n_ok)
  num_chunks = -(-m // chunk_size)
  pad = num_chunks * chunk_size - m
  n = jnp.pad(n, ((0, pad), (0, 0))).reshape(num_chunks, chunk_size, n.shape[-1])
  n_ok = jnp.pad(n_ok, (0, pad)).reshape(num_chunks, chunk_size)
  lses = jax.lax.map(jax.checkpoint(lambda args: block(*args)), (n, n_ok))  # [chunks, K]
  return jax.nn.logsumexp(lses, axis=0)


def info_nce(q, q_ok, n, n_ok, *, temperature=0.1, chunk_size=1024, extra_lse=None):
  """One InfoNCE term `L(Q, N)` of the reference (`MyInfoNCE` with query == positive key).

  Each query's positive logit is its mean cosine similarity to the OTHER queries (from the sum of the
  queries: no `K x K` matrix), its negative logits its similarities to every element of `N` (log-sum-exp
  in chunks: `_negative_lse`); the loss is the cross-entropy with the positive at index 0 on
  `logits / temperature`, averaged over the queries. No positive (fewer than 2 queries, e.g. a fully
  forged image) gives 0, and so do no negatives (an authentic image), as in the reference.

  Args:
    q: `[K, C]` query embeddings (re-normalised here, as the reference does); `q_ok [K]` bool.
    n: `[M, C]` negative embeddings (re-normalised here); `n_ok [M]` bool.
    extra_lse: optional `[K]` log-sum-exp of more negative logits (already divided by T).
  Returns:
    scalar: mean over valid queries of `-log softmax([pos, q.n_1, ..., q.n_M] / T)[0]` with
    `pos` = mean similarity to the other valid queries. 0 when fewer than 2 queries are valid.
  """
  inv_t = 1.0 / temperature
  q, pos = _positives(l2_normalize(q), q_ok, inv_t)
  neg_lse = _negative_lse(q, l2_normalize(n), n_ok, inv_t, chunk_size)
  return _nce(pos, neg_lse, q_ok, extra_lse)


def _positives(q, q_ok, inv_t):
  """`(q, pos)` from normalised queries `q [K, C]`: `q` zeroed where not `q_ok`, and each query's
  positive logit `[K]`, its mean similarity to the other valid queries divided by T."""
  q = q * q_ok[:, None]
  nq = jnp.sum(q_ok)
  self_sim = jnp.sum(q * q, axis=-1)
  return q, (q @ jnp.sum(q, axis=0) - self_sim) / jnp.maximum(nq - 1, 1) * inv_t


def _nce(pos, neg_lse, q_ok, extra_lse=None):
  """The InfoNCE value from the positive logits `pos [K]` and the negatives' log-sum-exp `neg_lse [K]`
  (and optionally `extra_lse [K]`): the mean over valid queries, 0 with fewer than 2 of them."""
  lse = jnp.logaddexp(pos, neg_lse)
  if extra_lse is not None:
    lse = jnp.logaddexp(lse, extra_lse)
  nq = jnp.sum(q_ok)
  per_query = jnp.where(q_ok, lse - pos, 0.0)
  return jnp.where(nq >= 2, jnp.sum(per_query) / jnp.maximum(nq, 1), 0.0)


def _flat(x):
  return x.reshape(-1, x.shape[-1])


def _scale_masks(mask, view_a):
  """Forged flags at scale 0 `[h_0 w_0]` and at scales 1..3 concatenated `[P_c]`: the mask goes to each
  scale by nearest (`m_s = nearest(mask, (h_s, w_s))`, PyTorch rounding), forged where `m_s >= 0.5`."""
  masks = [downsample_mask_nearest(mask, v.shape[:2]).reshape(-1) for v in view_a]
  return masks[0] >= 0.5, jnp.concatenate(masks[1:]) >= 0.5


def _image_sets(view_a, view_b, mask, key, num_samples):
  """Sample one image's pixel sets. Views: four `[h_s, w_s, C]` maps; mask `[H, W]`.

  Queries are authentic pixels, negatives forged ones (`_scale_masks`); `c` is scales 1..3 concatenated.
  Each set is sampled to at most `num_samples` members (uniform, without replacement) with a validity
  mask, so every shape is static; with `num_samples` at least every set's size nothing is random and the
  loss equals the reference's. The views share the sampled locations (the reference draws them
  independently per term; each term's distribution is the same).
  Returns a dict of `(embeddings [k, C], ok [k])` pairs: `q0a q0b n0a n0b qca nca`.
  """
  m0, mc = _scale_masks(mask, view_a)
  f0a, f0b = _flat(view_a[0]), _flat(view_b[0])
  fca = jnp.concatenate([_flat(v) for v in view_a[1:]])
  k_q0, k_n0, k_qc, k_nc, _ = jax.random.split(key, 5)
  idx, ok = sample_indices(k_q0, ~m0, num_samples)
  sets = {"q0a": (f0a[idx], ok), "q0b": (f0b[idx], ok)}
  idx, ok = sample_indices(k_n0, m0, num_samples)
  sets.update(n0a=(f0a[idx], ok), n0b=(f0b[idx], ok))
  idx, ok = sample_indices(k_qc, ~mc, num_samples)
  sets["qca"] = (fca[idx], ok)
  idx, ok = sample_indices(k_nc, mc, num_samples)
  sets["nca"] = (fca[idx], ok)
  return sets


def _bank_set(view_a0, mask, key, bank_per_image):
  """One image's entries of the global bank: `bank_per_image` forged pixels of `view_a0 [h_0, w_0, C]`
  sampled without replacement, `(embeddings [k, C], ok [k])`."""
  m0 = downsample_mask_nearest(mask, view_a0.shape[:2]).reshape(-1) >= 0.5
  idx, ok = sample_indices(jax.random.split(key, 5)[4], m0, bank_per_image)
  return _flat(view_a0)[idx], ok


def _bank_lse(q, image_id, bank, bank_ok, bank_ids, inv_t, chunk_size):
  """Log-sum-exp `[K]` of the queries' `q [K, C]` logits against the global bank `[Nb, C]`, leaving out
  the entries of image `image_id` (the bank's owners are `bank_ids [Nb]`)."""
  ok = bank_ok & (bank_ids != image_id)
  return _negative_lse(q, l2_normalize(bank), ok, inv_t, chunk_size)


def _pad_rows(x, rows):
  return jnp.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


# (query set, negative set) of the five InfoNCE terms: intra, cross_scale x2, cross_modality x2
_TERMS = (("q0a", "n0a"), ("q0a", "nca"), ("qca", "n0a"), ("q0a", "n0b"), ("q0b", "n0a"))


def _image_terms(sets, image_id, bank, bank_ok, bank_ids, *, temperature, chunk_size):
  """The three parts of one image. `bank [Nb, C]` with owner ids `bank_ids [Nb]` (or None).

  `intra = L(Q0_a, N0_a)`, `cross_scale = L(Q0_a, Nc_a) + L(Qc_a, N0_a)` and
  `cross_modality = L(Q0_a, N0_b) + L(Q0_b, N0_a)`, with `L` = `info_nce` and view `a` playing the
  reference's `FeaturesX`; the global bank, minus the image's own entries, adds negatives to `intra`.
  The five terms run as one batch (sets padded to a common size with invalid rows), which
  keeps the compiled program small; the global bank only enters the intra term.
  """
  k = max(sets[qn][1].shape[0] for qn, _ in _TERMS)
  m = max(sets[nn][1].shape[0] for _, nn in _TERMS)
  stack = lambda names, rows, i: jnp.stack([_pad_rows(sets[n][i], rows) for n in names])
  qs, nsets = [t[0] for t in _TERMS], [t[1] for t in _TERMS]
  q, q_ok, n, n_ok = stack(qs, k, 0), stack(qs, k, 1), stack(nsets, m, 0), stack(nsets, m, 1)
  extra = None
  if bank is not None:
    q0 = l2_normalize(q[0]) * q_ok[0][:, None]
    lse0 = _bank_lse(q0, image_id, bank, bank_ok, bank_ids, 1.0 / temperature, chunk_size)
    extra = jnp.full((len(_TERMS), k), _NEG, lse0.dtype).at[0].set(lse0)
  nce = functools.partial(info_nce, temperature=temperature, chunk_size=chunk_size)
  v = jax.vmap(nce)(q, q_ok, n, n_ok, extra_lse=extra)
  return {"intra": v[0], "cross_scale": v[1] + v[2], "cross_modality": v[3] + v[4]}


def _whole_lses(a0, b0, ac, f0, fc, inv_t, chunk_size):
  """Every negative log-sum-exp of the five terms when every pixel is used, from one product.

  `a0, b0 [P, C]` are scale 0 of views a and b, `ac [Pc, C]` scales 1..3 of view a (normalised),
  `f0 [P]` and `fc [Pc]` their forged flags. With `S = a0 [a0; b0; ac]^T / T`, each row gives its
  log-sum-exp over the forged columns of each block (`[P]` each: aa, ab, ac), and each column of the ab
  and ac blocks its log-sum-exp over the forged rows (`[P + Pc]`). With `chunk_size` set, the rows go
  in chunks, recomputed in the backward pass, of at most `10 P chunk_size` similarities: twice what
  the sampled path's five terms keep alive, as that path also keeps five padded copies of the sets (two
  images at `P` = 64 x 64 and `chunk_size` 1024: one chunk, 799 MiB of XLA temporaries for the loss and
  its gradient against the sampled path's 689 MiB).
  """
  p = a0.shape[0]
  cols = jnp.concatenate([a0, b0, ac])
  col_forged = jnp.concatenate([f0, f0, fc])

  def block(rows, row_forged):
    s = jnp.einsum("kc,mc->km", rows, cols) * inv_t
    by_row = jnp.where(col_forged[None, :], s, _NEG)
    lse = lambda x: jax.nn.logsumexp(x, axis=1)
    by_col = jax.nn.logsumexp(jnp.where(row_forged[:, None], s[:, p:], _NEG), axis=0)
    return (lse(by_row[:, :p]), lse(by_row[:, p : 2 * p]), lse(by_row[:, 2 * p :])), by_col

  if chunk_size is None or cols.shape[0] <= 10 * chunk_size:
    return block(a0, f0)
  num_chunks = -(-cols.shape[0] // (10 * chunk_size))
  chunk_rows = -(-p // num_chunks)
  pad = num_chunks * chunk_rows - p
  rows = jnp.pad(a0, ((0, pad), (0, 0))).reshape(num_chunks, chunk_rows, a0.shape[-1])
  row_forged = jnp.pad(f0, (0, pad)).reshape(num_chunks, chunk_rows)  # padding rows are not forged

  def step(col_lse, chunk):
    by_row, by_col = jax.checkpoint(block)(*chunk)
    return jnp.logaddexp(col_lse, by_col), by_row

  init = jnp.full((cols.shape[0] - p,), _NEG, a0.dtype)
  col_lse, by_row = jax.lax.scan(step, init, (rows, row_forged))
  return tuple(r.reshape(-1)[:p] for r in by_row), col_lse


def _whole_image_terms(view_a, view_b, mask, image_id, bank, bank_ok, bank_ids, *, temperature, chunk_size):
  """`_image_terms` when every pixel is used (no set is larger than `num_samples`): the same values,
  from one similarity product per row chunk (`_whole_lses`) instead of five padded to the largest set.

  Views: four `[h_s, w_s, C]` maps; mask `[H, W]`; bank as in `_image_terms`.
  """
  inv_t = 1.0 / temperature
  f0, fc = _scale_masks(mask, view_a)
  a0, b0 = l2_normalize(_flat(view_a[0])), l2_normalize(_flat(view_b[0]))
  ac = l2_normalize(jnp.concatenate([_flat(v) for v in view_a[1:]]))
  (aa_lse, ab_lse, ac_lse), col_lse = _whole_lses(a0, b0, ac, f0, fc, inv_t, chunk_size)
  q0a, pos0a = _positives(a0, ~f0, inv_t)
  _, pos0b = _positives(b0, ~f0, inv_t)
  _, posca = _positives(ac, ~fc, inv_t)
  extra = None
  if bank is not None:
    extra = _bank_lse(q0a, image_id, bank, bank_ok, bank_ids, inv_t, chunk_size)
  p = a0.shape[0]
  return {
    "intra": _nce(pos0a, aa_lse, ~f0, extra),
    "cross_scale": _nce(pos0a, ac_lse, ~f0) + _nce(posca, col_lse[p:], ~fc),
    "cross_modality": _nce(pos0a, ab_lse, ~f0) + _nce(pos0b, col_lse[:p], ~f0),
  }


def multiview_pixel_contrast(
  view_a: Sequence[jax.Array],
  view_b: Sequence[jax.Array],
  mask: jax.Array,
  *,
  key: jax.Array,
  num_samples: int = 5000,
  temperature: float = 0.1,
  negatives: str = "image",
  bank_per_image: int = 256,
  chunk_size: int | None = 1024,
  axis_name: str | None = None,
) -> dict[str, jax.Array]:
  """The stage-1 MPC loss of a batch: `total = intra + cross_scale + cross_modality` (`_image_terms`;
  `_whole_image_terms` when `num_samples` covers every pixel at scale 0, so nothing is sampled).

  The batch mean divides by the number of images, so an image whose terms are 0 counts as 0 (like the
  reference's mean over a batch of per-image losses) rather than being left out. With
  `negatives='global'` each image puts `bank_per_image` sampled forged pixels of `view_a` at scale 0 in a
  bank of the global batch (all-gathered over `axis_name`): a fixed size per device, so shapes stay
  static, and each entry's gradient flows back to the device that produced it. Sampling keys are
  `fold_in(key, global image index)`, so a sharded run samples exactly what one device samples over the
  concatenated batch.

  Args:
    view_a, view_b: four L2-normalised maps `[B, h_s, w_s, C]` each (scales 1, 1/2, 1/4, 1/8),
      from two stochastic forward passes. Computation is in float32.
    mask: `[B, h_0, w_0]`, 1 = forged, 0 = authentic; resized to each scale by nearest.
    key: PRNG key; image `i` of the global batch samples with `fold_in(key, i)`.
    num_samples: most members kept per pixel set (reference: 5000).
    temperature: softmax temperature (reference: 0.1).
    negatives: `'image'` (reference) or `'global'` (add forged pixels of the other images of the
      global batch to each image's intra-term negatives).
    bank_per_image: forged pixels each image puts in the global bank (`'global'` only).
    chunk_size: negatives (queries, when nothing is sampled) per log-sum-exp chunk, which bounds the
      similarities alive at once; `None` computes the full matrices.
    axis_name: set when called inside `shard_map` over the batch axis: image ids are offset by
      the device's position, the bank is all-gathered and the results are `pmean`-ed.
  Returns:
    dict of float32 scalars `total`, `intra`, `cross_scale`, `cross_modality`, each the mean
    over the (global) batch of the per-image values.
  """
  if negatives not in ("image", "global"):
    raise ValueError(f"negatives must be 'image' or 'global', got {negatives!r}")
  if len(view_a) != 4 or len(view_b) != 4:
    raise ValueError("view_a and view_b must each hold four scales")
  view_a = [jnp.asarray(v, jnp.float32) for v in view_a]
  view_b = [jnp.asarray(v, jnp.float32) for v in view_b]
  mask = jnp.asarray(mask, jnp.float32)
  batch = mask.shape[0]
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * batch
  image_ids = offset + jnp.arange(batch)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(image_ids)

  bank = bank_ok = bank_ids = None
  if negatives == "global":
    bank, bank_ok = jax.vmap(functools.partial(_bank_set, bank_per_image=bank_per_image))(
      view_a[0], mask, keys
    )  # [B, m, C], [B, m]
    bank_ids = jnp.broadcast_to(image_ids[:, None], bank_ok.shape)
    if axis_name is not None:
      gather = functools.partial(jax.lax.all_gather, axis_name=axis_name, tiled=True)
      bank, bank_ok, bank_ids = gather(bank), gather(bank_ok), gather(bank_ids)
    bank, bank_ok, bank_ids = _flat(bank), bank_ok.reshape(-1), bank_ids.reshape(-1)

  options = dict(temperature=temperature, chunk_size=chunk_size)
  if num_samples >= view_a[0].shape[1] * view_a[0].shape[2]:  # every set whole: nothing to sample
    per_image = functools.partial(_whole_image_terms, **options)
    terms = jax.vmap(per_image, in_axes=(0, 0, 0, 0, None, None, None))(
      view_a, view_b, mask, image_ids, bank, bank_ok, bank_ids
    )
  else:
    sets = jax.vmap(functools.partial(_image_sets, num_samples=num_samples))(view_a, view_b, mask, keys)
    terms = jax.vmap(functools.partial(_image_terms, **options), in_axes=(0, 0, None, None, None))(
      sets, image_ids, bank, bank_ok, bank_ids
    )
  out = {k: jnp.mean(v) for k, v in terms.items()}
  if axis_name is not None:
    out = jax.lax.pmean(out, axis_name)
  out["total"] = out["intra"] + out["cross_scale"] + out["cross_modality"]
  return {k: out[k] for k in PARTS}


def multiview_pixel_contrast_sharded(
  view_a: Sequence[jax.Array],
  view_b: Sequence[jax.Array],
  mask: jax.Array,
  *,
  key: jax.Array,
  mesh: jax.sharding.Mesh,
  axis_name: str = "data",
  **kwargs,
) -> dict[str, jax.Array]:
  """`multiview_pixel_contrast` with the batch split over `mesh`'s `axis_name` axis.

  Call it inside the jitted train step with the global batch (leading axis divisible by the
  axis size). Runs `jax.shard_map` with the batch sharded and the key replicated; `kwargs` go to
  `multiview_pixel_contrast` (e.g. `negatives='global'`, `num_samples`). Returns replicated
  scalars equal to the one-device loss over the whole batch (same sampled pixels).
  """
  spec = jax.P(axis_name)
  # place the inputs as the specs say (a no-op for a batch already sharded that way); needed for
  # meshes with Explicit axes, where shard_map refuses inputs sharded differently
  view_a, view_b, mask = jax.tree.map(
    lambda x: jax.device_put(x, jax.NamedSharding(mesh, spec)), (tuple(view_a), tuple(view_b), mask)
  )
  key = jax.device_put(key, jax.NamedSharding(mesh, jax.P()))

  def local(a, b, m, k):
    return multiview_pixel_contrast(a, b, m, key=k, axis_name=axis_name, **kwargs)

  return jax.shard_map(
    local,
    mesh=mesh,
    in_specs=((spec,) * 4, (spec,) * 4, spec, jax.P()),
    out_specs=jax.P(),
  )(view_a, view_b, mask, key)
