"""spec.audio.url may not reach the runner pod's loopback, cloud metadata or the API server.

The decision (:func:`refusal`) is tested as a pure function. The download path is tested
for real against HTTP(S) servers on 127.0.0.1. A fixture makes every test here fail if
it opens a socket to anything but 127.0.0.0/8 or resolves a name other than localhost:
refused addresses (169.254.169.254, ...) are only ever decided about, never contacted.
"""

from __future__ import annotations

import http.server
import ipaddress
import socket
import ssl
import threading

import pytest
from pydantic import ValidationError

from kubescribe.models import parse_spec
from kubescribe.runner.fetch import _download, fetch_audio
from kubescribe.runner.task import TaskError
from kubescribe.url_guard import (
    ALLOW_SETTING,
    MAX_REDIRECTS,
    URLRefused,
    UrlGuard,
    api_server_addresses,
    parse_networks,
    refusal,
)
from kubescribe.settings import AudioUrlSettings, OperatorSettings, RunnerSettings

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
AUDIO = b"RIFF" + b"\x00" * 1000
#: Names the tests may resolve through the system resolver (/etc/hosts, no DNS query),
#: besides IP addresses; getaddrinfo parses these numeric hosts without a lookup too.
RESOLVABLE = {"localhost", "127.0.0.1", "2130706433"}


# --------------------------------------------------------------------------- fences


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """No socket to anything but 127.0.0.0/8; no name lookups beyond localhost."""
    real_connect, real_connect_ex, real_getaddrinfo = (socket.socket.connect, socket.socket.connect_ex,
                                                       socket.getaddrinfo)
    contacted: list[str] = []

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = ipaddress.ip_address(str(address[0]).split("%")[0])
            contacted.append(str(host))
            assert host in LOOPBACK, f"test opened a socket to {address}"

    def connect(sock, address):
        check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        check(sock, address)
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        assert host in RESOLVABLE or _is_ip(host), f"test resolved {host!r}"
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    # Settings from this test only: not the allow-list or API server of the machine.
    monkeypatch.delenv(ALLOW_SETTING, raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return contacted


def _is_ip(host) -> bool:
    try:
        ipaddress.ip_address(str(host).split("%")[0])
        return True
    except ValueError:
        return False


class AudioServer:
    """HTTP(S) on 127.0.0.1: /audio.wav, /to?url=<absolute URL> (302), /hops/<n> (n more
    redirects, then the audio). Records each request's path and Host header."""

    def __init__(self, tls: dict | None = None):
        self.requests: list[tuple[str, str]] = []
        self.sni: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Host", "")))
                if self.path == "/audio.wav":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(AUDIO)))
                    self.end_headers()
                    self.wfile.write(AUDIO)
                elif self.path.startswith("/to?url="):
                    self._redirect(self.path[len("/to?url="):])
                elif self.path.startswith("/hops/"):
                    n = int(self.path.rsplit("/", 1)[1])
                    self._redirect(f"/hops/{n - 1}" if n > 0 else "/audio.wav")
                else:
                    self.send_error(404)

            def _redirect(self, location):
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(tls["cert"], tls["key"])
            ctx.sni_callback = lambda sslsock, name, _ctx: self.sni.append(name)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str = "/audio.wav", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = AudioServer()
    yield s
    s.close()


def fetch(url: str):
    """The runner's real path: spec -> fetch_audio -> guard from the environment."""
    with fetch_audio(None, parse_spec({"audio": {"url": url}, "device": "cpu"})) as audio:
        return audio.file.read()


def refused(url: str, *, allowable: bool = True) -> TaskError:
    """The final AudioURLForbidden error; ``allowable``: it names the setting that would
    allow the address (not so for a forbidden scheme, which no setting allows)."""
    with pytest.raises(TaskError) as err:
        fetch(url)
    assert err.value.reason == "AudioURLForbidden", err.value.message
    assert err.value.final and err.value.error_type == "invalid_spec"
    assert (ALLOW_SETTING in err.value.message) == allowable, err.value.message
    return err.value


# --------------------------------------------------------------------------- the decision


@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1", "loopback"),
    ("127.254.3.4", "loopback"),
    ("::1", "loopback"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.10.20", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "cloud metadata"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("64:ff9b::a9fe:a9fe", "cloud metadata"),  # NAT64 form of 169.254.169.254
    ("fd00:ec2::254", "cloud metadata"),  # AWS IMDS over IPv6, inside the private fd00::/8
    ("100.100.100.200", "cloud metadata"),  # Alibaba Cloud
])
def test_refused_by_default(address, why):
    reason = refusal([address])
    assert reason is not None and reason.startswith(address) and why in reason, reason


