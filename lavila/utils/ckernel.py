"""Small C kernels compiled on first use: build with the system C compiler, cache, load with ctypes.

A kernel is a ``.c`` file next to its Python module, shipped as package data (``pyproject.toml``) and read by
:class:`SourceFile` through ``importlib.resources``, so an installed wheel works too; there is no build step at install
time. :class:`CompiledKernel` compiles it once per process into a shared library cached under ``$LAVILA_KERNEL_CACHE``
(default ``~/.cache/lavila/kernels``; the temp folder when that is not writable), keyed by a hash of the source,
the flags, the compiler and the CPU (``-march=native`` builds must not move between machines). The file is compiled
under its own name in a folder of its own, with that folder as the working directory, so compiler messages name it
and a file may include itself (``#include __FILE__``: one body compiled per element type). ``load()`` returns
the ``ctypes.CDLL`` or, when there is no compiler, the ``.c`` file cannot be read (:class:`KernelSourceError`, naming
the file) or the build fails, None (the caller then uses its pure Python / NumPy / PyTorch path, with one logged
warning; ``error()`` says why). ctypes releases the GIL during a call, so Python threads from :func:`thread_pool`
run kernel calls in parallel.

Never build with ``-ffast-math``: GCC (< 13) then links ``crtfastmath.o`` into the shared library, whose constructor
switches the whole process to flush-denormals-to-zero the moment the library is loaded.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

__all__ = ["CACHE_ENV", "KERNELS", "CompiledKernel", "KernelSourceError", "SourceFile", "build_library",
           "find_compiler", "thread_pool"]

log = logging.getLogger(__name__)

CACHE_ENV = "LAVILA_KERNEL_CACHE"

KERNELS: dict[str, CompiledKernel] = {}  # every kernel defined so far (by name; the test session builds them all)


def find_compiler() -> str | None:
    """``$CC``, else ``cc`` / ``gcc`` / ``clang`` on the PATH; None when there is none."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _cache_dir() -> Path:
    cache = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "lavila" / "kernels"))
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home: build into the temp folder instead
        cache = Path(tempfile.gettempdir()) / f"lavila-kernels-{os.getuid() if hasattr(os, 'getuid') else 0}"
        cache.mkdir(parents=True, exist_ok=True)
    return cache


class KernelSourceError(OSError):
    """A kernel's ``.c`` file cannot be read (missing from the installed package, unreadable)."""


class SourceFile:
    """The C source of a kernel: the file ``filename`` of the package ``package`` (package data, read with
    ``importlib.resources``). Calling it returns the text; :class:`KernelSourceError` names the file when it cannot."""

    def __init__(self, package: str, filename: str) -> None:
        self.package = package
        self.filename = filename

    @property
    def path(self) -> str:
        """The file inside the package tree, e.g. ``lavila/models/ssm_cpu.c``."""
        return "/".join([*self.package.split("."), self.filename])

    def __call__(self) -> str:
        try:
            return resources.files(self.package).joinpath(self.filename).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KernelSourceError(f"cannot read the C source {self.path} ({type(exc).__name__}: {exc}); it is "
                                    f"package data of lavila: reinstall the package") from exc

    def __repr__(self) -> str:
        return f"SourceFile({self.path!r})"


def build_library(name: str, source: str, flags: Sequence[str], libs: Sequence[str] = ("-lm",),
                  filename: str | None = None) -> ctypes.CDLL:
    """Compile ``source`` (C) into ``<cache>/<name>_<hash>.so`` unless it is there already, and load it.

    The source is written as ``filename`` (default ``<name>.c``) into a fresh folder, which is the compiler's working
    directory. The compiler is ``$CC``, else ``cc`` / ``gcc`` / ``clang`` on the PATH. Raises on any failure.
    """
    compiler = find_compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (cc/gcc/clang)")
    key = hashlib.sha256("\n".join([source, " ".join(flags), " ".join(libs), compiler, platform.machine(),
                                    _cpu_signature()]).encode()).hexdigest()[:16]
    cache = _cache_dir()
    lib_path = cache / f"{name}_{key}.so"
    if not lib_path.is_file():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src = Path(tmp) / (filename or f"{name}.c")
            src.write_text(source, encoding="utf-8")
            tmp_lib = Path(tmp) / lib_path.name
            proc = subprocess.run([compiler, *flags, src.name, "-o", tmp_lib.name, *libs], cwd=tmp,
                                  capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {proc.stderr.strip()[:2000]}")
            os.replace(tmp_lib, lib_path)  # atomic: concurrent builders just overwrite with the same file
    return ctypes.CDLL(str(lib_path))


class CompiledKernel:
    """One C library, built on the first :meth:`load` of the process (thread-safe), then reused.

    ``source`` returns the C text (a :class:`SourceFile`; tests pass other callables); ``declare(lib)`` sets the
    functions' ``argtypes`` / ``restype``; ``fallback`` names what the caller uses instead (for the one warning logged
    when the source cannot be read or the build fails). ``state`` holds ``lib`` and ``error`` once tried (clearing it
    makes the next ``load`` try again).
    """

    def __init__(self, name: str, source: Callable[[], str], flags: Sequence[str],
                 declare: Callable[[ctypes.CDLL], None], fallback: str) -> None:
        self.name = name
        self.source = source
        self.flags = list(flags)
        self.declare = declare
        self.fallback = fallback
        self.state: dict = {}
        self._lock = threading.Lock()
        KERNELS[name] = self

    def load(self) -> ctypes.CDLL | None:
        """The compiled library, building it on first use; None when it cannot be built here."""
        with self._lock:
            if "lib" not in self.state:
                try:
                    lib = build_library(self.name, self.source(), self.flags,
                                        filename=getattr(self.source, "filename", None))
                    self.declare(lib)
                    self.state["lib"], self.state["error"] = lib, None
                except Exception as exc:  # no compiler, unreadable .c, failed build, unloadable library: fall back
                    self.state["lib"], self.state["error"] = None, f"{type(exc).__name__}: {exc}"
                    log.warning("compiled kernel %s unavailable (%s); using %s", self.name, self.state["error"],
                                self.fallback)
            return self.state["lib"]

    def error(self) -> str | None:
        """Why the library could not be built (None when it was built or not tried yet)."""
        return self.state.get("error")


_pools: dict = {}
_pools_lock = threading.Lock()


def thread_pool(threads: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``threads`` threads for kernel calls (one per thread count; a forked child, e.g. a
    DataLoader worker, gets its own instead of the parent's dead threads)."""
    key = (os.getpid(), threads)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lavila-kernel")
        return pool
