"""``kubescribe history clear``: delete finished TranscriptionRequests, the cluster's
"clear history".

Only requests that finished (Succeeded or Failed, and not edited since) are ever deleted;
a Pending, Queued or Running one is never touched, whatever the filters say. Their
transcripts stay in Redis under the cache TTL (``kubescribe cache clear`` empties that).
Every deletion carries the uid and resourceVersion that were listed, so a request that
changed between the listing and the deletion is left alone and reported.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone

from kubescribe import GROUP, PLURAL, VERSION
from kubescribe.models import Phase
from kubescribe.outcomes import EXIT_FAILED, EXIT_OK, EXIT_USAGE

from .common import CliError

#: --phase choices and the phases each one means.
PHASE_FILTERS = {
    "finished": (Phase.Succeeded.value, Phase.Failed.value),
    "succeeded": (Phase.Succeeded.value,),
    "failed": (Phase.Failed.value,),
}

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w`` or a combination (``1d12h``) in seconds;
    a bare number is seconds. Raises ValueError with what is accepted."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not an age: use a number with s, m, h, d or w (e.g. 30m, 12h, 7d, 1d12h)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass(frozen=True)
class Finished:
    """A request the listing found finished: what is shown, and what the deletion checks."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    phase: str
    completed_at: str
    age_seconds: float


def _age(stamp: str | None, now: datetime) -> float | None:
    try:
        t = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    return max(0.0, (now - t).total_seconds())


def select(items: list[dict], *, phases: tuple[str, ...], older_than: float, now: datetime) -> list[Finished]:
    """The requests ``history clear`` deletes, oldest first: in one of ``phases`` (only
    terminal ones are accepted), finished at least ``older_than`` seconds ago by
    ``status.completedAt``, with a status that describes their current spec, and not
    being deleted already. A finished request without a readable completion time is kept:
    its age is unknown."""
    terminal = {Phase.Succeeded.value, Phase.Failed.value}
    out = []
    for body in items:
        meta, status = body["metadata"], body.get("status") or {}
        phase = status.get("phase")
        if phase not in terminal or phase not in phases or meta.get("deletionTimestamp"):
            continue
        if status.get("observedGeneration") != meta.get("generation"):
            continue  # edited since it finished: it will run again
        age = _age(status.get("completedAt"), now)
        if age is None or age < older_than:
            continue
        out.append(Finished(meta["namespace"], meta["name"], meta["uid"], str(meta.get("resourceVersion") or ""),
                            phase, str(status["completedAt"]), age))
    return sorted(out, key=lambda f: (-f.age_seconds, f.namespace, f.name))


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def listing(found: list[Finished], all_namespaces: bool) -> str:
    rows = [("NAMESPACE", "NAME", "PHASE", "FINISHED") if all_namespaces else ("NAME", "PHASE", "FINISHED")]
    for f in found:
        row = (f.name, f.phase, f"{_human(f.age_seconds)} ago")
        rows.append((f.namespace, *row) if all_namespaces else row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows) + "\n"


def _confirm(prompt: str) -> bool:
    print(prompt, end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def cmd_history_clear(args, api, namespace: str) -> int:
    """List, confirm, delete. ``api`` is a CustomObjectsApi; ``namespace`` is ignored
    with ``--all-namespaces``."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        older = parse_age(args.older_than) if args.older_than else 0.0
    except ValueError as exc:
        raise CliError(f"--older-than: {exc}", EXIT_USAGE) from None
    if args.all_namespaces:
        items = api.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    else:
        items = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    found = select(items, phases=PHASE_FILTERS[args.phase], older_than=older, now=datetime.now(timezone.utc))
    where = "all namespaces" if args.all_namespaces else f"namespace {namespace}"
    if not found:
        print(f"no finished requests to delete in {where}", file=sys.stderr)
        return EXIT_OK
    sys.stdout.write(listing(found, args.all_namespaces))
    if args.dry_run:
        print(f"{len(found)} request(s) would be deleted from {where} (dry run: nothing deleted)", file=sys.stderr)
        return EXIT_OK
    if not args.yes and not _confirm(f"Delete these {len(found)} request(s) from {where}? [y/N] "):
        print("nothing deleted", file=sys.stderr)
        return EXIT_FAILED
    deleted, changed = 0, []
    for f in found:
        opts = client.V1DeleteOptions(preconditions=client.V1Preconditions(
            uid=f.uid, resource_version=f.resource_version or None))
        try:
            api.delete_namespaced_custom_object(GROUP, VERSION, f.namespace, PLURAL, f.name, body=opts)
            deleted += 1
        except ApiException as exc:
            if exc.status == 404:
                continue  # gone already (its TTL, or someone else): nothing to do
            if exc.status == 409:
                changed.append(f"{f.namespace}/{f.name}")
                continue
            raise
    print(f"deleted {deleted} request(s) from {where}", file=sys.stderr)
    if changed:
        print(f"kubescribe: {len(changed)} request(s) changed since they were listed and were kept: "
              f"{', '.join(changed[:10])}{' ...' if len(changed) > 10 else ''}; run it again", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
