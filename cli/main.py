"""The ``kubescribe`` command line.

Local, no cluster needed::

    kubescribe transcribe talk.mp3 --format srt        # in-process store, nothing to run
    kubescribe transcribe talk.mp3 --redis redis://localhost:6379/0   # shared result cache
    kubescribe cache stats | clear

Against a cluster running the operator::

    kubescribe submit talk.mp3 --wait --format vtt      # upload, create the request, print
    kubescribe result my-request --format srt

Every error is one line on stderr and an exit code from kubescribe.outcomes: 1 the
request failed (or is not there), 2 usage, 65 bad input, 75 transient (Redis or the API
server out of reach: retry).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from kubescribe import API_VERSION, GROUP, KIND, PLURAL, VERSION, __version__
from kubescribe.metrics import Metrics
from kubescribe.models import DEFAULT_MODEL, TERMINAL_PHASES, InvalidSpec, parse_spec
from kubescribe.outcomes import EXIT_FAILED, EXIT_OK, EXIT_TRANSIENT, EXIT_USAGE
from kubescribe.render import FORMATS, render
from kubescribe.settings import CliSettings
from kubescribe.store import Store, StoreError, open_store


class CliError(Exception):
    """An error for the user: one line, and the exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def sample_path() -> Path:
    return Path(str(resources.files("kubescribe") / "samples" / "sample.wav"))


def _store(args, *, local_default: bool = False, metrics: Metrics | None = None) -> Store:
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
        url = None
    try:
        return open_store(url, conf.redis_password, metrics=metrics, ca_file=conf.redis_ca_file)
    except ValueError as exc:  # a URL without a scheme
        raise CliError(f"--redis: {exc}", EXIT_USAGE) from None


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


def _spec_from_args(args, audio: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "audio": audio,
        "model": args.model,
        "language": args.language or "",
        "task": args.task,
        "wordTimestamps": args.word_timestamps,
        "vad": args.vad,
        "beamSize": args.beam_size,
        "batchSize": args.batch_size,
        "initialPrompt": args.prompt or "",
        "formats": [args.format],
        "device": args.device,
        "computeType": args.compute_type,
        "cache": {"enabled": not args.no_cache},
    }
    return spec


