"""The scale benchmark: a burst of 10,000 requests on 1,000 simulated GPU nodes (kwok).

Everything but the kubelets and the transcription is real: etcd, kube-apiserver (with an
audit log of every write), kube-controller-manager (Jobs, TTL, garbage collection),
kube-scheduler, Redis and the operator as a process under its own ServiceAccount. kwok
runs each runner pod for a simulated duration and ends it with a runner's termination
message (harness/envtest/kwok.py says what that skips).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import threading
import time
from typing import Any

from kubescribe import GROUP, PLURAL, VERSION
from kubescribe.cache_layout import AUDIO_PREFIX

from .cluster import _create_all
from harness.memory import RssSampler
from harness.operator import CRD

from .common import Context, Outcome, RequestWatch, log, mib, secs

#: Phases a request is in once the operator has taken it in, and once it was admitted.
SEEN = {"Queued", "Running", "Succeeded", "Failed"}
ADMITTED = {"Running", "Succeeded", "Failed"}


class CountSampler:
    """TranscriptionRequests, Jobs and Pods in etcd every ``interval`` seconds, by a paged
    LIST of one item (the API server answers with the remaining count: no full list)."""

    def __init__(self, cluster, namespace: str, interval: float = 5.0):
        from kubernetes import client

        self.api = cluster.api_client()
        self.custom = client.CustomObjectsApi(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.namespace = namespace
        self.interval = interval
        self.samples: list[tuple[float, int, int, int]] = []
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="counts", daemon=True)

    @staticmethod
    def _count(items: list, meta: Any) -> int:
        remaining = (meta.get("remainingItemCount") if isinstance(meta, dict)
                     else getattr(meta, "remaining_item_count", None)) or 0
        return len(items) + int(remaining)

    def sample(self) -> tuple[float, int, int, int]:
        trs = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, limit=1)
        jobs = self.batch.list_namespaced_job(self.namespace, limit=1)
        pods = self.core.list_namespaced_pod(self.namespace, limit=1)
        row = (time.perf_counter() - self.t0, self._count(trs["items"], trs["metadata"]),
               self._count(jobs.items, jobs.metadata), self._count(pods.items, pods.metadata))
        self.samples.append(row)
        return row

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self.sample()

    def start(self) -> "CountSampler":
        self.t0 = time.perf_counter()
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        with contextlib.suppress(Exception):
            self.api.close()


def apiserver_requests(api, resource: str) -> collections.Counter:
    """Requests the API server answered on ``resource`` since it started, by verb, from its
    own ``apiserver_request_total`` (every client together)."""
    from prometheus_client.parser import text_string_to_metric_families

    resp = api.call_api("GET", api.configuration.host + "/metrics")
    resp.read()
    counts: collections.Counter = collections.Counter()
    for family in text_string_to_metric_families(resp.data.decode()):
        for sample in family.samples:
            if sample.name == "apiserver_request_total" and sample.labels.get("resource") == resource \
                    and not sample.labels.get("subresource"):
                counts[sample.labels["verb"]] += int(sample.value)
    return counts


def distinct_requests(prefix: str, n: int) -> dict[str, dict]:
    """``n`` request specs by name, each naming audio of its own (distinct cache keys, so no
    request waits for an identical one); nothing reads the audio in these runs."""
    return {f"{prefix}-{i:05d}": {"audio": {"redisKey": AUDIO_PREFIX + hashlib.sha256(f"{prefix}-{i}".encode()).hexdigest()},
                                  "model": "tiny.en", "language": "en"}
            for i in range(n)}


def scale_cluster(ctx: Context, name: str):
    """A control plane (not started) with an audit log of every write and the client
    limits a production control plane lifts (harness/envtest/kwok.py's ``*_SCALE_ARGS``)."""
    from harness.envtest.audit import WRITES_AUDIT_POLICY
    from harness.envtest.cluster import KubeCluster
    from harness.envtest.kwok import APISERVER_SCALE_ARGS, CONTROLLER_MANAGER_SCALE_ARGS

    return KubeCluster(audit_policy=WRITES_AUDIT_POLICY, crds=[CRD], workdir=ctx.workdir / name, keep_workdir=True,
                       controller_manager_args=CONTROLLER_MANAGER_SCALE_ARGS, apiserver_args=APISERVER_SCALE_ARGS)


def named_namespaces(core, *names: str) -> None:
    """Namespaces by these names, each returned once its default ServiceAccount exists."""
    from kubernetes import client

    from harness.envtest import wait_for

    for name in names:
        core.create_namespace({"metadata": {"name": name}})
        wait_for(lambda name=name: core.read_namespaced_service_account("default", name), timeout=60, interval=0.1,
                 description=f"{name}/default ServiceAccount", ignore=(client.exceptions.ApiException,))


def cpu_seconds(procs: dict[str, Any]) -> dict[str, float]:
    """User+system CPU seconds so far of each named psutil process (or list of them)."""
    def one(p) -> float:
        t = p.cpu_times()
        return t.user + t.system
    return {k: sum(one(p) for p in v) if isinstance(v, list) else one(v) for k, v in procs.items()}


def write_kinds(writes) -> collections.Counter:
    """The operator's writes by kind: status patches that only move a queue position apart
    from those that change a phase, other writes by resource and verb."""
    position = frozenset({"queuePosition", "reason", "message"})
    kinds: collections.Counter = collections.Counter()
    for w in writes:
        if w.resource == "transcriptionrequests/status":
            kinds["status: queue position" if w.status_fields == position else "status: phase"] += 1
        else:
            kinds[f"{w.resource} {w.verb}"] += 1
    return kinds


def scale_10k(ctx: Context) -> Outcome:
    import psutil

    from harness.envtest.audit import audit_writes
    from harness.envtest.kwok import KwokNodes
    from harness.operator import OperatorProcess, operator_identity

    nodes_n, n = (50, 600) if ctx.quick else (1000, 10000)
    gpus_per_node, run_s, ttl_s, threads = 4, 5.0, 60, 8
    timeout = 600 if ctx.quick else 1800
    out = Outcome("scale_10k", f"Scale: {n:,} requests in a burst on {nodes_n:,} simulated GPU nodes (kwok)")
    specs = distinct_requests("scale", n)
    redis = ctx.redis()
    redis.client().flushdb()

    state: dict[str, Any] = {"seen": set(), "admitted": set(), "done": set(), "failed": set(),
                             "t_seen": None, "t_admitted": None, "t_done": None, "t_first_done": None}

    def on_event(name: str, phase: str | None, t: float, status: dict) -> None:
        if phase in SEEN:
            state["seen"].add(name)
        if phase in ADMITTED:
            state["admitted"].add(name)
        if phase == "Succeeded":
            state["done"].add(name)
            state["t_first_done"] = state["t_first_done"] or t
        if phase == "Failed":
            state["failed"].add(name)
        for key, group in (("t_seen", "seen"), ("t_admitted", "admitted"), ("t_done", "done")):
            if state[key] is None and len(state[group]) >= n:
                state[key] = t

    with contextlib.ExitStack() as stack:
        t_setup = time.perf_counter()
        cluster = scale_cluster(ctx, "scale-cluster")
        stack.callback(cluster.stop)
        cluster.start()
        nodes = KwokNodes(cluster, nodes=nodes_n, gpus_per_node=gpus_per_node, run_seconds=run_s,
                          workdir=ctx.workdir / "scale-kwok", startup_timeout=600)
        stack.callback(nodes.stop)
        nodes.start()
        log(f"scale_10k: control plane, kube-scheduler, kwok and {nodes_n} nodes up in "
            f"{time.perf_counter() - t_setup:.0f}s")
        kubeconfig, user = operator_identity(cluster)
        api = cluster.api_client()
        stack.callback(api.close)
        from kubernetes import client

        ns = "scale"
        named_namespaces(client.CoreV1Api(api), ns)
        op = OperatorProcess(kubeconfig, "", redis.url, ctx.workdir, gpu_budget=str(nodes.gpus),
                             request_ttl_seconds=str(ttl_s), resync_seconds="30",
                             log_level="WARNING")
        stack.callback(op.stop)
        op.start()
        proc = psutil.Process(op.proc.pid)
        time.sleep(1.0)
        idle_rss = proc.memory_info().rss
        sampler = RssSampler(op.proc.pid).start()
        stack.callback(sampler.stop)
        watch = RequestWatch(cluster, ns, on_event=on_event).start()
        stack.callback(watch.stop)
        counts = CountSampler(cluster, ns).start()
        stack.callback(counts.stop)
        cpu0 = proc.cpu_times()
        t0, create_s, _lat = _create_all(cluster, ns, specs, threads)
        t_burst_end = t0 + create_s
        log(f"scale_10k: {n} creates in {create_s:.1f}s; waiting for all to succeed")
        done = watch.wait(lambda w: state["t_done"] is not None or len(state["done"]) + len(state["failed"]) >= n,
                          timeout=timeout)
        cpu1 = proc.cpu_times()
        peak_work = sampler.peak
        # Then until the TTL has deleted them all: the count of requests returns to the
        # live set, which is empty once every request finished.
        t_wait = time.perf_counter()
        emptied = False
        while time.perf_counter() - t_wait < ttl_s + 120:
            _t, trs, _jobs, _pods = counts.sample()
            if trs == 0:
                emptied = True
                break
            time.sleep(2.0)
        t_empty = time.perf_counter()
        cpu2 = proc.cpu_times()
        peak = sampler.stop()
        counts.stop()
        writes = audit_writes(cluster.iter_audit_events(), user=user, namespace=ns)
        job_requests = apiserver_requests(api, "jobs")
        op_log = op.logs()

    cpu_work = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    cpu_all = (cpu2.user + cpu2.system) - (cpu0.user + cpu0.system)
    kinds = write_kinds(writes)
    # The budget is per request: its phase writes and Events. Queue positions are a cost of
    # the queue, not of a request (at most KUBESCRIBE_QUEUE_POSITIONS per 5 s whatever the
    # burst), and the TTL's deletion is the feature itself: both reported on their own.
    per_request = (kinds["status: phase"] + kinds["events create"]) / n
    positions_per_request = kinds["status: queue position"] / n
    admitted_after = (state["t_admitted"] - t_burst_end) if state["t_admitted"] else None
    seen_after = (state["t_seen"] - t_burst_end) if state["t_seen"] else None
    all_done = state["t_done"] is not None
    throughput = (len(state["done"]) / (state["t_done"] - state["t_first_done"])
                  if all_done and state["t_done"] > state["t_first_done"] else None)

    ok = (all_done and admitted_after is not None and admitted_after <= 60 and peak < 300e6
          and per_request <= 3 and emptied)
    out.measured = (
        f"{nodes_n:,} kwok nodes with {gpus_per_node} `nvidia.com/gpu` each (GPU budget {nodes.gpus:,}); "
        f"{n:,} TranscriptionRequests with distinct audio created by {threads} client threads; kwok runs each runner "
        f"pod for {run_s:.0f} s and ends it with a runner's termination message (no transcription, no result in "
        f"Redis). The real kube-scheduler binds pods, the real Job controller runs them, the operator (job mode, "
        f"request TTL {ttl_s} s, whose deletion takes the Job and pod along; resync 30 s) runs as its own ServiceAccount. Times from the end of the "
        "burst (last create returned) to the moment a watch opened before it saw every request Queued or later, "
        "Running or later (the Admitted condition), and Succeeded. Writes: the operator's successful writes in "
        "the API server's audit log (status patches with their body, so queue positions are told apart). "
        "Counts: a paged LIST of one item every 5 s (the remaining count). Operator CPU (psutil, user+system) "
        "and peak RSS (sampled every 50 ms) from before the burst."
    )
    out.headline = (f"all {n:,} admitted {secs(admitted_after)} after the burst" if admitted_after is not None
                    else f"{len(state['admitted']):,}/{n:,} admitted")
    out.headline += (f"; {per_request:.2f} writes/request (+{positions_per_request:.2f} queue positions); "
                     f"operator peak RSS {mib(peak)}")
    out.baseline = f"{n:,} creates: {secs(create_s)}"
    out.ratio = (f"{throughput:.0f} completions/s" if throughput else "-")
    out.target = ("admitted within 60 s of the burst; peak RSS < 300 MB; <= 3 writes/request (status + Events); "
                  "requests in etcd back to the live set after the TTL")
    out.status = "PASS" if ok else "MISS"
    out.table("Figures", ["what", "value"], [
        [f"{n:,} creates (burst), wall", secs(create_s)],
        ["all Queued or later after the burst", secs(seen_after) if seen_after is not None else "not reached"],
        ["all admitted (Running or later) after the burst",
         secs(admitted_after) if admitted_after is not None else f"not reached ({len(state['admitted']):,})"],
        ["all Succeeded after the burst",
         secs(state["t_done"] - t_burst_end) if all_done else f"not reached ({len(state['done']):,} done, "
                                                              f"{len(state['failed']):,} failed)"],
        ["completion throughput (first to last Succeeded)", f"{throughput:.1f} requests/s" if throughput else "-"],
        ["operator CPU until all Succeeded (user+system)", f"{cpu_work:.1f} s"],
        ["operator CPU until the TTL emptied the namespace", f"{cpu_all:.1f} s"],
        ["operator RSS idle / peak while working / peak overall", f"{mib(idle_rss)} / {mib(peak_work)} / {mib(peak)}"],
        ["operator writes per request: phase status patches + Events (the budget)", f"{per_request:.3f}"],
        ["queue-position writes per request (a cost of the queue: at most 20 per 5 s)",
         f"{positions_per_request:.3f}"],
        *[[f"writes: {k}", f"{v:,} ({v / n:.3f} per request)"] for k, v in sorted(kinds.items())],
        ["requests left after the TTL", "0" if emptied else f"{counts.samples[-1][1]:,} ({secs(t_empty - t_wait)})"],
        ["API server requests on Jobs, all clients (apiserver_request_total): GET / LIST / POST / DELETE",
         " / ".join(f"{job_requests[v]:,}" for v in ("GET", "LIST", "POST", "DELETE"))],
    ])
    step = max(1, len(counts.samples) // 40)
    out.table("Objects in etcd over time (s from the burst's start)", ["t", "TranscriptionRequests", "Jobs", "Pods"],
              [[f"{t:.0f}", f"{a:,}", f"{b:,}", f"{c:,}"] for t, a, b, c in counts.samples[::step]])
    if not done:
        out.notes.append(f"Not every request finished within {timeout} s.")
    if "Traceback" in op_log:
        out.notes.append("The operator log contains a traceback: " + op_log[op_log.index("Traceback"):][:600])
    out.data = {"n": n, "nodes": nodes_n, "create_s": create_s, "seen_after_s": seen_after,
                "admitted_after_s": admitted_after, "throughput": throughput, "cpu_work_s": cpu_work,
                "cpu_all_s": cpu_all, "peak_rss": peak, "idle_rss": idle_rss, "writes": dict(kinds),
                "writes_per_request": per_request, "positions_per_request": positions_per_request, "emptied": emptied, "counts": counts.samples,
                "job_requests": dict(job_requests)}
    return out
