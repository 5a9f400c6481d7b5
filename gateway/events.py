"""What ``GET /v1/transcriptions/{name}/events`` sends: the request's state as
``event: status`` on every change, one ``event: done`` with the terminal state, then the
end of the stream; ``event: error`` if the request is deleted meanwhile.

While the request waits (queued behind others, or a long transcription reporting no
progress) nothing changes for minutes, and a proxy between the client and the gateway
closes a connection idle for longer than its timeout (nginx and AWS load balancers: 60 s
by default). So a silence of KUBESCRIBE_GATEWAY_SSE_KEEPALIVE_SECONDS sends a comment
line, ``: keep-alive``, which SSE clients ignore (WHATWG HTML, server-sent events).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from kubescribe.models import TERMINAL_PHASES

from . import openai
from .kubeclient import KubeError
from .results import state_of
from .waiter import Subscription, newer

KEEP_ALIVE = b": keep-alive\n\n"


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


async def stream(sub: Subscription, first: dict[str, Any], *, keepalive: float,
                 deadline: float) -> AsyncIterator[bytes]:
    """The events of one request, starting with ``first`` (read after ``sub`` was
    subscribed, so no change falls between them), until it ends or ``deadline``
    (monotonic). Closes ``sub`` when done."""
    try:
        current, last = first, None
        while True:
            state = state_of(current)
            terminal = state["phase"] in TERMINAL_PHASES
            if state != last or terminal:
                last = state
                yield _event("done" if terminal else "status", state)
                if terminal:
                    return
            while True:  # the next version newer than the one sent; keep-alives meanwhile
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    obj = await sub.next(min(keepalive, remaining))
                except KubeError as exc:
                    body = openai.error_body(exc.message, "not_found_error" if exc.status == 404 else "server_error")
                    yield _event("error", body)
                    return
                if obj is None:
                    if time.monotonic() < deadline:
                        yield KEEP_ALIVE
                elif newer(obj, current):
                    current = obj
                    break
    finally:
        sub.close()
