"""Kubernetes API access with retries on throttling and transient server errors.

The API server answers 429 (with Retry-After) under load and 5xx during upgrades or
etcd leader changes; a kopf handler that gave up on the first one would leave a request
in the wrong phase until the next resync. Retries are bounded (about 15 s in all), so a
real outage still surfaces as an error and the periodic resync takes over.

Every call has a timeout (REQUEST_TIMEOUT: connect, then each read), which the kubernetes
client has none of by default: without it, a connection the API server never answers
(a dropped route, a proxy holding it open) blocks an operator thread for good.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

log = logging.getLogger(__name__)

RETRY_STATUSES = {409, 429, 500, 502, 503, 504}
MAX_ATTEMPTS = 6
MAX_DELAY = 5.0
#: (connect, read) seconds for one API call; a caller's own ``_request_timeout`` wins.
REQUEST_TIMEOUT = (5.0, 30.0)


def _retry_after(exc) -> float | None:
    """Seconds the server asked us to wait, or None.

    The kubernetes client (37.x) puts the urllib3 ``HTTPHeaderDict`` of the response on
    ``ApiException.headers``; other paths give a plain dict or a list of pairs, with the
    name in any case. The value is delta-seconds or an HTTP date (RFC 9110 10.2.3);
    anything else, or a negative delay, is ignored.
    """
    headers = getattr(exc, "headers", None)
    if not headers:
        return None
    try:
        items = headers.items() if hasattr(headers, "items") else headers
        value = next((v for k, v in items if str(k).lower() == "retry-after"), None)
    except (TypeError, ValueError, AttributeError):
        return None
    if value is None:
        return None
    value = str(value).strip()
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime
        from datetime import datetime, timezone

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return seconds


class Retrying:
    """Wraps a kubernetes client API object; every method call is retried.

    409 Conflict is retried only for updates and patches: on ``create_*`` it means
    AlreadyExists, which callers handle (a deterministic Job name found after a restart).
    """

    def __init__(self, api: Any, sleep=time.sleep):
        self._api = api
        self._sleep = sleep

    @property
    def api_client(self):
        return self._api.api_client

    def __getattr__(self, name: str):
        target = getattr(self._api, name)
        if not callable(target):
            return target

        def call(*args, **kwargs):
            import urllib3
            from kubernetes.client.exceptions import ApiException

            kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
            delay = 0.2
            for attempt in range(1, MAX_ATTEMPTS + 1):
                hinted = None
                try:
                    return target(*args, **kwargs)
                except ApiException as exc:
                    retryable = exc.status in RETRY_STATUSES and not (exc.status == 409 and name.startswith("create_"))
                    if not retryable or attempt == MAX_ATTEMPTS:
                        raise
                    hinted = _retry_after(exc)
                except (OSError, urllib3.exceptions.HTTPError) as exc:  # refused, reset, timed out
                    if attempt == MAX_ATTEMPTS:
                        raise
                    log.debug("%s: %s, retrying", name, type(exc).__name__)
                if hinted:
                    # The server said how long: wait that (never less), with a little
                    # jitter upwards so throttled clients do not return in lockstep.
                    wait = min(MAX_DELAY, hinted) * (1 + 0.2 * random.random())
                else:
                    wait = min(MAX_DELAY, delay) * (0.8 + 0.4 * random.random())
                log.info("%s: API server busy or failing (attempt %d), retrying in %.2fs", name, attempt, wait)
                self._sleep(wait)
                delay = min(MAX_DELAY, delay * 2)

        return call
