"""What the commands share: one-line errors, the store the options point at, the spec
built from the options."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from kubescribe.metrics import Metrics
from kubescribe.outcomes import EXIT_USAGE
from kubescribe.settings import CliSettings
from kubescribe.store import Store, store_from_settings


class CliError(Exception):
    """An error for the user: one line, and the exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def sample_path() -> Path:
    return Path(str(resources.files("kubescribe") / "samples" / "sample.wav"))


def open_cli_store(args, *, local_default: bool = False, metrics: Metrics | None = None) -> Store:
    """The store of ``--redis``, else of KUBESCRIBE_REDIS_URL, else: for ``transcribe``
    (``local_default``) the in-process store, for the other commands the documented
    default Redis URL. The password comes from the environment only: on the command line
    it would land in shell history and in `ps` output."""
    conf = CliSettings()
    if args.redis:
        url = args.redis
    elif conf.redis_url_given or not local_default:
        url = conf.redis_url
    else:
        url = "memory://"
    try:
        return store_from_settings(conf, metrics=metrics, url=url)
    except ValueError as exc:  # a URL without a scheme
        raise CliError(f"--redis: {exc}", EXIT_USAGE) from None


def spec_from_args(args, audio: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "audio": audio,
        "model": args.model,
        "language": args.language or "",
        "task": args.task,
        "wordTimestamps": args.word_timestamps,
        "vad": args.vad,
        "beamSize": args.beam_size,
        "decoding": args.decoding,
        "batchSize": args.batch_size,
        "initialPrompt": args.prompt or "",
        "formats": [args.format],
        "device": args.device,
        "computeType": args.compute_type,
        "cache": {"enabled": not args.no_cache},
    }
    return spec


def read_audio(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
