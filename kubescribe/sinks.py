"""Notification sinks, what the operator and the gateway both decide about them: whether
a sink's URL may be used (the audio URL guard's rule, decided from the URL alone), and
the signing key of a gateway caller's ``callback_url``.

A caller's key is derived from the install's key (``KUBESCRIBE_NOTIFY_SIGNING_KEY``)
and the caller's identity: HMAC-SHA256(install key, identity), as a Standard Webhooks
``whsec_`` key. The gateway tells each authenticated caller its own key, and the
operator derives the same one when it signs, so no key is stored per caller, a caller
can verify only its own callbacks, and none learns the install's key (which the
install-wide sinks verify with).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import urlsplit

from .url_guard import ALLOW_SETTING, IPNetwork, refusal

#: Names that are loopback without asking a resolver (RFC 6761).
_LOCAL_NAMES = ("localhost", "localhost.")


def sink_refusal(url: str, allow: Iterable[IPNetwork] = ()) -> str | None:
    """Why kubescribe will not deliver to ``url``, decided from the URL alone; None if
    it may try (a host name is resolved and checked again when the POST connects).

    Refused: another scheme, and a destination the audio URL guard refuses that the URL
    names itself: a literal address (loopback, link-local, metadata, ...) or localhost.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http(s) URL"
    host = parts.hostname
    address = "127.0.0.1" if host.lower() in _LOCAL_NAMES or host.lower().endswith(".localhost") else host
    try:
        why = refusal([address], allow=allow)
    except ValueError:
        return None
    if why is None or why.endswith("is not an IP address"):
        return None
    return f"{url} is refused: {why}; {ALLOW_SETTING} on the operator can allow its range"


def caller_key(install_key: str, caller: str) -> str:
    """The Standard Webhooks key of one gateway caller's callbacks (see the module)."""
    if not install_key:
        raise ValueError("no install-wide signing key (KUBESCRIBE_NOTIFY_SIGNING_KEY, chart value "
                         "notifications.signingSecret)")
    digest = hmac.new(install_key.encode(), caller.encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(digest).decode()
