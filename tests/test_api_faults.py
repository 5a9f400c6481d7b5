"""The operator against an API server that throttles, conflicts and fails.

The real operator process talks to the real kube-apiserver through ``FaultProxy``,
which answers a share of its requests with 429 (Retry-After), 409 or 503 Status
documents, or loses the answer to a request the API server did carry out. Everything
else (fixtures, the fake kubelet, the Job controller) talks to the API server directly,
so only the operator sees the faults. Requests must all end Succeeded, each with exactly
one Job, and the operator must never exit.
"""

from __future__ import annotations

import re
import time
import urllib.request
from typing import Any, Callable, Iterable

import pytest

from kubescribe.store import Store
from harness.envtest import wait_for
from harness.envtest.faults import Fault, FaultProxy
from harness.operator import OperatorProcess

pytestmark = pytest.mark.kube

STATUS = r"/transcriptionrequests/[^/]+/status$"
JOBS = r"/namespaces/[^/]+/jobs$"


def upload(redis_server, speech_dir, name) -> str:
    return Store(redis_server.client()).put_audio((speech_dir / f"{name}.wav").read_bytes())


@pytest.fixture
def fault_proxy(kube_cluster, tmp_path) -> Iterable[Callable[..., FaultProxy]]:
    proxies: list[FaultProxy] = []

    def factory(rules=()) -> FaultProxy:
        proxy = FaultProxy(kube_cluster, rules, workdir=tmp_path).start()
        proxies.append(proxy)
        return proxy

    yield factory
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def operator_via(kube_namespace, redis_server, crd_installed, fake_kubelet, tmp_path):
    """``operator_via(proxy, **settings)``: the real operator, its API traffic through ``proxy``."""
    started: list[OperatorProcess] = []

    def factory(proxy: FaultProxy, **settings: Any) -> OperatorProcess:
        op = OperatorProcess(proxy.kubeconfig_path, kube_namespace, redis_server.url, tmp_path, **settings)
        started.append(op)
        return op.start()

    yield factory
    for op in started:
        op.stop()


def alive(op: OperatorProcess) -> None:
    assert op.proc is not None and op.proc.poll() is None, f"operator exited: {op.logs()[-3000:]}"


def wait_all_succeeded(requests_api, op: OperatorProcess, names: Iterable[str], timeout: float = 240) -> dict:
    """Wait for every request to end; fail at once if the operator process exits."""
    names = list(names)
    done: dict[str, dict] = {}

    def finished():
        alive(op)
        for n in names:
            if n not in done:
                s = requests_api.status(n)
                if s.get("phase") in ("Succeeded", "Failed"):
                    done[n] = s
        return len(done) == len(names)

    try:
        wait_for(finished, timeout=timeout, interval=0.2, description=f"{names} to finish")
    except TimeoutError:
        pending = {n: requests_api.status(n) for n in names if n not in done}
        raise AssertionError(f"not finished: {pending}\n--- operator log ---\n{op.logs()[-4000:]}") from None
    failed = {n: s for n, s in done.items() if s["phase"] != "Succeeded"}
    assert not failed, failed
    return done


def assert_one_job_per_request(requests_api, names: Iterable[str]) -> None:
    jobs = [j for j in requests_api.jobs() if (j.metadata.labels or {}).get("kubescribe.io/pool") != "true"]
    owners = sorted(ref.name for j in jobs for ref in (j.metadata.owner_references or []))
    assert owners == sorted(names), [j.metadata.name for j in jobs]


def healthz(op: OperatorProcess) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/healthz", timeout=5) as r:
        return r.status


