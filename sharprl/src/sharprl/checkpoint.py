"""Atomic checkpoints of a training run directory, shared by every algorithm.

A run directory holds
- ``checkpoint.msgpack``: one flax-msgpack blob ``{"meta": json text, "policy": state dict,
  "train": state dict}`` written to a temp file and ``os.replace``-d, so a kill leaves either the old
  or the new checkpoint, never a torn one. ``policy`` is the policy parameter pytree (enough for
  ``sharprl evaluate``); ``train`` is the algorithm's full training state (optimiser, critic,
  normaliser, RNG, epoch counter) for ``--resume``.
- ``metrics.csv``: one row per logged epoch. ``meta["metrics_rows"]`` records how many rows the
  checkpoint covers; on resume rows beyond it are dropped and rewritten by the resumed run.
- ``best/checkpoint.msgpack``: the policy of the highest deterministic evaluation so far (policy only,
  ``meta["eval_return"]`` its return), itself a directory ``sharprl evaluate`` and ``robustness`` read.

``meta`` always holds ``policy_spec`` (see :class:`sharprl.networks.PolicySpec`), ``algo``, ``env``,
``backend``, ``epoch`` and ``env_steps``; algorithms may add more.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import msgpack
import numpy as np
from flax import serialization

from sharprl.errors import SharprlError
from sharprl.networks import (
    MakePolicy,
    Params,
    PolicySpec,
    policy_factory,
    registered_kinds,
)

CHECKPOINT_FILE = "checkpoint.msgpack"
METRICS_FILE = "metrics.csv"
BEST_DIR = "best"  # sub-directory holding the best-evaluated policy of a run
FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of atomic_write_bytes (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def config_json(config: Any) -> dict[str, Any]:
    """A config dataclass as a checkpoint's metadata stores it (JSON types: tuples become lists), so a
    resumed run can compare its config with the stored one."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


RESUME_KEYS = ("algo", "env", "backend", "config", "train_perturbation")  # what a resumed run must share


def check_resumable(run_dir: Path | str, stored: dict[str, Any], current: dict[str, Any]) -> None:
    """SharprlError unless the checkpoint's metadata ``stored`` matches ``current`` on RESUME_KEYS."""
    for key in RESUME_KEYS:
        if stored.get(key) != current[key]:
            raise SharprlError(f"{run_dir}: cannot resume: checkpoint {key} {stored.get(key)!r} != {current[key]!r}")


def all_finite(tree: Any) -> bool:
    """True when every floating-point leaf of ``tree`` is finite."""
    for leaf in jax.tree_util.tree_leaves(tree):
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            return False
    return True


@dataclasses.dataclass(frozen=True)
class LoadedPolicy:
    """A policy rebuilt from a run directory."""

    make_policy: MakePolicy  # (params, deterministic=False) -> policy(obs, key) -> action
    params: Params  # the saved policy parameters
    spec: PolicySpec  # how the policy was built
    meta: dict[str, Any]  # the checkpoint's metadata (algo, env, backend, epoch, env_steps, ...)


def save(
    run_dir: Path | str,
    *,
    spec: PolicySpec,
    policy_params: Params,
    meta: dict[str, Any],
    train_state: Any = None,
) -> Path:
    """Atomically write the checkpoint; refuses (SharprlError) non-finite parameters or state."""
    run_dir = Path(run_dir)
    for name, tree in (("policy parameters", policy_params), ("training state", train_state)):
        if tree is not None and not all_finite(tree):
            raise SharprlError(f"{run_dir}: refusing to checkpoint non-finite {name}")
    full_meta = dict(meta)
    full_meta["policy_spec"] = spec.to_json()
    full_meta["format_version"] = FORMAT_VERSION
    blob = {
        "meta": json.dumps(full_meta, sort_keys=True),
        "policy": serialization.to_state_dict(jax.device_get(policy_params)),
        "train": {} if train_state is None else serialization.to_state_dict(jax.device_get(train_state)),
    }
    path = run_dir / CHECKPOINT_FILE
    atomic_write_bytes(path, serialization.msgpack_serialize(blob))
    return path


