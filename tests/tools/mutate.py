"""Plants known bugs, one at a time, in a temporary copy of the project and runs the tests that
should catch each. A mutant that survives (its tests still pass) marks a gap in the suite.

    python tests/tools/mutate.py                 # every mutant, a markdown table at the end
    python tests/tools/mutate.py --only bank     # mutants whose id contains 'bank'
    python tests/tools/mutate.py --exclude resume  # all but the slow checkpoint-resume mutants
    python tests/tools/mutate.py --list          # the mutants and their tests
    python tests/tools/mutate.py --check         # only check that every snippet occurs once
    python tests/tools/mutate.py --out bench/results/mutation.json

Each mutant replaces one exact snippet of one file (the snippet must occur exactly once, so a
refactor that moves the code shows up as an error row, not a silent pass). The unmutated copy's
tests run first: a mutant only counts as caught if the same tests passed without it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
COPY = ("mpc_jax", "tests", "configs", "data", "bench", "setup.py", "README.md")


@dataclasses.dataclass(frozen=True)
class Mutant:
  id: str
  what: str
  path: str
  old: str
  new: str
  tests: tuple[str, ...]  # pytest node ids / file paths, relative to the project root


M = Mutant
MUTANTS = (
  # -- stage-1 loss
  M(
    "nce-pos-temperature",
    "InfoNCE positive logit not divided by the temperature",
    "mpc_jax/losses/contrast.py",
    "/ jnp.maximum(nq - 1, 1) * inv_t",
    "/ jnp.maximum(nq - 1, 1)",
    ("tests/test_losses.py",),
  ),
  M(
    "cross-scale-misaligned",
    "coarse scales misaligned with their masks in the cross-scale term",
    "mpc_jax/losses/contrast.py",
    "fca = jnp.concatenate([_flat(v) for v in view_a[1:]])",
    "fca = jnp.concatenate([_flat(v) for v in view_a[1:][::-1]])",
    ("tests/test_losses.py",),
  ),
  M(
    "bank-own-pixels",
    "own pixels not excluded from the global negative bank",
    "mpc_jax/losses/contrast.py",
    "ok = bank_ok & (bank_ids != image_id)",
    "ok = bank_ok",
    ("tests/test_losses.py",),
  ),
  M(
    "bank-temperature",
    "bank logits not divided by the temperature",
    "mpc_jax/losses/contrast.py",
    "return _negative_lse(q, l2_normalize(bank), ok, inv_t, chunk_size)",
    "return _negative_lse(q, l2_normalize(bank), ok, 1.0, chunk_size)",
    ("tests/test_losses.py",),
  ),
  M(
    "intra-wrong-view",
    "intra term takes its negatives from view b",
    "mpc_jax/losses/contrast.py",
    '_TERMS = (("q0a", "n0a"),',
    '_TERMS = (("q0a", "n0b"),',
    ("tests/test_losses.py",),
  ),
  M(
    "cross-modality-same-view",
    "cross-modality term compares a view with itself",
    "mpc_jax/losses/contrast.py",
    '("q0a", "n0b"), ("q0b", "n0a"))',
    '("q0a", "n0a"), ("q0b", "n0a"))',
    ("tests/test_losses.py",),
  ),
  M(
    "cross-scale-one-direction",
    "cross-scale term drops L(Q_coarse, N_0)",
    "mpc_jax/losses/contrast.py",
    '"cross_scale": v[1] + v[2]',
    '"cross_scale": v[1] + v[1]',
    ("tests/test_losses.py",),
  ),
  M(
    "total-missing-term",
    "total leaves out the cross-modality term",
    "mpc_jax/losses/contrast.py",
    'out["total"] = out["intra"] + out["cross_scale"] + out["cross_modality"]',
    'out["total"] = out["intra"] + out["cross_scale"]',
    ("tests/test_losses.py",),
  ),
  M(
    "pos-includes-self",
    "positive logit averages over the query itself too",
    "mpc_jax/losses/contrast.py",
    "(q @ jnp.sum(q, axis=0) - self_sim) / jnp.maximum(nq - 1, 1)",
    "(q @ jnp.sum(q, axis=0)) / jnp.maximum(nq, 1)",
    ("tests/test_losses.py",),
  ),
  M(
    "whole-intra-wrong-view",
    "whole-image path: intra term takes its negatives from view b",
    "mpc_jax/losses/contrast.py",
    '"intra": _nce(pos0a, aa_lse, ~f0, extra)',
    '"intra": _nce(pos0a, ab_lse, ~f0, extra)',
    ("tests/test_losses.py",),
  ),
  M(
    "whole-cross-scale-misaligned",
    "whole-image path: coarse scales misaligned with their masks",
    "mpc_jax/losses/contrast.py",
    "ac = l2_normalize(jnp.concatenate([_flat(v) for v in view_a[1:]]))",
    "ac = l2_normalize(jnp.concatenate([_flat(v) for v in view_a[1:][::-1]]))",
    ("tests/test_losses.py",),
  ),
  M(
    "whole-rows-for-columns",
    "whole-image path: L(Q0_b, N0_a) from the rows of a.b instead of its columns",
    "mpc_jax/losses/contrast.py",
    "_nce(pos0b, col_lse[:p], ~f0)",
    "_nce(pos0b, ab_lse, ~f0)",
    ("tests/test_losses.py",),
  ),
  M(
    "whole-column-mask",
    "whole-image path: column log-sum-exps over every row, not only the forged ones",
    "mpc_jax/losses/contrast.py",
    "jnp.where(row_forged[:, None], s[:, p:], _NEG)",
    "s[:, p:]",
    ("tests/test_losses.py",),
  ),
  M(
    "whole-chunks-max",
    "whole-image path: row chunks' column log-sum-exps combined by max",
    "mpc_jax/losses/contrast.py",
    "return jnp.logaddexp(col_lse, by_col), by_row",
    "return jnp.maximum(col_lse, by_col), by_row",
    ("tests/test_losses.py",),
  ),
  M(
    "whole-padding-forged",
    "whole-image path: padding rows of the last chunk count as forged negatives",
    "mpc_jax/losses/contrast.py",
    "row_forged = jnp.pad(f0, (0, pad))",
    "row_forged = jnp.pad(f0, (0, pad), constant_values=True)",
    ("tests/test_losses.py",),
  ),
  M(
    "malloc-per-thread-arenas",
    "host_memory leaves glibc's per-thread arenas, which give large blocks back to the kernel",
    "mpc_jax/host_memory.py",
    "((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))",
    "((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))",
    ("tests/test_host_memory.py::test_retained_memory_is_not_faulted_in_again",),
  ),
  M(
    "malloc-heap-trimmed",
    "host_memory keeps glibc's trim threshold, so the heap's freed top goes back to the kernel",
    "mpc_jax/host_memory.py",
    "((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))",
    "((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0))",
    ("tests/test_host_memory.py::test_retained_memory_is_not_faulted_in_again",),
  ),
  M(
    "two-view-shared-stats",
    "the two-view pass normalises both views with shared BatchNorm statistics",
    "mpc_jax/steps.py",
    "  model.set_attributes(BatchNorm, groups=2)\n",
    "",
    ("tests/test_train.py::test_stage1_two_views_in_one_pass_equal_two_consecutive_passes",),
  ),
  M(
    "bn-groups-reversed",
    "grouped BatchNorm updates its running statistics in the wrong order",
    "mpc_jax/models/layers.py",
    "for i in range(g):",
    "for i in reversed(range(g)):",
    ("tests/test_layers.py",),
  ),
  M(
    "mask-nearest-rounding",
    "coarse masks by rounding instead of PyTorch's floor",
    "mpc_jax/losses/sampling.py",
    "np.floor(",
    "np.round(",
    ("tests/test_losses.py",),
  ),
  M(
    "focal-alpha-swapped",
    "focal loss alpha applied to the authentic class",
    "mpc_jax/losses/focal.py",
    "(alpha * t + (1.0 - alpha) * (1.0 - t))",
    "((1.0 - alpha) * t + alpha * (1.0 - t))",
    ("tests/test_losses.py",),
  ),
  M(
    "focal-gamma",
    "focal loss modulating factor (1 - p_t) to the power 1",
    "mpc_jax/losses/focal.py",
    "loss = ce * (1.0 - p_t) ** gamma",
    "loss = ce * (1.0 - p_t)",
    ("tests/test_losses.py",),
  ),
  # -- layers and model
  M(
    "bn-momentum-inverted",
    "BatchNorm running mean momentum inverted (m and 1 - m swapped)",
    "mpc_jax/models/layers.py",
    "running_mean = (1 - m) * running_mean + m * jax.lax.stop_gradient(mean[i])",
    "running_mean = m * running_mean + (1 - m) * jax.lax.stop_gradient(mean[i])",
    ("tests/test_layers.py",),
  ),
  M(
    "bn-grad-var-sign",
    "BatchNorm's hand-written gradient with the variance term's sign flipped",
    "mpc_jax/models/layers.py",
    "d_var = -0.5 * d_centred * scale * inv**3",
    "d_var = 0.5 * d_centred * scale * inv**3",
    ("tests/test_layers.py",),
  ),
  M(
    "bn-grad-moments-mean",
    "the batch mean's cotangent left out of the input's gradient",
    "mpc_jax/models/layers.py",
    "return ((g_mean[:, None] + 2.0 * g_var[:, None] * (x - mean[:, None])) / n,)",
    "return ((2.0 * g_var[:, None] * (x - mean[:, None])) / n,)",
    ("tests/test_layers.py",),
  ),
  M(
    "bn-indexed-write",
    "a BatchNorm running-statistic write indexed (`v[...] = x`), which makes tracing quadratic",
    "mpc_jax/models/layers.py",
    "self.var.set_value(running_var)",
    "self.var[...] = running_var",
    ("tests/test_compile.py::test_tracing_work_grows_linearly_with_depth",),
  ),
  M(
    "bn-biased-running-var",
    "BatchNorm running variance biased (no n / (n - 1))",
    "mpc_jax/models/layers.py",
    "unbiased = var * (n / max(n - 1, 1))",
    "unbiased = var",
    ("tests/test_layers.py",),
  ),
  M(
    "layernorm-eps",
    "LayerNorm eps 1e-6 changed to 1e-5",
    "mpc_jax/models/layers.py",
    "def __init__(self, num_features: int, *, eps: float = 1e-6):",
    "def __init__(self, num_features: int, *, eps: float = 1e-5):",
    (
      "tests/test_layers.py",
      "tests/test_parity.py::test_parity_with_reference_fixture",
      "tests/test_parity.py::test_parity_at_sizes_not_multiple_of_32",
    ),
  ),
  M(
    "gelu-tanh",
    "GELU changed to its tanh approximation (transformer MLP)",
    "mpc_jax/models/layers.py",
    "return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(math.sqrt(0.5))))",
    "return jax.nn.gelu(x, approximate=True)",
    (
      "tests/test_parity.py::test_parity_with_reference_fixture",
      "tests/test_parity.py::test_parity_at_sizes_not_multiple_of_32",
    ),
  ),
  M(
    "fusion-crop",
    "multi-scale fusion resize replaced by a crop",
    "mpc_jax/models/mpc.py",
    "return jnp.concatenate([resize_bilinear_align_corners(f, size) for f in features], axis=-1)",
    "return jnp.concatenate([jnp.pad(f, ((0, 0), (0, size[0] - f.shape[1]), (0, size[1] - f.shape[2]),"
    " (0, 0)), mode='edge') for f in features], axis=-1)",
    (
      "tests/test_parity.py::test_parity_with_reference_fixture",
      "tests/test_parity.py::test_parity_at_sizes_not_multiple_of_32",
    ),
  ),
  M(
    "module-fuse-crop",
    "HRFormer module fusion: upsampled branch cropped instead of resized",
    "mpc_jax/models/hrformer.py",
    "y = y + resize_bilinear_align_corners(run_sequence(row[j], xs[j]), xs[i].shape[1:3])",
    "y = y + run_sequence(row[j], xs[j])[:, :xs[i].shape[1], :xs[i].shape[2]]",
    (
      "tests/test_parity.py::test_parity_with_reference_fixture",
      "tests/test_parity.py::test_parity_at_sizes_not_multiple_of_32",
    ),
  ),
  M(
    "window-pad-end",
    "window padding all at the end instead of centred",
    "mpc_jax/models/hrformer.py",
    "xp = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))",
    "xp = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))",
    (
      "tests/test_parity.py::test_parity_with_reference_fixture",
      "tests/test_parity.py::test_parity_at_sizes_not_multiple_of_32",
    ),
  ),
  M(
    "output-bn-eps",
    "backbone output ConvModule BatchNorm eps 1e-3 changed to 1e-5",
    "mpc_jax/models/hrformer.py",
    "bn=BatchNorm(OUT_CHANNELS, eps=1e-3, momentum=0.03)",
    "bn=BatchNorm(OUT_CHANNELS, eps=1e-5, momentum=0.03)",
    (
      "tests/test_parity.py::test_parity_with_reference_fixture",
      "tests/test_parity.py::test_parity_at_sizes_not_multiple_of_32",
    ),
  ),
  M(
    "align-corners-false",
    "bilinear resize with half-pixel centres instead of align_corners=True",
    "mpc_jax/models/layers.py",
    "src = np.arange(n_out, dtype=np.float64) * ((n_in - 1) / (n_out - 1))",
    "src = np.clip((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)",
    (
      "tests/test_layers.py",
      "tests/test_parity.py::test_parity_with_reference_fixture",
      "tests/test_parity.py::test_parity_at_sizes_not_multiple_of_32",
    ),
  ),
  M(
    "droppath-no-rescale",
    "drop path does not rescale the kept samples by 1 / keep",
    "mpc_jax/models/layers.py",
    "return (x / keep) * jnp.floor(keep + u).astype(x.dtype)",
    "return x * jnp.floor(keep + u).astype(x.dtype)",
    ("tests/test_layers.py",),
  ),
  # -- metrics and validation
  M(
    "f1-threshold-ge",
    "F1 threshold `>` changed to `>=` (per-image metrics)",
    "mpc_jax/metrics.py",
    "c = confusion_counts(np.asarray(prob) > threshold, gt)\n  return f1_from_counts",
    "c = confusion_counts(np.asarray(prob) >= threshold, gt)\n  return f1_from_counts",
    ("tests/test_metrics.py", "tests/test_validate.py"),
  ),
  M(
    "evaluator-threshold-ge",
    "Evaluator threshold `>` changed to `>=`",
    "mpc_jax/metrics.py",
    "counts = confusion_counts(prob > self.threshold, gt)",
    "counts = confusion_counts(prob >= self.threshold, gt)",
    ("tests/test_metrics.py",),
  ),
  M(
    "resize-prob-nearest",
    "resize_prob bilinear changed to nearest",
    "mpc_jax/metrics.py",
    "interpolation=cv2.INTER_LINEAR)",
    "interpolation=cv2.INTER_NEAREST)",
    ("tests/test_metrics.py",),
  ),
  M(
    "iou-empty-zero",
    "IoU of an empty mask and empty prediction 0 instead of 1",
    "mpc_jax/metrics.py",
    "return np.where(union > 0, tp / np.maximum(union, 1), 1.0)",
    "return np.where(union > 0, tp / np.maximum(union, 1), 0.0)",
    ("tests/test_metrics.py", "tests/test_validate.py"),
  ),
  M(
    "validate-all-images",
    "validation F1 averaged over all images instead of the forged ones",
    "mpc_jax/validate.py",
    "f1, iou = (sums[0] / nf, sums[1] / nf) if sums[2] > 0",
    "f1, iou = (sums[3] / n, sums[4] / n) if sums[2] > 0",
    ("tests/test_validate.py",),
  ),
  M(
    "validate-score-f1-only",
    "best-model score uses F1 only",
    "mpc_jax/validate.py",
    'scalars["score"] = float(np.mean(f1s + ious))',
    'scalars["score"] = float(np.mean(f1s))',
    ("tests/test_validate.py",),
  ),
  # -- k-means
  M(
    "kmeans-larger-cluster",
    "k-means labels the larger cluster forged",
    "mpc_jax/kmeans.py",
    "labels = jnp.where(ones > (h * w - ones), 1.0 - labels, labels)",
    "labels = jnp.where(ones < (h * w - ones), 1.0 - labels, labels)",
    ("tests/test_kmeans.py",),
  ),
  # -- schedules
  M(
    "plateau-patience",
    "ReduceOnPlateau cuts after `patience` bad validations, not more than",
    "mpc_jax/schedules.py",
    'if s["num_bad"] > self.patience:',
    'if s["num_bad"] >= self.patience:',
    ("tests/test_train.py::test_reduce_on_plateau_matches_torch_semantics",),
  ),
  M(
    "cosine-half-period",
    "cosine annealing over 2 * t_max",
    "mpc_jax/schedules.py",
    "math.cos(math.pi * t / self.t_max)",
    "math.cos(math.pi * t / (2 * self.t_max))",
    ("tests/test_train.py::test_cosine_annealing_matches_torch_closed_form",),
  ),
  # -- data transforms
  M(
    "flip-image-only",
    "a flip applied to the image but not to the mask",
    "mpc_jax/data/transforms.py",
    "image, mask255 = _flip(image, k), _flip(mask255, k)",
    "image, mask255 = _flip(image, k), mask255",
    ("tests/test_data_pipeline.py",),
  ),
  M(
    "rotate-image-only",
    "a rotation applied to the image but not to the mask",
    "mpc_jax/data/transforms.py",
    "mask255 = np.ascontiguousarray(np.rot90(mask255, r))",
    "mask255 = np.ascontiguousarray(mask255)",
    ("tests/test_data_pipeline.py",),
  ),
  M(
    "mask-threshold",
    "the resized mask thresholded at > 0 instead of > 127",
    "mpc_jax/data/transforms.py",
    "return (mask255 > 127).astype(np.float32)",
    "return (mask255 > 0).astype(np.float32)",
    ("tests/test_data_pipeline.py",),
  ),
  M(
    "image-not-scaled",
    "eval images not scaled to [0, 1]",
    "mpc_jax/data/transforms.py",
    '"image": img.astype(np.float32) * np.float32(1 / 255),',
    '"image": img.astype(np.float32),',
    ("tests/test_data_pipeline.py", "tests/test_validate.py"),
  ),
  # -- dataset layouts and packing
  M(
    "nist-mask-not-inverted",
    "NIST16 masks read as white = tampered (they are black = tampered)",
    "mpc_jax/data/layouts.py",
    '    return pairs, errors, "inverted"\n',
    '    return pairs, errors, "binary"\n',
    ("tests/test_eval_suite.py", "tests/test_data_tfds.py"),
  ),
  M(
    "tampcoco-mask-names",
    "tampCOCO masks looked up under the image's name",
    "mpc_jax/data/layouts.py",
    'names=lambda f: (re.sub(r"\\.jpe?g", ".png", f, flags=re.I),)\n',
    "names=lambda f: (f,)\n",
    ("tests/test_eval_suite.py", "tests/test_data_tfds.py"),
  ),
  M(
    "prepare-drops-last-record",
    "prepare leaves out the last example of every shard",
    "mpc_jax/prepare.py",
    'for i in range(task["start"], task["end"]):',
    'for i in range(task["start"], task["end"] - 1):',
    ("tests/test_prepare.py",),
  ),
  # -- checkpoint resume
  M(
    "resume-ignores-state",
    "resume restores the metadata but keeps the fresh state",
    "mpc_jax/train_state.py",
    'return _from_saveable(restored["state"], template), restored["meta"]',
    'return template, restored["meta"]',
    ("tests/test_train_state.py", "tests/test_train_resume.py"),
  ),
  M(
    "resume-ignores-schedule",
    "resume forgets the learning-rate schedule's state",
    "mpc_jax/train.py",
    'sched.load_state_dict(meta["schedule"])',
    "pass",
    ("tests/test_train_resume.py",),
  ),
  # -- model files and the piecewise forward
  M(
    "weights-scalar-shape",
    "loaded scalars keep safetensors' [1] shape",
    "mpc_jax/checkpoint.py",
    "return got.reshape(want.shape).astype(want.dtype, copy=False)",
    "return got",
    ("tests/test_model.py",),
  ),
  M(
    "dw-grad-unflipped",
    "the depth-wise convolution's input gradient uses the kernel unflipped",
    "mpc_jax/models/layers.py",
    "dx = _shifted_taps(g, kernel[::-1, ::-1], 1,",
    "dx = _shifted_taps(g, kernel, 1,",
    ("tests/test_model.py",),
  ),
  M(
    "pieces-drop-path-kept",
    "the piecewise forward keeps its drop-path modules (rate 0), so stage 2's branches do not share stage 3's programs",
    "mpc_jax/predict.py",
    "        setattr(module, name, Identity())",
    "        value.rate = 0.0",
    ("tests/test_model.py",),
  ),
  M(
    "child-compile-skipped",
    "compile_in_child reports a child's compile without running the child",
    "mpc_jax/compile_cache.py",
    "_run_compile_child(computation, devices, options)\n",
    "pass\n",
    ("tests/test_compile.py::test_compile_in_child_compiles_in_a_child_process_and_loads_from_the_cache",),
  ),
  M(
    "child-compile-from-cwd",
    "the compile child imports whatever mpc_jax the working folder holds",
    "mpc_jax/compile_cache.py",
    "      cwd=pathlib.Path(__file__).resolve().parents[1],\n",
    "",
    ("tests/test_compile.py::test_compile_in_child_compiles_in_a_child_process_and_loads_from_the_cache",),
  ),
  M(
    "child-compile-failure-raised",
    "a child that fails stops the compile instead of compiling here",
    "mpc_jax/compile_cache.py",
    'log.warning("compiling here: the compile in a child process failed: %s", e)',
    "raise",
    ("tests/test_compile.py::test_compile_in_child_compiles_here_when_it_cannot_help_or_fails",),
  ),
  M(
    "child-compile-not-for-validation",
    "validation's predict function is compiled by the training process itself",
    "mpc_jax/train.py",
    "return compile_cache.compiled_by_child(fn) if config.compile_in_child else fn",
    "return fn",
    ("tests/test_train.py::test_validation_programs_are_compiled_by_a_child_when_configured",),
  ),
  M(
    "child-compile-every-call",
    "compiled_by_child compiles again at every call",
    "mpc_jax/compile_cache.py",
    "    if types not in seen:\n",
    "    if True:\n",
    ("tests/test_compile.py::test_compiled_by_child_compiles_once_per_argument_types",),
  ),
  M(
    "child-compile-off-by-default",
    "training compiles its step in its own process by default",
    "mpc_jax/train_config.py",
    "c.compile_in_child = True",
    "c.compile_in_child = False",
    ("tests/test_cli.py::test_train_console_lines_once_and_summary",),
  ),
  M(
    "pieces-not-quick",
    "the pieces are compiled with XLA's default optimisation, not the quicker CPU options",
    "mpc_jax/models/pieces.py",
    "program(fn, key, leaves, *args, quick=True)",
    "program(fn, key, leaves, *args)",
    ("tests/test_model.py::test_pieces_compile_with_the_quick_options_and_the_whole_forward_without",),
  ),
  M(
    "stored-key-types",
    "a stored program's file name leaves out the argument types",
    "mpc_jax/compile_cache.py",
    'f"{key}|{types}", ".exe"',
    'key, ".exe"',
    ("tests/test_compile.py::test_stored_program_is_traced_once_per_key_and_types",),
  ),
  M(
    "stored-key-fingerprint",
    "a stored program's file name leaves out mpc_jax's source and the library versions",
    "mpc_jax/compile_cache.py",
    'f"{_fingerprint()}|{key}".encode()',
    'f"{key}".encode()',
    ("tests/test_compile.py::test_stored_program_is_traced_once_per_key_and_types",),
  ),
  M(
    "stored-key-cpu",
    "a stored program's file name leaves out the host CPU, so a shared cache hands machine code across CPUs",
    "mpc_jax/compile_cache.py",
    "      _cpu_features(),\n",
    "",
    ("tests/test_compile.py::test_stored_program_is_traced_once_per_key_and_types",),
  ),
  M(
    "stored-compile-from-jax-cache",
    "the program to be stored is compiled with JAX's cache on, so a cached one is read (and cannot be stored)",
    "mpc_jax/compile_cache.py",
    '    jax.config.update("jax_enable_compilation_cache", False)\n    _reopen_jax_cache()  # else JAX',
    "    _reopen_jax_cache()  # else JAX",
    ("tests/test_compile.py::test_stored_program_is_compiled_afresh_when_jax_cache_holds_it",),
  ),
  M(
    "stored-compile-cache-not-reset",
    "JAX's cache is turned off for the stored program's compile but not reset, so JAX goes on using it",
    "mpc_jax/compile_cache.py",
    "    _reopen_jax_cache()  # else JAX keeps using the cache it already opened (under another key)\n",
    "",
    ("tests/test_compile.py::test_stored_program_is_compiled_afresh_when_jax_cache_holds_it",),
  ),
  M(
    "model-skeleton-not-stored",
    "load_model builds the model's modules every time instead of reading them from the cache",
    "mpc_jax/checkpoint.py",
    "  return compile_cache.stored_object(key, build)",
    "  return build()",
    ("tests/test_model.py::test_a_loaded_model_is_built_once_per_machine",),
  ),
  M(
    "model-skeleton-key-head",
    "the stored model structure is named without its head, so a model with another head loads the wrong one",
    "mpc_jax/checkpoint.py",
    '["eval-skeleton", hrformer_config, head, str(np.dtype(dtype))]',
    '["eval-skeleton", hrformer_config, str(np.dtype(dtype))]',
    ("tests/test_model.py::test_a_loaded_model_is_built_once_per_machine",),
  ),
  M(
    "exit-collects-garbage",
    "the program leaves the interpreter's last garbage collection on (0.3 s at every exit)",
    "mpc_jax/main.py",
    "  gc.freeze()\n",
    "",
    ("tests/test_cli.py::test_the_program_exits_with_the_commands_status",),
  ),
  M(
    "pieces-whole-modules",
    "the piecewise forward runs each HRModule as one piece, so the branches stages 2-4 share are compiled per stage",
    "mpc_jax/models/hrformer.py",
    "        if run is call_piece:",
    "        if False:",
    ("tests/test_model.py::test_pieces_forward_matches_whole_and_shares_programs",),
  ),
  M(
    "pieces-not-stored",
    "the forward's pieces are never stored, so every process traces them again",
    "mpc_jax/models/pieces.py",
    "stored = _stored_key(graphdef, treedef, fn)",
    "stored = None",
    ("tests/test_model.py::test_programs_are_stored_and_a_later_process_runs_them_without_tracing",),
  ),
  M(
    "whole-stale-weights",
    "the whole forward reuses the weights it read for an earlier Predictor of the same model",
    "mpc_jax/predict.py",
    "    return found(leaves, x)",
    "    return pieces.call_piece(_eval_probabilities, model, x)",
    ("tests/test_model.py::test_programs_are_stored_and_a_later_process_runs_them_without_tracing",),
  ),
  M(
    "build-left-on-host",
    "build_mpc leaves the weights on the host",
    "mpc_jax/models/mpc.py",
    "return to_device(model) if random_init else model",
    "return model",
    ("tests/test_model.py::test_build_moves_the_model_to_the_device_once_and_loading_skips_the_zeros",),
  ),
)


def _copy_project(dest: pathlib.Path, source: pathlib.Path = ROOT):
  for name in COPY:
    src = source / name
    if src.is_dir():
      shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    elif src.exists():
      shutil.copy2(src, dest / name)


def _run_tests(project: pathlib.Path, tests, timeout: float) -> tuple[int, float, str]:
  env = dict(os.environ, PYTHONPATH=str(project))
  env.pop("PYTEST_XDIST_WORKER", None)
  cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
  start = time.time()
  try:
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return -1, time.time() - start, "timed out"
  lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
  return proc.returncode, time.time() - start, lines[-1] if lines else ""


def snippet_counts(mutants=MUTANTS, root: pathlib.Path = ROOT) -> dict[str, int]:
  """How often each mutant's snippet occurs in its file (each must occur exactly once)."""
  return {m.id: (root / m.path).read_text().count(m.old) for m in mutants}


