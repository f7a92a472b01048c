"""Safe checkpoint and pickle I/O.

* ``save_checkpoint`` (``atomic_write`` for any file) writes to a temporary file in the destination folder and
  renames it over the target, so a kill during a save never leaves a torn ``checkpoint.pt`` (the previous one stays
  intact).
* ``load_checkpoint`` uses ``torch.load(weights_only=True)`` with an explicit allow-list of what the released
  video-mamba-suite checkpoints contain: ``argparse.Namespace`` for ``args``, numpy arrays/scalars, and the pandas
  ``DataFrame`` that classification checkpoints keep in ``args.actions``. Anything else is refused; a file you trust
  can be loaded with ``trusted=True`` (``--trust-checkpoint`` on the command line).
* ``unwrap_state_dict`` accepts a bare state dict, a module or one under ``state_dict``/``model``/``module`` and
  strips a leading ``module.`` (DDP): the one place a checkpoint's state dict is found. ``state_dict_entry`` looks
  one key up the same way without checks; ``classifier_classes`` / ``is_classifier_state_dict`` tell a
  classification checkpoint (``fc_cls.weight``) apart.
* ``load_state_dict_strict`` loads strictly and, on failure, reports missing/unexpected keys and shape mismatches
  grouped by prefix.
* ``safe_pickle_load`` reads annotation pickles (Ego4D metadata, EK100 relevancy) with an unpickler that only
  builds plain containers, numbers, strings and numpy arrays.
"""
from __future__ import annotations

import argparse
import collections
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Mapping

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read safely or does not fit the model."""


class StateDictError(CheckpointError, ValueError):
    """No model state dict where one was expected (also a ``ValueError``, as the model-level loaders raised)."""


# ------------------------------------------------------------------------------------------------ saving


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file in the same folder, which is fsynced and moved
    over ``path`` with ``os.replace`` (a reader sees the old file or the whole new one, never a part)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed in the middle of a save
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        _fault_injection_pause()
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (temporary file in the same folder, fsync, ``os.replace``)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def _fault_injection_pause() -> None:
    """Test hook: ``LAVILA_FAULT_SAVE_SLEEP=<seconds>`` sleeps between writing the temporary file and renaming it,
    so the reliability tests can kill a process in the middle of a save. Unset in normal use."""
    delay = os.environ.get("LAVILA_FAULT_SAVE_SLEEP")
    if delay:
        import time

        time.sleep(float(delay))


# ------------------------------------------------------------------------------------------------ loading


def _numpy_globals() -> list[Any]:
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    entries: list[Any] = [np.ndarray, np.dtype]
    for name in ("_reconstruct", "scalar"):
        fn = getattr(core.multiarray, name)
        entries += [fn, (fn, f"numpy.core.multiarray.{name}"), (fn, f"numpy._core.multiarray.{name}")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        entries += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return entries


def _pandas_globals() -> list[Any]:
    try:
        import pandas as pd
        from pandas._libs import internals as libinternals
        from pandas.core.indexes import base as index_base
        from pandas.core.internals import managers
    except ImportError:  # pandas missing: classification checkpoints then need trusted=True
        return []
    entries: list[Any] = [
        pd.DataFrame, (pd.DataFrame, "pandas.core.frame.DataFrame"),
        pd.Series, (pd.Series, "pandas.core.series.Series"),
        pd.Index, (pd.Index, "pandas.core.indexes.base.Index"),
        (pd.Index, "pandas.core.indexes.numeric.Int64Index"),  # pandas 1.x name of an integer index
        pd.RangeIndex, (pd.RangeIndex, "pandas.core.indexes.range.RangeIndex"),
        managers.BlockManager, (managers.BlockManager, "pandas.core.internals.managers.BlockManager"),
        managers.SingleBlockManager,
        (managers.SingleBlockManager, "pandas.core.internals.managers.SingleBlockManager"),
        libinternals._unpickle_block, (libinternals._unpickle_block, "pandas._libs.internals._unpickle_block"),
        index_base._new_Index, (index_base._new_Index, "pandas.core.indexes.base._new_Index"),
        slice,
    ]
    for mod_name, names in (("pandas._libs.arrays", ["__pyx_unpickle_NDArrayBacked"]),):
        mod = __import__(mod_name, fromlist=names)
        entries += [(getattr(mod, n), f"{mod_name}.{n}") for n in names if hasattr(mod, n)]
    for name in ("StringDtype", "CategoricalDtype"):
        if hasattr(pd, name):
            entries.append(getattr(pd, name))
    arrays = getattr(pd, "arrays", None)
    if arrays is not None and hasattr(arrays, "StringArray"):
        entries.append(arrays.StringArray)
    return entries


def checkpoint_safe_globals() -> list[Any]:
    """The allow-list used by ``load_checkpoint`` on top of torch's own weights-only set."""
    return [argparse.Namespace, collections.OrderedDict, *_numpy_globals(), *_pandas_globals()]