def test_the_proxy_forwards_streams_and_injects_kubernetes_errors(fault_proxy, kube_namespace):
    """The proxy itself: plain HTTP in, the admin's HTTPS out, watches streamed, faults
    that the kubernetes client turns into the usual ApiExceptions."""
    import json
    import threading

    from kubernetes import client, config, watch
    from kubernetes.client.exceptions import ApiException

    proxy = fault_proxy([Fault(method="POST", path_re="/configmaps$", status=429, every=2, retry_after=1),
                         Fault(method="PUT", status=409, skip=1, times=1)])
    assert proxy.url.startswith("http://127.0.0.1:")
    core = client.CoreV1Api(config.new_client_from_config(config_file=proxy.kubeconfig_path))
    seen: list[tuple[str, str]] = []

    def watcher():
        for ev in watch.Watch().stream(core.list_namespaced_config_map, kube_namespace, timeout_seconds=20):
            seen.append((ev["type"], ev["object"].metadata.name))
            if ev["object"].metadata.name == "c":
                return

    th = threading.Thread(target=watcher, daemon=True)
    th.start()
    wait_for(lambda: proxy.summary()["requests"].get("GET"), timeout=10, description="watch started")
    cm = {"metadata": {"name": "a"}, "data": {"k": "v"}}
    core.create_namespaced_config_map(kube_namespace, cm)
    with pytest.raises(ApiException) as info:
        core.create_namespaced_config_map(kube_namespace, {**cm, "metadata": {"name": "b"}})
    exc = info.value
    assert exc.status == 429 and exc.headers["Retry-After"] == "1"
    doc = json.loads(exc.body)
    assert (doc["kind"], doc["code"], doc["reason"]) == ("Status", 429, "TooManyRequests")
    assert doc["details"] == {"retryAfterSeconds": 1}
    core.create_namespaced_config_map(kube_namespace, {**cm, "metadata": {"name": "c"}})
    th.join(20)
    # streamed through as they happened (the namespace's kube-root-ca.crt comes first)
    assert [e for e in seen if e[1] != "kube-root-ca.crt"] == [("ADDED", "a"), ("ADDED", "c")]

    core.replace_namespaced_config_map("a", kube_namespace, cm)  # skip=1: let through
    with pytest.raises(ApiException) as info:
        core.replace_namespaced_config_map("a", kube_namespace, cm)
    assert info.value.status == 409 and json.loads(info.value.body)["reason"] == "Conflict"
    core.replace_namespaced_config_map("a", kube_namespace, cm)  # times=1: spent
    assert proxy.injected() == 2 and proxy.injected(429, "POST") == 1 and proxy.injected(409) == 1

    # A lost answer: the change is made, the client hears 503; a real error passes as is.
    proxy.set_rules([Fault(method="DELETE", status=503, after_forward=True)])
    with pytest.raises(ApiException) as info:
        core.delete_namespaced_config_map("a", kube_namespace)
    assert info.value.status == 503
    with pytest.raises(ApiException) as info:
        core.delete_namespaced_config_map("a", kube_namespace)
    assert info.value.status == 404  # it was deleted the first time
    assert proxy.injected(503) == 1

    # Watches cut as by an API server restart end with an error on the client's side.
    proxy.clear()
    errors: list[BaseException] = []

    def long_watch():
        try:
            for _ in watch.Watch().stream(core.list_namespaced_config_map, kube_namespace, timeout_seconds=60):
                pass
        except Exception as e:
            errors.append(e)

    th = threading.Thread(target=long_watch, daemon=True)
    gets = proxy.summary()["requests"].get("GET", 0)
    th.start()
    wait_for(lambda: proxy.summary()["requests"].get("GET", 0) > gets and proxy.drop_streams(), timeout=10,
             description="a watch to drop")
    th.join(10)
    assert not th.is_alive() and errors


def test_throttled_conflicting_and_unavailable_api_is_absorbed(
        fault_proxy, operator_via, requests_api, redis_server, speech_dir):
    redis_server.client().flushdb()
    # Half the status patches fail at first (a third 429, a quarter 409), every second
    # Job creation is refused with 503; none twice in a row for long, so the bounded
    # retries get through.
    proxy = fault_proxy([
        Fault(method="PATCH", path_re=STATUS, status=429, every=3, retry_after=1),
        Fault(method="PATCH", path_re=STATUS, status=409, every=4),
        Fault(method="POST", path_re=JOBS, status=503, every=2),
    ])
    op = operator_via(proxy, gpu_budget="2")
    names = {"fox": "thr-fox", "weather": "thr-weather", "library": "thr-library"}
    for audio, name in names.items():
        requests_api.create(name, {"audio": {"redisKey": upload(redis_server, speech_dir, audio)}})

    done = wait_all_succeeded(requests_api, op, names.values())
    for status in done.values():
        assert status["cached"] is False and status["attempts"] >= 1
        assert {c["type"]: c for c in status["conditions"]}["Ready"]["status"] == "True"
    assert_one_job_per_request(requests_api, names.values())
    alive(op)
    assert healthz(op) == 200
    summary = proxy.summary()
    assert proxy.injected(429, "PATCH") > 0, summary
    assert proxy.injected(409, "PATCH") > 0, summary
    assert proxy.injected(503, "POST", JOBS) > 0, summary
    text = op.metrics_text()
    assert 'kubescribe_transcriptions_total{model="tiny.en",status="succeeded"} 3.0' in text


