"""Where the runner may download ``spec.audio.url`` from, and where the operator may
deliver a notification (``spec.notify[].url``, the install-wide sinks): one guard for both.

Anyone who may create a TranscriptionRequest chooses that URL, and the runner fetches it
from inside the cluster. Without a check, a request could make the runner read the cloud
metadata service (169.254.169.254: node credentials), services listening on the pod's
own loopback, or the Kubernetes API server, and hand the answer back as "audio" errors.

So the runner refuses, by default, every destination address that is:

* loopback (127.0.0.0/8, ::1), unspecified (0.0.0.0/8, ::: Linux connects 0.0.0.0 to
  the local host), link-local (169.254.0.0/16, fe80::/10: cloud metadata lives there),
  multicast and broadcast;
* a known cloud metadata address outside those ranges (fd00:ec2::254, 100.100.100.200);
* the Kubernetes API server (``KUBERNETES_SERVICE_HOST`` and what
  ``kubernetes.default.svc`` resolves to);
* any of those written as an IPv4-mapped (::ffff:a.b.c.d) or NAT64 (64:ff9b::a.b.c.d)
  IPv6 address.

Private ranges (10/8, 172.16/12, 192.168/16, fc00::/7) stay allowed: an in-cluster HTTP
server (a pod or Service IP) is the normal place to serve audio from. The allow-list
``KUBESCRIBE_AUDIO_URL_ALLOW_CIDRS`` opens chosen ranges, refused ones included.

The check happens when the connection is made, not on the URL text: the host name is
resolved once, every address it resolves to must pass, and the socket is connected to
one of those checked addresses (the Host header, TLS SNI and certificate check keep the
name). A DNS answer that changes between check and use (rebinding) therefore cannot
slip through, and neither can a redirect: each hop opens a connection of its own,
checked the same way. At most :data:`MAX_REDIRECTS` redirects are followed, only to
http and https. Proxies from the environment are not used (a proxy would fetch the
URL from its own network position, where this check cannot see).

:func:`refusal` is the decision, a pure function; :class:`UrlGuard` applies it to
connections; :func:`open_url` fetches a URL through it.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import socket
import sys
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Union
from urllib.parse import urljoin, urlsplit

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: The setting (and chart value) that allows refused ranges; named in every refusal.
ALLOW_SETTING = "KUBESCRIBE_AUDIO_URL_ALLOW_CIDRS"
ALLOW_CHART_VALUE = "runner.audioUrlAllowCidrs"
#: The name of the API server's Service, from any namespace (resolv.conf search list).
API_SERVER_NAME = "kubernetes.default.svc"
#: Redirects followed per download; audio hosts redirect once or twice (to a CDN).
MAX_REDIRECTS = 5
SCHEMES = ("http", "https")

_n = ipaddress.ip_network
#: Refused destinations, most specific first: the first match explains the refusal.
REFUSED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = (
    (_n("169.254.169.254/32"), "the cloud metadata service (link-local)"),
    (_n("fd00:ec2::254/128"), "the cloud metadata service (AWS, IPv6)"),
    (_n("100.100.100.200/32"), "the cloud metadata service (Alibaba Cloud)"),
    (_n("127.0.0.0/8"), "loopback (a service of the runner pod itself)"),
    (_n("::1/128"), "loopback (a service of the runner pod itself)"),
    (_n("0.0.0.0/8"), "unspecified (0.0.0.0 reaches the runner pod itself)"),
    (_n("::/128"), "unspecified (:: reaches the runner pod itself)"),
    (_n("169.254.0.0/16"), "link-local (where cloud metadata services live)"),
    (_n("fe80::/10"), "link-local"),
    (_n("224.0.0.0/4"), "multicast"),
    (_n("ff00::/8"), "multicast"),
    (_n("255.255.255.255/32"), "broadcast"),
)
_NAT64 = _n("64:ff9b::/96")


class URLRefused(Exception):
    """The guard will not connect there. Not an OSError: urllib must not wrap it as a
    network failure, which would be retried."""

    def __init__(self, message: str, *, url: str | None = None):
        super().__init__(message)
        self.message = message
        #: The URL whose connection was refused (a redirect target, perhaps).
        self.url = url


class TooManyRedirects(Exception):
    """More than :data:`MAX_REDIRECTS` redirects."""

def parse_networks(cidrs: Iterable[str] | str) -> tuple[IPNetwork, ...]:
    """``"10.0.0.0/8, fd00::/8"`` or a list of CIDRs as networks (a bare address is a /32
    or /128; host bits are ignored)."""
    if isinstance(cidrs, str):
        cidrs = cidrs.split(",")
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip())


def _address(value: str | IPAddress) -> IPAddress:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    return ipaddress.ip_address(str(value).split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)


def _forms(ip: IPAddress) -> list[IPAddress]:
    """The address and the IPv4 address it stands for, if it is an IPv4-mapped or NAT64
    IPv6 address (the kernel or a NAT64 gateway connects to that IPv4 address)."""
    forms: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            forms.append(ip.ipv4_mapped)
        elif ip in _NAT64:
            forms.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return forms


def refusal(
    host_addresses: Iterable[str | IPAddress],
    *,
    allow: Iterable[IPNetwork] = (),
    api_server_addresses: Iterable[str | IPAddress] = (),
) -> str | None:
    """Why the runner must not connect to a host with these addresses, or None if it may.

    Every address must pass (a name with one public and one loopback address is refused).
    An address inside an ``allow`` network passes whatever else it is. Pure: no sockets,
    no name resolution.
    """
    allow = tuple(allow)
    api = set()
    for a in api_server_addresses:
        try:
            api.update(_forms(_address(a)))
        except ValueError:
            continue
    if not (addresses := list(host_addresses)):
        return "the host resolves to no address"
    for raw in addresses:
        try:
            ip = _address(raw)
        except ValueError:
            return f"{raw!r} is not an IP address"
        forms = _forms(ip)
        if any(f in net for f in forms for net in allow):
            continue
        shown = str(raw) if len(forms) == 1 else f"{raw} (IPv4 {forms[1]})"
        if any(f in api for f in forms):
            return f"{shown} is the Kubernetes API server"
        for f in forms:
            for net, why in REFUSED_NETWORKS:
                if f in net:
                    return f"{shown} is {why}"
    return None


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order, each once."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def api_server_addresses(service_host: str | None,
                         resolver: Callable[[str, int], list[str]] = resolve) -> frozenset[str]:
    """The API server's addresses as seen from a pod: ``KUBERNETES_SERVICE_HOST`` (which
    the kubelet sets in every container) and what ``kubernetes.default.svc`` resolves
    to. Outside a cluster (no KUBERNETES_SERVICE_HOST) there is none to protect, and the
    name is not looked up. A name that does not resolve is skipped."""
    if not service_host:
        return frozenset()
    found: set[str] = set()
    for name in (service_host, API_SERVER_NAME):
        try:
            found.update(resolver(name, 443))
        except (OSError, UnicodeError):
            continue
    return frozenset(found)


@dataclass
class UrlGuard:
    """Connects only to checked addresses.

    ``service_host`` is KUBERNETES_SERVICE_HOST; the API server's addresses are looked
    up on first use (only in a cluster). ``resolver`` is swappable for tests.
    """

    allow: tuple[IPNetwork, ...] = ()
    service_host: str | None = None
    resolver: Callable[[str, int], list[str]] = resolve
    #: What the refused URLs are, for the message: "Audio URLs", "Notification sinks".
    purpose: str = "Audio URLs"
    _api: frozenset[str] | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_settings(cls, settings, purpose: str = "Audio URLs") -> "UrlGuard":
        """From :class:`kubescribe.settings.AudioUrlSettings` (or RunnerSettings)."""
        return cls(allow=parse_networks(settings.audio_url_allow_cidrs),
                   service_host=settings.kubernetes_service_host, purpose=purpose)

    @property
    def api_server(self) -> frozenset[str]:
        if self._api is None:
            self._api = api_server_addresses(self.service_host, self.resolver)
        return self._api

    def check(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` once; return its addresses if all may be used, else raise
        :class:`URLRefused` saying which address, why, and what would allow it."""
        addresses = self.resolver(host, port)
        why = refusal(addresses, allow=self.allow, api_server_addresses=self.api_server)
        if why is not None:
            named = "" if _is_literal(host) else f"{host} resolves to {', '.join(addresses)}; "
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise URLRefused(
                f"refused to connect to {where}: {named}{why}. {self.purpose} may not point "
                f"there unless {ALLOW_SETTING} (chart value {ALLOW_CHART_VALUE}) has a range "
                "that contains the address")
        return addresses

    def connect(self, host: str, port: int, timeout, source_address=None) -> socket.socket:
        """A socket connected to a checked address of ``host`` (no second lookup)."""
        error: OSError | None = None
        for ip in self.check(host, port):
            try:
                return socket.create_connection((ip, port), timeout, source_address)
            except OSError as exc:
                error = exc
        raise error or OSError(f"could not connect to {host}:{port}")