def _reason(exc: BaseException) -> str:
    """The informative line of torch's multi-paragraph unpickling message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.endswith("Unpickler error:") and i + 1 < len(lines):
            return lines[i + 1]
    return lines[-1] if lines else type(exc).__name__


def is_torch_file(path: str | os.PathLike) -> bool:
    """True for what ``torch.save`` writes: a zip archive, or the legacy format (a protocol-2+ pickle that starts with
    torch's magic number, a LONG1 opcode)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":  # a zip archive (possibly truncated: torch.load then says so)
        return True
    return len(head) >= 3 and head[0] == 0x80 and 2 <= head[1] <= 5 and head[2] == 0x8A


def load_checkpoint(path: str | os.PathLike, trusted: bool = False, map_location: Any = "cpu") -> Any:
    """Load a checkpoint file safely (``weights_only=True`` + allow-list); ``trusted=True`` runs plain unpickling."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not is_torch_file(path):
        raise CheckpointError(f"{path} is not a torch checkpoint (neither a torch.save zip archive nor a legacy torch "
                              "pickle); pass the .pt/.pth file written by torch.save (e.g. checkpoint.pt)")
    if trusted:
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        if not found and "global" not in str(exc).lower():  # a broken pickle stream, not a refused object
            raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a torch checkpoint?): "
                                  f"{_reason(exc)}") from exc
        what = f"it holds {', '.join(sorted(set(found)))}, which" if found else "it holds an object type that"
        raise CheckpointError(
            f"refusing to load {path}: {what} is not on the safe-load allow-list (weights_only=True). "
            "Loading it would run arbitrary pickled code. If you trust where this file came from, load it with "
            "load_checkpoint(path, trusted=True) or pass --trust-checkpoint to the entry scripts."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, KeyError... on a broken file
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a torch checkpoint?): "
                              f"{type(exc).__name__}: {exc}") from exc


STATE_DICT_WRAPPERS = ("state_dict", "model", "module")
CLASSIFIER_KEY = "fc_cls.weight"


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _wrapped_state_dict(obj: Any) -> Any:
    """The first of ``obj['state_dict' | 'model' | 'module']`` that is a non-empty dict of tensors, else ``obj``
    (unchecked, keys as stored)."""
    if isinstance(obj, Mapping):
        for key in STATE_DICT_WRAPPERS:
            if _is_tensor_dict(obj.get(key)):
                return obj[key]
    return obj


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Return the model state dict inside a checkpoint (or of a module), with a leading ``module.`` removed from
    every key; ``StateDictError`` when there is none."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    sd = _wrapped_state_dict(obj)
    if not _is_tensor_dict(sd):
        keys = list(obj.keys())[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise StateDictError(
            f"no model state dict found (expected a dict of tensors, or one under 'state_dict'/'model'); got {keys}")
    return collections.OrderedDict((k[len("module."):] if k.startswith("module.") else k, v) for k, v in sd.items())


def state_dict_entry(obj: Any, key: str) -> Any | None:
    """Entry ``key`` of a checkpoint's state dict (found as by :func:`unwrap_state_dict`, stored with or without
    ``module.``); None when absent. Never raises: for inspecting files that may hold no state dict."""
    sd = _wrapped_state_dict(obj)
    if not isinstance(sd, Mapping):
        return None
    value = sd.get(key)
    return value if value is not None else sd.get("module." + key)


def classifier_classes(obj: Any) -> int | None:
    """Number of classes of a classification checkpoint / state dict (rows of ``fc_cls.weight``); None for any
    other (a CLIP checkpoint, no state dict)."""
    weight = state_dict_entry(obj, CLASSIFIER_KEY)
    return int(weight.shape[0]) if hasattr(weight, "shape") else None


def is_classifier_state_dict(obj: Any) -> bool:
    """True for a classification checkpoint or state dict (``fc_cls.weight``, wrapped or not, ``module.`` or not)."""
    return classifier_classes(obj) is not None


def _group(key: str) -> str:
    parts = ["*" if p.isdigit() else p for p in key.split(".")]
    return ".".join(parts[:-1][:3]) or parts[0]


def _grouped(keys: Iterable[str], limit: int = 3) -> list[str]:
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for k in keys:
        groups[_group(k)].append(k)
    lines = []
    for prefix, members in sorted(groups.items()):
        shown = ", ".join(members[:limit]) + (", ..." if len(members) > limit else "")
        lines.append(f"    {prefix} ({len(members)}): {shown}")
    return lines


def state_dict_mismatch_report(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str:
    """Describe how ``state_dict`` differs from ``module``'s; empty when they match exactly."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    out = []
    if missing:
        out += [f"  missing keys ({len(missing)}), by prefix:", *_grouped(missing)]
    if unexpected:
        out += [f"  unexpected keys ({len(unexpected)}), by prefix:", *_grouped(unexpected)]
    if shapes:
        out += [f"  shape mismatches ({len(shapes)}):", *(f"    {s}" for s in shapes[:20])]
        if len(shapes) > 20:
            out.append(f"    ... and {len(shapes) - 20} more")
    return "\n".join(out)


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """``module.load_state_dict(strict=True)`` with a readable, prefix-grouped report when the keys do not match."""
    report = state_dict_mismatch_report(module, state_dict)
    if report:
        raise CheckpointError(f"checkpoint does not match {type(module).__name__}:\n{report}")
    module.load_state_dict(state_dict, strict=True)