def run_mutant(m: Mutant, timeout: float, source: pathlib.Path) -> dict:
  row = dict(id=m.id, what=m.what, file=m.path, tests=list(m.tests))
  with tempfile.TemporaryDirectory(prefix=f"mutant_{m.id}_") as tmp:
    project = pathlib.Path(tmp)
    _copy_project(project, source)
    target = project / m.path
    text = target.read_text()
    count = text.count(m.old)
    if count != 1:
      return dict(row, result="error", detail=f"snippet found {count} times in {m.path}")
    target.write_text(text.replace(m.old, m.new))
    rc, seconds, last = _run_tests(project, m.tests, timeout)
  result = {0: "SURVIVED", 1: "caught"}.get(rc, "caught (error)" if rc > 1 else "timeout")
  return dict(row, result=result, returncode=rc, seconds=round(seconds, 1), detail=last)


def baseline(mutants, timeout: float, source: pathlib.Path) -> dict:
  """Runs every named test on the unmutated snapshot."""
  tests = sorted({t for m in mutants for t in m.tests})
  rc, seconds, last = _run_tests(source, tests, timeout * 2)
  return dict(returncode=rc, seconds=round(seconds, 1), detail=last, tests=tests)


def table(rows) -> str:
  out = ["| mutant | planted bug | tests | result | s |", "| --- | --- | --- | --- | --- |"]
  for r in rows:
    tests = ", ".join(t.replace("tests/", "") for t in r["tests"])
    out.append(f"| `{r['id']}` | {r['what']} | {tests} | {r['result']} | {r.get('seconds', '')} |")
  return "\n".join(out)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    "--only", default="", help="run the mutants whose id contains one of these (comma-separated)"
  )
  p.add_argument("--exclude", default="", help="leave out the mutants whose id contains this text")
  p.add_argument("--list", action="store_true", help="list the mutants and exit")
  p.add_argument(
    "--check", action="store_true", help="check that every snippet occurs exactly once, and exit"
  )
  p.add_argument("--jobs", type=int, default=1, help="mutants run at the same time (default 1)")
  p.add_argument("--timeout", type=float, default=1800, help="seconds per mutant's test run")
  p.add_argument("--skip-baseline", action="store_true", help="do not run the unmutated tests first")
  p.add_argument("--out", help="also write the rows as JSON here")
  args = p.parse_args(argv)
  only = [o for o in args.only.split(",") if o] or [""]
  mutants = [
    m for m in MUTANTS if any(o in m.id for o in only) and not (args.exclude and args.exclude in m.id)
  ]
  if not mutants:
    print(f"no mutant id contains {args.only!r}; --list shows them", file=sys.stderr)
    return 2
  if args.check:
    bad = {k: n for k, n in snippet_counts(mutants).items() if n != 1}
    for k, n in bad.items():
      print(f"{k}: snippet found {n} times", file=sys.stderr)
    return 1 if bad else 0
  if args.list:
    for m in mutants:
      print(f"{m.id:28s} {m.path:30s} {' '.join(m.tests)}")
    return 0
  with tempfile.TemporaryDirectory(prefix="mutant_snapshot_") as tmp:
    snapshot = pathlib.Path(tmp)
    _copy_project(snapshot)  # every mutant starts from the tree as it was now
    return _run_all(args, mutants, snapshot)


