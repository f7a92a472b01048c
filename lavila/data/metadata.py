"""Flat, fork-shareable annotation tables and their on-disk cache.

Datasets hold their metadata as a few numpy arrays instead of lists of Python objects: numbers as numeric arrays,
repeated ids as an index into a table of unique strings, and texts as one UTF-8 byte buffer plus offsets
(``TextTable``). A DataLoader worker that reads an item touches a few bytes of these arrays and never the reference
count of a Python object, so forked workers share the parent's pages instead of copying them (reading a Python
object writes its reference count; see pytorch/pytorch#13246).

Tables built from a large source file are cached (``cached_arrays``): one file of raw arrays behind a JSON header,
memory-mapped read-only, so a second start costs about the time to read the header and every process maps the same
page-cache pages. The cache file is ``<source>.lavila-meta`` beside the source, or
``$LAVILA_METADATA_CACHE`` (default ``~/.cache/lavila/metadata``)/``<hash of the path>-<name>.lavila-meta`` when
that folder is not writable (the environment variable, when set, is always used). Its key is the source's absolute
path, size and mtime plus the table kind and format version; a cache whose key, header or size does not match is
rebuilt, with a log line saying why. Writes are atomic (temporary file in the same folder, fsync, ``os.replace``).
"""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import mmap
import os
import struct
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["load_pickle", "TextTable", "encode_strings", "factorize_strings", "cached_arrays", "cache_paths",
           "save_arrays", "load_arrays", "CacheInvalid", "FORMAT_VERSION"]

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
_MAGIC = b"LAVILAMETA\x00\x01"  # 12 bytes, then the header length (uint64 little-endian), then the JSON header
_ALIGN = 64
_SUFFIX = ".lavila-meta"


# ------------------------------------------------------------------------------------------------ sources


def load_pickle(path: str | os.PathLike) -> object:
    """``safe_pickle_load`` (the restricted unpickler: plain containers, numbers, strings, numpy arrays only) with the
    cyclic garbage collector paused: the millions of new tuples and lists of a large pickle otherwise trigger
    repeated full collections, which take longer than the unpickling itself."""
    from lavila.utils.checkpoint import safe_pickle_load

    enabled = gc.isenabled()
    gc.disable()
    try:
        return safe_pickle_load(path)
    finally:
        if enabled:
            gc.enable()


# ------------------------------------------------------------------------------------------------ text tables


