"""The registry of evaluation tasks: ``eval_zeroshot.py --tasks``, the pretraining engine's per-epoch validation
(``--dataset-val``) and the fine-tuning engines (``--dataset``) all look benchmarks up here.

Names are LaViLa's (``ek100_mir``, ``ek100_cls``, ``egtea``, ``charades_ego``, ``ego4d_mcq``, ``egoschema``); the
short names of earlier versions (``mir``, ``cls``, ``egomcq``) are aliases. Units: EK100 CLS reports percent (as the
reference engines), every other task fractions. A new benchmark is one module with a :class:`Task` subclass plus
one line in :data:`TASKS` (docs/ARCHITECTURE.md "How to add a benchmark").
"""
from __future__ import annotations

from lavila.evaluation.tasks.base import (
    DataSettings,
    EvalContext,
    Option,
    Prepared,
    Task,
    TaskConfigError,
    add_options,
    is_dual_encoder,
    with_num_frames,
)
from lavila.evaluation.tasks.charades_ego import CharadesEgo
from lavila.evaluation.tasks.ego4d_mcq import Ego4DMCQ
from lavila.evaluation.tasks.egoschema import EgoSchema
from lavila.evaluation.tasks.egtea import Egtea
from lavila.evaluation.tasks.ek100 import EK100CLS, EK100MIR

__all__ = ["TASKS", "get_task", "task_names", "canonical_name", "DataSettings", "EvalContext", "Option", "Prepared",
           "Task", "TaskConfigError", "add_options", "is_dual_encoder", "with_num_frames"]

# the registry, in the order tables list them
TASKS: dict[str, Task] = {task.name: task for task in (EK100MIR(), EK100CLS(), Egtea(), CharadesEgo(), Ego4DMCQ(),
                                                        EgoSchema())}
_ALIASES = {alias: task.name for task in TASKS.values() for alias in task.aliases}


def task_names(finetune: str | None = None, aliases: bool = False) -> list[str]:
    """Registered names (``finetune``: only the tasks that engine trains on; ``aliases``: the old names too)."""
    names = [n for n, t in TASKS.items() if finetune is None or t.finetune == finetune]
    return names + ([a for a, n in _ALIASES.items() if n in names] if aliases else [])


def canonical_name(name: str) -> str:
    if name in TASKS:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    raise TaskConfigError(f"unknown evaluation task {name!r}; choose one of {', '.join(task_names(aliases=True))}")


def get_task(name: str) -> Task:
    """The task of a name or alias."""
    return TASKS[canonical_name(name)]
