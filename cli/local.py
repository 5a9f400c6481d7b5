"""Commands that need no cluster: ``transcribe`` (the runner's task, in process), ``cache``
and ``crd``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from kubescribe.metrics import Metrics
from kubescribe.models import InvalidSpec, parse_spec
from kubescribe.outcomes import EXIT_OK, EXIT_TRANSIENT, EXIT_USAGE
from kubescribe.render import render

from .common import CliError, open_cli_store, sample_path, spec_from_args


class Progress:
    """A one-line progress bar on stderr for long audio; silent when not a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._last = 0.0
        self._total = 0.0

    def __call__(self, done: float, total: float) -> None:
        if not self.enabled or total <= 0:
            return
        self._total = total
        now = time.monotonic()
        if now - self._last < 0.2 and done < total:
            return
        self._last = now
        frac = min(1.0, done / total)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r[{bar:<30}] {frac:6.1%}  {done:7.1f}s / {total:.1f}s")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled and self._total:
            self._last = 0.0
            self(self._total, self._total)  # trailing silence has no segment: end at 100%
            sys.stderr.write("\n")


def cmd_transcribe(args) -> int:
    from kubescribe.runner.engine import Engine, EngineOptions

    from .model_pull import models_dir
    from kubescribe.runner.task import TaskError, run_task

    path = sample_path() if args.sample else Path(args.file) if args.file else None
    if path is None:
        print("kubescribe: give an audio FILE or --sample", file=sys.stderr)
        return EXIT_USAGE
    from kubescribe.runner.fetch import Audio

    # The file is hashed as a stream and decoded from disk: a long recording is never
    # held whole in memory.
    try:
        data = Audio.of_path(path)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
    try:
        spec = parse_spec(spec_from_args(args, {"redisKey": "local", "sha256": data.sha256}))
    except InvalidSpec as exc:
        data.close()
        print(f"kubescribe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    metrics = Metrics()
    server = None
    if args.metrics_port is not None:
        from kubescribe.serving import MetricsServer

        server = MetricsServer(metrics.registry, port=args.metrics_port, host="127.0.0.1").start()
    try:
        store = open_cli_store(args, local_default=True, metrics=metrics)
        engine = Engine(EngineOptions(model_dir=str(models_dir(args))), metrics=metrics)
        progress = Progress(args.progress if args.progress is not None else sys.stderr.isatty())
        # The cache is consulted before the audio is decoded or a model is loaded.
        try:
            outcome = run_task(store, engine, spec, metrics=metrics, progress=progress, audio=data)
        except TaskError as exc:
            metrics.observe_outcome(spec.model, exc.outcome())
            raise CliError(f"{path}: {exc.message}", exc.outcome().exit_code or EXIT_TRANSIENT) from None
        metrics.observe_outcome(spec.model, outcome.outcome)
        progress.finish()
    finally:
        if server is not None:
            server.stop()
    text = render(outcome.result, args.format)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    r = outcome.result
    print(
        f"kubescribe: {path.name}: {r.get('audio_duration_seconds', 0):.1f}s of audio, "
        f"language {r.get('language')}, "
        + ("from cache" if outcome.cached else f"transcribed in {r.get('processing_seconds', 0):.2f}s"),
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_cache(args) -> int:
    store = open_cli_store(args)
    if args.cache_command == "stats":
        print(json.dumps(store.stats().document(), indent=2))
    else:
        n = store.clear(audio=args.audio)
        print(f"deleted {n} keys")
    return EXIT_OK


def cmd_crd(args) -> int:
    from kubescribe.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return EXIT_OK
