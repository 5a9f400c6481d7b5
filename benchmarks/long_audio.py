"""Long recordings: batched-by-default vs sequential on >= 10 minutes of speech, no
invented text on 60 s of silence, noise and tones, and the memory of a 3-hour recording
against a 10-minute one.

The long recording is espeak-ng speech in four voices (American and British, male and
female variants) at three speeds, with natural pauses of 0.3-1.5 s between sentences and
a longer 3-4 s pause now and then, so the VAD has real speech boundaries to cut at.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import numpy as np

from harness.speech import CORPUS, SAMPLE_RATE, speak

from .common import REPO, Context, Outcome, engine_with_base, log, median, mib, secs
from .inference import _spec

VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb-x-rp+m3")
SPEEDS = (120, 130, 140)
LONG_SECONDS = 600.0
LONG_SECONDS_QUICK = 120.0


def _say(ctx: Context, text: str, voice: str, speed: int, index: int) -> np.ndarray:
    from faster_whisper.audio import decode_audio

    path = ctx.workdir / "speech" / f"long-{index:04d}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = decode_audio(str(speak(text, path, speed=speed, voice=voice)), sampling_rate=SAMPLE_RATE)
    path.unlink()
    return samples


def long_recording(ctx: Context) -> tuple[bytes, str, float]:
    """(wav bytes, reference text, seconds) of >= 10 min of speech (2 min with --quick)."""
    if "long_recording" in ctx.shared:
        return ctx.shared["long_recording"]
    from harness.speech import write_wav

    target = LONG_SECONDS_QUICK if ctx.quick else LONG_SECONDS
    rnd = random.Random(13)
    parts: list[np.ndarray] = []
    words: list[str] = []
    total = 0.0
    i = 0
    while total < target:
        text = CORPUS[i % len(CORPUS)]
        speech = _say(ctx, text, VOICES[(i // 3) % len(VOICES)], SPEEDS[i % len(SPEEDS)], i)
        pause = rnd.uniform(3.0, 4.0) if i % 9 == 8 else rnd.uniform(0.3, 1.5)
        parts += [speech, np.zeros(int(pause * SAMPLE_RATE), dtype=np.float32)]
        words.append(text)
        total += speech.shape[0] / SAMPLE_RATE + pause
        i += 1
    audio = np.concatenate(parts)
    path = write_wav(ctx.workdir / "speech" / "long.wav", audio)
    ctx.shared["long_recording"] = (path.read_bytes(), " ".join(words), audio.shape[0] / SAMPLE_RATE)
    log(f"long recording: {i} sentences, {total:.0f} s")
    return ctx.shared["long_recording"]


def long_batched_vs_sequential(ctx: Context) -> Outcome:
    return _batched_vs_sequential(ctx, ctx.engine(), "tiny.en", Outcome(
        "long_batched_vs_sequential", "Batched by default vs sequential on 10 minutes of speech"))


def long_batched_vs_sequential_base(ctx: Context) -> Outcome:
    """The same recording and target on the multilingual base model (hack/setup.sh models)."""
    out = Outcome("long_batched_vs_sequential_base", "Batched by default vs sequential on 10 minutes, base model")
    engine = engine_with_base(out)
    return out if engine is None else _batched_vs_sequential(ctx, engine, "base", out)


def _batched_vs_sequential(ctx: Context, engine, model: str, out: Outcome) -> Outcome:
    from harness.speech import wer

    wav, ref, seconds = long_recording(ctx)
    engine.model(model, "cpu", "int8")
    specs = {"batched (default)": _spec(model=model), "sequential": _spec(model=model, decoding="sequential")}
    short = ctx.speech.joined(range(0, 3), "warmup")[0]
    for s in specs.values():  # warm-up, not timed
        engine.transcribe(short, s)
    rounds = 1 if ctx.quick else 2
    times: dict[str, list[float]] = {k: [] for k in specs}
    cpu: dict[str, list[float]] = {k: [] for k in specs}
    results: dict[str, dict] = {}
    for r in range(rounds):
        order = list(specs) if r % 2 == 0 else list(reversed(specs))
        for name in order:
            c0 = os.times()
            t0 = time.perf_counter()
            results[name] = engine.transcribe(wav, specs[name])
            times[name].append(time.perf_counter() - t0)
            c1 = os.times()
            cpu[name].append((c1.user - c0.user) + (c1.system - c0.system))
            log(f"{out.name} round {r + 1}/{rounds}: {name} {times[name][-1]:.1f}s")
    med = {k: median(v) for k, v in times.items()}
    errs = {k: wer(ref, results[k]["text"]) for k in specs}
    b, s = "batched (default)", "sequential"
    speedup = med[s] / med[b]
    assert results[b]["decoding"]["mode"] == "batched", results[b]["decoding"]
    out.measured = (
        f"A {seconds:.0f} s recording of espeak-ng speech (known text) in {len(VOICES)} voices "
        f"({', '.join(VOICES)}) at {'/'.join(map(str, SPEEDS))} words per minute, with pauses of 0.3-1.5 s "
        f"between sentences and 3-4 s after every ninth; {model} on CPU, int8, beam size 5, language en, "
        "through `runner.engine.Engine.transcribe` (what the runner calls). **kubescribe**: the default spec "
        "(`decoding: auto` picks batched above 60 s: faster-whisper's `BatchedInferencePipeline`, batch size 8, "
        "over VAD-cut speech clips of up to 30 s); **baseline**: `decoding: sequential` (faster-whisper's "
        f"`WhisperModel.transcribe`, with the default VAD). Model loaded and both warmed up first; {rounds} "
        "round(s) in alternating order; medians. WER against the known text (jiwer, lower-cased, punctuation "
        "removed)."
    )
    out.headline = f"batched: median {secs(med[b])}, WER {errs[b]:.3f}"
    out.baseline = f"sequential: median {secs(med[s])}, WER {errs[s]:.3f}"
    out.ratio = f"{speedup:.2f}x faster, WER {errs[b] - errs[s]:+.3f}"
    out.target = "batched >= 3x, WER <= sequential + 0.02"
    out.status = "PASS" if speedup >= 3 and errs[b] <= errs[s] + 0.02 else "MISS"
    out.table("Runs", ["decoding", "median", "all runs (s)", "real-time factor", "CPU time (median)",
                       "cores busy", "WER", "segments"],
              [[k, secs(med[k]), ", ".join(f"{t:.1f}" for t in times[k]), f"{med[k] / seconds:.3f}",
                f"{median(cpu[k]):.1f} s", f"{median(cpu[k]) / med[k]:.2f}", f"{errs[k]:.3f}",
                len(results[k]["segments"])] for k in specs])
    per1, per8 = _encoder_seconds(engine, 1, model=model), _encoder_seconds(engine, 8, model=model)
    windows = len(results[b]["segments"])  # batched decoding: one segment per speech clip
    out.table("The encoder's share (same run)", ["what", "value"], [
        ["encoder, one 30 s window at batch size 1", secs(per1)],
        ["encoder, per window at batch size 8", secs(per8)],
        ["batched run: windows (speech clips)", windows],
        ["batched run: encoder alone (windows x per-window time at batch 8)",
         f"{secs(windows * per8)} of {secs(med[b])}"],
    ])
    out.notes.append(
        f"On this CPU a batch of 8 windows costs {per8 / per1:.2f}x per window what one window costs: batching "
        "buys no encoder throughput on 2 cores, it only keeps a GPU busy. Batched decoding here gains from "
        "skipping timestamp tokens and temperature fallbacks, and from clips that end on speech, not from the "
        f"batch. Even with a free decoder, the encoder alone bounds the ratio at {med[s] / (windows * per8):.1f}x "
        "here. `hack/gpu-smoke.sh` measures the GPU path.")
    out.data = {"times": times, "cpu": cpu, "wer": errs, "audio_seconds": seconds,
                "encoder_per_window": {"batch1": per1, "batch8": per8}, "windows": windows}
    return out


def _encoder_seconds(engine, batch: int, repeats: int = 3, model: str = "tiny.en") -> float:
    """Seconds the loaded ``model``'s encoder takes per 30 s window at ``batch`` windows a call."""
    import ctranslate2

    model = engine.model(model, "cpu", "int8")
    mels = getattr(model.model, "n_mels", 80)
    features = ctranslate2.StorageView.from_array(np.zeros((batch, mels, 3000), dtype=np.float32))
    model.model.encode(features, to_cpu=False)  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.model.encode(features, to_cpu=False)
        runs.append(time.perf_counter() - t0)
    return median(runs) / batch


