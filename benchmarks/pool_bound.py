"""pooled_vs_bound: a warm pool's wall time for 20 short requests against the compute
bound of the same machine, measured in the same run.

The bound is the same work with nothing around it: as many engine processes as the pool
has runners, each with the model loaded and warm (as a pooled runner is), taking the same
clips in groups of ``KUBESCRIBE_REQUESTS_PER_RUNNER`` (the most a pooled runner packs
into shared decoding windows) from one shared list until none is left. What the pool
spends above that is kubescribe's own: admission, the Redis stream, batches that form
from whatever is queued when a runner looks, outcomes and status writes.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time

from harness.speech import CORPUS, wer

from .cluster import _run_mode, pool_mode_available
from .common import Context, Outcome, log, median, secs

#: A warm engine process: loads tiny.en and decodes two clips packed, says "ready", then
#: answers each "i j" line with the texts of clips i..j-1 decoded packed and the seconds
#: that took.
_CHILD = r"""
import json, sys, time
from kubescribe.models import parse_spec
from kubescribe.runner.engine import Engine

wavs = [open(p, "rb").read() for p in json.loads(sys.argv[1])]
spec = parse_spec({"audio": {"redisKey": "kubescribe:audio:" + "0" * 64}, "model": "tiny.en",
                   "language": "en", "device": "cpu"})
engine = Engine()
engine.model(spec.model, spec.device, spec.compute_type)
engine.transcribe_many([(w, spec, None) for w in wavs[:2]])
print("ready", flush=True)
for line in sys.stdin:
    i, j = map(int, line.split())
    t0 = time.perf_counter()
    texts = [r["text"] for r in engine.transcribe_many([(w, spec, None) for w in wavs[i:j]])]
    print(json.dumps({"i": i, "texts": texts, "seconds": time.perf_counter() - t0}), flush=True)
