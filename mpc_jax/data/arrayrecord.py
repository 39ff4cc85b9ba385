"""ArrayRecord shards written by `mpc-jax prepare`, read back as a random-access source.

A million small files read at random are slow on a pod or a remote disk; a few large shards with one
record per chunk are not. A prepared folder holds `manifest.json` (counts, sizes, checksums, bad files:
`mpc_jax.prepare.prepare`) and, per source NAME, `NAME-00000-of-000NN.array_record` shards in the
source's order, each with a `.done.json` marker (resume). `encode_record` gives the record format.
`ArrayRecordSource` decodes records exactly as the files decode, so `arrayrecord:DIR[:NAME]` works
wherever a spec does: training mixtures (same sharding, same iterator checkpoints) and evaluation.
"""

from __future__ import annotations

import json
import os
from typing import Any

import msgpack
import numpy as np

from mpc_jax.data.io import BadExampleError
from mpc_jax.data.sources import BadCounter, ReopenedSource, check_policy, decode_encoded

__all__ = [
  "MANIFEST",
  "RECORD_FIELDS",
  "encode_record",
  "decode_record",
  "load_manifest",
  "ArrayRecordSource",
  "parse_spec",
]

MANIFEST = "manifest.json"
FORMAT = "mpc-jax-arrayrecord"
RECORD_FIELDS = ("image", "mask", "path", "source")
WRITER_OPTIONS = "group_size:1"  # one record per chunk: fast random access (what grain expects)


def encode_record(image: bytes, mask: bytes, path: str, source: str) -> bytes:
  """One record: a msgpack map (`msgpack.unpackb(record)` reads it without this package).

  Fields:
    'image'   bytes  the original image file, byte for byte
    'mask'    bytes  the mask as a binary PNG (0/255); b'' = authentic
    'path'    str    the image's path relative to the source's root (manifest `sources[i].root`)
    'source'  str    the source NAME
  """
  return msgpack.packb(
    {"image": bytes(image), "mask": bytes(mask), "path": str(path), "source": str(source)}, use_bin_type=True
  )


def decode_record(data: bytes) -> dict[str, Any]:
  """`{'image': bytes, 'mask': bytes, 'path': str, 'source': str}`; ValueError for a malformed record."""
  try:
    rec = msgpack.unpackb(data, raw=False)
  except Exception as e:  # noqa: BLE001 - any unpacking failure is a malformed record
    raise ValueError(f"malformed record ({type(e).__name__}: {e})") from None
  if not isinstance(rec, dict) or any(k not in rec for k in RECORD_FIELDS):
    raise ValueError(f"malformed record: expected a map with {RECORD_FIELDS}")
  return rec


def load_manifest(directory) -> dict:
  """The manifest of a prepared folder; FileNotFoundError / ValueError naming the folder."""
  directory = os.fspath(directory)
  path = os.path.join(directory, MANIFEST)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"arrayrecord folder not found: {directory}")
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"{directory}: no {MANIFEST} (not written by `mpc-jax prepare`, or the run did not "
      "finish: rerun it to resume)"
    )
  with open(path, encoding="utf-8") as f:
    try:
      man = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
  if man.get("format") != FORMAT:
    raise ValueError(f"{path}: format is {man.get('format')!r}, expected {FORMAT!r}")
  return man


def parse_spec(rest: str) -> tuple[str, str | None]:
  """`DIR` or `DIR:NAME` (the part after `arrayrecord:`) -> (DIR, NAME or None)."""
  rest = os.path.expanduser(rest)
  if os.path.isdir(rest) or ":" not in rest:
    return rest, None
  d, name = rest.rsplit(":", 1)
  return d, name or None


class ArrayRecordSource(ReopenedSource):
  """Random access over the shards of a prepared folder (all sources in manifest order, or `name`'s).

  Record: `{'image': uint8 [H, W, 3], 'mask': uint8 [H, W] {0,1}, 'path': str}` (path relative to the
  source's root). `raw(i)` gives the stored bytes: `{'image_bytes', 'mask_bytes', 'path', 'source'}`.
  A record that fails to decode follows `on_bad_example` ('raise' or 'skip': `None`, counted).
  """

  def __init__(self, directory, name: str | None = None, *, on_bad_example: str = "raise"):
    self.directory = os.path.abspath(os.fspath(directory))
    self.on_bad_example = check_policy(on_bad_example)
    man = load_manifest(self.directory)
    sources = man.get("sources", [])
    if name is not None:
      names = [s["name"] for s in sources]
      sources = [s for s in sources if s["name"] == name]
      if not sources:
        raise ValueError(f"{self.directory}: no source {name!r} in {MANIFEST} (it has: {', '.join(names)})")
    self.name = f"arrayrecord:{self.directory}" + (f":{name}" if name else "")
    self.sources = [s["name"] for s in sources]
    self._paths = []
    for s in sources:
      for sh in s["shards"]:
        p = os.path.join(self.directory, sh["file"])
        if not os.path.isfile(p):
          raise FileNotFoundError(f"{p}: shard listed in {MANIFEST} is missing")
        if sh["records"]:
          self._paths.append(f"{p}[0:{int(sh['records'])}]")  # counts from the manifest: no file opened here
    self._len = sum(int(sh["records"]) for s in sources for sh in s["shards"])
    self._counter = BadCounter(self.name)

  def _open(self):
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    return ArrayRecordDataSource(self._paths)

  def record(self, index: int) -> dict[str, Any]:
    """The stored record `index` (`decode_record`)."""
    index = int(index)
    if index < 0:
      index += self._len
    if not 0 <= index < self._len:
      raise IndexError(f"index {index} out of range [0, {self._len}) of {self.name}")
    try:
      return decode_record(self._source()[index])
    except ValueError as e:
      raise BadExampleError(f"{self.name}[{index}]", str(e)) from None

  def raw(self, index: int) -> dict[str, Any]:
    rec = self.record(index)
    return {
      "image_bytes": rec["image"],
      "mask_bytes": rec["mask"],
      "path": rec["path"],
      "source": rec["source"],
    }

  def load(self, index: int) -> dict[str, Any]:
    """Decode record `index`; raises `BadExampleError` whatever the policy."""
    rec = self.record(index)
    return decode_encoded(rec["image"], rec["mask"], rec["path"])

  def __getitem__(self, index: int) -> dict[str, Any] | None:
    if not isinstance(index, (int, np.integer)):
      raise TypeError(f"index must be an int, got {type(index).__name__}")
    try:
      return self.load(index)
    except BadExampleError as err:
      if self.on_bad_example == "raise":
        raise
      self._counter.add(err)
      return None

  def __iter__(self):
    for i in range(len(self)):
      rec = self[i]
      if rec is not None:
        yield rec

  def __repr__(self) -> str:
    return f"ArrayRecordSource({self.name!r}, n={len(self)})"