def _run_all(args, mutants, snapshot) -> int:
  if not args.skip_baseline:
    base = baseline(mutants, args.timeout, snapshot)
    print(
      f"baseline (no mutation): rc {base['returncode']} in {base['seconds']} s: {base['detail']}", flush=True
    )
    if base["returncode"] != 0:
      print("the unmutated tests fail: fix them before reading mutant results", file=sys.stderr)
      return 1
  rows = []
  with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as ex:
    futures = {ex.submit(run_mutant, m, args.timeout, snapshot): m for m in mutants}
    for i, fut in enumerate(concurrent.futures.as_completed(futures), 1):
      row = fut.result()
      rows.append(row)
      print(
        f"[{i}/{len(mutants)}] {row['id']}: {row['result']} ({row.get('seconds', '-')} s) {row['detail']}",
        flush=True,
      )
  order = {m.id: i for i, m in enumerate(MUTANTS)}
  rows.sort(key=lambda r: order[r["id"]])
  print()
  print(table(rows))
  survived = [r["id"] for r in rows if r["result"] in ("SURVIVED", "error", "timeout")]
  print(
    f"\n{len(rows) - len(survived)} of {len(rows)} caught"
    + (f"; not caught: {', '.join(survived)}" if survived else "")
  )
  if args.out:
    sys.path.insert(0, str(ROOT / "bench"))
    from common import provenance  # noqa: E402

    pathlib.Path(args.out).write_text(json.dumps(dict(provenance=provenance(), rows=rows), indent=1))
    print(f"wrote {args.out}")
  return 1 if survived else 0


if __name__ == "__main__":
  sys.exit(main())
