"""Gateway benchmarks: the HTTP gateway (TokenReview, SubjectAccessReview, upload to Redis,
request, watch) against creating the request directly, on the real control plane with the
real operator and gateway processes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from typing import Any

from harness.memory import RssSampler
from harness.speech import wav_stream

from .common import Context, Outcome, RequestWatch, log, median, mib, ms, percentile, secs

WRITER_RULES = [{"apiGroups": ["kubescribe.io"], "resources": ["transcriptionrequests"],
                 "verbs": ["create", "get", "list", "watch", "delete"]}]


def _gateway(ctx: Context, stack: contextlib.ExitStack, **settings: Any):
    from harness.gateway import GatewayProcess

    gw = GatewayProcess(str(ctx.cluster().kubeconfig_path), ctx.redis().url, ctx.workdir, **settings)
    stack.callback(gw.stop)
    return gw.start()


def _writer_token(ctx: Context, stack: contextlib.ExitStack, ns: str) -> str:
    from harness.gateway import Callers

    api = ctx.cluster().api_client()
    stack.callback(api.close)
    return Callers(api, ns).token("bench-writer", rules=WRITER_RULES)


def _spec(audio: bytes) -> tuple[dict, str]:
    """The spec the gateway builds for a whisper-1 upload of ``audio``, and its cache key."""
    from kubescribe.gateway.openai import build_spec
    from kubescribe.models import parse_spec
    from kubescribe.cache_layout import audio_key, known_cache_key

    sha = hashlib.sha256(audio).hexdigest()
    spec, _ = build_spec({"model": "whisper-1"}, task="transcribe", aliases={"whisper-1": "tiny.en"},
                         audio={"redisKey": audio_key(sha), "sha256": sha})
    key, _ = known_cache_key(parse_spec(spec))
    return spec, key


# --------------------------------------------------------------------- gateway_cache_hit_overhead


def gateway_cache_hit_overhead(ctx: Context) -> Outcome:
    import httpx

    from kubescribe.store import Store

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
        from harness.operator import Requests

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


# --------------------------------------------------------------------- gateway_upload_throughput


def gateway_upload_throughput(ctx: Context) -> Outcome:
    """A large upload through the gateway into the object store against a direct PUT of
    the same bytes to the same server, interleaved in one run."""
    import io

    import httpx

    from harness.envtest.s3 import S3Server, bucket_name

    out = Outcome("gateway_upload_throughput", "Gateway upload into the object store vs a direct PUT")
    size = (256 if ctx.quick else 1024) * 1024 * 1024
    rounds = 2 if ctx.quick else 3

    with contextlib.ExitStack() as stack:
        s3dir = ctx.workdir / "s3"
        s3dir.mkdir(exist_ok=True)
        s3 = S3Server(s3dir)
        stack.callback(s3.stop)
        s3.start()
        bucket = s3.create_bucket(bucket_name("bench-uploads"))
        client = s3.client()
        ns = ctx.namespace("bench-gwu")
        from harness.gateway import GatewayProcess

        gw = GatewayProcess(str(ctx.cluster().kubeconfig_path), ctx.redis().url, ctx.workdir,
                            gateway_max_upload_bytes=str(size + 1024 * 1024)).use_object_store(s3, bucket)
        stack.callback(gw.stop)
        gw.start()
        token = _writer_token(ctx, stack, ns)
        http = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {token}"}, timeout=900)
        stack.callback(http.close)
        boundary = "ksbench0123456789"
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="long.wav"\r\n\r\n').encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def through_gateway(length: bool = True) -> float:
            """With a Content-Length (as clients send a file): one PUT; without (chunked): parts."""
            def body():
                yield head
                yield from wav_stream(size)
                yield tail
            t0 = time.perf_counter()
            r = http.post("/v1/transcriptions", content=body(), headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                **({"Content-Length": str(len(head) + size + len(tail))} if length else {})})
            elapsed = time.perf_counter() - t0
            if r.status_code != 202:
                raise RuntimeError(f"gateway answered {r.status_code}: {r.text[:300]}")
            return elapsed

        def direct() -> float:
            """What a client of the object store does: one PUT of the bytes (to a
            presigned URL, as after POST /v1/uploads)."""
            url = client.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "direct/long.wav"},
                                                ExpiresIn=3600)
            t0 = time.perf_counter()
            r = httpx.put(url, content=wav_stream(size), headers={"Content-Length": str(size)}, timeout=900)
            elapsed = time.perf_counter() - t0
            if r.status_code != 200:
                raise RuntimeError(f"direct PUT answered {r.status_code}: {r.text[:300]}")
            return elapsed

        class Generated(io.RawIOBase):
            """The generated bytes as a file, for boto3 (read as it asks)."""

            def __init__(self):
                self.chunks, self.rest = wav_stream(size), b""

            def readable(self) -> bool:
                return True

            def readinto(self, buf) -> int:
                while not self.rest:
                    self.rest = next(self.chunks, b"")
                    if not self.rest:
                        return 0
                n = min(len(buf), len(self.rest))
                buf[:n], self.rest = self.rest[:n], self.rest[n:]
                return n

        def boto3_multipart() -> float:
            """A reference, not the baseline: boto3's own multipart upload of the same bytes
            (``upload_fileobj``: 8 MiB parts, 4 in flight)."""
            from boto3.s3.transfer import TransferConfig

            from kubescribe.objectstore import MULTIPART_BYTES

            config = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES,
                                    max_concurrency=4)
            t0 = time.perf_counter()
            client.upload_fileobj(io.BufferedReader(Generated(), 1024 * 1024), bucket, "direct/multipart.wav",
                                  Config=config)
            return time.perf_counter() - t0

        def empty() -> None:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for obj in page.get("Contents") or ():
                    client.delete_object(Bucket=bucket, Key=obj["Key"])

        import psutil

        # CPU seconds of each process on the path: on 2 cores the paths are bound by CPU,
        # so what a path costs in CPU per byte bounds its throughput.
        procs = {"client": psutil.Process(), "gateway": psutil.Process(gw.proc.pid),
                 "versitygw": psutil.Process(s3.process.pid)}

        def cpu() -> dict[str, float]:
            return {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}

        res: dict[str, list[float]] = {"gateway": [], "direct": [], "gateway, chunked": [], "boto3 multipart": []}
        cpus: dict[str, list[dict[str, float]]] = {path: [] for path in res}

        def timed(path: str, run) -> None:
            before = cpu()
            res[path].append(run())
            after = cpu()
            cpus[path].append({name: after[name] - before[name] for name in procs})
            empty()

        peaks: list[int] = []
        idle_rss = RssSampler(gw.proc.pid).proc.memory_info().rss
        for _ in range(rounds):  # interleaved, so all see the same machine load
            timed("direct", direct)
            timed("boto3 multipart", boto3_multipart)
            sampler = RssSampler(gw.proc.pid).start()
            timed("gateway", through_gateway)
            peaks.append(sampler.stop())
            timed("gateway, chunked", lambda: through_gateway(length=False))
        gw_log = gw.logs()

    rate = {k: size / median(v) / 2**20 for k, v in res.items()}
    ratio = rate["gateway"] / rate["direct"]
    out.measured = (
        f"{rounds} rounds, interleaved, of {mib(size)} of generated audio (a WAV header, then a 4 MiB random block "
        "repeated) sent from one client, generated as sent. **Gateway**: `POST /v1/transcriptions`, multipart, "
        "with a ServiceAccount token and a Content-Length, the file last (as clients send it): TokenReview and "
        "SubjectAccessReview, the file part streamed into `<prefix>uploads/<id>` on versitygw as it arrives, as "
        "one PUT (its length known from the form's), SHA-256 on the way, a TranscriptionRequest created with "
        "`audio.s3`; timed by the client to the 202. **Baseline**: the same bytes in one HTTP PUT to a presigned "
        "URL of the same versitygw (what a client does after `POST /v1/uploads`). **References**: the same "
        "gateway call sent chunked (no Content-Length), which goes up in 8 MiB parts, two in flight; and "
        "boto3's own multipart upload of the same bytes from this process (`upload_fileobj`, 8 MiB parts, 4 in "
        "flight), to tell the cost of multipart on this server from the gateway's own. All on loopback, the "
        "server writing to the same disk."
    )
    out.headline = (f"gateway {rate['gateway']:.1f} MiB/s (median of {rounds}); peak RSS {mib(max(peaks))} "
                    f"(idle {mib(idle_rss)}); in parts (chunked) {rate['gateway, chunked']:.1f} MiB/s; "
                    f"boto3 multipart {rate['boto3 multipart']:.1f} MiB/s")
    out.baseline = f"direct PUT {rate['direct']:.1f} MiB/s"
    out.ratio = f"{ratio:.2f}x the direct PUT's throughput"
    out.target = ">= 0.7x"
    out.status = "PASS" if ratio >= 0.7 else "MISS"
    out.table(f"{mib(size)} per upload, seconds", ["path", "median", "min", "max", "MiB/s (median)"], [
        [path, secs(median(v)), secs(min(v)), secs(max(v)), f"{rate[path]:.1f}"] for path, v in res.items()])
    gib = size / 2**30
    per_gib = {path: {name: median([c[name] for c in runs]) / gib for name in procs} for path, runs in cpus.items()}
    out.table("CPU seconds per GiB moved (median), by process", ["path", *procs, "all"], [
        [path, *(f"{v[name]:.2f}" for name in procs), f"{sum(v.values()):.2f}"] for path, v in per_gib.items()])
    cost = {path: sum(v.values()) for path, v in per_gib.items()}
    busy = {path: cost[path] / (median(res[path]) / gib) for path in res}  # cores in use, on average
    out.notes.append(
        f"CPU per GiB moved: the gateway path {cost['gateway']:.2f} s against the direct PUT's {cost['direct']:.2f} "
        f"({cost['gateway'] / cost['direct']:.2f}x: the bytes cross loopback twice, are framed, parsed and "
        f"hashed); of that the gateway process spends {per_gib['gateway']['gateway']:.2f} s. In parts the server "
        f"assembles them: versitygw {per_gib['gateway, chunked']['versitygw']:.2f} s per GiB against "
        f"{per_gib['gateway']['versitygw']:.2f} for one PUT. On average the gateway path kept "
        f"{busy['gateway']:.2f} of the 2 cores busy, in parts {busy['gateway, chunked']:.2f}, the direct PUT "
        f"{busy['direct']:.2f}, boto3's multipart {busy['boto3 multipart']:.2f}.")
    if "Traceback" in gw_log:
        out.notes.append("The gateway log has a traceback: " + gw_log[gw_log.index("Traceback"):][:600])
    out.data = {**res, "size": size, "peak_rss": peaks, "idle_rss": idle_rss, "cpu_seconds": cpus}
    log(f"gateway_upload_throughput: {out.headline} | {out.baseline} | {out.ratio}")
    return out