@pytest.mark.parametrize("address", [
    "10.0.0.1", "10.96.0.10", "172.16.5.4", "172.31.255.254", "192.168.1.10",  # pods, Services, LANs
    "fd12:3456::1", "100.64.0.1",  # private IPv6, carrier-grade NAT
    "93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c",  # public
    "::ffff:10.0.0.1",
])
def test_private_and_public_addresses_are_allowed(address):
    assert refusal([address]) is None


def test_every_address_of_a_name_must_pass():
    assert refusal(["93.184.215.14", "10.0.0.1"]) is None
    for addresses in (["93.184.215.14", "127.0.0.1"], ["127.0.0.1", "93.184.215.14"],
                      ["2606:2800:21f:cb07:6820:80da:af6b:8b2c", "::ffff:169.254.169.254"]):
        reason = refusal(addresses)
        assert reason is not None and addresses[0 if "127" in addresses[0] else 1] in reason, reason


def test_the_api_server_is_refused_in_every_form():
    api = ["10.96.0.1", "fd00:10:96::1"]
    for address in ("10.96.0.1", "::ffff:10.96.0.1", "fd00:10:96::1"):
        reason = refusal([address], api_server_addresses=api)
        assert reason is not None and "Kubernetes API server" in reason, address
    assert refusal(["10.96.0.2"], api_server_addresses=api) is None


def test_nothing_or_garbage_is_refused():
    assert refusal([]) is not None
    assert "not an IP address" in refusal(["example.com"])


def test_the_allow_list_opens_refused_ranges_and_nothing_more():
    allow = parse_networks("127.0.0.0/8, 169.254.169.254/32")
    assert refusal(["127.0.0.1"], allow=allow) is None
    assert refusal(["::ffff:127.0.0.1"], allow=allow) is None
    assert refusal(["169.254.169.254"], allow=allow) is None
    assert refusal(["::ffff:169.254.169.254"], allow=allow) is None
    assert "loopback" in refusal(["::1"], allow=allow)
    assert "link-local" in refusal(["169.254.169.253"], allow=allow)
    assert "loopback" in refusal(["10.0.0.1", "127.0.0.1", "::1"], allow=allow)
    # It wins over the API server check too (a lab that must reach it on purpose).
    assert refusal(["10.96.0.1"], allow=parse_networks(["10.96.0.1"]), api_server_addresses=["10.96.0.1"]) is None
    assert refusal(["fe80::1%eth0"], allow=parse_networks("fe80::/10")) is None


def test_the_allow_list_setting(monkeypatch):
    assert AudioUrlSettings().audio_url_allow_cidrs == ""
    monkeypatch.setenv(ALLOW_SETTING, " 127.0.0.1/8 ,fd00::1, ")
    for settings in (AudioUrlSettings(), RunnerSettings(), OperatorSettings()):
        assert settings.audio_url_allow_cidrs == "127.0.0.0/8,fd00::1/128"
    guard = UrlGuard.from_settings(AudioUrlSettings())
    assert guard.allow == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("fd00::1/128"))
    monkeypatch.setenv(ALLOW_SETTING, "127.0.0.0/8,localhost")
    with pytest.raises(ValidationError, match="'localhost' is not an IP range"):
        OperatorSettings()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.delenv(ALLOW_SETTING)
    assert UrlGuard.from_settings(RunnerSettings()).service_host == "10.96.0.1"


def test_api_server_addresses_come_from_the_environment_and_kubernetes_default_svc():
    looked_up = []

    def resolver(name, port):
        looked_up.append(name)
        if name == "kubernetes.default.svc":
            return ["10.96.0.1", "fd00:10:96::1"]
        return [name]

    assert api_server_addresses(None, resolver) == frozenset() and not looked_up  # not in a cluster
    assert api_server_addresses("10.96.0.1", resolver) == {"10.96.0.1", "fd00:10:96::1"}
    assert looked_up == ["10.96.0.1", "kubernetes.default.svc"]

    def unresolvable(name, port):
        if name == "kubernetes.default.svc":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [name]

    assert api_server_addresses("10.43.0.1", unresolvable) == {"10.43.0.1"}
    guard = UrlGuard(service_host="10.96.0.1", resolver=resolver)
    with pytest.raises(URLRefused, match="10.96.0.1 is the Kubernetes API server"):
        guard.check("kubernetes.default.svc", 443)


def test_a_name_is_checked_by_what_it_resolves_to_without_connecting(loopback_only):
    guard = UrlGuard(resolver=lambda host, port: ["93.184.215.14", "169.254.169.254"])
    with pytest.raises(URLRefused) as err:
        guard.check("metadata.example", 80)
    msg = err.value.message
    assert "metadata.example resolves to 93.184.215.14, 169.254.169.254" in msg
    assert "169.254.169.254 is the cloud metadata service" in msg and ALLOW_SETTING in msg
    assert loopback_only == []


