"""Reading a benchmark's class list: one "<key> <name>" line per class, in class-index order (EGTEA's
``action_idx.txt``, Charades' ``Charades_v1_classes.txt``). Errors name the file and line."""
from __future__ import annotations

import os
from collections.abc import Callable, Hashable

__all__ = ["read_class_list"]


def read_class_list(path: str | os.PathLike, parse: Callable[[str], tuple[Hashable, str] | None], expected: str,
                    missing_hint: str) -> tuple[list[str], dict]:
    """(names in file order, {key: class index}); ``parse(line)`` gives ``(key, name)`` or None for a malformed
    line (the error then quotes ``expected``); blank lines are skipped, a repeated key is an error."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class list {path} not found ({missing_hint})")
    names: list[str] = []
    index: dict = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parsed = parse(line)
            if parsed is None:
                raise ValueError(f"{path}:{number}: expected {expected}, got {line!r}")
            key, name = parsed
            if key in index:
                raise ValueError(f"{path}:{number}: class {key} appears twice")
            index[key] = len(names)
            names.append(name)
    if not names:
        raise ValueError(f"{path} lists no classes")
    return names, index
