"""grain input pipelines: training (shuffled, sharded, augmented, checkpointable) and evaluation.

P processes with batch `b` each assemble exactly the global batches (same examples, row order and
augmentation) that one process with batch `P * b` reads: augmentation is seeded by the global stream
position, and each process reads only its rows of every global batch (`BlockShard`); only a skipped bad
example (on_bad_example='skip') shifts that process's later rows. The training iterator is a
`grain.DatasetIterator`: `get_state()` / `set_state()`, or grain's orbax handlers, resume the same order.

`config_data` (every function's first argument) is `config.data`: a ConfigDict, a dict, a `DataConfig` or
None, merged on entry over the defaults of `DataConfig` (`mpc_jax.data.config`).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import grain
import numpy as np

from mpc_jax.data.config import DataConfig, check_data_config, data_config, default_data_config
from mpc_jax.data.sources import MixtureSource, WeightedSampleSource, source_from_spec
from mpc_jax.data.transforms import EvalTransform, TrainTransform

log = logging.getLogger(__name__)

__all__ = [
  "DataConfig",
  "data_config",
  "default_data_config",
  "check_data_config",
  "build_sources",
  "make_train_dataset",
  "make_train_iterator",
  "make_eval_dataset",
  "make_eval_iterator",
  "train_batch_fn",
  "eval_batch_fn",
]


def _make_source(spec: str, cfg: DataConfig, on_bad_example: str):
  if spec == "synthetic":
    return cfg.synthetic.source()
  return source_from_spec(spec, on_bad_example=on_bad_example, check_files=cfg.check_files)


def build_sources(config_data, field: str = "sources", on_bad_example: str | None = None):
  """[(spec, weight, source)] for `config.data.<field>` ('sources' or 'val_sources')."""
  if field not in ("sources", "val_sources"):
    raise ValueError(f"field must be 'sources' or 'val_sources', got {field!r}")
  cfg = data_config(config_data)
  policy = on_bad_example or cfg.on_bad_example
  return [(spec, w, _make_source(spec, cfg, policy)) for spec, w in getattr(cfg, field)]


def _process_info(process_index, process_count):
  if process_index is None or process_count is None:
    try:
      import jax

      process_index = jax.process_index() if process_index is None else process_index
      process_count = jax.process_count() if process_count is None else process_count
    except Exception:  # noqa: BLE001 - no jax backend: single process
      process_index, process_count = process_index or 0, process_count or 1
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return int(process_index), int(process_count)


def train_batch_fn(examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Stack per-example dicts of arrays: each key -> [b, ...]."""
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def make_train_dataset(
  config_data,
  *,
  seed: int,
  process_index: int | None = None,
  process_count: int | None = None,
  batch_size_per_process: int,
  sources=None,
) -> grain.IterDataset:
  """The training `grain.IterDataset`. `sources`: prebuilt [(spec, weight, source)].

  The sources (decoded there) are repeated by weight (`MixtureSource`, the reference's style), shuffled
  (a global permutation, reseeded every epoch) and repeated `num_epochs` times (None = forever), or, with
  `mixture='sample'`, drawn by weight (`WeightedSampleSource`); then `TrainTransform` (seeded by the global
  stream position), `BlockShard` (lazy: only this process's rows are read and augmented), threads
  (`ReadOptions`; skipped bad examples, None, are dropped here), numpy batches of
  `batch_size_per_process`, and `mp_prefetch` when `num_workers > 0`.
  Global batch `k` is elements `[k*G, (k+1)*G)` of the stream (`G = b * process_count`); process `p`
  reads `[k*G + p*b, k*G + (p+1)*b)`, the rows `jax.make_array_from_process_local_data` assigns to it
  on a 1-axis data mesh.
  """
  cfg = check_data_config(config_data)
  if not isinstance(batch_size_per_process, (int, np.integer)) or batch_size_per_process <= 0:
    raise ValueError(f"batch_size_per_process must be a positive int, got {batch_size_per_process!r}")
  pi, pc = _process_info(process_index, process_count)
  built = sources if sources is not None else build_sources(cfg)
  shuffle_seed = int(seed) if cfg.shuffle_seed is None else int(cfg.shuffle_seed)
  # augmentation draws follow the global stream position, so the seed must not depend on the process
  aug_seed = int(np.random.SeedSequence([int(seed), 0]).generate_state(1)[0] & 0x7FFFFFFF)
  b = int(batch_size_per_process)
  num_epochs = cfg.num_epochs
  if cfg.mixture == "repeat":
    mix = MixtureSource(
      [s for _, _, s in built], [w for _, w, _ in built], seed=shuffle_seed, names=[sp for sp, _, _ in built]
    )
    ds = grain.MapDataset.source(mix).shuffle(seed=shuffle_seed)
    if len(ds) < pc:
      raise ValueError(f"training set has {len(ds)} examples, fewer than the {pc} processes")
    ds = ds.repeat(num_epochs)
    log.info(
      "train mixture: %s -> %d examples/epoch, process %d/%d reads rows [%d, %d) of each global batch of %d",
      ", ".join(f"{sp} x{w:g} ({len(s)})" for sp, w, s in built),
      len(mix),
      pi,
      pc,
      pi * b,
      (pi + 1) * b,
      b * pc,
    )
  else:
    sampler = WeightedSampleSource([s for _, _, s in built], [w for _, w, _ in built], seed=shuffle_seed)
    ds = grain.MapDataset.source(sampler)
    if num_epochs is not None:
      log.warning("config.data.num_epochs is ignored with mixture='sample' (infinite stream)")
  transform = TrainTransform(
    cfg.input_size,
    cfg.gt_ratio,
    augment=cfg.augment,
    augment_prob=cfg.augment_prob,
    second_view=cfg.second_view,
  )
  ds = ds.random_map(_SkipNone(transform), seed=aug_seed)
  if pc > 1:
    ds = BlockShard(ds, pi, pc, b)
  it_ds = ds.to_iter_dataset(_read_options(cfg))
  it_ds = it_ds.batch(b, drop_remainder=bool(cfg.drop_remainder), batch_fn=train_batch_fn)
  if cfg.num_workers > 0:
    _ensure_absl_flags_parsed()
    it_ds = it_ds.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=int(cfg.num_workers), per_worker_buffer_size=int(cfg.per_worker_buffer_size)
      )
    )
  return it_ds


