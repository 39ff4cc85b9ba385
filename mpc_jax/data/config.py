"""`config.data`: the data pipeline's settings, each default said once (here).

`DataConfig` lists every field with its default. `default_data_config()` is the same as an
`ml_collections.ConfigDict` (what the training config embeds; overridable on the command line, e.g.
`--config.data.input_size=256` or `--config.data.sources='("arrayrecord:/data/packed",)'`).
`data_config(cfg)` merges a caller's values (a ConfigDict, a dict, a `DataConfig` or None) over the
defaults once: an unknown field name raises `ValueError` naming it, and a `None` value means the
default. `check_data_config(cfg)` also checks the values, raising `ValueError` naming the offending
`config.data.<field>`. The pipeline functions take any of these forms and read the merged `DataConfig`.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, Mapping

import ml_collections
import numpy as np

from mpc_jax.data.sources import CHECK_FILES, ON_BAD_EXAMPLE
from mpc_jax.data.synthetic import SyntheticConfig

__all__ = [
  "DataConfig",
  "SyntheticConfig",
  "data_config",
  "check_data_config",
  "default_data_config",
  "MIXTURES",
]

MIXTURES = ("repeat", "sample")
RENAMED = {"validate": "check_files"}  # old field name -> new


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Every `config.data` field and its default. `sources` / `val_sources` are held as
  `((spec, weight), ...)`; a config may give `{'spec': str, 'weight': float}` entries or plain spec
  strings (weight 1), normalised here."""

  # Training sets. A spec is anything `sources.source_from_spec` reads; the spec 'synthetic' is the set
  # `synthetic` describes. Weights are repeat factors (the reference: tampCOCO x1, CASIAv2 x40, IMD2020 x20).
  sources: tuple[tuple[str, float], ...] = (("synthetic", 1.0),)
  # 'repeat': the sets concatenated with their repeats, then shuffled (the reference); 'sample': an
  # endless stream, each draw picks set i with probability weight_i / sum (faster than
  # `grain.MapDataset.mix` over repeated datasets).
  mixture: str = "repeat"
  val_sources: tuple[tuple[str, float], ...] = ()  # validation sets (the trainer's `make_eval_iterator`)
  input_size: int = 512  # S, the model's input side
  gt_ratio: int = 4  # S / the side of the training mask
  augment: bool = True  # the reference augmentation chain; False: only resize (demo)
  augment_prob: float = 0.75  # probability of that chain, per example
  second_view: bool = False  # add 'image_view2': same geometry, another photometric draw
  num_workers: int = 0  # grain worker processes (0: read in the main process)
  per_worker_buffer_size: int = 2  # batches buffered per worker
  read_threads: int = 2  # threads reading and augmenting, per process
  read_prefetch: int = 16  # elements those threads buffer
  on_bad_example: str = "skip"  # training: 'skip' (drop, count, log) or 'raise'
  eval_on_bad_example: str = "raise"  # evaluation and validation
  check_files: str = (
    "header"  # how thoroughly sources check their files when built: 'header' | 'full' | 'none'
  )
  shuffle_seed: int | None = None  # None: the `seed` argument; else the shuffle order's seed
  num_epochs: int | None = None  # None: forever
  drop_remainder: bool = True  # drop a last, partial batch
  synthetic: SyntheticConfig = SyntheticConfig()  # the 'synthetic' spec's set

  def __post_init__(self):
    for field in ("sources", "val_sources"):
      object.__setattr__(self, field, _norm_sources(getattr(self, field), field))
    if not isinstance(self.synthetic, SyntheticConfig):
      object.__setattr__(self, "synthetic", _merge(SyntheticConfig, self.synthetic, "config.data.synthetic"))


def _value(obj, name, default=None):
  if isinstance(obj, Mapping):
    return obj.get(name, default)
  return getattr(obj, name, default)


def _norm_sources(sources, field: str) -> tuple[tuple[str, float], ...]:
  if isinstance(sources, str):
    sources = [sources]
  out = []
  for i, s in enumerate(list(sources or [])):
    if isinstance(s, str):
      spec, weight = s, 1.0
    elif isinstance(s, (tuple, list)) and len(s) == 2:
      spec, weight = s
    else:
      spec, weight = _value(s, "spec"), _value(s, "weight")
      weight = 1.0 if weight is None else weight
    if not isinstance(spec, str) or not spec:
      raise ValueError(f"config.data.{field}[{i}].spec must be a non-empty string, got {spec!r}")
    try:
      weight = float(weight)
    except (TypeError, ValueError):
      raise ValueError(f"config.data.{field}[{i}].weight must be a number, got {weight!r}") from None
    if not np.isfinite(weight) or weight < 0:
      raise ValueError(f"config.data.{field}[{i}].weight must be finite and >= 0, got {weight}")
    out.append((spec, weight))
  return tuple(out)


