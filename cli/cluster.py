"""Commands against a cluster running the operator: ``submit``, ``result``, ``analyze``
and ``history clear``."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from pathlib import Path

from kubescribe import API_VERSION, GROUP, KIND, PLURAL, VERSION, kubeconfig
from kubescribe.uploads import Audio, upload_file
from kubescribe.models import TERMINAL_PHASES, InvalidSpec, parse_spec
from kubescribe.objectstore import ObjectStoreError
from kubescribe.outcomes import EXIT_FAILED, EXIT_OK, EXIT_TRANSIENT, EXIT_USAGE
from kubescribe.render import render
from kubescribe.settings import CliSettings
from kubescribe.store import StoreError, gone_message

from .common import CliError, open_cli_store, read_audio, spec_from_args
from .history import cmd_history_clear, parse_age


def _custom_api(args):
    from kubernetes import client

    try:
        cfg = kubeconfig.load(kubeconfig=args.kubeconfig, context=args.context)
    except kubeconfig.NoCredentials as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return client.CustomObjectsApi(client.ApiClient(cfg))


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
    # The options are checked before any upload, so a typo costs no transfer.
    try:
        parse_spec({**spec_from_args(args, {"redisKey": "kubescribe:audio:" + "0" * 64}), "priority": args.priority})
    except InvalidSpec as exc:
        print(f"kubescribe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    store = open_cli_store(args)
    audio, stored = _upload(path, store)
    spec = spec_from_args(args, audio)
    spec["priority"] = args.priority
    name = args.name or _name_for(path)
    ns = _namespace(args)
    body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": ns}, "spec": spec}
    try:
        api = _custom_api(args)
        api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    except BaseException:
        if stored is not None:  # an object no request names would stay until a lifecycle rule
            with contextlib.suppress(ObjectStoreError):
                store.objects.delete([stored.key])
        raise
    print(f"transcriptionrequest.{GROUP}/{name} created in {ns}", file=sys.stderr)
    if not args.wait:
        return EXIT_OK
    return _wait_and_print(api, store, ns, name, args.format, args.timeout)


def _upload(path: Path, store) -> tuple[dict, Audio | None]:
    """The file into the object store in parts when it is larger than
    KUBESCRIBE_STREAM_UPLOAD_BYTES and the install has one (read in chunks, hashed as
    read: memory stays at a few parts whatever the size), else whole into Redis.
    Returns ``spec.audio`` and the object written, if any."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
    if store.objects is not None and size > CliSettings().stream_upload_bytes:
        try:
            audio = upload_file(store.objects, path)  # an ObjectStoreError is main()'s to report
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
        return {"s3": {"bucket": audio.bucket, "key": audio.key}, "sha256": audio.sha256}, audio
    data = read_audio(path)
    try:
        key = store.put_audio(data)
    except StoreError as exc:
        raise CliError(f"upload failed: {exc}", EXIT_TRANSIENT) from None
    except ValueError as exc:
        raise CliError(f"{path}: {exc}", EXIT_USAGE) from None
    return {"redisKey": key, "sha256": key.rsplit(":", 1)[1]}, None


def bar_line(status: dict, width: int = 30) -> str:
    """The ``--wait`` status line: phase, and a bar of ``status.progress`` once the
    operator has reported some (it does every 10 s on long audio)."""
    phase = status.get("phase") or "Pending"
    percent = status.get("progress")
    if percent is None:
        position = status.get("queuePosition")
        return f"{phase}" + (f" (queue position {position})" if phase == "Queued" and position else "")
    percent = max(0, min(100, int(percent)))
    return f"[{'#' * (percent * width // 100):<{width}}] {percent:3d}%  {phase}"


