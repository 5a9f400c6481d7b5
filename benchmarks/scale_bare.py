"""scale_vs_bare_jobs: 10,000 TranscriptionRequests through the operator against 10,000
plain Jobs with the runner Job's pod template, on the same kwok cluster in one run.

The plain Jobs are the floor: what the same control plane (API server, etcd, Job
controller, scheduler, kwok's simulated kubelets) does with the same pods and no
kubescribe at all. The requests go first; the Jobs are then created at the rate the
request burst achieved, by a plain client, once the requests' namespace is gone.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from .cluster import _create_all
from .common import Context, Outcome, RequestWatch, log, mib, secs
from .scale import CountSampler, cpu_seconds, distinct_requests, named_namespaces, scale_cluster, write_kinds
from harness.memory import RssSampler


class JobWatch:
    """Counts the Jobs of one namespace that have completed, from a watch opened before
    the first create (``wait`` returns when ``n`` have, or on timeout)."""

    def __init__(self, cluster, namespace: str):
        from kubernetes import client

        self.api = cluster.api_client()
        self.batch = client.BatchV1Api(self.api)
        self.namespace = namespace
        self.complete: set[str] = set()
        self.failed: set[str] = set()
        self.ended_at: dict[str, float] = {}  # when each Job was first seen Complete or Failed
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"jobs-{namespace}", daemon=True)

    def start(self) -> "JobWatch":
        self._rv = self.batch.list_namespaced_job(self.namespace, limit=1).metadata.resource_version
        self._thread.start()
        return self

    def _run(self) -> None:
        from kubernetes import watch

        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(self.batch.list_namespaced_job, self.namespace, resource_version=self._rv,
                                   timeout_seconds=60, _request_timeout=90):
                    job = ev["object"]
                    self._rv = job.metadata.resource_version
                    conds = {c.type: c.status for c in (job.status.conditions or [])}
                    with self.cond:
                        if conds.get("Complete") == "True":
                            self.complete.add(job.metadata.name)
                        elif conds.get("Failed") == "True":
                            self.failed.add(job.metadata.name)
                        else:
                            continue
                        self.ended_at.setdefault(job.metadata.name, time.perf_counter())
                        self.cond.notify_all()
                    if self._stop.is_set():
                        break
            except Exception as exc:  # noqa: BLE001 - a dropped watch is reopened from the last version
                log(f"job watch on {self.namespace} reopened after {exc!r}")
            finally:
                w.stop()

    def wait(self, n: int, timeout: float) -> float | None:
        """perf_counter when ``n`` Jobs had ended, or None on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.ended_at) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 1.0))
            return sorted(self.ended_at.values())[n - 1]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(Exception):
            self.api.close()


def _create_jobs_paced(cluster, namespace: str, jobs: list[dict], threads: int, rate: float) -> tuple[float, float]:
    """Create ``jobs`` from ``threads`` clients, the k-th no sooner than k / ``rate`` s after
    the start: (perf_counter at the start, seconds to the last create's answer)."""
    from kubernetes import client

    apis = [cluster.api_client() for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)
    t0_box: list[float] = []

    def worker(k: int) -> None:
        batch = client.BatchV1Api(apis[k])
        barrier.wait()
        t0 = t0_box[0]
        try:
            for i in range(k, len(jobs), threads):
                wait = t0 + i / rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)  # the load generator's pace, not a synchronisation
                batch.create_namespaced_job(namespace, jobs[i])
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    ts = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
    for t in ts:
        t.start()
    t0_box.append(time.perf_counter())
    barrier.wait()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0_box[0]
    for api in apis:
        api.close()
    if errors:
        raise errors[0]
    return t0_box[0], elapsed