NON_SPEECH = {
    "digital silence": ["trim", "0", "60"],
    "pink noise": ["synth", "60", "pinknoise", "vol", "0.3"],
    "440 Hz tone": ["synth", "60", "sine", "440", "vol", "0.5"],
    "C major chord": ["synth", "60", "sine", "261.6", "sine", "329.6", "sine", "392", "remix", "-", "vol", "0.3"],
}


def no_invented_text(ctx: Context) -> Outcome:
    out = Outcome("no_invented_text", "No words on 60 s of silence, noise or tones")
    engine = ctx.engine()
    d = ctx.workdir / "nonspeech"
    d.mkdir(exist_ok=True)
    rows, words_default, words_old = [], 0, 0
    for name, effect in NON_SPEECH.items():
        path = d / (name.replace(" ", "_") + ".wav")
        subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(path), *effect], check=True)
        data = path.read_bytes()
        t0 = time.perf_counter()
        new = engine.transcribe(data, _spec(language=""))
        t_new = time.perf_counter() - t0
        t0 = time.perf_counter()
        old = engine.transcribe(data, _spec(language="", vad=False, decoding="sequential"))
        t_old = time.perf_counter() - t0
        n_new, n_old = len(new["text"].split()), len(old["text"].split())
        words_default += n_new
        words_old += n_old
        rows.append([name, n_new, repr(new["text"]), f"{t_new:.1f} s", n_old, repr(old["text"][:60]),
                     f"{t_old:.1f} s"])
    crosstalk_rows, loops = _crosstalk(ctx, engine)
    out.measured = ("60 s each of digital silence, pink noise, a 440 Hz sine and a C major chord, made by sox; "
                    "tiny.en on CPU, int8. **kubescribe**: the default spec (VAD on, decoding auto); "
                    "**baseline**: the previous defaults (no VAD, sequential decoding). Then four espeak-ng voices "
                    "talking at once (`harness.speech.crosstalk`), batched by kubescribe (with sequential "
                    "decoding's guards, `runner/guards.py`), by faster-whisper's own batched pipeline on the same "
                    "clips, and sequentially: the longest loop is the highest compression ratio of a segment's "
                    "text (sequential decoding decodes again above 2.4).")
    out.headline = f"{words_default} words in 4 minutes of non-speech"
    out.baseline = f"previous defaults: {words_old} words"
    out.ratio = "-"
    out.target = "no words at all"
    out.status = "PASS" if words_default == 0 else "MISS"
    out.table("Inputs", ["input", "words", "text", "time", "words (no VAD)", "text (no VAD)", "time (no VAD)"], rows)
    out.table("Four voices at once", ["path", "words", "highest compression ratio", "time", "text"], crosstalk_rows)
    if loops:
        out.notes.append("kubescribe's batched path let a loop through on the voices at once (compression ratio "
                         "above 2.4).")
    out.data = {"words": words_default, "words_previous_defaults": words_old, "crosstalk": crosstalk_rows}
    return out


