"""Kernel builds: every kernel builds when a compiler is present; a broken source is reported with the compiler's
message (conftest.py ends the session on it) instead of being skipped as 'no C compiler'."""
from __future__ import annotations

import pytest
from kernel_check import import_kernel_modules, kernel_build_failures

from lavila.utils import ckernel

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