def cmd_transcribe(args) -> int:
    from kubescribe.runner.engine import Engine
    from kubescribe.runner.task import TaskError, run_task

    path = sample_path() if args.sample else Path(args.file) if args.file else None
    if path is None:
        print("kubescribe: give an audio FILE or --sample", file=sys.stderr)
        return EXIT_USAGE
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"kubescribe: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    from kubescribe.store import sha256_hex

    try:
        spec = parse_spec(_spec_from_args(args, {"redisKey": "local", "sha256": sha256_hex(data)}))
    except InvalidSpec as exc:
        print(f"kubescribe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    metrics = Metrics()
    server = None
    if args.metrics_port is not None:
        from kubescribe.serving import MetricsServer

        server = MetricsServer(metrics.registry, port=args.metrics_port, host="127.0.0.1").start()
    try:
        store = _store(args, local_default=True, metrics=metrics)
        engine = Engine(metrics=metrics)
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
    store = _store(args)
    if args.cache_command == "stats":
        s = store.stats()
        doc = {"hits": s.hits, "misses": s.misses, "hitRate": round(s.hit_rate, 4),
               "results": s.results, "audio": s.audio, "clears": s.clears}
        print(json.dumps(doc, indent=2))
    else:
        n = store.clear(audio=args.audio)
        print(f"deleted {n} keys")
    return EXIT_OK


# -- cluster commands ---------------------------------------------------------------

def _custom_api(args):
    from kubernetes import client, config

    try:
        config.load_kube_config(config_file=args.kubeconfig, context=args.context)
    except Exception as exc:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            raise CliError(f"no cluster to talk to: {exc}", EXIT_USAGE) from None
    return client.CustomObjectsApi()


def _namespace(args) -> str:
    if args.namespace:
        return args.namespace
    try:
        from kubernetes import config

        _, active = config.list_kube_config_contexts(config_file=args.kubeconfig)
        return active["context"].get("namespace") or "default"
    except Exception:
        return "default"


def _name_for(path: Path) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", path.stem.lower()).strip("-")[:40] or "audio"
    return f"{stem}-{os.urandom(3).hex()}"


def cmd_submit(args) -> int:
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"kubescribe: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    store = _store(args)
    try:
        key = store.put_audio(data)
    except StoreError as exc:
        raise CliError(f"upload failed: {exc}", EXIT_TRANSIENT) from None
    except ValueError as exc:
        raise CliError(f"{path}: {exc}", EXIT_USAGE) from None
    sha = key.rsplit(":", 1)[1]
    spec = _spec_from_args(args, {"redisKey": key, "sha256": sha})
    spec["priority"] = args.priority
    try:
        parse_spec(spec)
    except InvalidSpec as exc:
        print(f"kubescribe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    name = args.name or _name_for(path)
    ns = _namespace(args)
    body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": ns}, "spec": spec}
    api = _custom_api(args)
    api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    print(f"transcriptionrequest.{GROUP}/{name} created in {ns}", file=sys.stderr)
    if not args.wait:
        return EXIT_OK
    return _wait_and_print(api, store, ns, name, args.format, args.timeout)


def _wait_and_print(api, store, ns: str, name: str, fmt: str, timeout: float) -> int:
    from kubernetes import watch

    deadline = time.monotonic() + timeout
    obj = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    while (obj.get("status") or {}).get("phase") not in TERMINAL_PHASES:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            print(f"kubescribe: {name} not finished after {timeout:.0f}s "
                  f"(phase {(obj.get('status') or {}).get('phase')})", file=sys.stderr)
            return EXIT_FAILED
        w = watch.Watch()
        for ev in w.stream(api.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL,
                           field_selector=f"metadata.name={name}",
                           resource_version=obj["metadata"]["resourceVersion"],
                           timeout_seconds=max(1, int(min(remaining, 60)))):
            obj = ev["object"]
            if (obj.get("status") or {}).get("phase") in TERMINAL_PHASES:
                w.stop()
                break
        else:
            obj = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    return _print_result(store, obj, fmt)


def _print_result(store, obj: dict, fmt: str) -> int:
    status = obj.get("status") or {}
    name = obj["metadata"]["name"]
    if status.get("phase") != "Succeeded":
        print(f"kubescribe: {name} is {status.get('phase') or 'Pending'}: "
              f"{status.get('reason') or ''} {status.get('message') or ''}".rstrip(), file=sys.stderr)
        return EXIT_FAILED
    result = store.read_result_key(status["resultKey"])
    if result is None:
        print(f"kubescribe: the result of {name} has expired from Redis ({status['resultKey']})", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(render(result, fmt))
    return EXIT_OK


def cmd_result(args) -> int:
    store = _store(args)
    api = _custom_api(args)
    ns = _namespace(args)
    from kubernetes.client.exceptions import ApiException

    try:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, args.name)
    except ApiException as exc:
        if exc.status == 404:
            raise CliError(f"no TranscriptionRequest {args.name} in {ns}", EXIT_FAILED) from None
        raise
    if args.wait:
        return _wait_and_print(api, store, ns, args.name, args.format, args.timeout)
    return _print_result(store, obj, args.format)


def cmd_crd(args) -> int:
    from kubescribe.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return EXIT_OK


def _add_request_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name or directory (default: bundled tiny.en)")
    p.add_argument("--language", default="", help="ISO 639-1 code; empty detects it")
    p.add_argument("--task", choices=["transcribe", "translate"], default="transcribe")
    p.add_argument("--word-timestamps", action="store_true")
    p.add_argument("--vad", action="store_true", help="skip silence with the Silero VAD")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=0, help="batched decoding; 0 is sequential")
    p.add_argument("--prompt", default="", help="initial prompt: names, jargon")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--compute-type", default="default")
    p.add_argument("--format", "-f", choices=FORMATS, default="txt")
    p.add_argument("--no-cache", action="store_true", help="transcribe even when a cached result exists")
    p.add_argument("--redis", metavar="URL", help="Redis URL (default: KUBESCRIBE_REDIS_URL)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubescribe", description="Kubernetes-native speech to text.")
    parser.add_argument("--version", action="version", version=f"kubescribe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("transcribe", help="transcribe a file here, no cluster needed")
    t.add_argument("file", nargs="?", help="audio or video file (anything FFmpeg reads)")
    t.add_argument("--sample", action="store_true", help="transcribe the bundled sample")
    t.add_argument("--output", "-o", help="write to this file instead of stdout")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    t.add_argument("--metrics-port", type=int, default=None, help="serve /metrics on 127.0.0.1:PORT")
    _add_request_options(t)
    t.set_defaults(func=cmd_transcribe)

    c = sub.add_parser("cache", help="result cache statistics and clean-up")
    csub = c.add_subparsers(dest="cache_command", required=True)
    for name, helptext in (("stats", "hits, misses, hit rate, entries"), ("clear", "delete cached results")):
        cp = csub.add_parser(name, help=helptext)
        cp.add_argument("--redis", metavar="URL")
        if name == "clear":
            cp.add_argument("--audio", action="store_true", help="delete uploaded audio too")
    c.set_defaults(func=cmd_cache)

    for name, helptext in (("submit", "upload audio and create a TranscriptionRequest"),
                           ("result", "print the transcript of a TranscriptionRequest")):
        p = sub.add_parser(name, help=helptext)
        if name == "submit":
            p.add_argument("file")
            p.add_argument("--name", help="request name (default: from the file name)")
            p.add_argument("--wait", action="store_true", help="wait for the result and print it")
            p.add_argument("--priority", type=int, default=0)
            _add_request_options(p)
        else:
            p.add_argument("name")
            p.add_argument("--format", "-f", choices=FORMATS, default="txt")
            p.add_argument("--redis", metavar="URL")
            p.add_argument("--wait", action="store_true")
        p.add_argument("--namespace", "-n")
        p.add_argument("--kubeconfig", default=CliSettings().kubeconfig)
        p.add_argument("--context")
        p.add_argument("--timeout", type=float, default=3600, help="seconds to wait (with --wait)")
        p.set_defaults(func=cmd_submit if name == "submit" else cmd_result)

    crd = sub.add_parser("crd", help="print the TranscriptionRequest CRD (generated from the models)")
    crd.set_defaults(func=cmd_crd)
    return parser


def _api_error(exc) -> CliError:
    """A Kubernetes API error as one line: refusals and absences are the request's
    failure; throttling and server errors are worth a retry."""
    try:
        detail = json.loads(exc.body).get("message") or exc.reason
    except (TypeError, ValueError, AttributeError):
        detail = exc.reason
    code = EXIT_TRANSIENT if exc.status in (429,) or (exc.status or 0) >= 500 else EXIT_FAILED
    return CliError(f"API server: {exc.status} {detail}", code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except CliError as exc:
        error = exc
    except StoreError as exc:
        error = CliError(str(exc), EXIT_TRANSIENT)
    except Exception as exc:  # no traceback reaches a user: one line, the documented code
        if type(exc).__name__ == "ApiException" and hasattr(exc, "status"):
            error = _api_error(exc)
        elif isinstance(exc, OSError) or type(exc).__module__.startswith("urllib3"):
            error = CliError(f"cannot reach the API server: {exc}", EXIT_TRANSIENT)
        else:
            error = CliError(f"unexpected error: {type(exc).__name__}: {exc}", EXIT_FAILED)
    print(f"kubescribe: {error}", file=sys.stderr)
    return error.code

