"""The training errors, and which errors an entry script reports as one ``error:`` line (see lavila.utils.cli)."""
from __future__ import annotations


class TrainingError(RuntimeError):
    """A run that cannot continue (bad flags, no data, diverged)."""


class NonFiniteLossError(TrainingError):
    pass


def known_errors() -> tuple[type[BaseException], ...]:
    """What an entry script reports as one ``error:`` line: bad flags / config / data / annotations / checkpoints, a
    video that cannot be decoded, a rendezvous timeout. Anything else keeps its traceback (a bug)."""
    from lavila.config import ConfigError
    from lavila.data.annotations import AnnotationError
    from lavila.data.loader import SampleSkippedError
    from lavila.data.video import VideoDecodeError
    from lavila.evaluation.tasks import TaskConfigError
    from lavila.utils.checkpoint import CheckpointError
    from lavila.utils.distributed import RendezvousTimeoutError

    return (TrainingError, CheckpointError, ConfigError, AnnotationError, FileNotFoundError, NotADirectoryError,
            RendezvousTimeoutError, SampleSkippedError, VideoDecodeError, TaskConfigError)


def last_line(exc: BaseException) -> str:
    """The message itself: an error re-raised from a DataLoader worker carries the worker's traceback first."""
    text = str(exc)
    if not text.startswith("Caught "):
        return text
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].split(": ", 1)[-1]


def describe_error(exc: BaseException) -> str:
    """The one-line message of a known error (with the --skip-policy hint for an unreadable training sample)."""
    from lavila.data.loader import SampleSkippedError
    from lavila.data.video import VideoDecodeError

    if isinstance(exc, (SampleSkippedError, VideoDecodeError)):
        return (f"{last_line(exc)} (fix or remove that file; evaluation needs every sample, training with "
                "--skip-policy raise stops at the first unreadable one and --skip-policy skip skips and counts them)")
    return str(exc)