def scale_vs_bare_jobs(ctx: Context) -> Outcome:
    import psutil
    from kubernetes import client

    from harness.envtest import wait_for
    from harness.envtest.audit import audit_writes
    from harness.envtest.kwok import KwokNodes
    from harness.operator import OperatorProcess, operator_identity
    from kubescribe.models import parse_spec
    from kubescribe.operator.jobs import build_job
    from kubescribe.settings import OperatorSettings

    nodes_n, n = (50, 600) if ctx.quick else (1000, 10000)
    gpus_per_node, run_s, threads = 4, 5.0, 8
    timeout = 600 if ctx.quick else 1800
    out = Outcome("scale_vs_bare_jobs", f"{n:,} requests through the operator vs {n:,} plain runner Jobs (kwok)")
    specs = distinct_requests("req", n)
    redis = ctx.redis()
    redis.client().flushdb()
    state: dict[str, Any] = {"done": set(), "failed": set(), "t_done": None}

    def on_event(name: str, phase: str | None, t: float, status: dict) -> None:
        if phase == "Succeeded":
            state["done"].add(name)
        elif phase == "Failed":
            state["failed"].add(name)
        if state["t_done"] is None and len(state["done"]) + len(state["failed"]) >= n:
            state["t_done"] = t

    with contextlib.ExitStack() as stack:
        t_setup = time.perf_counter()
        cluster = scale_cluster(ctx, "bare-cluster")
        stack.callback(cluster.stop)
        cluster.start()
        nodes = KwokNodes(cluster, nodes=nodes_n, gpus_per_node=gpus_per_node, run_seconds=run_s,
                          workdir=ctx.workdir / "bare-kwok", startup_timeout=600)
        stack.callback(nodes.stop)
        nodes.start()
        log(f"scale_vs_bare_jobs: control plane and {nodes_n} kwok nodes up in {time.perf_counter() - t_setup:.0f}s")
        kubeconfig, user = operator_identity(cluster)
        api = cluster.api_client()
        stack.callback(api.close)
        core = client.CoreV1Api(api)
        req_ns, bare_ns = "requests", "bare"
        named_namespaces(core, req_ns, bare_ns)
        procs = {"kube-apiserver": cluster.apiserver.pid, "etcd": cluster.etcd.pid,
                 "kube-controller-manager": cluster.controller_manager.pid, "kube-scheduler": nodes.scheduler.pid,
                 "kwok": nodes.kwok.pid}
        ps = {k: psutil.Process(v) for k, v in procs.items()}

        # (b) the requests, through the operator
        op = OperatorProcess(kubeconfig, req_ns, redis.url, ctx.workdir, gpu_budget=str(nodes.gpus),
                             resync_seconds="30", log_level="WARNING")
        stack.callback(op.stop)
        op.start()
        ps["operator"] = psutil.Process(op.proc.pid)
        time.sleep(1.0)  # the operator's first list is not the burst's
        sampler = RssSampler(op.proc.pid).start()
        stack.callback(sampler.stop)
        watch = RequestWatch(cluster, req_ns, on_event=on_event).start()
        stack.callback(watch.stop)
        cpu0 = cpu_seconds(ps)
        t0, req_create_s, _lat = _create_all(cluster, req_ns, specs, threads)
        log(f"scale_vs_bare_jobs: {n} requests created in {req_create_s:.1f}s; waiting for all to succeed")
        watch.wait(lambda w: state["t_done"] is not None, timeout=timeout)
        cpu1 = cpu_seconds(ps)
        peak = sampler.stop()
        watch.stop()
        req_wall = state["t_done"] - t0 if state["t_done"] else None
        writes = write_kinds(audit_writes(cluster.iter_audit_events(), user=user, namespace=req_ns))
        op_log = op.logs()
        # The requests' namespace goes before the plain Jobs start, and the operator with it.
        core.delete_namespace(req_ns)
        counts = CountSampler(cluster, req_ns)
        wait_for(lambda: counts.sample()[1:] == (0, 0, 0), timeout=900, interval=2.0,
                 description="the requests' namespace to empty")
        op.stop()
        ps.pop("operator")

        # (a) the same pods as plain Jobs, at the rate the requests were created
        settings = OperatorSettings(runner_image="kubescribe-runner:test")
        jobs = []
        for i, (name, raw) in enumerate(specs.items()):
            body = {"metadata": {"name": name, "namespace": bare_ns, "uid": f"00000000-0000-0000-0000-{i:012d}",
                                 "generation": 1}}
            job = build_job(body, parse_spec(raw), settings)
            job["metadata"].pop("ownerReferences")  # no request owns it
            jobs.append(job)
        rate = n / req_create_s
        jw = JobWatch(cluster, bare_ns).start()
        stack.callback(jw.stop)
        cpu2 = cpu_seconds(ps)
        t0b, bare_create_s = _create_jobs_paced(cluster, bare_ns, jobs, threads, rate)
        log(f"scale_vs_bare_jobs: {n} plain Jobs created in {bare_create_s:.1f}s; waiting for all to complete")
        t_end = jw.wait(n, timeout)
        cpu3 = cpu_seconds(ps)
        bare_wall = t_end - t0b if t_end else None
        bare_failed = len(jw.failed)
        jw.stop()

    cpu_req = {k: cpu1[k] - cpu0[k] for k in cpu1}
    cpu_bare = {k: cpu3[k] - cpu2[k] for k in cpu3}
    per_request = (writes["status: phase"] + writes["events create"]) / n
    op_ms = 1000 * cpu_req["operator"] / n
    ratio = req_wall / bare_wall if req_wall and bare_wall else None
    ok = (ratio is not None and ratio <= 1.2 and op_ms <= 25 and peak < 300e6 and per_request <= 3
          and not state["failed"] and not bare_failed)
    out.measured = (
        f"One kwok cluster: {nodes_n:,} simulated nodes with {gpus_per_node} `nvidia.com/gpu` each, the real "
        f"kube-scheduler, Job controller and garbage collector; kwok runs each runner pod for {run_s:.0f} s. "
        f"**kubescribe**: {n:,} TranscriptionRequests with distinct audio created by {threads} client threads, the "
        f"operator in job mode with a GPU budget of {nodes.gpus:,}, from the first create until a watch saw every "
        f"request Succeeded. **Baseline**: then, once the requests' namespace was deleted and empty and the operator "
        f"stopped, {n:,} Jobs built by the operator's own `build_job` (same pod template, no owner) created by a "
        f"plain client of {threads} threads at the rate the requests were created ({rate:.1f}/s), from the first "
        f"create until a watch saw every Job Complete. CPU: user+system of each process (psutil) over each phase."
    )
    out.headline = (f"all {n:,} Succeeded in {secs(req_wall)}" if req_wall else
                    f"{len(state['done']):,}/{n:,} Succeeded") + (
        f"; operator {op_ms:.1f} ms CPU/request, peak RSS {mib(peak)}; {per_request:.2f} writes/request")
    out.baseline = f"{n:,} plain Jobs all Complete in {secs(bare_wall)}" if bare_wall else "plain Jobs did not finish"
    out.ratio = f"{ratio:.2f}x the plain Jobs' time" if ratio else "-"
    out.target = "<= 1.2x the plain Jobs; operator <= 25 ms CPU/request; peak RSS < 300 MB; <= 3 writes/request"
    out.status = "PASS" if ok else "MISS"
    out.table("Figures", ["what", "requests (kubescribe)", "plain Jobs (baseline)"], [
        ["creates, wall", secs(req_create_s), secs(bare_create_s)],
        ["first create to all finished", secs(req_wall) if req_wall else "not reached",
         secs(bare_wall) if bare_wall else "not reached"],
        ["failed", f"{len(state['failed']):,}", f"{bare_failed:,}"],
        *[[f"CPU: {k} (ms per request)", f"{cpu_req.get(k, 0.0):.1f} s ({1000 * cpu_req.get(k, 0.0) / n:.1f})",
           f"{cpu_bare[k]:.1f} s ({1000 * cpu_bare[k] / n:.1f})" if k in cpu_bare else "-"] for k in cpu_req],
        ["CPU: all of these (ms per request)", f"{1000 * sum(cpu_req.values()) / n:.1f}",
         f"{1000 * sum(cpu_bare.values()) / n:.1f}"],
        ["operator peak RSS", mib(peak), "-"],
        ["operator writes per request: phase status patches + Events", f"{per_request:.3f}", "-"],
        *[[f"operator writes: {k}", f"{v:,}", "-"] for k, v in sorted(writes.items())],
    ])
    if "Traceback" in op_log:
        out.notes.append("The operator log contains a traceback: " + op_log[op_log.index("Traceback"):][:600])
    out.data = {"n": n, "nodes": nodes_n, "rate": rate, "requests_wall_s": req_wall, "bare_wall_s": bare_wall,
                "requests_create_s": req_create_s, "bare_create_s": bare_create_s, "cpu_requests": cpu_req,
                "cpu_bare": cpu_bare, "peak_rss": peak, "writes": dict(writes), "writes_per_request": per_request}
    return out