def _is_literal(host: str) -> bool:
    try:
        return bool(_address(host))
    except ValueError:
        return False


class _GuardedHTTPConnection(http.client.HTTPConnection):
    """HTTPConnection whose socket goes to an address the guard checked."""

    guard: UrlGuard

    def connect(self) -> None:
        sys.audit("http.client.connect", self, self.host, self.port)
        self.sock = self.guard.connect(self.host, self.port, self.timeout, self.source_address)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class _GuardedHTTPSConnection(http.client.HTTPSConnection, _GuardedHTTPConnection):
    """HTTPSConnection.connect wraps the socket of _GuardedHTTPConnection.connect (next in
    the MRO) in TLS with ``server_hostname=self.host``: SNI and the certificate check use
    the URL's name, not the address."""


def _factory(cls, guard: UrlGuard, host: str, **kwargs):
    conn = cls(host, **kwargs)
    conn.guard = guard
    return conn


class _Refusing:
    def _open_guarded(self, cls, req, **kwargs):
        try:
            return self.do_open(functools.partial(_factory, cls, self.guard), req, **kwargs)
        except URLRefused as exc:
            exc.url = exc.url or req.full_url
            raise


class _HTTPHandler(_Refusing, urllib.request.HTTPHandler):
    def __init__(self, guard: UrlGuard):
        super().__init__()
        self.guard = guard

    def http_open(self, req):
        return self._open_guarded(_GuardedHTTPConnection, req)