def encode_strings(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 of every string followed by a 0 byte, in one buffer (uint8), and the ``len(strings) + 1`` offsets where
    the strings start (int32 when they fit, else int64; the last is the buffer's length). ``TypeError`` when an
    element is not a string."""
    n = len(strings)
    # one C pass each for the join, the encoding and the search of the separators (UTF-8 writes a 0 byte only
    # for U+0000); surrogatepass: a lone surrogate survives the round trip as it did in the pickle
    joined = "\0".join(strings) + "\0" if n else ""
    data = np.frombuffer(joined.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    if joined.count("\0") == n:
        del joined
        offsets = np.zeros(n + 1, dtype=np.int64)
        offsets[1:] = np.flatnonzero(data == 0) + 1
    else:  # some string holds U+0000: measure each one
        lengths = [len(s.encode("utf-8", "surrogatepass")) + 1 for s in strings]
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
    return data, offsets.astype(np.int32) if offsets[-1] < 2**31 else offsets


def factorize_strings(strings: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """``(codes int32, unique strings in order of first appearance)`` with ``unique[codes[i]] == strings[i]``."""
    unique = list(dict.fromkeys(strings))  # C-speed loops only (dict.fromkeys, map): millions of ids in ~1 s
    position = {s: i for i, s in enumerate(unique)}
    return np.fromiter(map(position.__getitem__, strings), dtype=np.int32, count=len(strings)), unique


class TextTable:
    """Read-only strings held as one UTF-8 buffer (each string followed by a 0 byte, as ``encode_strings`` writes
    it) plus the offsets where they start; ``table[i]`` decodes string ``i`` only."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray) -> None:
        if offsets.ndim != 1 or len(offsets) < 1 or int(offsets[0]) != 0 or int(offsets[-1]) != len(data):
            raise ValueError(f"text table offsets do not span the buffer ({len(offsets)} offsets, last "
                             f"{int(offsets[-1]) if len(offsets) else None}, buffer {len(data)} bytes)")
        self.data, self.offsets = data, offsets
        self._views()

    def _views(self) -> None:
        # memoryviews: indexing gives Python ints / bytes slices directly, no numpy scalar per access
        self._data, self._offsets = memoryview(self.data), memoryview(self.offsets)

    def __getstate__(self) -> dict:  # memoryviews do not pickle (spawned workers): rebuilt from the arrays
        return {"data": self.data, "offsets": self.offsets}

    def __setstate__(self, state: dict) -> None:
        self.data, self.offsets = state["data"], state["offsets"]
        self._views()

    @classmethod
    def from_strings(cls, strings: Sequence[str]) -> TextTable:
        return cls(*encode_strings(strings))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        lo, hi = self._offsets[index], self._offsets[index + 1] - 1  # IndexError past the end
        if not 0 <= lo <= hi < len(self._data) or index < 0:
            if index < 0:
                raise IndexError(f"text index {index}: negative indices are not supported")
            raise ValueError(f"corrupt text table: string {index} spans bytes {lo}..{hi} of {len(self._data)}")
        return str(self._data[lo:hi], "utf-8", "surrogatepass")

    def tolist(self) -> list[str]:
        """Every string (builds Python objects in bulk: for the main process's own uses, not for items)."""
        return [self[i] for i in range(len(self))]


# ------------------------------------------------------------------------------------------------ cache files


class CacheInvalid(ValueError):
    """A cache file that cannot be used (missing, stale, truncated or corrupt); the message says which."""


def save_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray], key: dict) -> Path:
    """Write ``arrays`` (1-D or N-D, any fixed-size dtype) behind a JSON header holding ``key``, atomically."""
    path = Path(path)
    entries, offset = [], 0
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        entries.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset,
                        "nbytes": int(arr.nbytes)})
        offset += -(-int(arr.nbytes) // _ALIGN) * _ALIGN
    blob = json.dumps({"key": key, "arrays": entries, "data_bytes": offset}, sort_keys=True).encode()
    blob = blob.ljust(_data_start(len(blob)) - len(_MAGIC) - 8)  # pad with spaces: arrays start aligned
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + struct.pack("<Q", len(blob)) + blob)
            for entry, arr in zip(entries, arrays.values()):
                f.write(memoryview(np.ascontiguousarray(arr)).cast("B"))
                f.write(b"\x00" * (-entry["nbytes"] % _ALIGN))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _data_start(header_len: int) -> int:
    return -(-(len(_MAGIC) + 8 + header_len) // _ALIGN) * _ALIGN


def load_arrays(path: str | os.PathLike, key: dict) -> dict[str, np.ndarray]:
    """Memory-map the arrays of a cache file written by ``save_arrays`` (read-only views of one shared mapping).
    Raises ``CacheInvalid`` when the file is missing, has another key, or its header or size is wrong."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(len(_MAGIC) + 8)
            if len(head) < len(_MAGIC) + 8 or head[:len(_MAGIC)] != _MAGIC:
                raise CacheInvalid("not a metadata cache file of this version (bad magic)")
            (n,) = struct.unpack("<Q", head[len(_MAGIC):])
            if n > min(size, 1 << 30):
                raise CacheInvalid(f"header length {n} exceeds the file ({size} bytes)")
            try:
                header = json.loads(f.read(n))
                entries = [(e["name"], np.dtype(e["dtype"]), tuple(map(int, e["shape"])), int(e["offset"]),
                            int(e["nbytes"])) for e in header["arrays"]]
                data_bytes = int(header["data_bytes"])
            except (ValueError, KeyError, TypeError) as exc:
                raise CacheInvalid(f"unreadable header ({type(exc).__name__}: {exc})") from None
            if header.get("key") != key:
                raise CacheInvalid("stale: the source file (path, size or mtime) or the format changed")
            start = _data_start(n)
            if start + data_bytes != size:
                raise CacheInvalid(f"truncated or padded: {size} bytes instead of {start + data_bytes}")
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise CacheInvalid("missing") from None
    except OSError as exc:
        raise CacheInvalid(f"unreadable ({exc})") from None
    out = {}
    for name, dtype, shape, offset, nbytes in entries:
        count = int(np.prod(shape, dtype=np.int64))
        if dtype.hasobject or count * dtype.itemsize != nbytes or offset < 0 or start + offset + nbytes > size:
            raise CacheInvalid(f"array {name} does not fit the file")
        out[name] = (np.frombuffer(buf, dtype=dtype, count=count, offset=start + offset).reshape(shape) if count
                     else np.zeros(shape, dtype))
    return out


def _cache_folder() -> Path:
    return Path(os.environ.get("LAVILA_METADATA_CACHE") or Path.home() / ".cache" / "lavila" / "metadata")


def cache_paths(source: str | os.PathLike) -> list[Path]:
    """Where the cache of ``source`` may live, in order: beside it (unless ``$LAVILA_METADATA_CACHE`` is set), then
    the cache folder."""
    source = Path(source).resolve()
    digest = hashlib.sha1(str(source).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    folder = _cache_folder() / f"{digest}-{source.name}{_SUFFIX}"
    if os.environ.get("LAVILA_METADATA_CACHE"):
        return [folder]
    return [source.with_name(source.name + _SUFFIX), folder]


def source_key(source: str | os.PathLike, kind: str) -> dict:
    st = os.stat(source)
    return {"source": str(Path(source).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "kind": kind,
            "version": FORMAT_VERSION}


def cached_arrays(source: str | os.PathLike, kind: str,
                  build: Callable[[], dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], Path | None]:
    """The arrays ``build()`` makes from ``source``, from the cache when it is valid, else built and cached.

    Returns ``(arrays, cache path or None)``: memory-mapped from the cache file, or the freshly built in-memory
    arrays when no cache location is writable (logged; they are shared with forked workers all the same)."""
    key = source_key(source, kind)
    candidates = cache_paths(source)
    reasons = []
    for path in candidates:
        if not path.exists():
            continue
        try:
            return load_arrays(path, key), path
        except CacheInvalid as exc:
            reasons.append(f"{path}: {exc}")
    for reason in reasons:
        log.warning("metadata cache %s; rebuilding it from %s", reason, source)
    arrays = build()
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_arrays(path, arrays, key)
        except OSError as exc:  # read-only folder, full disk: try the next place
            log.info("cannot write the metadata cache %s (%s)", path, exc)
            continue
        log.info("metadata cache of %s written to %s", source, path)
        try:
            return load_arrays(path, key), path
        except CacheInvalid as exc:  # the source changed while it was being read
            log.warning("metadata cache %s is not usable right after writing it (%s)", path, exc)
            break
    log.warning("no writable place for the metadata cache of %s (tried %s); keeping it in memory", source,
                ", ".join(map(str, candidates)))
    return arrays, None
