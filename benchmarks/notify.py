"""notify_slow_sink: a sink that answers after 10 s must not slow admission.

1,000 requests answered from the result cache (each finishes at admission, so each has
an event to deliver at once), created in a burst into a namespace watched by the real
operator, twice in the same run: with no sink (the baseline), then with every request
naming a sink on 127.0.0.1 that holds each POST for 10 s. Measured: from the first create
to the moment a watch has seen all of them Succeeded.
"""

from __future__ import annotations

import base64
import contextlib
import time

from harness.receiver import Receiver

from .cluster import _create_all
from .common import Context, Outcome, RequestWatch, log, median, secs

KEY = "whsec_" + base64.b64encode(b"kubescribe-benchmark-notify-key!").decode()
SINK_SECONDS = 10.0


def _cached_specs(ctx: Context, n: int, notify: list[dict] | None) -> dict[str, dict]:
    """``n`` specs of one audio whose result is in the cache: each is answered at admission."""
    from kubescribe.cache_layout import known_cache_key
    from kubescribe.models import parse_spec
    from kubescribe.store import Store

    store = Store(ctx.redis().client())
    wav = ctx.speech.sentence_wav(0)
    raw = {"audio": {"redisKey": store.put_audio(wav)}, "model": "tiny.en", "language": "en", "device": "cpu"}
    key, sha = known_cache_key(parse_spec(raw))
    if store.get_result(key, count=False) is None:
        store.put_result(key, ctx.engine().transcribe(wav, parse_spec(raw), audio_sha256=sha))
        ctx.release_engine()
    if notify:
        raw = dict(raw, notify=notify)
    return {f"n-{i:04d}": raw for i in range(n)}


def _burst(ctx: Context, prefix: str, specs: dict[str, dict], timeout: float, **settings) -> dict:
    """Create ``specs`` at once under a fresh operator; seconds until all are Succeeded."""
    from kubernetes import client

    cluster = ctx.cluster()
    n = len(specs)
    done: set[str] = set()
    state: dict = {"t_all": None}

    def on_event(name: str, phase: str | None, t: float, status: dict) -> None:
        if phase == "Succeeded":
            done.add(name)
            if len(done) >= n and state["t_all"] is None:
                state["t_all"] = t

    with contextlib.ExitStack() as stack:
        ns = ctx.namespace(prefix)
        if settings.get("audio_url_allow_cidrs"):
            api = cluster.api_client()
            stack.callback(api.close)
            client.CoreV1Api(api).create_namespaced_secret(ns, {"metadata": {"name": "hook"},
                                                               "stringData": {"key": KEY}})
        ctx.operator(stack, ns, gpu_budget="2", **settings)
        watch = RequestWatch(cluster, ns, on_event=on_event).start()
        stack.callback(watch.stop)
        t0, create_s, _ = _create_all(cluster, ns, specs, 8)
        ok = watch.wait(lambda w: state["t_all"] is not None, timeout=timeout)
        t_end = time.perf_counter()
    return {"ok": ok, "seconds": (state["t_all"] if ok else t_end) - t0, "create_s": create_s,
            "succeeded": len(done)}