def _as_dict(cfg, cls, where: str) -> dict[str, Any]:
  if cfg is None:
    return {}
  if isinstance(cfg, ml_collections.ConfigDict):
    return {k: cfg[k] for k in cfg.keys()}
  if isinstance(cfg, Mapping):
    return dict(cfg)
  raise TypeError(f"{where} must be a ConfigDict, a dict or a {cls.__name__}, got {type(cfg).__name__}")


def _merge(cls, cfg, where: str):
  """`cls` with the fields `cfg` gives over the defaults; an unknown name raises naming it. `None`
  means the default, except for `sources` / `val_sources`, where it means none."""
  if isinstance(cfg, cls):
    return cfg
  values = _as_dict(cfg, cls, where)
  names = [f.name for f in dataclasses.fields(cls)]
  for name in values:
    if cls is DataConfig and name in RENAMED:
      raise ValueError(f"{where}.{name} is now {where}.{RENAMED[name]} (same values); rename the field")
    if name not in names:
      near = difflib.get_close_matches(name, names, n=1)
      hint = f" (did you mean {near[0]!r}?)" if near else ""
      raise ValueError(f"{where}.{name} is not a field{hint}; the fields are: {', '.join(names)}")
  return cls(**{k: v for k, v in values.items() if v is not None or k in ("sources", "val_sources")})


def data_config(cfg=None) -> DataConfig:
  """`cfg` (a ConfigDict, a dict, a `DataConfig` or None) merged over the defaults.

  Raises `ValueError` naming an unknown field (also inside `synthetic`) or a malformed
  `sources` / `val_sources` entry. The values are not checked further: see `check_data_config`."""
  return _merge(DataConfig, cfg, "config.data")


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer))


def check_data_config(cfg) -> DataConfig:
  """`data_config(cfg)`, with every value checked: raises `ValueError` naming the offending
  `config.data.<field>`."""
  c = data_config(cfg)

  def bad(field, msg):
    raise ValueError(f"config.data.{field} {msg}")

  S, g = c.input_size, c.gt_ratio
  if not _is_int(S) or S <= 0:
    bad("input_size", f"must be a positive int, got {S!r}")
  if not _is_int(g) or g <= 0:
    bad("gt_ratio", f"must be a positive int, got {g!r}")
  if S % (g * 8):
    bad(
      "input_size",
      f"({S}) must be divisible by gt_ratio*8 = {g * 8} (the mask is halved three times for "
      "the feature scales)",
    )
  if not c.sources:
    bad("sources", "is empty: give at least one {'spec': ..., 'weight': ...}")
  if sum(w for _, w in c.sources) <= 0:
    bad("sources", "weights sum to 0")
  if c.mixture not in MIXTURES:
    bad("mixture", f"must be 'repeat' or 'sample', got {c.mixture!r}")
  for f in ("on_bad_example", "eval_on_bad_example"):
    if getattr(c, f) not in ON_BAD_EXAMPLE:
      bad(f, f"must be 'skip' or 'raise', got {getattr(c, f)!r}")
  if c.check_files not in CHECK_FILES:
    bad("check_files", f"must be 'header', 'full' or 'none', got {c.check_files!r}")
  p = c.augment_prob
  if not isinstance(p, (int, float)) or not 0 <= p <= 1:
    bad("augment_prob", f"must be in [0, 1], got {p!r}")
  for f in ("num_workers", "read_threads", "read_prefetch", "per_worker_buffer_size"):
    v = getattr(c, f)
    if not _is_int(v) or v < 0:
      bad(f, f"must be an int >= 0, got {v!r}")
  if c.read_threads < 1:
    bad("read_threads", "must be >= 1")
  ne = c.num_epochs
  if ne is not None and (not _is_int(ne) or ne <= 0):
    bad("num_epochs", f"must be None or a positive int, got {ne!r}")
  d = c.synthetic.difficulty
  if not isinstance(d, (int, float)) or not 0 <= d <= 1:
    bad("synthetic.difficulty", f"must be in [0, 1], got {d!r}")
  n = c.synthetic.num
  if not _is_int(n) or n <= 0:
    bad("synthetic.num", f"must be a positive int, got {n!r}")
  return c


def default_data_config() -> ml_collections.ConfigDict:
  """`DataConfig()` as a ConfigDict (runnable offline: trains on in-memory synthetic forgeries).

  Sources are tuples of `{'spec', 'weight'}` dicts and `None` fields typed placeholders, so every
  field can be overridden on the command line."""
  hints, defaults = typing.get_type_hints(DataConfig), DataConfig()
  c = ml_collections.ConfigDict()
  for f in dataclasses.fields(DataConfig):
    v = getattr(defaults, f.name)
    if f.name in ("sources", "val_sources"):
      v = tuple({"spec": spec, "weight": w} for spec, w in v)
    elif f.name == "synthetic":
      v = ml_collections.ConfigDict(dataclasses.asdict(v))
    elif v is None:
      v = ml_collections.config_dict.placeholder(
        next(t for t in typing.get_args(hints[f.name]) if t is not type(None))
      )
    c[f.name] = v
  return c
