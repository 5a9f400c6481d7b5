"""Retries of Kubernetes API calls: throttling, transient errors, and what is never retried.

A fake API object raises real ``ApiException``s built the way the installed client
builds them from a response; sleeping is injected, so nothing here waits.
"""

from __future__ import annotations

import json
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import RESTResponse

from kubescribe.operator.kubeapi import MAX_ATTEMPTS, MAX_DELAY, REQUEST_TIMEOUT, RETRY_STATUSES, Retrying, _retry_after

REASONS = {404: "NotFound", 409: "Conflict", 429: "TooManyRequests", 500: "InternalError",
           503: "ServiceUnavailable", 422: "Invalid", 403: "Forbidden", 400: "BadRequest"}


def http_response(status: int, headers: dict | None = None, body: dict | None = None) -> urllib3.HTTPResponse:
    doc = body or {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status,
                   "reason": REASONS.get(status, "Unknown"), "message": f"injected {status}"}
    data = json.dumps(doc).encode()
    return urllib3.HTTPResponse(body=data, status=status, reason=REASONS.get(status, ""), preload_content=True,
                                headers={"Content-Type": "application/json", **(headers or {})})


def api_exception(status: int, headers: dict | None = None) -> ApiException:
    """Exactly what kubernetes.client.ApiClient raises for a non-2xx response."""
    resp = RESTResponse(http_response(status, headers))
    resp.read()
    try:
        ApiException.from_response(http_resp=resp, body=resp.data.decode(), data=None)
    except ApiException as exc:
        return exc
    raise AssertionError("from_response did not raise")  # pragma: no cover


class FakeApi:
    """Methods fail with the scripted outcomes in order, then return ``result``."""

    api_client = "the-api-client"
    some_constant = 42

    def __init__(self, *outcomes: BaseException, result="ok"):
        self.outcomes = list(outcomes)
        self.result = result
        self.calls: list[tuple[str, tuple, dict]] = []

    def _call(self, name, args, kwargs):
        self.calls.append((name, args, kwargs))
        if self.outcomes:
            raise self.outcomes.pop(0)
        return self.result

    def patch_namespaced_custom_object_status(self, *args, **kwargs):
        return self._call("patch_namespaced_custom_object_status", args, kwargs)

    def create_namespaced_job(self, *args, **kwargs):
        return self._call("create_namespaced_job", args, kwargs)

    def read_namespaced_job(self, *args, **kwargs):
        return self._call("read_namespaced_job", args, kwargs)

    def delete_namespaced_job(self, *args, **kwargs):
        return self._call("delete_namespaced_job", args, kwargs)

    def replace_namespaced_job(self, *args, **kwargs):
        return self._call("replace_namespaced_job", args, kwargs)


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        assert seconds >= 0
        self.append(seconds)


@pytest.fixture
def sleeps():
    return Sleeps()


# -- how the installed client carries headers -------------------------------------------


def test_installed_client_puts_response_headers_on_the_exception():
    exc = api_exception(429, {"Retry-After": "3"})
    assert exc.status == 429
    assert exc.headers is not None
    assert _retry_after(exc) == 3.0
    assert json.loads(exc.body)["reason"] == "TooManyRequests"


def test_headers_survive_the_whole_client_path(sleeps):
    """A real generated API class and ApiClient; only the HTTP pool is scripted."""

    class Pool:
        def __init__(self, responses):
            self.responses = list(responses)
            self.requests = []

        def request(self, method, url, **kwargs):
            self.requests.append((method, url))
            return self.responses.pop(0)

    cfg = client.Configuration()
    cfg.host = "http://127.0.0.1:1"
    api_client = client.ApiClient(cfg)
    ok = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}
    pool = Pool([http_response(429, {"Retry-After": "2"}), http_response(503), http_response(200, body=ok)])
    api_client.rest_client.pool_manager = pool
    core = Retrying(client.CoreV1Api(api_client), sleep=sleeps)
    got = core.read_namespace("x")
    assert got.metadata.name == "x"
    assert [m for m, _ in pool.requests] == ["GET"] * 3
    assert len(sleeps) == 2
    assert 2.0 <= sleeps[0] <= 2.0 * 1.2  # the server's Retry-After, never less
    assert 0.4 * 0.8 <= sleeps[1] <= 0.4 * 1.2  # no header: the backoff of the second attempt
    assert core.api_client is api_client


