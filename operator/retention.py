"""What the operator does for the object store: a deleted request gives up its transcript.

Results are kept in the object store while a request that uses them exists
(kubescribe.objectstore has the layout). Runners and cache hits take a request's
reference; the operator drops it when the request is deleted (by hand, by its TTL, by
``kubescribe history clear``), and the last reference out deletes the result. A deletion
missed while the operator was down, or one whose object store call failed, is found by
the sweep: references whose request no longer exists are released on a later resync.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection

from kubescribe.objectstore import ObjectStoreError
from kubescribe.store import Store, StoreError

log = logging.getLogger("kubescribe.operator")

#: A reference younger than this is never swept: its request may have been created after
#: the LIST the sweep compares against.
SWEEP_MIN_AGE_SECONDS = 600.0


def uploaded_audio(body: dict, objects) -> str | None:
    """The key of the audio upload a request owns: ``spec.audio.s3`` in the install's bucket
    under its ``uploads/`` prefix, where only the gateway and the CLI write, one object per
    upload. Audio a user keeps in a bucket of their own is never deleted."""
    s3 = ((body.get("spec") or {}).get("audio") or {}).get("s3") or {}
    key = s3.get("key") or ""
    if objects is not None and s3.get("bucket") == objects.bucket and key.startswith(objects.prefix + "uploads/"):
        return key
    return None


class Retention:
    """Releases the results of deleted requests.

    Args:
        store: the store, with its object store (without one, nothing is kept or released).
        sweep_seconds: least time between two sweeps for orphaned references; a sweep
            lists every reference of the install, so it runs far less often than the resync.
        clock: time source (tests pass their own).
        upload_max_age: an upload no request names is deleted by the sweep once this
            old, and an unfinished multipart upload under ``uploads/`` is aborted.
    """

    def __init__(self, store: Store, sweep_seconds: float = 3600.0, clock: Callable[[], float] = time.time,
                 upload_max_age: float = 86400.0):
        self.store = store
        self.sweep_seconds = sweep_seconds
        self.upload_max_age = upload_max_age
        self.clock = clock
        self._last_sweep = 0.0
        self._lock = threading.Lock()
        self.released = 0  # results deleted so far (tests and logs)
        self.uploads_deleted = 0  # stale uploads deleted or aborted so far

    @property
    def enabled(self) -> bool:
        return self.store.objects is not None

    def on_deleted(self, body: dict) -> None:
        """A request is gone: drop its reference to its result, and delete the audio it
        uploaded (the gateway's and the CLI's uploads, under ``<prefix>uploads/``: no other
        request names them)."""
        if not self.enabled:
            return
        meta = body["metadata"]
        name = f"{meta.get('namespace')}/{meta.get('name')}"
        key = (body.get("status") or {}).get("cacheKey")
        if key:
            self._release(key, meta["uid"], name)
        upload = uploaded_audio(body, self.store.objects)
        if upload:
            try:
                self.store.objects.delete([upload])
            except ObjectStoreError as exc:
                log.warning("upload %s of deleted %s not deleted: %s", upload, name, exc)

    def _release(self, key: str, uid: str, name: str) -> None:
        try:
            if self.store.release(key, uid):
                self.released += 1
                log.info("deleted the result %s: %s was its last request", key, name)
        except (ObjectStoreError, StoreError) as exc:
            log.warning("result %s of deleted %s not released (the sweep retries): %s", key, name, exc)

    def _sweep_uploads(self, named: set[str]) -> None:
        objects = self.store.objects
        prefix = objects.prefix + "uploads/"
        cutoff = self.clock() - self.upload_max_age
        stale = [key for key, modified in objects.listing(prefix) if key not in named and modified < cutoff]
        if stale:
            objects.delete(stale)
            log.info("sweep: deleted %d upload(s) no request named for %.0f s", len(stale), self.upload_max_age)
        aborted = objects.abort_unfinished(prefix, cutoff)
        if aborted:
            log.info("sweep: aborted %d unfinished multipart upload(s)", aborted)
        self.uploads_deleted += len(stale) + aborted

    def sweep_due(self) -> bool:
        return self.enabled and self.clock() - self._last_sweep >= self.sweep_seconds

    def sweep(self, live_uids: Collection[str], named_uploads: Collection[str] = ()) -> int:
        """Release every reference older than SWEEP_MIN_AGE_SECONDS whose request is not in
        ``live_uids`` (the uids of a complete LIST of requests), and delete the uploads
        older than ``upload_max_age`` that are not in ``named_uploads`` (the upload keys
        the same LIST's requests name; :func:`uploaded_audio`). Returns how many
        references were released."""
        if not self._lock.acquire(blocking=False):
            return 0
        try:
            self._last_sweep = self.clock()
            objects = self.store.objects
            if objects is None:
                return 0
            cutoff = self.clock() - SWEEP_MIN_AGE_SECONDS
            orphans = [(key, uid) for key, uid, modified in objects.all_refs()
                       if uid not in live_uids and modified < cutoff]
            for key, uid in orphans:
                self._release(key, uid, f"request {uid}")
            if orphans:
                log.info("sweep: released %d reference(s) of deleted requests", len(orphans))
            self._sweep_uploads(set(named_uploads))
            return len(orphans)
        except (ObjectStoreError, StoreError) as exc:
            log.warning("sweep of the object store's references failed: %s", exc)
            return 0
        finally:
            self._lock.release()
