"""Stage-1 validation: k-means with cosine similarity on each image's fused pixel features.

The reference clusters the fused, L2-normalised features of every image into two groups with
`torch_kmeans.KMeans(n_clusters=2, distance=CosineSimilarity)` (random-sample initialisation,
several restarts, the restart with the highest total similarity kept) and calls the smaller
cluster forged. Here it is a pure, jittable JAX function with static shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _normalize(x, eps=1e-12):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def kmeans_cosine(
  x: jax.Array, key: jax.Array, *, k: int = 2, num_init: int = 8, max_iter: int = 100, tol: float = 1e-4
):
  """Clusters the rows of `x` `[N, D]` by cosine similarity.

  Each of `num_init` restarts picks `k` distinct rows as centres, then alternates assignment
  (highest cosine similarity) and update (mean of the members; a centre with no member stays) until
  the centres move less than `tol` or after `max_iter` iterations. The restart with the largest
  sum of member-to-centre similarities wins.

  Returns `(labels int32 [N], score float32 [])`.
  """
  x = x.astype(jnp.float32)
  n = x.shape[0]
  xn = _normalize(x)

  def run(key):
    idx = jax.random.choice(key, n, (k,), replace=False)
    centres = x[idx]

    def assign(c):
      sim = xn @ _normalize(c).T  # [N, k]
      return jnp.argmax(sim, axis=-1), jnp.max(sim, axis=-1)

    def cond(carry):
      _, it, shift = carry
      return jnp.logical_and(it < max_iter, shift > tol)

    def body(carry):
      c, it, _ = carry
      labels, _ = assign(c)
      onehot = jax.nn.one_hot(labels, k, dtype=jnp.float32)  # [N, k]
      counts = onehot.sum(0)[:, None]
      new = jnp.where(counts > 0, (onehot.T @ x) / jnp.maximum(counts, 1.0), c)
      shift = jnp.sqrt(jnp.sum(jnp.square(new - c)))
      return new, it + 1, shift

    centres, _, _ = jax.lax.while_loop(cond, body, (centres, jnp.int32(0), jnp.float32(jnp.inf)))
    labels, sim = assign(centres)
    return labels.astype(jnp.int32), sim.sum()

  labels, scores = jax.vmap(run)(jax.random.split(key, num_init))
  best = jnp.argmax(scores)
  return labels[best], scores[best]


def forged_cluster_mask(
  features: jax.Array, key: jax.Array, *, num_init: int = 8, max_iter: int = 100, tol: float = 1e-4
) -> jax.Array:
  """Per-image two-way clustering of `features` `[B, h, w, D]` -> `[B, h, w]` float32 in {0, 1}.

  The smaller cluster is labelled 1 (forged), as the reference (`if sum(L) > sum(1 - L): L = 1 - L`).
  """
  b, h, w, d = features.shape
  keys = jax.random.split(key, b)
  labels, _ = jax.vmap(
    lambda f, kk: kmeans_cosine(f.reshape(h * w, d), kk, k=2, num_init=num_init, max_iter=max_iter, tol=tol)
  )(features, keys)
  labels = labels.astype(jnp.float32)
  ones = labels.sum(-1, keepdims=True)
  labels = jnp.where(ones > (h * w - ones), 1.0 - labels, labels)
  return labels.reshape(b, h, w)