def _crosstalk(ctx: Context, engine) -> tuple[list[list], bool]:
    """Four voices at once through kubescribe's batched path, the library's batched
    pipeline on the same clips, and sequential decoding: rows, and whether kubescribe's
    own output looped."""
    from faster_whisper import BatchedInferencePipeline
    from faster_whisper.transcribe import get_compression_ratio

    from harness.speech import crosstalk
    from kubescribe.runner.vad import CLIP_SECONDS, pack_clips, speech_regions

    samples = crosstalk(ctx.workdir / "crosstalk")
    model = engine.model("tiny.en", "cpu", "int8")
    rows, ours_loops = [], False
    for name in ("kubescribe batched", "faster-whisper batched", "sequential"):
        t0 = time.perf_counter()
        if name == "faster-whisper batched":
            clips = pack_clips([speech_regions(samples)], CLIP_SECONDS, 2.0)
            segs, _ = BatchedInferencePipeline(model).transcribe(
                samples, language="en", vad_filter=False, clip_timestamps=[{"start": a, "end": b} for a, b in clips])
            texts = [s.text.strip() for s in segs]
        else:
            doc = engine.transcribe(samples, _spec(decoding="batched" if name.startswith("kubescribe") else "sequential"))
            texts = [s["text"] for s in doc["segments"]]
        took = time.perf_counter() - t0
        worst = max((get_compression_ratio(t) for t in texts if t), default=0.0)
        ours_loops |= name.startswith("kubescribe") and worst > 2.4
        text = " ".join(texts)
        rows.append([name, len(text.split()), f"{worst:.2f}", f"{took:.1f} s", repr(text[:80])])
    return rows, ours_loops


