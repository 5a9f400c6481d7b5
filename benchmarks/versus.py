"""long_vs_faster_whisper: kubescribe's default path on a 10-minute recording against
faster-whisper's own two, each a whole process as a user runs it, in the same run.

kubescribe: ``kubescribe transcribe FILE`` (the CLI's defaults: decoding auto, which
batches a recording this long, VAD clips, pieces). faster-whisper: its
``BatchedInferencePipeline`` (batch size 8, its default VAD) and its plain
``WhisperModel.transcribe``, in a small script that loads the same model. Every run is a
fresh process, so import, model load and decoding all count, as they do for a user.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness.speech import wer

from .common import Context, Outcome, log, median, secs
from .long_audio import long_recording

_FASTER_WHISPER = r"""
import json, sys, time
t0 = time.perf_counter()
from faster_whisper import BatchedInferencePipeline, WhisperModel
path, model_path, mode, threads = sys.argv[1:5]
model = WhisperModel(model_path, device="cpu", compute_type="int8", cpu_threads=int(threads))
t1 = time.perf_counter()
if mode.startswith("batched"):
    segments, info = BatchedInferencePipeline(model).transcribe(path, batch_size=8, language="en", beam_size=5)
else:
    segments, info = model.transcribe(path, language="en", beam_size=5)
segments = list(segments)
t2 = time.perf_counter()
print(json.dumps({"text": " ".join(s.text.strip() for s in segments), "segments": len(segments),
                  "load": t1 - t0, "transcribe": t2 - t1, "after_vad": info.duration_after_vad}))
"""

PATHS = ("kubescribe transcribe", "faster-whisper batched", "faster-whisper plain",
         "faster-whisper batched, threads = CPUs")


def _env() -> dict[str, str]:
    """This process's environment without kubescribe's own settings (no Redis, no cache)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("KUBESCRIBE_")}


def _run(path: str, wav: Path, model_path: str, out_dir: Path) -> dict:
    t0 = time.perf_counter()
    if path == "kubescribe transcribe":
        exe = Path(sys.executable).with_name("kubescribe")
        argv = [str(exe)] if exe.exists() else [sys.executable, "-P", "-m", "kubescribe.cli"]
        out = out_dir / "kubescribe.json"
        proc = subprocess.run([*argv, "transcribe", str(wav), "--language", "en", "--no-cache", "--no-progress",
                               "--format", "json", "--output", str(out)],
                              capture_output=True, text=True, env=_env(), cwd="/", timeout=1800)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"kubescribe transcribe exited {proc.returncode}: {proc.stderr[-1500:]}")
        doc = json.loads(out.read_text())
        return {"wall": wall, "text": doc["text"], "segments": len(doc["segments"]),
                "transcribe": doc.get("processing_seconds"), "after_vad": doc.get("duration_after_vad_seconds"),
                "mode": (doc.get("decoding") or {}).get("mode")}
    from kubescribe.runner.resources import usable_cpus

    mode = "plain" if path.endswith("plain") else "batched"
    threads = usable_cpus() if path.endswith("CPUs") else 0  # 0: faster-whisper's own default (4)
    proc = subprocess.run([sys.executable, "-P", "-c", _FASTER_WHISPER, str(wav), model_path, mode, str(threads)],
                          capture_output=True, text=True, env=_env(), cwd="/", timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"faster-whisper {mode} exited {proc.returncode}: {proc.stderr[-1500:]}")
    return {"wall": wall, **json.loads(proc.stdout.strip().splitlines()[-1]), "mode": mode}