# ------------------------------------------------------------------------------------------------ pickles

_SAFE_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float",
                  "complex", "bool", "slice", "range"}
_SAFE_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Builds only plain containers, numbers, strings and numpy arrays; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _SAFE_BUILTINS:
            return getattr(__import__("builtins"), name)
        if module == "collections" and name in ("OrderedDict", "defaultdict"):
            return getattr(collections, name)
        if (module, name) in _SAFE_NUMPY or (module == "numpy.dtypes" and name.endswith("DType")):
            import importlib

            try:
                return getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):  # numpy 1.x pickle read by numpy 2.x or the reverse
                alt = module.replace("numpy.core", "numpy._core") if ".core" in module and "_core" not in module \
                    else module.replace("numpy._core", "numpy.core")
                return getattr(importlib.import_module(alt), name)
        raise pickle.UnpicklingError(
            f"refusing to unpickle global '{module}.{name}': annotation pickles may only hold plain containers, "
            "numbers, strings and numpy arrays")


def safe_pickle_load(path: str | os.PathLike) -> Any:
    """Read an annotation pickle (Ego4D metadata, EK100 relevancy) through ``RestrictedUnpickler``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle file not found: {path}")
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f).load()
        except pickle.UnpicklingError as exc:
            raise pickle.UnpicklingError(f"{path}: {exc}") from exc
