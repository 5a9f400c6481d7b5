"""Result-cache codecs: gzip (the inherited format) vs zstd, on real transcript JSON."""

from __future__ import annotations

import copy
import json
import random
import time

from .common import Context, Outcome, log, median
from .inference import transcript_with_words

#: (codec, level) pairs. gzip 6 is what the store writes today; zstd 6 is what
#: Store(codec="zstd") would write (encode_result's default level); zstd 3 is zstd's
#: own default. "none" is the JSON alone: the floor every codec adds to.
CONFIGS = (("none", 0), ("gzip", 6), ("gzip", 9), ("zstd", 3), ("zstd", 6), ("zstd", 12))
HOUR = 3600.0


def synthetic_hour(doc: dict, seed: int = 6) -> dict:
    """An hour-long transcript made of the real one's segments.

    Segments are drawn in a seeded random order (not the same block over and over, which
    would flatter zstd's long match window over gzip's 32 KiB one), laid end to end with
    their real durations, ids renumbered, and word probabilities jittered by up to
    +/-0.05 as they would differ between two utterances of the same words.
    """
    rng = random.Random(seed)
    src = [s for s in doc["segments"] if s["end"] > s["start"]]
    segments: list[dict] = []
    t = 0.0
    while t < HOUR:
        seg = copy.deepcopy(rng.choice(src))
        shift = t - seg["start"]
        seg["id"] = len(segments) + 1
        seg["start"] = round(seg["start"] + shift, 3)
        seg["end"] = round(seg["end"] + shift, 3)
        seg["avg_logprob"] = round(seg["avg_logprob"] + rng.uniform(-0.05, 0.05), 4)
        for w in seg.get("words") or []:
            w["start"] = round(w["start"] + shift, 3)
            w["end"] = round(w["end"] + shift, 3)
            w["probability"] = round(min(1.0, max(0.0, w["probability"] + rng.uniform(-0.05, 0.05))), 4)
        segments.append(seg)
        t = seg["end"] + 0.4
    out = dict(doc)
    out["segments"] = segments
    out["text"] = " ".join(s["text"] for s in segments)
    out["audio_duration_seconds"] = round(t, 3)
    out["duration_after_vad_seconds"] = round(t, 3)
    return out


def _compress(raw: bytes, codec: str, level: int) -> bytes:
    """The compression step alone, with the same calls and settings as encode_result."""
    if codec == "gzip":
        import gzip

        return gzip.compress(raw, compresslevel=level, mtime=0)
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=level).compress(raw)
    return raw


def _decompress(blob: bytes, codec: str) -> bytes:
    if codec == "gzip":
        import gzip

        return gzip.decompress(blob)
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(blob)
    return blob


def _time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return median(times)


def gzip_vs_zstd(ctx: Context) -> Outcome:
    from kubescribe.cache_layout import decode_result, encode_result

    out = Outcome("gzip_vs_zstd", "Result cache codec: gzip vs zstd")
    real = transcript_with_words(ctx)
    docs = {"minute (real)": real, "hour (synthetic)": synthetic_hour(real)}
    reps = {"minute (real)": 20 if ctx.quick else 200, "hour (synthetic)": 3 if ctx.quick else 15}
    rows = []
    figures: dict[str, dict] = {}
    for label, doc in docs.items():
        raw = len(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())
        for codec, level in CONFIGS:
            blob = encode_result(doc, codec, level)
            assert decode_result(blob) == doc
            enc = _time(lambda: encode_result(doc, codec, level), reps[label])
            dec = _time(lambda: decode_result(blob), reps[label])
            raw_bytes = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
            comp = _time(lambda: _compress(raw_bytes, codec, level), reps[label]) if codec != "none" else 0.0
            decomp = _time(lambda: _decompress(blob, codec), reps[label]) if codec != "none" else 0.0
            name = "JSON only" if codec == "none" else f"{codec} {level}"
            figures[f"{label}/{name}"] = {"bytes": len(blob), "encode_s": enc, "decode_s": dec, "raw": raw,
                                          "compress_s": comp, "decompress_s": decomp}
            rows.append([label, name, f"{len(blob):,}", f"{raw / len(blob):.2f}x",
                         f"{enc * 1000:.2f}", f"{dec * 1000:.2f}",
                         f"{comp * 1000:.2f} ({raw / comp / 1e6:.0f} MB/s)" if comp else "-",
                         f"{decomp * 1000:.2f} ({raw / decomp / 1e6:.0f} MB/s)" if decomp else "-"])
        log(f"gzip_vs_zstd: {label} done ({raw:,} bytes of JSON)")

    def fig(label, name):
        return figures[f"{label}/{name}"]

    h_g, h_z = fig("hour (synthetic)", "gzip 6"), fig("hour (synthetic)", "zstd 6")
    m_g, m_z = fig("minute (real)", "gzip 6"), fig("minute (real)", "zstd 6")
    out.measured = (
        "`kubescribe.store.encode_result(result, codec, level)` (JSON serialisation + compression, what "
        "`Store.put_result` does) and `decode_result(blob)` (decompression + JSON parsing, what every cache read "
        "does) on: the real result of the ~65 s recording, transcribed sequentially "
        "with `wordTimestamps: true` (every segment carries per-word times and probabilities); and a synthetic "
        f"hour-long result made of those segments (`benchmarks.codec.synthetic_hour`: random order, times laid "
        f"end to end, probabilities jittered). Medians of {reps['minute (real)']} (minute) and "
        f"{reps['hour (synthetic)']} (hour) repetitions. encode_result/decode_result include the JSON step; the "
        "JSON-only row is that step alone (the baseline every codec adds to), and the last two columns time the "
        "compression step alone (same calls and settings as encode_result; MB/s of JSON)."
    )
    out.headline = (f"hour: zstd 6 {h_z['bytes'] / 1024:.0f} KiB, encode {h_z['encode_s'] * 1000:.0f} ms, "
                    f"decode {h_z['decode_s'] * 1000:.0f} ms")
    out.baseline = (f"hour: gzip 6 {h_g['bytes'] / 1024:.0f} KiB, encode {h_g['encode_s'] * 1000:.0f} ms, "
                    f"decode {h_g['decode_s'] * 1000:.0f} ms")
    out.ratio = (f"zstd 6 / gzip 6: size {h_z['bytes'] / h_g['bytes']:.2f}, encode time "
                 f"{h_z['encode_s'] / h_g['encode_s']:.2f}, decode time {h_z['decode_s'] / h_g['decode_s']:.2f}")
    out.target = "none (comparison)"
    out.status = "INFO"
    out.table("Sizes and times", ["transcript", "codec", "bytes", "compression ratio", "encode_result ms",
                                  "decode_result ms", "compress only ms", "decompress only ms"], rows)
    out.notes.append(
        f"Minute (real), zstd 6 / gzip 6: size {m_z['bytes'] / m_g['bytes']:.2f}, encode time "
        f"{m_z['encode_s'] / m_g['encode_s']:.2f}, decode time {m_z['decode_s'] / m_g['decode_s']:.2f}. "
        f"Compression step alone on the hour: zstd 6 {h_z['compress_s'] * 1000:.1f} ms vs gzip 6 "
        f"{h_g['compress_s'] * 1000:.1f} ms; decompression {h_z['decompress_s'] * 1000:.2f} ms vs "
        f"{h_g['decompress_s'] * 1000:.2f} ms. JSON parsing dominates every read, whichever the codec.")
    out.data = figures
    return out
