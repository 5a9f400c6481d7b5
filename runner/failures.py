"""How a task fails: one exception that carries its reason from the reason table
(kubescribe.outcomes), and the one place where every lower-level failure becomes one."""

from __future__ import annotations

import contextlib
import sys

from kubescribe.objectstore import ObjectNotFound, ObjectStoreError
from kubescribe.outcomes import RunnerOutcome, reason
from kubescribe.store import StoreError

from .audio import BadAudio
from .engine import ModelLoadError, ModelNotFound


class _NoRedis(Exception):
    """Raised by nothing: what :func:`_redis_error` names while redis is not imported."""


def _redis_error() -> type[BaseException]:
    """redis' own error class once redis is imported (only then can one be raised);
    importing it here would cost ``kubescribe transcribe`` 40 ms of start-up it never
    needs without a cache. An ``except`` clause evaluates this when it is reached."""
    module = sys.modules.get("redis.exceptions")
    return module.RedisError if module is not None else _NoRedis


class TaskError(Exception):
    """A task failure with a reason from the reason table (kubescribe.outcomes), which
    says whether a retry can help and how it is counted."""

    def __init__(self, reason_name: str, message: str):
        super().__init__(message)
        self.reason = reason_name
        self.message = message

    @property
    def final(self) -> bool:
        return reason(self.reason).final

    @property
    def error_type(self) -> str:
        return reason(self.reason).error_type

    def outcome(self) -> RunnerOutcome:
        return RunnerOutcome.failure(self.reason, self.message)


def call_store(fn, *args):
    """A Redis call whose failure is the store's (RedisUnavailable), not the caller's."""
    try:
        return fn(*args)
    except _redis_error() as exc:
        raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def task_errors():
    """Every failure of a task as a :class:`TaskError` with its reason."""
    try:
        yield
    except BadAudio as exc:
        raise TaskError("BadAudio", str(exc)) from None
    except ModelNotFound as exc:
        raise TaskError("ModelNotFound", str(exc)) from None
    except ModelLoadError as exc:
        raise TaskError("ModelLoadFailed", str(exc)) from None
    except StoreError as exc:
        raise TaskError("RedisUnavailable", str(exc)) from None
    except ObjectStoreError as exc:
        raise TaskError(exc.reason, exc.message) from None
    except ObjectNotFound as exc:  # audio read from a bucket, deleted while it was read
        raise TaskError("AudioNotFound", str(exc)) from None
    except _redis_error() as exc:  # a checkpoint write that failed mid-transcription
        raise TaskError("RedisUnavailable", f"redis: {type(exc).__name__}: {exc}") from None
    except MemoryError:
        raise TaskError("OutOfMemory", "the runner ran out of memory") from None