def long_vs_faster_whisper(ctx: Context) -> Outcome:
    from kubescribe.models import DEFAULT_MODEL
    from kubescribe.runner.engine import resolve_model

    out = Outcome("long_vs_faster_whisper", "A 10-minute recording: kubescribe's default path vs faster-whisper's own")
    data, ref, seconds = long_recording(ctx)
    wav = ctx.workdir / "versus.wav"
    wav.write_bytes(data)
    model_path = resolve_model(DEFAULT_MODEL)
    rounds = 1 if ctx.quick else 3
    runs: dict[str, list[dict]] = {p: [] for p in PATHS}
    for r in range(rounds):
        for p in (PATHS if r % 2 == 0 else tuple(reversed(PATHS))):
            res = _run(p, wav, model_path, ctx.workdir)
            res["wer"] = wer(ref, res["text"])
            runs[p].append(res)
            log(f"long_vs_faster_whisper round {r + 1}/{rounds}: {p} {res['wall']:.1f}s, WER {res['wer']:.3f}")
    wall = {p: median([x["wall"] for x in runs[p]]) for p in PATHS}
    errs = {p: median([x["wer"] for x in runs[p]]) for p in PATHS}
    ks, fb, fp, ft = PATHS
    out.measured = (
        f"A {seconds:.0f} s recording of espeak-ng speech (known text; the long_batched_vs_sequential recording: "
        "4 voices, 120-140 words a minute, pauses of 0.3-1.5 s and 3-4 s after every ninth sentence), tiny.en "
        "(bundled), CPU, int8, beam size 5, language en. Each path is a fresh process, timed from its start "
        "to its exit (imports, model load and decoding all count): **kubescribe**: `kubescribe transcribe FILE "
        "--language en --no-cache` (its defaults otherwise: decoding auto, which batches a recording this long, "
        "over VAD clips, a piece of 300 s at a time). **Baseline**: faster-whisper's `BatchedInferencePipeline` "
        "(batch size 8, its default VAD, its default 4 CPU threads), in a script that loads the same model. Also "
        "faster-whisper's plain `WhisperModel.transcribe` (no VAD), and the batched pipeline with as many threads "
        "as the machine's CPUs (kubescribe's own default), to tell that part of the difference from the rest. "
        f"{rounds} round(s) in alternating order; medians. WER against the known text (jiwer, lower-cased, "
        "punctuation removed).")
    out.headline = f"kubescribe: {secs(wall[ks])}, WER {errs[ks]:.3f}"
    out.baseline = (f"faster-whisper batched: {secs(wall[fb])}, WER {errs[fb]:.3f}; plain: {secs(wall[fp])}; "
                    f"batched with threads = CPUs: {secs(wall[ft])}")
    out.ratio = f"{wall[ks] / wall[fb]:.2f}x the batched pipeline's time, WER {errs[ks] - errs[fb]:+.3f}"
    out.target = "time <= the batched pipeline's, WER <= its WER"
    out.status = "PASS" if wall[ks] <= wall[fb] and errs[ks] <= errs[fb] else "MISS"
    rows = []
    for p in PATHS:
        last = runs[p][-1]
        inner = median([x["transcribe"] for x in runs[p] if x.get("transcribe") is not None] or [0.0])
        rows.append([p, secs(wall[p]), ", ".join(f"{x['wall']:.1f}" for x in runs[p]), secs(inner),
                     secs(wall[p] - inner), f"{errs[p]:.3f}", last["segments"],
                     f"{last['after_vad']:.0f} s" if last.get("after_vad") is not None else "-"])
    out.table("Runs", ["path", "median (process)", "all runs (s)", "decoding (in the process)",
                       "outside decoding", "WER", "segments", "audio decoded after VAD"], rows)
    if out.status == "MISS":
        out.notes.append(
            f"Missed: kubescribe took {wall[ks] / wall[fb]:.2f}x the batched pipeline's time at WER "
            f"{errs[ks]:.3f} against its {errs[fb]:.3f}. The table shows where: the decoding inside each process, "
            "the audio left after the VAD (what the windows cover), and the time outside decoding (start-up, "
            "model load, reading the file).")
    out.data = {"runs": runs, "audio_seconds": seconds}
    return out