def test_lost_answers_to_job_creation_and_status_patches(
        fault_proxy, operator_via, requests_api, redis_server, speech_dir):
    """The API server creates the Job, but the operator hears 503: the retry gets
    409 AlreadyExists and must adopt the Job, not make a second one. Status patches
    that were applied but answered 503 are simply applied again."""
    redis_server.client().flushdb()
    # Every Job creation is carried out and its answer lost; the retry's 409 is the API
    # server's own answer and is let through.
    proxy = fault_proxy([
        Fault(method="POST", path_re=JOBS, status=503, after_forward=True),
        Fault(method="PATCH", path_re=STATUS, status=503, after_forward=True, every=3),
    ])
    op = operator_via(proxy, gpu_budget="2")
    names = {"fox": "lost-fox", "weather": "lost-weather"}
    for audio, name in names.items():
        requests_api.create(name, {"audio": {"redisKey": upload(redis_server, speech_dir, audio)}})
    wait_all_succeeded(requests_api, op, names.values())
    assert_one_job_per_request(requests_api, names.values())
    assert proxy.injected(503, "POST", JOBS) == len(names), proxy.summary()
    assert proxy.injected(503, "PATCH") > 0, proxy.summary()
    adopted = set(re.findall(r"Job [^/\s]+/(\S+) already exists \(operator restart\): adopting it", op.logs()))
    assert adopted == {j.metadata.name for j in requests_api.jobs()}
    alive(op)


def test_burst_of_429_on_everything_then_recovery(
        fault_proxy, operator_via, requests_api, redis_server, speech_dir):
    redis_server.client().flushdb()
    proxy = fault_proxy()
    op = operator_via(proxy, gpu_budget="1")
    requests_api.create("burst-a", {"audio": {"redisKey": upload(redis_server, speech_dir, "fox")}})
    requests_api.wait("burst-a", lambda s: s.get("phase") in ("Running", "Succeeded"), description="burst-a admitted")

    before = proxy.injected()
    with proxy.injecting(Fault(status=429, retry_after=1)):
        # As if the API server restarted under load: the operator's watches are cut and
        # every new request, watches included, is throttled for a while.
        proxy.drop_streams()
        requests_api.create("burst-b", {"audio": {"redisKey": upload(redis_server, speech_dir, "weather")}})
        requests_api.create("burst-c", {"audio": {"redisKey": upload(redis_server, speech_dir, "library")}})
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            alive(op)
            time.sleep(0.5)
    throttled = proxy.injected() - before
    assert throttled > 0, proxy.summary()
    assert proxy.injected(429, "GET") > 0, proxy.summary()  # reads and watches too, not only writes

    names = ["burst-a", "burst-b", "burst-c"]
    wait_all_succeeded(requests_api, op, names)
    assert_one_job_per_request(requests_api, names)
    assert proxy.injected() == before + throttled  # nothing injected after the burst
    alive(op)
    assert healthz(op) == 200


def test_running_status_patch_failing_every_retry_does_not_strand_the_request(
        fault_proxy, operator_via, requests_api, redis_server, speech_dir):
    """The Job is created, then every attempt to record Running fails (more 503s than
    the client retries). The next admission pass must find the Job and adopt it; the
    request must not stay Queued holding a slot of the budget for ever."""
    redis_server.client().flushdb()
    from kubescribe.operator.kubeapi import MAX_ATTEMPTS

    # Admitted at once, its first status patch is Queued and Running in one; all
    # MAX_ATTEMPTS attempts of it fail. The pass then writes it Queued, as it would for any
    # request it did not admit, and the next pass adopts the Job.
    proxy = fault_proxy([Fault(method="PATCH", path_re=r"/transcriptionrequests/stranded/status$", status=503,
                               skip=0, times=MAX_ATTEMPTS)])
    op = operator_via(proxy, gpu_budget="1")
    requests_api.create("stranded", {"audio": {"redisKey": upload(redis_server, speech_dir, "fox")}})
    wait_for(lambda: requests_api.jobs(), timeout=60, description="the Job of stranded")
    requests_api.create("behind", {"audio": {"redisKey": upload(redis_server, speech_dir, "weather")}})
    # About 25 s when it works: 6 s of retries, a re-admission, two short transcriptions.
    wait_all_succeeded(requests_api, op, ["stranded", "behind"], timeout=90)
    assert proxy.injected(503, "PATCH") == MAX_ATTEMPTS, proxy.summary()
    assert_one_job_per_request(requests_api, ["stranded", "behind"])