class _Killed(Exception):
    pass


def resume_after_kill(ctx: Context) -> Outcome:
    """A runner killed at ~60 % of a long request, retried: resume vs an uninterrupted run."""
    from kubescribe.models import parse_spec
    from kubescribe.progress import RunBoard
    from kubescribe.runner.task import run_task
    from kubescribe.store import Store
    from harness.speech import wer

    out = Outcome("resume_after_kill", "A long request killed at 60 %: the retry resumes from the checkpoint")
    wav, ref, seconds = long_recording(ctx)
    engine = ctx.engine()
    engine.model("tiny.en", "cpu", "int8")
    client = ctx.redis().client()
    store, board = Store(client), RunBoard(client)
    key = store.put_audio(wav)
    spec = parse_spec({"audio": {"redisKey": key}, "model": "tiny.en", "language": "en", "device": "cpu",
                       "computeType": "int8", "cache": {"enabled": False}})
    engine.transcribe(ctx.speech.joined(range(0, 3), "warmup")[0], _spec())  # warm-up, not timed

    t0 = time.perf_counter()
    whole = run_task(store, engine, spec, board=board).result
    t_whole = time.perf_counter() - t0

    def kill_at_60(done: float, total: float) -> None:
        if done >= 0.6 * total:
            raise _Killed

    t0 = time.perf_counter()
    try:
        run_task(store, engine, spec, board=board, progress=kill_at_60)
    except _Killed:
        pass
    t_killed = time.perf_counter() - t0
    t0 = time.perf_counter()
    resumed = run_task(store, engine, spec, board=board).result
    t_retry = time.perf_counter() - t0
    at = resumed["decoding"]["resumed_at_seconds"] or 0.0
    e_whole, e_resumed = wer(ref, whole["text"]), wer(ref, resumed["text"])
    segs = resumed["segments"]
    seam_ok = (all(a["end"] <= b["start"] + 1e-6 for a, b in zip(segs, segs[1:]))
               and [s["id"] for s in segs] == list(range(1, len(segs) + 1)))
    ratio = t_retry / t_whole
    out.measured = (
        f"The {seconds:.0f} s recording of long_batched_vs_sequential, default spec (batched), tiny.en on CPU, int8, "
        "through `runner.task.run_task` with the Redis checkpoints (`kubescribe.progress.RunBoard`) on a real "
        "redis-server. **Uninterrupted**: one run. **Killed and retried**: a run stopped when its progress passed "
        "60 % (an exception from the progress callback, right after a segment was checkpointed: what a SIGKILL "
        "leaves behind; the SIGKILL of a real runner process is tested in tests/test_progress.py), then a second "
        "run of the same request, which resumes after the last checkpoint. One run of each."
    )
    out.headline = f"retry: {secs(t_retry)} (resumed at {at:.0f} s of {seconds:.0f} s), WER {e_resumed:.3f}"
    out.baseline = f"uninterrupted: {secs(t_whole)}, WER {e_whole:.3f}"
    out.ratio = f"retry = {ratio:.2f} of an uninterrupted run, WER {e_resumed - e_whole:+.3f}"
    out.target = "retry <= 0.5 of uninterrupted, WER within 0.01"
    out.status = "PASS" if ratio <= 0.5 and abs(e_resumed - e_whole) <= 0.01 and seam_ok else "MISS"
    out.table("Runs", ["run", "time", "WER", "segments"],
              [["uninterrupted", secs(t_whole), f"{e_whole:.3f}", len(whole["segments"])],
               ["killed at 60 %", secs(t_killed), "-", "-"],
               ["retry (resumed)", secs(t_retry), f"{e_resumed:.3f}", len(segs)]])
    out.notes.append("Seam: segment ids 1..n in order and no overlapping segments: " + ("yes" if seam_ok else "NO"))
    out.data = {"uninterrupted": t_whole, "killed": t_killed, "retry": t_retry, "resumed_at": at,
                "wer": {"uninterrupted": e_whole, "resumed": e_resumed}}
    return out