"""

RUNNERS = 2  # the pool's runners: the operator's GPU budget in _run_mode
GROUP = 4  # KUBESCRIBE_REQUESTS_PER_RUNNER's default


def _bound(ctx: Context, n: int) -> dict:
    """``RUNNERS`` warm engine processes sharing the ``n`` clips in groups of ``GROUP``."""
    paths = []
    for i in range(n):
        path = ctx.workdir / f"bound-{i:02d}.wav"
        path.write_bytes(ctx.speech.sentence_wav(i))
        paths.append(str(path))
    errors = (ctx.workdir / "bound-children.log").open("ab")
    children = [subprocess.Popen([sys.executable, "-P", "-c", _CHILD, json.dumps(paths)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=errors, text=True, cwd="/")
                for _ in range(RUNNERS)]
    try:
        for child in children:
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a bound engine did not start: see {errors.name}")
        groups: queue.Queue = queue.Queue()
        for i in range(0, n, GROUP):
            groups.put((i, min(i + GROUP, n)))
        texts: dict[int, list[str]] = {}
        busy: list[float] = [0.0] * RUNNERS
        taken: list[int] = [0] * RUNNERS

        def serve(k: int) -> None:
            child = children[k]
            while True:
                try:
                    i, j = groups.get_nowait()
                except queue.Empty:
                    return
                child.stdin.write(f"{i} {j}\n")
                child.stdin.flush()
                answer = json.loads(child.stdout.readline())
                texts[answer["i"]] = answer["texts"]
                busy[k] += answer["seconds"]
                taken[k] += 1

        threads = [threading.Thread(target=serve, args=(k,)) for k in range(RUNNERS)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        for child in children:
            child.stdin.close()
        for child in children:
            child.wait(timeout=60)
        errors.close()
    got = [text for i in sorted(texts) for text in texts[i]]
    if len(got) != n:
        raise RuntimeError(f"the bound engines returned {len(got)} of {n} texts: see {errors.name}")
    log(f"pooled_vs_bound bound: {wall:.2f}s, groups per engine {taken}")
    return {"wall": wall, "busy": busy, "groups": taken,
            "wer": median([wer(CORPUS[i], t) for i, t in enumerate(got)])}


def _job_mode_wer(ctx: Context, n: int) -> float:
    """What a runner Job does with each request: one ``Engine.transcribe`` on its own."""
    from kubescribe.models import parse_spec

    spec = parse_spec({"audio": {"redisKey": "kubescribe:audio:" + "0" * 64}, "model": "tiny.en",
                       "language": "en", "device": "cpu"})
    engine = ctx.engine()
    errs = [wer(CORPUS[i], engine.transcribe(ctx.speech.sentence_wav(i), spec)["text"]) for i in range(n)]
    ctx.release_engine()
    return median(errs)


def pooled_vs_bound(ctx: Context) -> Outcome:
    out = Outcome("pooled_vs_bound", "A warm pool against the compute bound of the same clips")
    n = 8 if ctx.quick else 20
    timeout = 240 if ctx.quick else 480
    available, why = pool_mode_available()
    if not available:
        out.status, out.headline, out.ratio = "NOT RUN", f"pool mode not available: {why}", "-"
        return out
    job_wer = _job_mode_wer(ctx, n)
    # bound, pool, pool, bound: a drift in the machine's speed weighs on both alike.
    order = ["bound", "pool"] if ctx.quick else ["bound", "pool", "pool", "bound"]
    runs: list[dict] = []
    for what in order:
        if what == "bound":
            runs.append({"what": "bound", **_bound(ctx, n)})
        else:
            res = _run_mode(ctx, "pool", list(range(n)), timeout, warm=2 * RUNNERS * GROUP)
            runs.append({"what": "pool", **res})
            if not res["done"]:
                out.status, out.ratio = "ERROR", "-"
                out.headline = f"pool mode did not finish ({len(res['failed'])} not Succeeded)"
                out.notes.append(f"Not Succeeded: {list(res['failed'].items())[:3]}\n\nOperator log tail:\n```\n"
                                 f"{res['log'][-1200:]}\n```")
                return out
    bound = median([r["wall"] for r in runs if r["what"] == "bound"])
    pool = median([r["wall"] for r in runs if r["what"] == "pool"])
    pool_wer = median([r["wer"] for r in runs if r["what"] == "pool" and r["wer"] is not None])
    ratio = pool / bound
    out.measured = (
        f"{n} short requests (distinct espeak-ng sentences, 2-4 s each; tiny.en, int8, CPU, language en), each "
        "side measured " + ("once" if ctx.quick else "twice, in the order bound, pool, pool, bound (medians)")
        + ". **kubescribe**: a warm pool: the real operator in pool mode with a GPU budget of "
        f"{RUNNERS} on the real control plane, the fake kubelet running its pooled runner pods as local "
        f"processes, real Redis; {2 * RUNNERS * GROUP} other requests are run to the end first, so its runners "
        "are up with the model loaded. Then the measured requests are created back to back; wall time from the "
        f"first create to the watch seeing the last one Succeeded. **Baseline (the compute bound)**: {RUNNERS} "
        "engine processes, the model loaded and warm, taking the same clips in groups of "
        f"{GROUP} (`KUBESCRIBE_REQUESTS_PER_RUNNER`, the most a pooled runner packs into shared 30 s windows) "
        "from one shared list, with nothing else: no API server, operator, stream or status; wall time from the "
        "first group handed out to the last answered. WER: the median over requests; job mode's is each clip "
        "through `Engine.transcribe` alone, as a runner Job does.")
    out.headline = f"warm pool: {secs(pool)}, median WER {pool_wer:.3f}"
    out.baseline = f"compute bound: {secs(bound)}; job mode's median WER {job_wer:.3f}"
    out.ratio = f"{ratio:.2f}x the bound, WER {pool_wer - job_wer:+.3f} vs job mode"
    out.target = "<= 1.15x the bound; median WER at most 0.02 above job mode's"
    out.status = "PASS" if ratio <= 1.15 and pool_wer <= job_wer + 0.02 else "MISS"
    rows = []
    for k, r in enumerate(runs):
        if r["what"] == "bound":
            rows.append([f"{k + 1}: bound", secs(r["wall"]), f"{r['wer']:.3f}",
                         " / ".join(f"{g} groups, {b:.2f} s" for g, b in zip(r["groups"], r["busy"])), "-"])
        else:
            rows.append([f"{k + 1}: pool", secs(r["wall"]), f"{r['wer']:.3f}" if r["wer"] is not None else "-",
                         f"sum of processingSeconds {r['processing']:.2f} s", str(r["warm_runners"])])
    out.table("Runs, in the order they ran", ["run", "wall time", "median WER", "engine time", "runners warm at start"],
              rows)
    if out.status == "MISS":
        out.notes.append(
            f"Missed: the pool took {secs(pool - bound)} more than the bound. Of what it spends, the bound's groups "
            "are formed ahead (always 4 clips a window); a pooled runner packs what is queued when it looks, so "
            "requests that arrive while both runners are busy or one at a time decode in smaller groups, and each "
            "request also pays its admission, the stream round trip and its status write.")
    out.data = {"runs": [{k: v for k, v in r.items() if k != "log"} for r in runs], "job_wer": job_wer}
    return out