@pytest.mark.parametrize("headers, expected", [
    ({"Retry-After": "2"}, 2.0),
    ({"retry-after": "7"}, 7.0),
    ({"RETRY-AFTER": " 1 "}, 1.0),
    ({"Retry-After": "0.5"}, 0.5),
    ({"Retry-After": "0"}, 0.0),
    ({"Retry-After": "-3"}, None),
    ({"Retry-After": "soon"}, None),
    ({"Retry-After": "nan"}, None),
    ({"Retry-After": ""}, None),
    ({}, None),
    (None, None),
    ([("Retry-After", "4")], 4.0),
    (urllib3.HTTPHeaderDict({"reTRY-after": "5"}), 5.0),
])
def test_retry_after_parsing(headers, expected):
    exc = ApiException(status=429)
    exc.headers = headers
    assert _retry_after(exc) == expected


def test_retry_after_http_date():
    exc = ApiException(status=503)
    exc.headers = {"Retry-After": format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)}
    assert 25 <= _retry_after(exc) <= 31
    exc.headers = {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}  # in the past
    assert _retry_after(exc) == 0.0


def test_retry_after_without_headers_attribute():
    assert _retry_after(object()) is None
    assert _retry_after(ApiException(status=429)) is None  # headers None


# -- retried ----------------------------------------------------------------------------


def test_throttled_then_succeeds_honouring_retry_after(sleeps):
    fake = FakeApi(api_exception(429, {"Retry-After": "3"}), api_exception(429, {"Retry-After": "1"}),
                   result={"status": "patched"})
    api = Retrying(fake, sleep=sleeps)
    got = api.patch_namespaced_custom_object_status("g", "v", "ns", "p", "name", {"status": {}})
    assert got == {"status": "patched"}
    assert len(fake.calls) == 3
    assert 3.0 <= sleeps[0] <= 3.0 * 1.2
    assert 1.0 <= sleeps[1] <= 1.0 * 1.2


def test_retry_after_is_capped(sleeps):
    fake = FakeApi(api_exception(429, {"Retry-After": "120"}))
    Retrying(fake, sleep=sleeps).read_namespaced_job("j", "ns")
    assert MAX_DELAY <= sleeps[0] <= MAX_DELAY * 1.2


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retried_with_growing_backoff(sleeps, status):
    fake = FakeApi(*(api_exception(status) for _ in range(4)))
    assert Retrying(fake, sleep=sleeps).create_namespaced_job("ns", {"kind": "Job"}) == "ok"
    assert len(fake.calls) == 5 and len(sleeps) == 4
    nominal = [0.2, 0.4, 0.8, 1.6]
    for got, want in zip(sleeps, nominal):
        assert want * 0.8 <= got <= want * 1.2, (sleeps, nominal)


def test_429_without_retry_after_uses_backoff(sleeps):
    fake = FakeApi(api_exception(429))
    Retrying(fake, sleep=sleeps).read_namespaced_job("j", "ns")
    assert len(sleeps) == 1 and 0.16 <= sleeps[0] <= 0.24


def test_backoff_never_exceeds_the_cap(sleeps):
    fake = FakeApi(*(api_exception(503) for _ in range(MAX_ATTEMPTS - 1)))
    Retrying(fake, sleep=sleeps).read_namespaced_job("j", "ns")
    assert max(sleeps) <= MAX_DELAY * 1.2


def test_gives_up_after_max_attempts_and_raises_the_last_error(sleeps):
    errors = [api_exception(503) for _ in range(MAX_ATTEMPTS - 1)] + [api_exception(429, {"Retry-After": "1"})]
    fake = FakeApi(*errors, api_exception(503))
    with pytest.raises(ApiException) as info:
        Retrying(fake, sleep=sleeps).patch_namespaced_custom_object_status("g", "v", "ns", "p", "n", {})
    assert info.value is errors[-1]
    assert len(fake.calls) == MAX_ATTEMPTS
    assert len(sleeps) == MAX_ATTEMPTS - 1
    assert fake.outcomes  # the call after the last attempt never happened


def test_conflict_on_patch_and_update_is_retried(sleeps):
    fake = FakeApi(api_exception(409), api_exception(409))
    assert Retrying(fake, sleep=sleeps).patch_namespaced_custom_object_status("a", "b", "c", "d", "e", {}) == "ok"
    assert len(fake.calls) == 3
    fake = FakeApi(api_exception(409))
    assert Retrying(fake, sleep=sleeps).replace_namespaced_job("j", "ns", {}) == "ok"