def pool_cross_request_batching(ctx: Context) -> Outcome:
    """20 short requests on a warm model: packed 4 at a time (what a pooled runner does
    with the default requestsPerRunner) vs one request at a time (what it did before)."""
    from harness.speech import wer

    out = Outcome("pool_cross_request_batching", "Pool: 20 short requests packed into shared decoding windows")
    engine = ctx.engine()
    engine.model("tiny.en", "cpu", "int8")
    n = 8 if ctx.quick else 20
    wavs = [ctx.speech.sentence_wav(i) for i in range(n)]
    refs = [CORPUS[i] for i in range(n)]
    spec = _spec()
    engine.transcribe(wavs[0], spec)  # warm-up, not timed
    engine.transcribe_many([(w, spec, None) for w in wavs[:2]])
    rounds = 1 if ctx.quick else 3
    sizes = (4, 8)  # 4: KUBESCRIBE_REQUESTS_PER_RUNNER's default, which the operator gives its runners
    times: dict[str, list[float]] = {"one": [], **{f"packed {k}": [] for k in sizes}}
    texts: dict[str, list[str]] = {}
    for r in range(rounds):
        order = list(times) if r % 2 == 0 else list(reversed(times))
        for mode in order:
            t0 = time.perf_counter()
            if mode == "one":
                got = [engine.transcribe(w, spec)["text"] for w in wavs]
            else:
                k = int(mode.split()[1])
                got = []
                for i in range(0, n, k):
                    got += [r_["text"] for r_ in engine.transcribe_many([(w, spec, None) for w in wavs[i:i + k]])]
            times[mode].append(time.perf_counter() - t0)
            texts[mode] = got
        log(f"pool_cross_request_batching round {r + 1}/{rounds}: "
            + ", ".join(f"{m} {t[-1]:.1f}s" for m, t in times.items()))
    joined_ref = " ".join(refs)
    errs = {m: wer(joined_ref, " ".join(t)) for m, t in texts.items()}
    worst = {m: max(wer(a, b) for a, b in zip(refs, t)) for m, t in texts.items()}
    med = {m: median(t) for m, t in times.items()}
    head = "packed 4"
    ratio = med["one"] / med[head]
    out.measured = (
        f"{n} distinct espeak-ng sentences (one request each, 3-5 s), tiny.en on CPU, int8, beam size 5, language "
        "en, warm model, through the runner's engine. **kubescribe**: `Engine.transcribe_many` on groups of 4 "
        "(what `runner.pool.process_batch` does with the requests a pooled runner takes at once; the operator "
        "sets that to `KUBESCRIBE_REQUESTS_PER_RUNNER`, 4): their speech packed into shared 30 s windows, decoded "
        "in one batched call with word timestamps, every word sent back to its request. Groups of 8 for "
        "comparison. **Baseline**: `Engine.transcribe` one request after another on the same warm model, what "
        f"the pool did before. {rounds} round(s) in rotating order; medians. WER over all requests, and the worst "
        "single request's. Neither side includes pod start or model load: pooled_vs_per_job is the end-to-end "
        "figure against one Job per request."
    )
    out.headline = f"packed 4 at a time: median {secs(med[head])}, WER {errs[head]:.3f}"
    out.baseline = f"one at a time: median {secs(med['one'])}, WER {errs['one']:.3f}"
    out.ratio = f"{ratio:.2f}x faster, WER {errs[head] - errs['one']:+.3f}"
    out.target = "faster, WER no more than 0.02 above one at a time (>= 6x vs one Job per request: pooled_vs_per_job)"
    out.status = "PASS" if ratio > 1 and errs[head] <= errs["one"] + 0.02 else "MISS"
    out.table("Runs", ["path", "median", "all runs (s)", "per request", "WER", "worst request's WER"],
              [[m, secs(med[m]), ", ".join(f"{t:.1f}" for t in times[m]), secs(med[m] / n), f"{errs[m]:.3f}",
                f"{worst[m]:.3f}"] for m in times])
    out.notes.append(
        "Why packing and not batching alone: Whisper pads every window to 30 s, so a 3-5 s request alone costs a "
        "whole 30 s encoder pass, and on a CPU the encoder costs the same per window at batch size 1 or 8 "
        "(long_batched_vs_sequential measures it). Batching separate windows saved nothing here (1.01x in an "
        "earlier run); packing cuts the number of windows.")
    out.data = {"times": times, "wer": errs, "worst": worst}
    return out


