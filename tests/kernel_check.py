"""Every compiled C kernel must build when a C compiler is present (conftest.py checks at session start).

Without this a kernel whose source no longer compiles falls back silently (``CompiledKernel.load()`` is None) and its
tests skip as if there were no compiler, so the suite passes while the kernel is dead.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path

from lavila.utils import ckernel

PACKAGE = Path(__file__).resolve().parents[1] / "lavila"


def import_kernel_modules() -> list[str]:
    """Import every lavila module that defines a kernel (so each is in ``ckernel.KERNELS``); returns their names."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "ckernel.py" and "CompiledKernel(" in path.read_text():
            name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
            importlib.import_module(name)
            names.append(name)
    return names


def kernel_build_failures(kernels: Iterable[ckernel.CompiledKernel] | None = None) -> list[str]:
    """'<kernel>: <error with the compiler's message>' for each kernel that does not build; [] without a compiler."""
    if ckernel.find_compiler() is None:
        return []
    if kernels is None:
        import_kernel_modules()
        kernels = list(ckernel.KERNELS.values())
    failures = []
    for kernel in kernels:
        if kernel.load() is None:
            failures.append(f"{kernel.name}: {kernel.error()}")
    return failures