class StatusBar:
    """``--wait``'s one-line bar on stderr; silent when stderr is not a terminal (logs and
    pipes get the transcript and nothing else)."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._last = ""

    def show(self, status: dict) -> None:
        line = bar_line(status)
        if self.enabled and line != self._last:
            sys.stderr.write("\r" + line.ljust(len(self._last)))
            sys.stderr.flush()
            self._last = line

    def finish(self) -> None:
        if self.enabled and self._last:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _wait_and_print(api, store, ns: str, name: str, fmt: str, timeout: float) -> int:
    bar = StatusBar()
    try:
        obj = _wait(api, ns, name, timeout, bar)
    finally:
        bar.finish()
    if obj is None:
        return EXIT_FAILED
    return _print_result(store, obj, fmt)


def _wait(api, ns: str, name: str, timeout: float, bar: StatusBar) -> dict | None:
    from kubernetes import watch

    deadline = time.monotonic() + timeout
    obj = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    bar.show(obj.get("status") or {})
    while (obj.get("status") or {}).get("phase") not in TERMINAL_PHASES:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            bar.finish()
            print(f"kubescribe: {name} not finished after {timeout:.0f}s "
                  f"(phase {(obj.get('status') or {}).get('phase')})", file=sys.stderr)
            return None
        w = watch.Watch()
        for ev in w.stream(api.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL,
                           field_selector=f"metadata.name={name}",
                           resource_version=obj["metadata"]["resourceVersion"],
                           timeout_seconds=max(1, int(min(remaining, 60)))):
            obj = ev["object"]
            bar.show(obj.get("status") or {})
            if (obj.get("status") or {}).get("phase") in TERMINAL_PHASES:
                w.stop()
                break
        else:
            obj = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    return obj


def _print_result(store, obj: dict, fmt: str) -> int:
    status = obj.get("status") or {}
    name = obj["metadata"]["name"]
    if status.get("phase") != "Succeeded":
        print(f"kubescribe: {name} is {status.get('phase') or 'Pending'}: "
              f"{status.get('reason') or ''} {status.get('message') or ''}".rstrip(), file=sys.stderr)
        return EXIT_FAILED
    if not status.get("resultKey"):
        print(f"kubescribe: {name} succeeded but names no result key", file=sys.stderr)
        return EXIT_FAILED
    result = store.read_result_key(status["resultKey"])
    if result is None:
        print(f"kubescribe: {gone_message(name, store)} ({status['resultKey']})", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(render(result, fmt))
    return EXIT_OK


def cmd_result(args) -> int:
    store = open_cli_store(args)
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


def cmd_history(args) -> int:
    if args.all_namespaces and args.namespace:
        raise CliError("--namespace and --all-namespaces exclude each other", EXIT_USAGE)
    if args.older_than:
        try:
            parse_age(args.older_than)  # a usage error before any cluster call
        except ValueError as exc:
            raise CliError(f"--older-than: {exc}", EXIT_USAGE) from None
    api = _custom_api(args)
    return cmd_history_clear(args, api, "" if args.all_namespaces else _namespace(args))

def _read_request(api, ns: str, name: str) -> dict:
    from kubernetes.client.exceptions import ApiException

    try:
        return api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            raise CliError(f"no TranscriptionRequest {name} in {ns}", EXIT_FAILED) from None
        raise


def cmd_analyze(args) -> int:
    """The analysis of a finished request (word count, speaking rate, speech/silence,
    language, frequent words), computed once and kept in Redis for 7 days: the same
    function and cache entry as the gateway's ``/v1/transcriptions/{name}/analysis``."""
    import json

    store = open_cli_store(args)
    api = _custom_api(args)
    ns = _namespace(args)
    obj = _read_request(api, ns, args.name)
    status = obj.get("status") or {}
    if status.get("phase") != "Succeeded":
        raise CliError(f"{args.name} is {status.get('phase') or 'Pending'}: only a finished transcription "
                       "can be analysed", EXIT_FAILED)
    got = store.analysis(status["resultKey"])
    if got is None:
        raise CliError(f"{gone_message(args.name, store)} ({status['resultKey']})", EXIT_FAILED)
    doc, cached = got
    if args.format == "json":
        sys.stdout.write(json.dumps({"name": args.name, **doc, "cached": cached}, indent=2) + "\n")
        return EXIT_OK
    top = ", ".join(f"{w['word']} ({w['count']})" for w in doc["top_words"]) or "-"
    sys.stdout.write(
        f"words            {doc['word_count']}\n"
        f"duration         {doc['duration_seconds']:.1f} s (speech {doc['speech_seconds']:.1f} s, "
        f"silence {doc['silence_seconds']:.1f} s, speech ratio {doc['speech_ratio']:.0%})\n"
        f"speaking rate    {doc['speaking_rate_wpm']:.0f} words/min of speech\n"
        f"language         {doc['language'] or '-'}\n"
        f"frequent words   {top}\n")
    return EXIT_OK