def save_best(
    run_dir: Path | str, *, spec: PolicySpec, policy_params: Params, meta: dict[str, Any], eval_return: float
) -> bool:
    """Keep ``policy_params`` in ``run_dir/best`` if ``eval_return`` beats the evaluation stored there.

    Returns whether it was saved. A non-finite return never is; an unreadable ``best`` is an error
    (SharprlError), not silently replaced.
    """
    best = Path(run_dir) / BEST_DIR
    if not math.isfinite(eval_return):
        return False
    if has_checkpoint(best):
        stored = load_meta(best).get("eval_return")
        if not isinstance(stored, (int, float)):
            raise SharprlError(f"{best}: checkpoint metadata lacks a numeric eval_return")
        if eval_return <= stored:
            return False
    save(best, spec=spec, policy_params=policy_params, meta={**meta, "eval_return": float(eval_return)})
    return True


def run_root(run_dir: Path | str) -> Path:
    """The run directory itself, or for its ``best`` policy the run it belongs to (whose metrics it has)."""
    run_dir = Path(run_dir)
    return run_dir.parent if run_dir.name == BEST_DIR and (run_dir.parent / METRICS_FILE).is_file() else run_dir


def start_fresh(run_dir: Path | str) -> None:
    """Forget what an aborted run (one with no checkpoint) left in ``run_dir``: metrics and best policy."""
    (Path(run_dir) / METRICS_FILE).unlink(missing_ok=True)
    shutil.rmtree(Path(run_dir) / BEST_DIR, ignore_errors=True)


def _read_blob(run_dir: Path | str) -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise SharprlError(f"{run_dir}: no {CHECKPOINT_FILE} (not a sharprl run directory, or not saved yet)")
    try:
        blob = serialization.msgpack_restore(path.read_bytes())
        blob["meta"] = json.loads(blob["meta"])
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:  # corrupt or foreign
        raise SharprlError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    return blob


def has_checkpoint(run_dir: Path | str) -> bool:
    """True when ``run_dir`` holds a checkpoint file."""
    return (Path(run_dir) / CHECKPOINT_FILE).is_file()


def load_meta(run_dir: Path | str) -> dict[str, Any]:
    """The checkpoint's metadata dict."""
    return _read_blob(run_dir)["meta"]


def load_policy(run_dir: Path | str) -> LoadedPolicy:
    """Rebuild the saved policy of any registered kind."""
    blob = _read_blob(run_dir)
    meta = blob["meta"]
    spec = PolicySpec.from_json(meta["policy_spec"])
    if spec.kind not in registered_kinds():
        try:
            import sharprl.baselines  # noqa: F401  (registers the brax.training policy kinds)
        except ImportError:
            pass
    make_policy, init_params = policy_factory(spec)
    template = init_params(jax.random.PRNGKey(0))
    try:
        params = serialization.from_state_dict(template, blob["policy"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SharprlError(f"{run_dir}: policy parameters do not match spec {spec}: {exc}") from None
    return LoadedPolicy(make_policy, params, spec, meta)


def load_train_state(run_dir: Path | str, template: Any) -> tuple[Any, dict[str, Any]]:
    """``(train_state, meta)`` restored into the structure of ``template``."""
    blob = _read_blob(run_dir)
    if not blob["train"]:
        raise SharprlError(f"{run_dir}: checkpoint has no training state to resume from")
    try:
        state = serialization.from_state_dict(template, blob["train"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SharprlError(f"{run_dir}: saved training state does not match this configuration: {exc}") from None
    return state, blob["meta"]


def read_metrics(run_dir: Path | str) -> list[dict[str, str]]:
    """All rows of ``metrics.csv`` (empty list when absent)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def truncate_metrics(run_dir: Path | str, rows: int) -> None:
    """Keep the header and the first ``rows`` data rows of ``metrics.csv`` (atomically)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    atomic_write_text(path, "".join(lines[: rows + 1]))


def append_metrics(run_dir: Path | str, row: dict[str, Any]) -> int:
    """Append one row to ``metrics.csv`` (header written first); returns the data-row count after."""
    path = Path(run_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    if not new:
        with path.open(newline="") as handle:
            header = next(csv.reader(handle), [])
        if header != list(row):
            raise SharprlError(f"{path}: its columns {header} are not this version's {list(row)}; use a new --out")
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
        handle.flush()
        os.fsync(handle.fileno())
    return len(read_metrics(run_dir))