class _HTTPSHandler(_Refusing, urllib.request.HTTPSHandler):
    def __init__(self, guard: UrlGuard):
        super().__init__()
        self.guard = guard

    def https_open(self, req):
        return self._open_guarded(_GuardedHTTPSConnection, req, context=self._context)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows at most MAX_REDIRECTS redirects, to http and https only; the new
    destination is checked when its connection is made, like the first."""

    # urllib's own loop detection stays as a backstop; the count below comes first.
    max_redirections = max_repeats = MAX_REDIRECTS + 1

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("location") or headers.get("uri")
        if location:
            newurl = urljoin(req.full_url, location.strip())
            scheme = urlsplit(newurl).scheme.lower()
            if scheme not in SCHEMES:
                fp.close()
                raise URLRefused(f"a redirect to {scheme}: is not followed (only http and https)",
                                 url=newurl)
            hops = getattr(req, "kubescribe_redirects", 0) + 1
            if hops > MAX_REDIRECTS:
                fp.close()
                raise TooManyRedirects(f"more than {MAX_REDIRECTS} redirects (the last to {newurl})")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.kubescribe_redirects = getattr(req, "kubescribe_redirects", 0) + 1
        return new


def opener(guard: UrlGuard, *, redirects: bool = True) -> urllib.request.OpenerDirector:
    """For http and https through ``guard``: no proxies, no other schemes; a 3xx is an
    HTTPError with ``redirects=False`` (a webhook is not re-posted elsewhere)."""
    director = urllib.request.OpenerDirector()
    for handler in [_HTTPHandler(guard), _HTTPSHandler(guard), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor(), urllib.request.UnknownHandler()] + (
                        [_RedirectHandler()] if redirects else []):
        director.add_handler(handler)
    return director


def open_url(url: str, guard: UrlGuard, *, timeout: float = 60, headers: dict[str, str] | None = None,
             data: bytes | None = None):
    """GET ``url`` through ``guard`` (POST ``data`` when given, without following
    redirects); the response as from ``urllib.request.urlopen``.

    Raises :class:`URLRefused` (a forbidden scheme or address, at any hop),
    :class:`TooManyRedirects`, ``urllib.error.HTTPError`` and ``OSError`` as urllib does.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise URLRefused(f"only http and https URLs are fetched, not {scheme or 'schemeless'} ones", url=url)
    req = urllib.request.Request(url, headers=headers or {}, data=data, method="POST" if data is not None else "GET")
    return opener(guard, redirects=data is None).open(req, timeout=timeout)