def _read_options(cfg: DataConfig) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=int(cfg.read_threads), prefetch_buffer_size=int(cfg.read_prefetch))


class BlockShard(grain.MapDataset):
  """Process `index` of `count`: element `j` is element `(j // block * count + index) * block + j % block`
  of the parent, i.e. this process's contiguous block of `block` rows in every group of
  `count * block` (a global batch). Disjoint over processes and covering; lazy."""

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent: grain.MapDataset, index: int, count: int, block: int):
    super().__init__(parent)
    self._index, self._count, self._block = int(index), int(count), int(block)
    n, g = len(parent), self._count * self._block
    full, rem = divmod(n, g)
    self._length = full * self._block + min(max(rem - self._index * self._block, 0), self._block)

  def __len__(self) -> int:
    return self._length

  def _parent_index(self, j: int) -> int:
    group, r = divmod(int(j), self._block)
    return (group * self._count + self._index) * self._block + r

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._parent_index(index)]

  def _getitems(self, indices):
    return self._parent._getitems([self._parent_index(j) for j in indices])  # noqa: SLF001

  def __str__(self) -> str:
    return f"BlockShard(index={self._index}, count={self._count}, block={self._block})"


def _ensure_absl_flags_parsed():
  """grain's worker processes read absl flags; outside an absl app they are not parsed yet."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class _SkipNone(grain.transforms.RandomMap):
  """Applies a RandomMap to real records; a skipped record (None) stays None and is dropped later."""

  def __init__(self, inner):
    self.inner = inner

  def random_map(self, element, rng):
    if element is None:
      return None
    return self.inner.random_map(element, rng)


def make_train_iterator(
  config_data,
  *,
  seed: int,
  process_index: int | None = None,
  process_count: int | None = None,
  batch_size_per_process: int,
):
  """Training iterator (`grain.DatasetIterator`) yielding numpy batches:

    'image'        float32 [b, S, S, 3] in [0, 1]
    'mask'         float32 [b, S/g, S/g] in {0, 1}
    'image_view2'  float32 [b, S, S, 3] (only with `second_view`)

  Save/restore its position with `it.get_state()` / `it.set_state(s)` or grain's orbax handlers.
  `process_index` / `process_count` default to `jax.process_index()` / `jax.process_count()`.
  """
  return iter(
    make_train_dataset(
      config_data,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      batch_size_per_process=batch_size_per_process,
    )
  )


def eval_batch_fn(batch_size: int | None = None):
  """Batch eval examples; pads to `batch_size` (zeros, 'valid' False) when given.

  Output: 'image' f32 [b, S, S, 3], 'mask_small' f32 [b, S/g, S/g], 'orig_hw' int32 [b, 2],
  'valid' bool [b], 'mask' list of uint8 [H_i, W_i], 'path' list of str.
  """

  def fn(examples):
    n = len(examples)
    b = max(n, batch_size or n)
    image = np.stack([e["image"] for e in examples])
    small = np.stack([e["mask_small"] for e in examples])
    hw = np.stack([e["orig_hw"] for e in examples])
    valid = np.zeros([b], bool)
    valid[:n] = True
    if b > n:
      image = np.concatenate([image, np.zeros((b - n,) + image.shape[1:], image.dtype)])
      small = np.concatenate([small, np.zeros((b - n,) + small.shape[1:], small.dtype)])
      hw = np.concatenate([hw, np.zeros((b - n, 2), hw.dtype)])
    return {
      "image": image,
      "mask_small": small,
      "orig_hw": hw,
      "valid": valid,
      "mask": [e["mask"] for e in examples],
      "path": [e["path"] for e in examples],
    }

  return fn


def make_eval_dataset(
  config_data,
  spec_or_source,
  *,
  batch_size: int,
  process_index: int | None = 0,
  process_count: int | None = 1,
  on_bad_example: str | None = None,
  pad_to_batch: bool = True,
) -> grain.IterDataset:
  """Evaluation dataset: fixed order, no augmentation, this process's `[pi::pc]` part."""
  cfg = data_config(config_data)
  pi, pc = _process_info(process_index, process_count)
  if isinstance(spec_or_source, str):
    src = _make_source(spec_or_source, cfg, on_bad_example or cfg.eval_on_bad_example)
  else:
    src = spec_or_source
  ds = grain.MapDataset.source(src)[pi::pc]
  ds = ds.map(EvalTransform(cfg.input_size, cfg.gt_ratio))
  it_ds = ds.to_iter_dataset(_read_options(cfg))
  return it_ds.batch(
    int(batch_size), drop_remainder=False, batch_fn=eval_batch_fn(batch_size if pad_to_batch else None)
  )


def make_eval_iterator(
  config_data,
  spec_or_source,
  *,
  batch_size: int,
  process_index: int | None = 0,
  process_count: int | None = 1,
  on_bad_example: str | None = None,
  pad_to_batch: bool = True,
):
  """Iterator of evaluation batches (see `eval_batch_fn` for the keys). Re-create it for each pass.

  `spec_or_source`: a spec string (built with `config.data.eval_on_bad_example`, default 'raise')
  or a ready source. Defaults to a single process (all examples); pass `process_index` /
  `process_count` to split evaluation across hosts.
  """
  return iter(
    make_eval_dataset(
      config_data,
      spec_or_source,
      batch_size=batch_size,
      process_index=process_index,
      process_count=process_count,
      on_bad_example=on_bad_example,
      pad_to_batch=pad_to_batch,
    )
  )