# ------------------------------------------------------------------------ long_memory

#: The make-up of the long_memory recordings: a spoken passage (these sentences, 0.3-1.5 s
#: apart), then a pause of 85-110 s, over and over, with faint noise throughout.
MEMORY_PASSAGE = range(0, 4)
MEMORY_PAUSE = (85.0, 110.0)
MEMORY_NOISE = 0.002  # about -54 dBFS: a quiet room, not digital silence
#: The shorter recording is 20 min, not 10: its passages (one clip each) fill a batch of
#: 8 clips, as the long one's do. 10 min has 6, decoded as one batch of 6, whose memory is
#: smaller, so the ratio measured how full a batch was rather than how long the recording
#: was: peak RSS 761 MiB for 10 min, 942 MiB for 20 min and 951-960 MiB for 3 h.
MEMORY_SIZES = {"20 min": 1200.0, "3 h": 10800.0}
MEMORY_SIZES_QUICK = {"20 min": 1200.0, "1 h": 3600.0}


def _memory_recording(ctx: Context, seconds: float, name: str) -> tuple[Path, list[tuple[float, float]], str]:
    """A FLAC of at least ``seconds`` of the long_memory make-up, written unit by unit
    through sox (never whole in this process). Returns (path, the passages' (start, end)
    in seconds, the passage's text). Every size is a prefix of the same sequence."""
    rnd = random.Random(29)
    said = [_say(ctx, CORPUS[i], "en-us", 130, 9000 + i) for i in MEMORY_PASSAGE]
    noise = np.random.default_rng(7)
    path = ctx.workdir / "speech" / f"memory-{name.replace(' ', '')}.flac"
    sox = subprocess.Popen(["sox", "-t", "raw", "-r", str(SAMPLE_RATE), "-e", "signed-integer", "-b", "16", "-c", "1",
                            "-", str(path)], stdin=subprocess.PIPE)
    assert sox.stdin is not None
    units, t = [], 0
    while t < seconds * SAMPLE_RATE:
        parts = []
        for s in said:
            parts += [s, np.zeros(int(rnd.uniform(0.3, 1.5) * SAMPLE_RATE), dtype=np.float32)]
        spoken = sum(p.shape[0] for p in parts)
        parts.append(np.zeros(int(rnd.uniform(*MEMORY_PAUSE) * SAMPLE_RATE), dtype=np.float32))
        unit = np.concatenate(parts)
        unit += noise.normal(0.0, MEMORY_NOISE, unit.shape[0]).astype(np.float32)
        sox.stdin.write((np.clip(unit, -1, 1) * 32767).astype("<i2").tobytes())
        units.append((t / SAMPLE_RATE, (t + spoken) / SAMPLE_RATE))
        t += unit.shape[0]
    sox.stdin.close()
    if sox.wait() != 0:
        raise RuntimeError(f"sox could not write {path}")
    return path, units, " ".join(CORPUS[i] for i in MEMORY_PASSAGE)