# --------------------------------------------------------------------------- real downloads


def test_a_loopback_server_is_refused_by_default(server):
    err = refused(server.url())
    assert f"refused to connect to 127.0.0.1:{server.port}: 127.0.0.1 is loopback" in err.message
    assert server.requests == []


def test_localhost_is_refused_through_name_resolution(server, loopback_only):
    err = refused(server.url(host="localhost"))
    assert "localhost resolves to" in err.message and "loopback" in err.message
    with pytest.raises(URLRefused, match="localhost resolves to"):
        UrlGuard().check("localhost", server.port)
    assert server.requests == [] and loopback_only == []


def test_numeric_spellings_of_loopback_are_refused(server):
    err = refused(server.url(host="2130706433"))  # 127.0.0.1 as one number
    assert "resolves to 127.0.0.1" in err.message
    assert server.requests == []


def test_the_allow_list_lets_a_loopback_server_through(server, monkeypatch):
    monkeypatch.setenv(ALLOW_SETTING, "127.0.0.0/8")
    assert fetch(server.url()) == AUDIO
    assert server.requests == [("/audio.wav", f"127.0.0.1:{server.port}")]
    # Redirects between allowed places are followed, up to the bound.
    assert fetch(server.url(f"/hops/{MAX_REDIRECTS - 1}")) == AUDIO
    with pytest.raises(TaskError) as err:
        fetch(server.url(f"/hops/{MAX_REDIRECTS}"))
    assert err.value.reason == "AudioDownloadFailed" and err.value.final
    assert f"more than {MAX_REDIRECTS} redirects" in err.value.message


@pytest.mark.parametrize(("target", "why"), [
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "cloud metadata"),
    ("http://[::ffff:169.254.169.254]/computeMetadata/v1/", "cloud metadata"),
    ("http://[::1]:{port}/audio.wav", "loopback"),
    ("http://0.0.0.0:{port}/audio.wav", "unspecified"),
    ("file:///etc/passwd", "only http and https"),
    ("ftp://127.0.0.1/audio.wav", "only http and https"),
])
def test_a_redirect_from_an_allowed_server_to_a_refused_place_is_refused(server, monkeypatch, target, why):
    monkeypatch.setenv(ALLOW_SETTING, "127.0.0.0/8")
    target = target.format(port=server.port)
    err = refused(server.url(f"/to?url={target}"), allowable="only http" not in why)
    assert f"(redirected to {target})" in err.message and why in err.message, err.message
    assert [p for p, _ in server.requests] == [f"/to?url={target}"]


def test_the_connection_goes_to_the_checked_address(server):
    """DNS rebinding: a name checked as 127.0.0.1 that would resolve to the metadata
    address a moment later. The name is resolved once per connection and the socket
    goes to the address that was checked; the Host header keeps the name."""
    answers = iter([["127.0.0.1"], ["169.254.169.254"]])
    calls = []

    def rebinding(host, port):
        calls.append(host)
        return next(answers)

    guard = UrlGuard(allow=parse_networks("127.0.0.0/8"), resolver=rebinding)
    assert _download(f"http://audio.rebind.example:{server.port}/audio.wav", 1 << 20, guard) == AUDIO
    assert calls == ["audio.rebind.example"]
    assert server.requests == [("/audio.wav", f"audio.rebind.example:{server.port}")]
    with pytest.raises(TaskError) as err:  # the next connection sees the new answer
        _download(f"http://audio.rebind.example:{server.port}/audio.wav", 1 << 20, guard)
    assert err.value.reason == "AudioURLForbidden" and "169.254.169.254" in err.value.message


def test_https_keeps_the_name_for_sni_and_the_certificate(tmp_path, monkeypatch):
    from harness.certs import make_tls_certs

    certs = make_tls_certs(tmp_path)  # a certificate for localhost and 127.0.0.1
    monkeypatch.setenv("SSL_CERT_FILE", str(certs["ca"]))
    tls = AudioServer(tls=certs)
    try:
        guard = UrlGuard(allow=parse_networks("127.0.0.0/8"), resolver=lambda host, port: ["127.0.0.1"])
        assert _download(tls.url(host="localhost"), 1 << 20, guard) == AUDIO
        assert tls.sni == ["localhost"]
        assert tls.requests == [("/audio.wav", f"localhost:{tls.port}")]
        err = refused(tls.url(host="localhost"))  # and without the allow-list, refused
        assert "loopback" in err.message and len(tls.requests) == 1
    finally:
        tls.close()


def test_proxies_from_the_environment_are_not_used(server, monkeypatch):
    """A proxy would fetch the URL from its own network position, past the check."""
    monkeypatch.setenv(ALLOW_SETTING, "127.0.0.0/8")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9/")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9/")
    assert fetch(server.url()) == AUDIO
