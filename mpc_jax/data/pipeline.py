"""grain input pipelines: training (shuffled, sharded, augmented, checkpointable) and evaluation.

Training graph (`make_train_dataset`):

    MapDataset.source(mixture)            # MixtureSource: sources repeated by weight (reference style)
      .shuffle(seed)                      # global permutation, reseeded every epoch
      .repeat(num_epochs)                 # None = forever
      .random_map(TrainTransform)         # decode happened in the source; augmentation here, seeded
                                          # by the GLOBAL stream position (same for any process count)
      BlockShard(process_index, process_count, batch_size_per_process)
                                          # this host's rows of every global batch (lazy: it reads
                                          # and augments only those)
      .to_iter_dataset(ReadOptions)       # threads; skipped bad examples (None) are dropped here
      .batch(batch_size_per_process)      # numpy batch dict
      .mp_prefetch(MultiprocessingOptions)  # when num_workers > 0

Sharding: global batch `k` is elements `[k*G, (k+1)*G)` of the global stream (`G = b * process_count`);
process `p` reads its contiguous block `[k*G + p*b, k*G + (p+1)*b)`, the rows
`jax.make_array_from_process_local_data` assigns to it on a 1-axis data mesh. So P processes
assemble exactly the global batches (same examples, same row order, same augmentation) that one
process with batch G reads; only a skipped bad example (on_bad_example='skip') shifts that
process's later rows.

The iterator is a `grain.DatasetIterator`: `it.get_state()` / `it.set_state(state)`, or
`grain.checkpoint.CheckpointSave(it)` / `CheckpointRestore(it)` with orbax, resume the same order.

`config.data` fields (see `default_data_config()`):
  sources            list of {'spec': str, 'weight': float} (or plain spec strings, weight 1). A spec is
                     anything `sources.source_from_spec` reads; the spec 'synthetic' takes its settings from
                     `synthetic`. Weights are repeat factors (reference: tampCOCO x1, CASIAv2 x40, IMD x20).
  mixture            'repeat' (default: concatenation with repeats, reference semantics) or 'sample'
                     (an endless stream, each draw picks source i with probability weight_i / sum; faster
                     than `grain.MapDataset.mix` over repeated datasets, which costs ~40 ms a draw here).
  val_sources        list of specs for validation (used by the trainer via `make_eval_iterator`).
  input_size         S, model input side (512).           gt_ratio   S / mask side (4).
  augment            the reference augmentation chain (True); False = only resize (demo).
  augment_prob       probability of the chain (0.75).      second_view  add 'image_view2' (False).
  num_workers        grain worker processes (0 = in the main process).
  per_worker_buffer_size  batches buffered per worker (2).
  read_threads       threads reading/augmenting per process (2). read_prefetch  elements buffered (16).
  on_bad_example     'skip' (training default) or 'raise'.  eval_on_bad_example  'raise'.
  validate           'header' | 'full' | 'none' (file checks at source construction).
  shuffle_seed       None -> the `seed` argument; else the shuffle order seed (augmentation uses `seed`).
  num_epochs         None (forever) or an int.            drop_remainder  True.
  synthetic          {num, seed, size, difficulty, authentic_prob, cache}: the 'synthetic' spec.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import grain
import ml_collections
import numpy as np

from mpc_jax.data.sources import MixtureSource, WeightedSampleSource, source_from_spec
from mpc_jax.data.transforms import EvalTransform, TrainTransform

log = logging.getLogger(__name__)

__all__ = ["default_data_config", "validate_data_config", "build_sources", "make_train_dataset",
           "make_train_iterator", "make_eval_dataset", "make_eval_iterator", "train_batch_fn", "eval_batch_fn"]


def default_data_config() -> ml_collections.ConfigDict:
    """`config.data` defaults (runnable offline: trains on in-memory synthetic forgeries)."""
    c = ml_collections.ConfigDict()
    c.sources = [{"spec": "synthetic", "weight": 1.0}]
    c.mixture = "repeat"
    c.val_sources = []
    c.input_size = 512
    c.gt_ratio = 4
    c.augment = True
    c.augment_prob = 0.75
    c.second_view = False
    c.num_workers = 0
    c.per_worker_buffer_size = 2
    c.read_threads = 2
    c.read_prefetch = 16
    c.on_bad_example = "skip"
    c.eval_on_bad_example = "raise"
    c.validate = "header"
    c.shuffle_seed = ml_collections.config_dict.placeholder(int)
    c.num_epochs = ml_collections.config_dict.placeholder(int)
    c.drop_remainder = True
    c.synthetic = ml_collections.ConfigDict()
    c.synthetic.num = 512
    c.synthetic.seed = 0
    c.synthetic.size = 256
    c.synthetic.difficulty = 0.5
    c.synthetic.authentic_prob = 0.1
    c.synthetic.cache = True
    return c


def _get(cfg, name, default=None):
    try:
        v = cfg[name] if isinstance(cfg, dict) else getattr(cfg, name)
    except (KeyError, AttributeError):
        return default
    return default if v is None and default is not None else v


def _norm_sources(sources, field: str) -> list[tuple[str, float]]:
    if isinstance(sources, str):
        sources = [sources]
    out = []
    for i, s in enumerate(list(sources or [])):
        if isinstance(s, str):
            spec, weight = s, 1.0
        else:
            spec = _get(s, "spec")
            weight = _get(s, "weight", 1.0)
        if not isinstance(spec, str) or not spec:
            raise ValueError(f"config.data.{field}[{i}].spec must be a non-empty string, got {spec!r}")
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"config.data.{field}[{i}].weight must be a number, got {weight!r}") from None
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(f"config.data.{field}[{i}].weight must be finite and >= 0, got {weight}")
        out.append((spec, weight))
    return out


def validate_data_config(cfg) -> None:
    """Raise `ValueError` naming the offending `config.data.<field>`."""
    def bad(field, msg):
        raise ValueError(f"config.data.{field} {msg}")

    S, g = _get(cfg, "input_size", 512), _get(cfg, "gt_ratio", 4)
    if not isinstance(S, (int, np.integer)) or S <= 0:
        bad("input_size", f"must be a positive int, got {S!r}")
    if not isinstance(g, (int, np.integer)) or g <= 0:
        bad("gt_ratio", f"must be a positive int, got {g!r}")
    if S % (g * 8):
        bad("input_size", f"({S}) must be divisible by gt_ratio*8 = {g * 8} (the mask is halved three times for the feature scales)")
    srcs = _norm_sources(_get(cfg, "sources", []), "sources")
    if not srcs:
        bad("sources", "is empty: give at least one {'spec': ..., 'weight': ...}")
    if sum(w for _, w in srcs) <= 0:
        bad("sources", "weights sum to 0")
    _norm_sources(_get(cfg, "val_sources", []), "val_sources")
    if _get(cfg, "mixture", "repeat") not in ("repeat", "sample"):
        bad("mixture", f"must be 'repeat' or 'sample', got {_get(cfg, 'mixture')!r}")
    for f in ("on_bad_example", "eval_on_bad_example"):
        if _get(cfg, f, "skip") not in ("skip", "raise"):
            bad(f, f"must be 'skip' or 'raise', got {_get(cfg, f)!r}")
    if _get(cfg, "validate", "header") not in ("header", "full", "none"):
        bad("validate", f"must be 'header', 'full' or 'none', got {_get(cfg, 'validate')!r}")
    p = _get(cfg, "augment_prob", 0.75)
    if not isinstance(p, (int, float)) or not 0 <= p <= 1:
        bad("augment_prob", f"must be in [0, 1], got {p!r}")
    for f in ("num_workers", "read_threads", "read_prefetch", "per_worker_buffer_size"):
        v = _get(cfg, f, 0)
        if not isinstance(v, (int, np.integer)) or v < 0:
            bad(f, f"must be an int >= 0, got {v!r}")
    if _get(cfg, "read_threads", 1) < 1:
        bad("read_threads", "must be >= 1")
    ne = _get(cfg, "num_epochs")
    if ne is not None and (not isinstance(ne, (int, np.integer)) or ne <= 0):
        bad("num_epochs", f"must be None or a positive int, got {ne!r}")
    syn = _get(cfg, "synthetic")
    if syn is not None:
        d = _get(syn, "difficulty", 0.5)
        if not isinstance(d, (int, float)) or not 0 <= d <= 1:
            bad("synthetic.difficulty", f"must be in [0, 1], got {d!r}")
        n = _get(syn, "num", 1)
        if not isinstance(n, (int, np.integer)) or n <= 0:
            bad("synthetic.num", f"must be a positive int, got {n!r}")


def _make_source(spec: str, cfg, on_bad_example: str):
    if spec == "synthetic":
        from mpc_jax.data.synthetic import SyntheticSource

        syn = _get(cfg, "synthetic") or {}
        size = int(_get(syn, "size", 256))
        return SyntheticSource(int(_get(syn, "num", 512)), int(_get(syn, "seed", 0)), (size, size),
                               difficulty=float(_get(syn, "difficulty", 0.5)),
                               authentic_prob=float(_get(syn, "authentic_prob", 0.1)),
                               cache=bool(_get(syn, "cache", True)))
    return source_from_spec(spec, on_bad_example=on_bad_example, validate=_get(cfg, "validate", "header"))


def build_sources(cfg, field: str = "sources", on_bad_example: str | None = None):
    """[(spec, weight, source)] for `config.data.<field>`."""
    policy = on_bad_example or _get(cfg, "on_bad_example", "skip")
    return [(spec, w, _make_source(spec, cfg, policy)) for spec, w in _norm_sources(_get(cfg, field, []), field)]


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


def make_train_dataset(config_data, *, seed: int, process_index: int | None = None,
                       process_count: int | None = None, batch_size_per_process: int,
                       sources=None) -> grain.IterDataset:
    """The training `grain.IterDataset` (see module doc). `sources`: prebuilt [(spec, weight, source)]."""
    validate_data_config(config_data)
    if not isinstance(batch_size_per_process, (int, np.integer)) or batch_size_per_process <= 0:
        raise ValueError(f"batch_size_per_process must be a positive int, got {batch_size_per_process!r}")
    pi, pc = _process_info(process_index, process_count)
    cfg = config_data
    built = sources if sources is not None else build_sources(cfg)
    shuffle_seed = _get(cfg, "shuffle_seed")
    shuffle_seed = int(seed) if shuffle_seed is None else int(shuffle_seed)
    # augmentation draws follow the global stream position, so the seed must not depend on the process
    aug_seed = int(np.random.SeedSequence([int(seed), 0]).generate_state(1)[0] & 0x7FFFFFFF)
    b = int(batch_size_per_process)
    num_epochs = _get(cfg, "num_epochs")
    if _get(cfg, "mixture", "repeat") == "repeat":
        mix = MixtureSource([s for _, _, s in built], [w for _, w, _ in built], seed=shuffle_seed,
                            names=[sp for sp, _, _ in built])
        ds = grain.MapDataset.source(mix).shuffle(seed=shuffle_seed)
        if len(ds) < pc:
            raise ValueError(f"training set has {len(ds)} examples, fewer than the {pc} processes")
        ds = ds.repeat(num_epochs)
        log.info("train mixture: %s -> %d examples/epoch, process %d/%d reads rows [%d, %d) of each "
                 "global batch of %d", ", ".join(f"{sp} x{w:g} ({len(s)})" for sp, w, s in built), len(mix),
                 pi, pc, pi * b, (pi + 1) * b, b * pc)
    else:
        sampler = WeightedSampleSource([s for _, _, s in built], [w for _, w, _ in built], seed=shuffle_seed)
        ds = grain.MapDataset.source(sampler)
        if num_epochs is not None:
            log.warning("config.data.num_epochs is ignored with mixture='sample' (infinite stream)")
    transform = TrainTransform(int(_get(cfg, "input_size", 512)), int(_get(cfg, "gt_ratio", 4)),
                               augment=bool(_get(cfg, "augment", True)),
                               augment_prob=float(_get(cfg, "augment_prob", 0.75)),
                               second_view=bool(_get(cfg, "second_view", False)))
    ds = ds.random_map(_SkipNone(transform), seed=aug_seed)
    if pc > 1:
        ds = BlockShard(ds, pi, pc, b)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(_get(cfg, "read_threads", 2)),
                                                 prefetch_buffer_size=int(_get(cfg, "read_prefetch", 16))))
    it_ds = it_ds.batch(int(batch_size_per_process), drop_remainder=bool(_get(cfg, "drop_remainder", True)),
                        batch_fn=train_batch_fn)
    nw = int(_get(cfg, "num_workers", 0))
    if nw > 0:
        _ensure_absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=nw, per_worker_buffer_size=int(_get(cfg, "per_worker_buffer_size", 2))))
    return it_ds


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


def make_train_iterator(config_data, *, seed: int, process_index: int | None = None,
                        process_count: int | None = None, batch_size_per_process: int):
    """Training iterator (`grain.DatasetIterator`) yielding numpy batches:

      'image'        float32 [b, S, S, 3] in [0, 1]
      'mask'         float32 [b, S/g, S/g] in {0, 1}
      'image_view2'  float32 [b, S, S, 3] (only with `second_view`)

    Save/restore its position with `it.get_state()` / `it.set_state(s)` or grain's orbax handlers.
    `process_index` / `process_count` default to `jax.process_index()` / `jax.process_count()`.
    """
    return iter(make_train_dataset(config_data, seed=seed, process_index=process_index,
                                   process_count=process_count, batch_size_per_process=batch_size_per_process))


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
        return {"image": image, "mask_small": small, "orig_hw": hw, "valid": valid,
                "mask": [e["mask"] for e in examples], "path": [e["path"] for e in examples]}
    return fn


def make_eval_dataset(config_data, spec_or_source, *, batch_size: int, process_index: int | None = 0,
                      process_count: int | None = 1, on_bad_example: str | None = None,
                      pad_to_batch: bool = True) -> grain.IterDataset:
    """Evaluation dataset: fixed order, no augmentation, this process's `[pi::pc]` part."""
    cfg = config_data
    pi, pc = _process_info(process_index, process_count)
    if isinstance(spec_or_source, str):
        policy = on_bad_example or _get(cfg, "eval_on_bad_example", "raise")
        src = _make_source(spec_or_source, cfg, policy)
    else:
        src = spec_or_source
    ds = grain.MapDataset.source(src)[pi::pc]
    ds = ds.map(EvalTransform(int(_get(cfg, "input_size", 512)), int(_get(cfg, "gt_ratio", 4))))
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(_get(cfg, "read_threads", 2)),
                                                 prefetch_buffer_size=int(_get(cfg, "read_prefetch", 16))))
    return it_ds.batch(int(batch_size), drop_remainder=False,
                       batch_fn=eval_batch_fn(batch_size if pad_to_batch else None))


def make_eval_iterator(config_data, spec_or_source, *, batch_size: int, process_index: int | None = 0,
                       process_count: int | None = 1, on_bad_example: str | None = None,
                       pad_to_batch: bool = True):
    """Iterator of evaluation batches (see `eval_batch_fn` for the keys). Re-create it for each pass.

    `spec_or_source`: a spec string (built with `config.data.eval_on_bad_example`, default 'raise')
    or a ready source. Defaults to a single process (all examples); pass `process_index` /
    `process_count` to split evaluation across hosts.
    """
    return iter(make_eval_dataset(config_data, spec_or_source, batch_size=batch_size,
                                  process_index=process_index, process_count=process_count,
                                  on_bad_example=on_bad_example, pad_to_batch=pad_to_batch))