@pytest.mark.parametrize("error", [
    ConnectionResetError("reset by peer"),
    urllib3.exceptions.MaxRetryError(None, "/api", "connection refused"),
    urllib3.exceptions.ProtocolError("Connection aborted."),
    urllib3.exceptions.ReadTimeoutError(None, "/api", "read timed out"),
    TimeoutError("timed out"),
])
def test_connection_errors_are_retried(sleeps, error):
    fake = FakeApi(error)
    assert Retrying(fake, sleep=sleeps).read_namespaced_job("j", "ns") == "ok"
    assert len(fake.calls) == 2 and len(sleeps) == 1


def test_connection_errors_give_up_after_max_attempts(sleeps):
    fake = FakeApi(*(ConnectionRefusedError() for _ in range(MAX_ATTEMPTS)))
    with pytest.raises(ConnectionRefusedError):
        Retrying(fake, sleep=sleeps).read_namespaced_job("j", "ns")
    assert len(fake.calls) == MAX_ATTEMPTS


# -- not retried ------------------------------------------------------------------------


def test_conflict_on_create_means_already_exists_and_is_not_retried(sleeps):
    exc = api_exception(409)
    fake = FakeApi(exc)
    with pytest.raises(ApiException) as info:
        Retrying(fake, sleep=sleeps).create_namespaced_job("ns", {})
    assert info.value is exc and info.value.status == 409
    assert len(fake.calls) == 1 and sleeps == []


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_client_errors_are_not_retried(sleeps, status):
    for method in ("read_namespaced_job", "patch_namespaced_custom_object_status", "delete_namespaced_job",
                   "create_namespaced_job"):
        fake = FakeApi(api_exception(status))
        with pytest.raises(ApiException) as info:
            getattr(Retrying(fake, sleep=sleeps), method)("x")
        assert info.value.status == status
        assert len(fake.calls) == 1
    assert sleeps == []
    assert status not in RETRY_STATUSES


def test_other_exceptions_pass_through_at_once(sleeps):
    fake = FakeApi(ValueError("bad argument"))
    with pytest.raises(ValueError):
        Retrying(fake, sleep=sleeps).read_namespaced_job("j", "ns")
    assert len(fake.calls) == 1 and sleeps == []


# -- the wrapper itself -----------------------------------------------------------------


def test_arguments_and_results_pass_through(sleeps):
    fake = FakeApi(api_exception(503), result={"x": 1})
    got = Retrying(fake, sleep=sleeps).create_namespaced_job("ns", {"kind": "Job"}, dry_run="All")
    assert got == {"x": 1}
    assert fake.calls == [("create_namespaced_job", ("ns", {"kind": "Job"}),
                           {"dry_run": "All", "_request_timeout": REQUEST_TIMEOUT})] * 2


def test_attributes_pass_through():
    api = Retrying(FakeApi())
    assert api.some_constant == 42
    assert api.api_client == "the-api-client"
    with pytest.raises(AttributeError):
        api.no_such_method



def test_every_call_has_a_timeout_unless_the_caller_gives_its_own():
    fake = FakeApi()
    api = Retrying(fake, sleep=lambda s: None)
    api.read_namespaced_job("j", "ns")
    api.read_namespaced_job("j", "ns", _request_timeout=5)
    assert [kw["_request_timeout"] for _, _, kw in fake.calls] == [REQUEST_TIMEOUT, 5]


def test_a_server_that_never_answers_fails_the_call_instead_of_blocking_it(monkeypatch, sleeps):
    """A real client against a server that accepts connections and never answers (a
    dropped route, a proxy holding them open): each try times out on its read, and the
    call fails after the bounded retries, so an operator thread is never held for good."""
    import socket
    import threading

    from kubescribe.operator import kubeapi

    monkeypatch.setattr(kubeapi, "REQUEST_TIMEOUT", (1.0, 0.1))
    held, stop = [], threading.Event()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        silent.settimeout(0.1)

        def accept_and_hold():
            while not stop.is_set():
                try:
                    held.append(silent.accept()[0])
                except OSError:
                    continue

        holder = threading.Thread(target=accept_and_hold, daemon=True)
        holder.start()
        cfg = client.Configuration()
        cfg.host = f"http://127.0.0.1:{silent.getsockname()[1]}"
        core = Retrying(client.CoreV1Api(client.ApiClient(cfg)), sleep=sleeps)
        try:
            with pytest.raises(urllib3.exceptions.MaxRetryError) as failed:
                core.read_namespace("x")
        finally:
            stop.set()
            holder.join(5)
            for conn in held:
                conn.close()
    assert isinstance(failed.value.reason, urllib3.exceptions.ReadTimeoutError), failed.value.reason
    assert len(sleeps) == MAX_ATTEMPTS - 1 and held