#: Run in a child process, so that its peak RSS is this transcription's alone.
_MEMORY_CHILD = """
import json, resource, sys, time
from benchmarks.inference import _spec
from kubescribe.runner.engine import Engine
args = json.loads(sys.argv[1])
if args["path_only_decode"]:
    from faster_whisper.audio import decode_audio
    t0 = time.perf_counter()
    samples = decode_audio(args["path"], sampling_rate=16000)
    out = {"seconds": samples.shape[0] / 16000, "elapsed": time.perf_counter() - t0}
else:
    engine = Engine()
    with open(args["warmup"], "rb") as f:
        engine.transcribe(f, _spec())  # model loaded and warm: its memory is in both runs
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with open(args["path"], "rb") as f:
        result = engine.transcribe(f, _spec())
    out = {"elapsed": time.perf_counter() - t0, "loaded_kib": loaded, "mode": result["decoding"]["mode"],
           "seconds": result["audio_duration_seconds"], "after_vad": result["duration_after_vad_seconds"],
           "segments": [(s["start"], s["end"], s["text"]) for s in result["segments"]]}
out["peak_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(out))
"""


def _memory_child(path: Path, warmup: Path, decode_only: bool = False) -> dict:
    import json
    import sys

    args = json.dumps({"path": str(path), "warmup": str(warmup), "path_only_decode": decode_only})
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, args], capture_output=True, text=True,
                          cwd=str(REPO), timeout=7200)
    if proc.returncode != 0:
        raise RuntimeError(f"long_memory child failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _per_passage(segments: list, units: list[tuple[float, float]], passage: str) -> list[float]:
    """WER of every passage: the segments whose middle falls in its unit (the passage and
    the pause after it), against the passage's text."""
    from harness.speech import wer

    starts = [a for a, _ in units] + [float("inf")]
    texts: list[list[str]] = [[] for _ in units]
    for start, end, text in segments:
        mid = (start + end) / 2
        i = next(k for k in range(len(units)) if starts[k] <= mid < starts[k + 1])
        texts[i].append(text)
    return [wer(passage, " ".join(t)) for t in texts]


def long_memory(ctx: Context) -> Outcome:
    """Peak RSS of transcribing 3 hours vs 20 minutes of the same make-up."""
    from kubescribe.runner.pieces import PIECE_SECONDS

    sizes = MEMORY_SIZES_QUICK if ctx.quick else MEMORY_SIZES
    short_name, long_name = list(sizes)
    out = Outcome("long_memory", f"Memory of a long recording: {long_name} vs {short_name}, piece by piece")
    made = {}
    for name, seconds in sizes.items():
        t0 = time.perf_counter()
        made[name] = _memory_recording(ctx, seconds, name)
        log(f"long_memory: {name} recording written in {time.perf_counter() - t0:.0f}s "
            f"({made[name][0].stat().st_size / (1 << 20):.1f} MiB)")
    warmup = ctx.workdir / "speech" / "memory-warmup.wav"
    warmup.write_bytes(ctx.speech.joined(range(0, 2), "memory-warmup")[0])
    runs = {}
    for name in sizes:
        t0 = time.perf_counter()
        runs[name] = _memory_child(made[name][0], warmup)
        log(f"long_memory: {name} transcribed in {time.perf_counter() - t0:.0f}s, "
            f"peak RSS {runs[name]['peak_kib'] / 1024:.0f} MiB")
    t0 = time.perf_counter()
    whole = _memory_child(made[long_name][0], warmup, decode_only=True)
    log(f"long_memory: whole-file decode of {long_name} in {time.perf_counter() - t0:.0f}s, "
        f"peak RSS {whole['peak_kib'] / 1024:.0f} MiB")
    passage = made[short_name][2]
    errs = {name: _per_passage(runs[name]["segments"], made[name][1], passage) for name in sizes}
    mean = {name: sum(e) / len(e) for name, e in errs.items()}
    lost = {name: sum(1 for e in errs[name] if e > 0.5) for name in sizes}
    peak = {name: runs[name]["peak_kib"] * 1024 for name in sizes}
    ratio = peak[long_name] / peak[short_name]
    out.measured = (
        f"Two FLAC recordings of one make-up, {short_name} and {long_name} (the shorter a prefix of the longer): "
        f"a passage of {len(MEMORY_PASSAGE)} espeak-ng sentences (en-us, 130 words/min, 0.3-1.5 s apart, ~20 s), "
        f"then a pause of {MEMORY_PAUSE[0]:.0f}-{MEMORY_PAUSE[1]:.0f} s, over and over, with faint white noise "
        f"(sigma {MEMORY_NOISE}) throughout. Each is transcribed in a fresh child process by "
        "`runner.engine.Engine.transcribe` given the open file (not its bytes), with the default spec (tiny.en, "
        f"int8, beam 5, `decoding: auto`, which batches) and the default {PIECE_SECONDS:.0f} s pieces, after the "
        "model is loaded and warmed on a short recording in the same process. Peak RSS is the child's "
        "`ru_maxrss`, model included. **Baseline**: the shorter recording's peak; it is long enough to fill a "
        "batch of 8 clips, as the longer one does (a batch's memory does not grow with the recording, but a fuller "
        "batch needs more). For scale, a third child only "
        f"decodes the {long_name} file with faster-whisper's `decode_audio` (the previous path's first step). "
        "Words: each passage's WER (jiwer, lower-cased, punctuation removed) from the segments in its stretch of "
        "the recording."
    )
    out.headline = (f"{long_name}: peak RSS {mib(peak[long_name])}, passage WER mean {mean[long_name]:.3f}, "
                    f"{lost[long_name]} of {len(errs[long_name])} passages lost")
    out.baseline = (f"{short_name}: peak RSS {mib(peak[short_name])}, passage WER mean {mean[short_name]:.3f}, "
                    f"{lost[short_name]} of {len(errs[short_name])} lost")
    out.ratio = f"{ratio:.3f}x the memory for {sizes[long_name] / sizes[short_name]:.0f}x the audio"
    out.target = "peak RSS ratio <= 1.2; passage WER mean within 0.02 of the short run's, no passage lost"
    ok = ratio <= 1.2 and mean[long_name] <= mean[short_name] + 0.02 and lost[long_name] == 0 == lost[short_name]
    out.status = "PASS" if ok else "MISS"
    out.table("Runs", ["recording", "audio", "FLAC size", "speech after VAD", "mode", "transcription time",
                       "RSS after model load", "peak RSS", "passages", "WER mean / worst"],
              [[name, secs(runs[name]["seconds"]), mib(made[name][0].stat().st_size),
                secs(runs[name]["after_vad"]), runs[name]["mode"], secs(runs[name]["elapsed"]),
                mib(runs[name]["loaded_kib"] * 1024), mib(peak[name]), len(errs[name]),
                f"{mean[name]:.3f} / {max(errs[name]):.3f}"] for name in sizes]
              + [[f"{long_name}, whole-file decode only (faster-whisper decode_audio)", secs(whole["seconds"]),
                  mib(made[long_name][0].stat().st_size), "-", "-", secs(whole["elapsed"]), "-",
                  mib(whole["peak_kib"] * 1024), "-", "-"]])
    out.notes.append(
        "What this measures and what it does not: the engine's path from an open file. The runner today fetches a "
        "request's audio from Redis or a URL into memory as bytes before it calls the engine, so in a runner pod "
        "the compressed file itself (the FLAC size above) comes on top until the audio is read from a file or an "
        "object store in ranges (`Engine.transcribe` takes any seekable binary file object).")
    out.data = {"peak_bytes": peak, "ratio": ratio, "wer_per_passage": errs, "whole_decode_peak_bytes":
                whole["peak_kib"] * 1024, "seconds": {n: runs[n]["seconds"] for n in sizes},
                "elapsed": {n: runs[n]["elapsed"] for n in sizes}}
    return out
