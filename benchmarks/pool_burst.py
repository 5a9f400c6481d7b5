"""pool_burst_10k: 10,000 short requests in pool mode, with the pooled runners simulated.

Everything but the transcription is real: etcd, kube-apiserver (with an audit log of every
write), kube-controller-manager, Redis and the operator in pool mode as a process under
its own ServiceAccount. The runners are harness.simulated_pool's processes: they take work
from the real stream as ``kubescribe-runner pool`` does and answer each request with a
runner's outcome after a set time, the way kwok stands in for kubelets in scale_10k. What
is measured is how fast the operator moves a burst of short clips through the pool.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from .cluster import _create_all
from .common import Context, Outcome, RequestWatch, log, mib, secs
from .scale import ADMITTED, CountSampler, cpu_seconds, distinct_requests, named_namespaces, scale_cluster, write_kinds
from harness.memory import RssSampler


def pool_burst_10k(ctx: Context) -> Outcome:
    import psutil
    from kubernetes import client

    from harness.envtest.audit import audit_writes
    from harness.operator import OperatorProcess, operator_identity
    from harness.simulated_pool import SimulatedPool

    n = 1000 if ctx.quick else 10000
    runners, per_runner, run_s, threads = 64, 4, 0.5, 8
    timeout = 300 if ctx.quick else 1200
    out = Outcome("pool_burst_10k", f"Pool mode: {n:,} short requests in a burst, runners simulated")
    specs = distinct_requests("clip", n)
    redis = ctx.redis()
    redis.client().flushdb()
    state: dict[str, Any] = {"dispatched": set(), "done": set(), "failed": set(), "t_dispatched": None,
                             "t_done": None}

    def on_event(name: str, phase: str | None, t: float, status: dict) -> None:
        if phase in ADMITTED:  # Running: on the stream (the operator writes the stream first)
            state["dispatched"].add(name)
        if phase == "Succeeded":
            state["done"].add(name)
        elif phase == "Failed":
            state["failed"].add(name)
        if state["t_dispatched"] is None and len(state["dispatched"]) >= n:
            state["t_dispatched"] = t
        if state["t_done"] is None and len(state["done"]) + len(state["failed"]) >= n:
            state["t_done"] = t

    with contextlib.ExitStack() as stack:
        cluster = scale_cluster(ctx, "pool-burst-cluster")
        stack.callback(cluster.stop)
        cluster.start()
        kubeconfig, user = operator_identity(cluster)
        api = cluster.api_client()
        stack.callback(api.close)
        core = client.CoreV1Api(api)
        ns, base_ns = "burst", "burst-create-only"
        named_namespaces(core, ns, base_ns)
        # Baseline: the same creates into a namespace no operator watches, before anything runs.
        _t, base_s, _lat = _create_all(cluster, base_ns, specs, threads)
        log(f"pool_burst_10k baseline: {n} creates in {base_s:.1f}s")

        op = OperatorProcess(kubeconfig, ns, redis.url, ctx.workdir, mode="pool", gpu_budget=str(runners),
                             requests_per_runner=str(per_runner), pool_namespace=ns, resync_seconds="30",
                             log_level="WARNING")
        stack.callback(op.stop)
        op.start()
        pool = SimulatedPool(redis.url, ctx.workdir, processes=4, consumers=runners // 4, run_seconds=run_s,
                             batch_max=per_runner)
        stack.callback(pool.stop)
        pool.start()
        procs = {"operator": psutil.Process(op.proc.pid), "kube-apiserver": psutil.Process(cluster.apiserver.pid),
                 "etcd": psutil.Process(cluster.etcd.pid),
                 "kube-controller-manager": psutil.Process(cluster.controller_manager.pid),
                 "simulated runners": [psutil.Process(p) for p in pool.pids()]}

        time.sleep(1.0)  # the operator's first resync and list are not the burst's
        idle_rss = procs["operator"].memory_info().rss
        sampler = RssSampler(op.proc.pid).start()
        stack.callback(sampler.stop)
        watch = RequestWatch(cluster, ns, on_event=on_event).start()
        stack.callback(watch.stop)
        counts = CountSampler(cluster, ns).start()
        stack.callback(counts.stop)
        cpu0 = cpu_seconds(procs)
        t0, create_s, _lat = _create_all(cluster, ns, specs, threads)
        t_burst_end = t0 + create_s
        log(f"pool_burst_10k: {n} creates in {create_s:.1f}s; waiting for all to succeed")
        finished = watch.wait(lambda w: state["t_done"] is not None, timeout=timeout)
        cpu1 = cpu_seconds(procs)
        peak = sampler.stop()
        counts.stop()
        writes = audit_writes(cluster.iter_audit_events(), user=user, namespace=ns)
        op_log = op.logs()

    kinds = write_kinds(writes)
    # the budget is per request (phase writes and Events); queue positions are the queue's
    per_request = (kinds["status: phase"] + kinds["events create"]) / n
    positions_per_request = kinds["status: queue position"] / n
    cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
    cores = psutil.cpu_count() or 1
    floor = sum(v for k, v in cpu.items() if k != "simulated runners") / cores  # the machine's CPU for the work
    dispatched_after = state["t_dispatched"] - t_burst_end if state["t_dispatched"] else None
    done_after = state["t_done"] - t_burst_end if state["t_done"] else None
    span = state["t_done"] - t0 if state["t_done"] else None
    ok = (dispatched_after is not None and dispatched_after <= 60 and peak < 300e6 and per_request <= 3
          and not state["failed"])
    bound = n * run_s / (runners * per_runner)

    out.measured = (
        f"{n:,} TranscriptionRequests with distinct audio, created by {threads} client threads, on an operator in pool "
        f"mode (`KUBESCRIBE_MODE=pool`, GPU budget {runners}, {per_runner} requests per runner: at most "
        f"{runners * per_runner} dispatched at once). {runners} simulated pooled runners (4 processes, "
        f"`harness/simulated_pool.py`) take work from the real Redis stream as `kubescribe-runner pool` does, up to "
        f"{per_runner} entries at a time, hold them {run_s} s and answer each with a runner's successful outcome "
        "(nothing transcribed). Dispatched: a watch opened before the burst saw the request Running (the operator "
        "writes the stream first, then the status). Writes: the operator's successful writes in the API server's "
        "audit log. CPU: user+system of each process (psutil) from the burst's start until all Succeeded. "
        "Baseline: the same creates into a namespace no operator watches, in the same run, before the operator "
        "started."
    )
    out.headline = (f"all {n:,} dispatched {secs(dispatched_after)} after the burst" if dispatched_after is not None
                    else f"{len(state['dispatched']):,}/{n:,} dispatched")
    out.headline += (f"; {per_request:.2f} writes/request (+{positions_per_request:.2f} queue positions); operator "
                     f"{1000 * cpu['operator'] / n:.1f} ms CPU/request, peak RSS {mib(peak)}")
    out.baseline = f"{n:,} creates alone: {secs(base_s)}"
    out.ratio = (f"all Succeeded {secs(span)} from the first create: {span / floor:.2f}x the CPU floor of "
                 f"{secs(floor)} (the control plane's and the operator's CPU over {cores} cores)" if span else "-")
    out.target = "all dispatched within 60 s of the burst's end; operator peak RSS < 300 MB; <= 3 writes/request"
    out.status = "PASS" if ok else "MISS"
    out.table("Figures", ["what", "value"], [
        [f"{n:,} creates (burst), wall", secs(create_s)],
        [f"{n:,} creates alone (baseline)", secs(base_s)],
        ["all dispatched (Running or later) after the burst",
         secs(dispatched_after) if dispatched_after is not None else f"not reached ({len(state['dispatched']):,})"],
        ["all Succeeded after the burst", secs(done_after) if done_after is not None else
         f"not reached ({len(state['done']):,} done, {len(state['failed']):,} failed)"],
        ["the runners' own bound (n x hold / (runners x batch))", secs(bound)],
        [f"CPU floor: the operator's, API server's, etcd's and controller-manager's CPU / {cores} cores",
         secs(floor)],
        ["operator RSS idle / peak", f"{mib(idle_rss)} / {mib(peak)}"],
        ["operator writes per request: phase status patches + Events (the budget)", f"{per_request:.3f}"],
        ["queue-position writes per request (a cost of the queue: at most 20 per 5 s)",
         f"{positions_per_request:.3f}"],
        *[[f"writes: {k}", f"{v:,} ({v / n:.3f} per request)"] for k, v in sorted(kinds.items())],
        *[[f"CPU: {k}", f"{v:.1f} s ({1000 * v / n:.1f} ms per request)"] for k, v in cpu.items()],
    ])
    step = max(1, len(counts.samples) // 30)
    out.table("Objects in etcd over time (s from the burst's start)", ["t", "TranscriptionRequests", "Jobs", "Pods"],
              [[f"{t:.0f}", f"{a:,}", f"{b:,}", f"{c:,}"] for t, a, b, c in counts.samples[::step]])
    per_cpu = 1000 * floor * cores / n
    out.notes.append(
        f"The bound: each request cost {per_cpu:.1f} ms of CPU in the operator and the control plane together "
        f"(operator {1000 * cpu['operator'] / n:.1f}, kube-apiserver {1000 * cpu['kube-apiserver'] / n:.1f}, "
        f"etcd {1000 * cpu['etcd'] / n:.1f}), so on {cores} cores {n:,} requests take at least {secs(floor)} "
        f"from the first create, whatever the runners do; the burst itself took {secs(create_s)} of that.")
    if not finished:
        out.notes.append(f"Not every request finished within {timeout} s.")
    if "Traceback" in op_log:
        out.notes.append("The operator log contains a traceback: " + op_log[op_log.index("Traceback"):][:600])
    out.data = {"n": n, "runners": runners, "per_runner": per_runner, "run_s": run_s, "create_s": create_s,
                "base_s": base_s, "dispatched_after_s": dispatched_after, "done_after_s": done_after,
                "peak_rss": peak, "idle_rss": idle_rss, "writes": dict(kinds), "writes_per_request": per_request,
                "positions_per_request": positions_per_request, "cpu_floor_s": floor,
                "cpu": cpu, "failed": sorted(state["failed"])[:20]}
    return out
