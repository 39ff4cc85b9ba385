"""k-means (cosine, k=2) of the stage-1 validation."""

import jax
import jax.numpy as jnp
import numpy as np

from mpc_jax.kmeans import forged_cluster_mask, kmeans_cosine


def _two_directions(rng, n_a, n_b, d=16, noise=0.05):
  a, b = rng.normal(size=d), rng.normal(size=d)
  x = np.concatenate([a + noise * rng.normal(size=(n_a, d)), b + noise * rng.normal(size=(n_b, d))])
  return x.astype(np.float32)


def test_kmeans_separates_two_directions_regardless_of_scale():
  rng = np.random.default_rng(0)
  x = _two_directions(rng, 30, 10)
  x *= rng.uniform(0.5, 5.0, size=(40, 1)).astype(np.float32)  # cosine: the norm does not matter
  labels, _ = jax.jit(kmeans_cosine)(jnp.asarray(x), jax.random.key(0))
  labels = np.asarray(labels)
  assert len(set(labels[:30])) == 1 and len(set(labels[30:])) == 1 and labels[0] != labels[-1]


def test_forged_cluster_is_the_smaller_one():
  rng = np.random.default_rng(1)
  feats = []
  for n_forged in (12, 50):  # 12 of 64 forged; then 50 of 64: the "forged" majority is flipped
    x = _two_directions(rng, 64 - n_forged, n_forged)
    feats.append(x.reshape(8, 8, 16))
  masks = np.asarray(jax.jit(forged_cluster_mask)(jnp.asarray(np.stack(feats)), jax.random.key(3)))
  assert masks.shape == (2, 8, 8)
  assert masks[0].sum() == 12 and masks[0].reshape(-1)[52:].all()
  assert masks[1].sum() == 14 and masks[1].reshape(-1)[:14].all()


def test_deterministic_for_a_key():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 4, 4, 8)).astype(np.float32))
  a = forged_cluster_mask(x, jax.random.key(5))
  b = forged_cluster_mask(x, jax.random.key(5))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