def notify_slow_sink(ctx: Context) -> Outcome:
    out = Outcome("notify_slow_sink", "Notifications: a sink that answers after 10 s does not slow admission")
    n = 150 if ctx.quick else 1000
    rounds = 1 if ctx.quick else 3
    timeout = 120 if ctx.quick else 300
    ctx.redis().client().flushdb()
    plain_specs = _cached_specs(ctx, n, None)
    sink = Receiver(delay=SINK_SECONDS).start()
    notify = [{"url": sink.url, "signingSecretRef": {"name": "hook", "key": "key"}}]
    slow_specs = _cached_specs(ctx, n, notify)
    # The control: the same objects (a sink each, so the same size and CEL rules), but the
    # sink asks for Failed events only, so nothing is delivered for these Succeeded ones.
    quiet_specs = _cached_specs(ctx, n, [dict(notify[0], events=["Failed"])])
    plain: list[dict] = []
    quiet: list[dict] = []
    slow: list[dict] = []
    try:
        # Three kinds of burst per round, in a rotating order, so that neither a neighbour's
        # load on this shared machine nor the cluster growing by 1,000 objects a burst
        # falls on one kind more than the others.
        kinds = ["plain", "quiet", "slow"]
        for r in range(rounds):
            for kind in kinds[r % 3:] + kinds[:r % 3]:
                if kind == "plain":
                    plain.append(_burst(ctx, "bench-nosink", plain_specs, timeout))
                elif kind == "quiet":
                    quiet.append(_burst(ctx, "bench-quietsink", quiet_specs, timeout,
                                        audio_url_allow_cidrs="127.0.0.1/32", notify_timeout_seconds="15"))
                else:
                    before = len(sink.received)
                    slow.append(_burst(ctx, "bench-slowsink", slow_specs, timeout,
                                       audio_url_allow_cidrs="127.0.0.1/32", notify_timeout_seconds="15"))
                    slow[-1]["received"] = len(sink.received) - before
                done = {"plain": plain, "quiet": quiet, "slow": slow}[kind][-1]
                log(f"notify_slow_sink round {r + 1}: {kind}, all Succeeded in {done['seconds']:.2f}s")
    finally:
        sink.stop()
    ok = all(x["ok"] for x in plain + quiet + slow)
    base_s, slow_s = median([x["seconds"] for x in plain]), median([x["seconds"] for x in slow])
    quiet_s = median([x["seconds"] for x in quiet])
    lag = lambda xs: median([x["seconds"] - x["create_s"] for x in xs])  # noqa: E731
    ratio = slow_s / base_s
    out.measured = (
        f"{n:,} TranscriptionRequests of one audio whose transcript is already in the result cache, so the "
        "operator answers each at admission (Succeeded, cached) and each has its event to deliver at once; created "
        "by 8 client threads into a fresh namespace watched by a fresh real operator (job mode, default "
        "KUBESCRIBE_NOTIFY_WORKERS=4). Time: from the first create call to the moment a watch (opened before) has "
        f"seen all {n:,} Succeeded. **Baseline**: the same burst with no sink. **kubescribe**: every request names "
        f"a sink on 127.0.0.1 that holds each POST for {SINK_SECONDS:.0f} s before answering 204 "
        f"(KUBESCRIBE_NOTIFY_TIMEOUT_SECONDS 15, so the POSTs are not cut short). **Control**: the same objects "
        "as kubescribe's (a sink each) but the sink asks for Failed events only, so nothing is delivered: what "
        f"the larger objects cost the API server, apart from any delivery. {rounds} round(s), each a baseline, "
        "a control and a sink burst in a rotating order, each burst with a fresh operator and namespace; the "
        "medians are compared."
    )
    out.headline = f"all {n:,} Succeeded in {secs(slow_s)} (median) with the 10 s sink"
    out.baseline = f"no sink: {secs(base_s)} (median)"
    out.ratio = f"{ratio:.2f}x the no-sink time"
    out.target = "within 10 % of the no-sink time (ratio <= 1.10)"
    out.status = "PASS" if ok and ratio <= 1.10 else "MISS"
    rows = []
    for r, (a, q, b) in enumerate(zip(plain, quiet, slow), 1):
        rows.append([str(r), f"{secs(a['seconds'])} ({secs(a['create_s'])})", f"{secs(q['seconds'])} "
                     f"({secs(q['create_s'])})", f"{secs(b['seconds'])} ({secs(b['create_s'])})", str(b["received"])])
    rows.append(["median", secs(base_s), secs(quiet_s), secs(slow_s), ""])
    out.table("Rounds: all Succeeded after (creates wall)", ["round", "no sink", "control: sink not asked",
                                                              "10 s sink", "POSTs received by then"], rows)
    out.notes.append(f"Against the control (same objects, nothing delivered) the 10 s sink's burst took "
                     f"{slow_s / quiet_s:.2f}x; the control against no sink {quiet_s / base_s:.2f}x.")
    out.notes.append(
        f"Admission keeps up with the creates on both sides: the last request was Succeeded {secs(lag(plain))} "
        f"(no sink), {secs(lag(quiet))} (control) and {secs(lag(slow))} (10 s sink) after the last create returned (medians); the rest of the "
        "time is the API server taking 1,000 creates while the operator writes 1,000 status patches, on 2 cores "
        "shared with etcd and the client threads, which is also where a neighbour's load shows.")
    out.notes.append(
        "Deliveries run on the notifier's own 4 threads, each held 10 s by this sink, so only a few POSTs had "
        "arrived when the last request was Succeeded; the rest wait their turn in the notifier's schedule "
        "(status.notifications records each) without holding an admission or a watch handler.")
    out.data = {"n": n, "plain": plain, "quiet": quiet, "slow": slow, "ratio": ratio}
    return out
