"""Kernel builds: every kernel builds when a compiler is present; a broken source is reported with the compiler's
message (conftest.py ends the session on it) instead of being skipped as 'no C compiler'. Each kernel compiles the
``.c`` file beside its module (package data); a missing or unreadable one is named, and the caller falls back."""
from __future__ import annotations

from pathlib import Path

import pytest
from kernel_check import import_kernel_modules, kernel_build_failures

from lavila.utils import ckernel

REPO = Path(__file__).resolve().parents[1]
needs_compiler = pytest.mark.skipif(ckernel.find_compiler() is None, reason="no C compiler (cc/gcc/clang)")


def test_kernel_modules_are_found():
    names = import_kernel_modules()
    assert {"lavila.models.ssm_cpu", "lavila.evaluation.retrieval_kernel", "lavila.data.layout_kernel"} <= set(names)
    assert {"selective_scan", "mir_metrics", "clip_layout"} <= set(ckernel.KERNELS)


@needs_compiler
def test_every_kernel_builds():
    assert kernel_build_failures() == []


@needs_compiler
def test_broken_kernel_source_is_a_failure_with_the_compiler_message(tmp_path, monkeypatch):
    monkeypatch.setenv(ckernel.CACHE_ENV, str(tmp_path))
    broken = ckernel.CompiledKernel("broken_for_test", lambda: "int f(void) { return 1 }\n",
                                    ["-O1", "-shared", "-fPIC"], lambda lib: None, "nothing")
    ckernel.KERNELS.pop("broken_for_test")
    failures = kernel_build_failures([broken])
    assert len(failures) == 1 and failures[0].startswith("broken_for_test: RuntimeError: ")
    assert "error" in failures[0] and "expected" in failures[0]  # the compiler's own diagnostic
    assert "no C compiler" not in failures[0]


def test_no_compiler_means_no_failure(monkeypatch):
    monkeypatch.setattr(ckernel, "find_compiler", lambda: None)
    assert kernel_build_failures() == []


KERNEL_MODULES = {"selective_scan": "lavila.models.ssm_cpu", "mir_metrics": "lavila.evaluation.retrieval_kernel",
                  "clip_layout": "lavila.data.layout_kernel"}


def _packaged_kernels() -> list[ckernel.CompiledKernel]:
    import_kernel_modules()
    return [ckernel.KERNELS[name] for name in KERNEL_MODULES]


def test_kernel_sources_are_the_packaged_c_files():
    for kernel in _packaged_kernels():
        assert isinstance(kernel.source, ckernel.SourceFile)
        module = Path(REPO, *KERNEL_MODULES[kernel.name].split(".")).with_suffix(".py")
        c_file = REPO / kernel.source.path
        assert c_file.parent == module.parent and c_file.suffix == ".c"
        assert kernel.source() == c_file.read_text(encoding="utf-8")
        assert "#include" not in module.read_text()  # no C left in a Python string


def test_load_compiles_the_packaged_file(monkeypatch):
    seen = {}

    def recording_build(name, source, flags, libs=("-lm",), filename=None):
        seen[name] = (source, filename, list(flags))
        raise RuntimeError("recorded, not built")

    monkeypatch.setattr(ckernel, "build_library", recording_build)
    for kernel in _packaged_kernels():
        monkeypatch.setattr(kernel, "state", {})
        assert kernel.load() is None and "recorded, not built" in kernel.error()
        source, filename, flags = seen[kernel.name]
        assert source == (REPO / kernel.source.path).read_text(encoding="utf-8")
        assert filename == Path(kernel.source.path).name and flags == kernel.flags


@pytest.mark.parametrize("filename", ["no_such_kernel.c", "models"])  # missing; a folder (unreadable as text)
def test_unreadable_source_file_is_named_and_the_caller_falls_back(filename, caplog):
    source = ckernel.SourceFile("lavila", filename)
    with pytest.raises(ckernel.KernelSourceError, match=f"lavila/{filename}"):
        source()
    kernel = ckernel.CompiledKernel("missing_for_test", source, ["-shared"], lambda lib: None, "the fallback path")
    ckernel.KERNELS.pop("missing_for_test")
    with caplog.at_level("WARNING", logger=ckernel.__name__):
        assert kernel.load() is None
    assert kernel.error().startswith("KernelSourceError: cannot read the C source lavila/")
    assert f"lavila/{filename}" in caplog.text and "using the fallback path" in caplog.text
    if ckernel.find_compiler() is not None:  # the test session's build check fails on it
        assert kernel_build_failures([kernel]) == [f"missing_for_test: {kernel.error()}"]


@needs_compiler
def test_a_source_may_include_itself_with_a_relative_cache_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ckernel.CACHE_ENV, "relative-cache")
    source = ("#ifndef SELF\n#define SELF 1\n#include __FILE__\n#else\n"
              "int self_included(void) { return SELF + 41; }\n#endif\n")
    lib = ckernel.build_library("self_include_for_test", source, ["-O1", "-shared", "-fPIC"], filename="twice.c")
    assert lib.self_included() == 42
    assert list((tmp_path / "relative-cache").glob("self_include_for_test_*.so"))
