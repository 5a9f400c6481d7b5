"""Gateway benchmarks: the HTTP gateway (TokenReview, SubjectAccessReview, upload to Redis,
request, watch) against creating the request directly, on the real control plane with the
real operator and gateway processes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from typing import Any

from .common import Context, Outcome, RequestWatch, RssSampler, log, median, mib, ms, percentile, secs

WRITER_RULES = [{"apiGroups": ["kubescribe.io"], "resources": ["transcriptionrequests"],
                 "verbs": ["create", "get", "list", "watch", "delete"]}]


def _gateway(ctx: Context, stack: contextlib.ExitStack, **settings: Any):
    from tests.support.gateway import GatewayProcess

    gw = GatewayProcess(str(ctx.cluster().kubeconfig_path), ctx.redis().url, ctx.workdir, **settings)
    stack.callback(gw.stop)
    return gw.start()


def _writer_token(ctx: Context, stack: contextlib.ExitStack, ns: str) -> str:
    from tests.support.gateway import Callers

    api = ctx.cluster().api_client()
    stack.callback(api.close)
    return Callers(api, ns).token("bench-writer", rules=WRITER_RULES)


def _spec(audio: bytes) -> tuple[dict, str]:
    """The spec the gateway builds for a whisper-1 upload of ``audio``, and its cache key."""
    from kubescribe.gateway.openai import build_spec
    from kubescribe.models import parse_spec
    from kubescribe.store import audio_key, known_cache_key

    sha = hashlib.sha256(audio).hexdigest()
    spec, _ = build_spec({"model": "whisper-1"}, task="transcribe", aliases={"whisper-1": "tiny.en"},
                         audio={"redisKey": audio_key(sha), "sha256": sha})
    key, _ = known_cache_key(parse_spec(spec))
    return spec, key


# --------------------------------------------------------------------- gateway_cache_hit_overhead


def gateway_cache_hit_overhead(ctx: Context) -> Outcome:
    import httpx

    from kubescribe.store import Store, known_cache_key  # noqa: F401

    out = Outcome("gateway_cache_hit_overhead", "Gateway round trip vs creating the request directly (cache hits)")
    n = 5 if ctx.quick else 30
    store = Store(ctx.redis().client())
    store.client.flushdb()
    wav = ctx.speech.sentence_wav(0)
    spec, key = _spec(wav)
    from kubescribe.models import parse_spec

    result = ctx.engine().transcribe(wav, parse_spec(spec), audio_sha256=spec["audio"]["sha256"])
    ctx.release_engine()
    store.put_result(key, result)

    with contextlib.ExitStack() as stack:
        ns = ctx.namespace("bench-gw")
        ctx.operator(stack, ns, gpu_budget="2")
        gw = _gateway(ctx, stack)
        token = _writer_token(ctx, stack, ns)
        cluster = ctx.cluster()
        api = cluster.api_client()
        stack.callback(api.close)
        from tests.support.operator import Requests

        reqs = Requests(api, ns)
        watch = RequestWatch(cluster, ns).start()
        stack.callback(watch.stop)
        http = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        stack.callback(http.close)

        def direct(name: str) -> float:
            """What a client of the Kubernetes API does: upload to Redis, create, watch."""
            t0 = time.perf_counter()
            store.put_audio(wav)
            reqs.create(name, spec)
            if not watch.wait(lambda w: (name, "Succeeded") in w.first_phase or (name, "Failed") in w.first_phase,
                              timeout=30) or not watch.status[name].get("cached"):
                raise RuntimeError(f"{name}: not a cache hit: {watch.status.get(name)}")
            return watch.first_phase[(name, "Succeeded")] - t0

        stages: dict[str, list[float]] = {}

        def through_gateway() -> float:
            t0 = time.perf_counter()
            r = http.post("/v1/audio/transcriptions", files={"file": ("s.wav", wav)}, data={"model": "whisper-1"})
            elapsed = time.perf_counter() - t0
            for part in r.headers.get("server-timing", "").split(","):
                if ";dur=" in part:
                    stage, dur = part.strip().split(";dur=")
                    stages.setdefault(stage, []).append(float(dur) / 1000)
            if r.status_code != 200 or r.headers.get("x-kubescribe-cached") != "true":
                raise RuntimeError(f"gateway answered {r.status_code} cached={r.headers.get('x-kubescribe-cached')}: "
                                   f"{r.text[:300]}")
            return elapsed

        direct("warmup")
        through_gateway()
        stages.clear()
        res: dict[str, list[float]] = {"direct": [], "gateway": []}
        for i in range(n):  # interleaved, so both see the same machine load
            res["direct"].append(direct(f"direct-{i:02d}"))
            res["gateway"].append(through_gateway())
            time.sleep(0.2)  # one request at a time: let the operator post its Event
        gw_log = gw.logs()

    d50, g50 = median(res["direct"]), median(res["gateway"])
    overhead = g50 - d50
    out.measured = (
        f"{n} cache hits each way, interleaved, after one warm-up each. **Gateway**: `POST /v1/audio/transcriptions` "
        "(multipart, a 3 s espeak-ng WAV, `model=whisper-1`) with a ServiceAccount token (TokenRequest), through "
        "TokenReview and SubjectAccessReview (answers reused for 10 s, the default), the upload stored in Redis, "
        "a TranscriptionRequest created and watched until `Succeeded`, the transcript read from Redis and rendered "
        "as OpenAI JSON; timed by the client from request to full response. **Baseline**: what a Kubernetes "
        "client does for the same answer: the same bytes `SET` in Redis, the same spec created with the Python "
        "client, a namespace watch (opened beforehand) seeing `Succeeded` with `cached: true`. Real kube-apiserver "
        "and etcd, the real operator and gateway processes, real redis-server."
    )
    out.headline = f"gateway median {ms(g50)}, p95 {ms(percentile(res['gateway'], 95))}"
    out.baseline = f"direct median {ms(d50)}, p95 {ms(percentile(res['direct'], 95))}"
    out.ratio = f"gateway adds {ms(overhead)} at the median ({g50 / d50:.2f}x)"
    out.target = "gateway adds <= 10 ms p50"
    out.status = "PASS" if overhead <= 0.010 else "MISS"
    out.table(f"{n} cache hits each", ["path", "median", "p95", "min", "max"], [
        ["gateway: HTTP upload -> OpenAI JSON", ms(g50), ms(percentile(res["gateway"], 95)), ms(min(res["gateway"])),
         ms(max(res["gateway"]))],
        ["direct: Redis SET + create -> watch Succeeded", ms(d50), ms(percentile(res["direct"], 95)),
         ms(min(res["direct"])), ms(max(res["direct"]))],
    ])
    out.table("Where the gateway's time goes (its Server-Timing header, medians)", list(stages),
              [[ms(median(v)) for v in stages.values()]])
    if "Traceback" in gw_log:
        out.notes.append("The gateway log has a traceback: " + gw_log[gw_log.index("Traceback"):][:600])
    out.data = {**res, "stages": stages}
    log("gateway stages: " + ", ".join(f"{k} {median(v) * 1000:.1f} ms" for k, v in stages.items()))
    return out


# --------------------------------------------------------------------- gateway_concurrent_uploads


def gateway_concurrent_uploads(ctx: Context) -> Outcome:
    import httpx

    from kubescribe.store import Store

    out = Outcome("gateway_concurrent_uploads", "200 concurrent small uploads through the gateway")
    n = 40 if ctx.quick else 200
    store = Store(ctx.redis().client())
    store.client.flushdb()
    base = ctx.speech.sentence_wav(1)
    from kubescribe.models import parse_spec

    first_spec, first_key = _spec(base)
    result = ctx.engine().transcribe(base, parse_spec(first_spec), audio_sha256=first_spec["audio"]["sha256"])
    ctx.release_engine()
    # n different files (trailing bytes differ, so n different hashes and n requests), each
    # with its transcript already cached: the benchmark measures the gateway, not the GPU.
    uploads = [base + i.to_bytes(4, "big") for i in range(n)]
    for audio in uploads:
        store.put_result(_spec(audio)[1], result)

    with contextlib.ExitStack() as stack:
        ns = ctx.namespace("bench-gwc")
        ctx.operator(stack, ns, gpu_budget="2")
        gw = _gateway(ctx, stack, gateway_max_concurrent_per_identity=str(n + 10))
        token = _writer_token(ctx, stack, ns)
        idle = RssSampler(gw.proc.pid)
        idle_rss = idle.proc.memory_info().rss
        sampler = RssSampler(gw.proc.pid).start()

        async def run() -> tuple[list[float], list[str], float]:
            limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
            async with httpx.AsyncClient(base_url=gw.url, headers={"Authorization": f"Bearer {token}"},
                                         timeout=300, limits=limits) as client:
                async def one(audio: bytes) -> tuple[float, str | None]:
                    t0 = time.perf_counter()
                    try:
                        r = await client.post("/v1/audio/transcriptions", files={"file": ("s.wav", audio)},
                                              data={"model": "whisper-1"})
                    except httpx.HTTPError as exc:
                        return time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"
                    ok = r.status_code == 200 and r.json().get("text")
                    return time.perf_counter() - t0, None if ok else f"{r.status_code} {r.text[:200]}"

                t0 = time.perf_counter()
                got = await asyncio.gather(*(one(a) for a in uploads))
                return [t for t, _ in got], [e for _, e in got if e], time.perf_counter() - t0

        latencies, errors, wall = asyncio.run(run())
        peak = sampler.stop()
        gw_log = gw.logs()

        # Baseline: the same number of requests created directly (20 threads), until all Succeeded.
        from .cluster import _create_all

        specs = {}
        for i in range(n):
            audio = base + (n + i).to_bytes(4, "big")
            spec, key = _spec(audio)
            store.put_audio(audio)
            store.put_result(key, result)
            specs[f"direct-{i:03d}"] = spec
        watch = RequestWatch(ctx.cluster(), ns).start()
        stack.callback(watch.stop)
        t0 = time.perf_counter()
        _create_all(ctx.cluster(), ns, specs, threads=20)
        watch.wait(lambda w: all((name, "Succeeded") in w.first_phase for name in specs), timeout=300)
        direct_wall = time.perf_counter() - t0
        direct_ok = sum(1 for name in specs if (name, "Succeeded") in watch.first_phase)

    out.measured = (
        f"{n} different small WAV uploads (~{mib(len(base))} each, every transcript already cached so no runner "
        f"runs) sent at once from one asyncio client with one connection each, one ServiceAccount token (the "
        f"per-identity limit raised to {n + 10} for the run; its default, 8, would answer 429 to the rest), to one "
        "gateway process; every answer checked (200 with text). Peak RSS sampled every 50 ms. **Baseline**: the "
        f"same number of requests created directly with the Python client from 20 threads (audio already in "
        "Redis), until a watch sees every one Succeeded."
    )
    out.headline = (f"{n - len(errors)}/{n} succeeded in {secs(wall)}; p50 {ms(median(latencies))}, p95 "
                    f"{ms(percentile(latencies, 95))}; gateway peak RSS {mib(peak)} (idle {mib(idle_rss)})")
    out.baseline = f"direct: {direct_ok}/{n} Succeeded in {secs(direct_wall)}"
    out.ratio = f"{wall / direct_wall:.2f}x the direct wall time"
    out.target = f"all {n} finish without error; peak RSS reported"
    out.status = "PASS" if not errors else "MISS"
    out.table("Latency of the concurrent uploads", ["p50", "p95", "max", "wall", "errors", "peak RSS", "idle RSS"],
              [[ms(median(latencies)), ms(percentile(latencies, 95)), ms(max(latencies)), secs(wall), len(errors),
                mib(peak), mib(idle_rss)]])
    if errors:
        out.notes.append("First errors: " + "; ".join(errors[:5]))
    if "Traceback" in gw_log:
        out.notes.append("The gateway log has a traceback: " + gw_log[gw_log.index("Traceback"):][:600])
    out.data = {"latencies": latencies, "errors": errors, "wall": wall, "peak_rss": peak, "idle_rss": idle_rss,
                "direct_wall": direct_wall}
    log(f"gateway_concurrent_uploads: {out.headline}")
    return out
