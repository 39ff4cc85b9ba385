"""Host-side learning-rate schedules stepped once per validation, as the reference's PyTorch ones.

Both keep their whole state in a small dict of Python numbers, so it goes into the checkpoint's
JSON item and a resumed run continues the schedule exactly.
"""

from __future__ import annotations

import math
from typing import Any


class ReduceOnPlateau:
  """`torch.optim.lr_scheduler.ReduceLROnPlateau` (threshold_mode 'rel', cooldown 0).

  `step(score)` after each validation: when the score has not improved by more than `threshold`
  (relative) for more than `patience` validations, the rate is multiplied by `factor`, never below
  `min_lr`.
  """

  def __init__(
    self,
    lr: float,
    *,
    mode: str = "max",
    factor: float = 0.5,
    patience: int = 3,
    min_lr: float = 1e-8,
    threshold: float = 1e-4,
    eps: float = 1e-8,
  ):
    if mode not in ("max", "min"):
      raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    self.mode, self.factor, self.patience = mode, factor, patience
    self.min_lr, self.threshold, self.eps = min_lr, threshold, eps
    self.state = {"lr": float(lr), "best": None, "num_bad": 0, "num_steps": 0}

  def _better(self, a: float, best: float | None) -> bool:
    if best is None:
      return True
    if self.mode == "max":
      return a > best * (1.0 + self.threshold) if best >= 0 else a > best * (1.0 - self.threshold)
    return a < best * (1.0 - self.threshold) if best >= 0 else a < best * (1.0 + self.threshold)

  @property
  def lr(self) -> float:
    return self.state["lr"]

  def step(self, score: float) -> float:
    s = self.state
    s["num_steps"] += 1
    if self._better(float(score), s["best"]):
      s["best"], s["num_bad"] = float(score), 0
    else:
      s["num_bad"] += 1
    if s["num_bad"] > self.patience:
      new = max(s["lr"] * self.factor, self.min_lr)
      if s["lr"] - new > self.eps:
        s["lr"] = new
      s["num_bad"] = 0
    return s["lr"]

  def state_dict(self) -> dict[str, Any]:
    return dict(self.state)

  def load_state_dict(self, state: dict[str, Any]) -> None:
    self.state = dict(state)


class CosineAnnealing:
  """`torch.optim.lr_scheduler.CosineAnnealingLR` in closed form, stepped per validation.

  After `t` steps the rate is `min_lr + (base_lr - min_lr) * (1 + cos(pi * t / t_max)) / 2`
  (periodic past `t_max`, as PyTorch's).
  """

  def __init__(self, lr: float, *, t_max: int = 20, min_lr: float = 1e-8):
    self.base_lr, self.t_max, self.min_lr = float(lr), int(t_max), float(min_lr)
    self.state = {"lr": float(lr), "num_steps": 0}

  @property
  def lr(self) -> float:
    return self.state["lr"]

  def step(self, score: float | None = None) -> float:
    del score
    t = self.state["num_steps"] = self.state["num_steps"] + 1
    self.state["lr"] = (
      self.min_lr + (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * t / self.t_max)) / 2.0
    )
    return self.state["lr"]

  def state_dict(self) -> dict[str, Any]:
    return dict(self.state)

  def load_state_dict(self, state: dict[str, Any]) -> None:
    self.state = dict(state)


def make_schedule(cfg, lr: float):
  """`cfg.kind` in {'plateau', 'cosine', 'constant'} with the fields of the class."""
  kind = cfg.kind
  if kind == "plateau":
    return ReduceOnPlateau(lr, mode="max", factor=cfg.factor, patience=cfg.patience, min_lr=cfg.min_lr)
  if kind == "cosine":
    return CosineAnnealing(lr, t_max=cfg.t_max, min_lr=cfg.min_lr)
  if kind == "constant":
    return CosineAnnealing(lr, t_max=10**12, min_lr=lr)
  raise ValueError(f"unknown schedule kind {kind!r}")
