"""The result cache's answer for one request: the I/O half of ``intake``'s cache decision,
asked by the request handler when a request is first seen and by the admitter when an
identical request may have finished while this one waited.
"""

from __future__ import annotations

import logging

from kubescribe.models import TranscriptionSpec
from kubescribe.objectstore import ObjectStoreError
from kubescribe.cache_layout import Owner
from kubescribe.store import Store, StoreError

from .intake import NOT_ASKED, CacheAnswer, answers_from_cache

log = logging.getLogger("kubescribe.operator")


def cache_answer(store: Store, key: str | None, spec: TranscriptionSpec, body: dict) -> CacheAnswer:
    """The cache's answer for ``body``'s request; a hit takes the request's reference
    to the result in the object store (kubescribe.objectstore). Not counted here: the
    lookup is counted once, by the transition its answer leads to (``Applier.count``)."""
    if not key or not spec.cache.enabled or not answers_from_cache(spec):
        return NOT_ASKED
    meta = body["metadata"]
    owner = Owner(meta["uid"], f"{meta.get('namespace')}/{meta.get('name')}")
    try:
        hit = store.get_result(key, count=False, owner=owner)
    except StoreError as exc:
        return CacheAnswer("unreachable", error=str(exc))
    except ObjectStoreError as exc:
        # Redis answered and missed; only the bucket is down. A runner looks again and
        # keeps retrying (ObjectStoreUnavailable) until it can read or store the
        # result, which is where the request should wait: Running, with its Job.
        log.warning("cache lookup of %s/%s: the object store did not answer (%s); treated as a miss",
                    meta.get("namespace"), meta.get("name"), exc.message)
        return CacheAnswer("miss")
    return CacheAnswer("miss") if hit is None else CacheAnswer("hit", result=hit)
