"""faster-whisper behind one small interface: load a model once, transcribe many times.

The engine knows nothing of Kubernetes or Redis: it turns audio (bytes, a file, samples)
and a :class:`~kubescribe.models.TranscriptionSpec` into the result JSON that the store
keeps and the renderers read. It owns the model cache and the piece-by-piece loop of
:meth:`Engine.transcribe`; what it leans on lives beside it: the streamed decode
(:mod:`.audio`), where pieces are cut (:mod:`.pieces`), speech regions and clips
(:mod:`.vad`), short requests packed into shared windows (:mod:`.packing`) and the
result document (:mod:`.documents`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from kubescribe.modeldir import bundled_model_path, not_found_message
from kubescribe.models import DEFAULT_MODEL, TranscriptionSpec
from kubescribe.settings import EngineSettings

from .audio import SAMPLE_RATE, Source, open_audio
from .packing import Item, transcribe_packed
from .pieces import MIN_PIECE_SECONDS, resume_offset, seam
from .resources import cuda_device_count, release_memory, usable_cpus
from .documents import document, segment
from .guards import GuardCounts, decode_piece
from .vad import CLIP_SECONDS, SpeechQueue, join_speech, speech_regions

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded. Final unless the model volume is fixed."""


class ModelNotFound(ModelLoadError):
    """Offline, and the model is neither on the model volume nor bundled."""


ProgressFn = Callable[[float, float], None]  # (seconds done, seconds total; 0 while not known)
SegmentFn = Callable[[dict[str, Any]], None]  # one finished segment, as result JSON


def resolve_model(name: str, model_dir: str | None = None) -> str:
    """Map a model name or path to what ``WhisperModel`` loads.

    Order: an existing directory; ``<model_dir>/<name>`` on the model volume
    (:mod:`kubescribe.modeldir` says its layout); the bundled tiny.en; otherwise the name
    itself, which faster-whisper looks up on the Hugging Face hub (with
    ``download_root=model_dir``).
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


@dataclass
class EngineOptions:
    """How the engine loads models.

    Args:
        model_dir: model volume; models are looked up and downloaded here.
        local_files_only: never contact a model hub (air-gapped clusters).
        cpu_threads: CTranslate2 intra-op threads; 0: the CPUs the runner may use.
        num_workers: parallel transcriptions one loaded model may run.
        keep_models: models kept loaded at once; the least recently used is unloaded
            (and its memory released) when another is needed.
        batched_min_seconds: ``spec.decoding: auto`` batches audio at least this long.
        clip_gap_seconds: batched decoding ends a clip at a pause longer than this.
        piece_seconds: :meth:`Engine.transcribe` decodes and transcribes audio this
            many seconds at a time, so its memory follows the piece, not the recording
            (see :data:`~.pieces.PIECE_SECONDS` for the default); at least
            ``MIN_PIECE_SECONDS``.
    """

    model_dir: str | None = field(default_factory=lambda: EngineSettings().model_dir or None)
    local_files_only: bool = field(default_factory=lambda: EngineSettings().offline)
    cpu_threads: int = field(default_factory=lambda: EngineSettings().cpu_threads)
    num_workers: int = 1
    keep_models: int = field(default_factory=lambda: EngineSettings().keep_models)
    batched_min_seconds: float = field(default_factory=lambda: EngineSettings().batched_min_seconds)
    clip_gap_seconds: float = field(default_factory=lambda: EngineSettings().clip_gap_seconds)
    piece_seconds: float = field(default_factory=lambda: EngineSettings().piece_seconds)

    def __post_init__(self) -> None:
        if self.piece_seconds < MIN_PIECE_SECONDS:
            raise ValueError(f"piece_seconds must be at least {MIN_PIECE_SECONDS:g}, not {self.piece_seconds:g}: "
                             "a shorter piece may hold no pause to cut at")


class Engine:
    """Loads faster-whisper models on demand and transcribes with them."""

    def __init__(self, options: EngineOptions | None = None, metrics=None):
        self.options = options or EngineOptions()
        self.metrics = metrics
        self._models: dict[tuple[str, str, str], Any] = {}
        self._lock = threading.Lock()
        self.loads = 0  # models loaded so far; tests read it to prove a cache hit loads none
        #: seconds spent loading models (faster-whisper's import included); a task's own: the change
        self.load_seconds = 0.0

    # -- models ---------------------------------------------------------------------
    def model(self, name: str, device: str, compute_type: str):
        device = pick_device(device)
        compute_type = pick_compute_type(compute_type, device)
        path = resolve_model(name, self.options.model_dir)
        if self.options.local_files_only and not Path(path).is_dir():
            raise ModelNotFound(not_found_message(name, self.options.model_dir))
        key = (path, device, compute_type)
        with self._lock:
            if key in self._models:
                m = self._models.pop(key)
                self._models[key] = m  # most recently used last
                return m
            while len(self._models) >= max(1, self.options.keep_models):
                self._models.pop(next(iter(self._models)))
                release_memory()
            t0 = time.perf_counter()  # the first import of faster-whisper (ctranslate2) counts
            from faster_whisper import WhisperModel

            try:
                m = WhisperModel(
                    path,
                    device=device,
                    compute_type=compute_type,
                    cpu_threads=self.options.cpu_threads or usable_cpus(),
                    num_workers=self.options.num_workers,
                    download_root=self.options.model_dir,
                    local_files_only=self.options.local_files_only,
                )
            except Exception as exc:
                raise ModelLoadError(f"cannot load model {name!r} ({path}) on {device}/{compute_type}: {exc}") from exc
            self.loads += 1
            took = time.perf_counter() - t0
            self.load_seconds += took
            log.info("loaded model %s (%s, %s/%s) in %.2f s; %d loaded, at most %d", name, path, device,
                     compute_type, took, len(self._models) + 1, self.options.keep_models)
            if self.metrics is not None:
                self.metrics.model_load_seconds.labels(model=name).observe(took)
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
        data: bytes | np.ndarray | BinaryIO,
        spec: TranscriptionSpec,
        *,
        audio_sha256: str | None = None,
        progress: ProgressFn | None = None,
        done: list[dict[str, Any]] | None = None,
        on_segment: SegmentFn | None = None,
    ) -> dict[str, Any]:
        """Transcribe audio (bytes, a seekable binary file object, or 16 kHz samples) and
        return the result document.

        ``done`` are segments of an earlier, interrupted run of the same request (a
        checkpoint): decoding starts where the last of them ends (the audio is seeked
        there, not decoded up to it) and the result holds them followed by the new ones,
        numbered on. ``on_segment`` sees every new segment as it is decoded (the runner
        checkpoints them); ``progress`` sees the seconds of audio behind it and the total
        (the container's declared length until the end is reached; 0 while unknown).

        The audio is decoded and transcribed a piece of ``options.piece_seconds`` at a
        time, so memory follows the piece, not the recording. A piece that is not the
        last is cut in a pause the VAD finds near its end (:func:`~.pieces.cut_point`),
        and the audio after the cut is carried into the next piece, which the VAD and
        the model see from the cut on. Pieces are therefore disjoint and cut only where
        nobody speaks: no word is split, so none is lost or said twice at a seam, and no
        audio is transcribed twice. The alternative, starting the next piece at the end
        of the previous piece's last whole segment (as a resume does), trusts Whisper's
        segment end times, which drift by a fraction of a second (enough to cut a word
        or say it twice) and re-transcribes the dropped tail; a resume has no better
        seam (the checkpoint is all that survived), a piece does. Between pieces the
        detected language is kept, but the text is not carried as a prompt: tiny.en
        given the previous piece's last sentences as its prompt repeated them in the
        next piece's first segment (measured on the seam test's audio), which is the
        doubled text a seam must not make; every piece gets the spec's own prompt.
        Audio shorter than a piece is one piece, and is transcribed exactly as a whole
        recording is.
        """
        done = list(done or [])
        with open_audio(data, start=resume_offset(done, math.inf)) as audio:  # bad audio fails before a model loads
            # The model loads on a thread while the first piece is decoded and the VAD
            # reads it (both mostly outside the GIL): neither waits for the other.
            with ThreadPoolExecutor(1, thread_name_prefix="model-load") as loader:
                loading = loader.submit(self.model, spec.model, spec.device, spec.compute_type)
                try:
                    return self._transcribe(loading.result, audio, spec, audio_sha256, progress, done, on_segment)
                finally:
                    loading.cancel()

    def _transcribe(self, model_of: Callable[[], Any], audio: Source, spec: TranscriptionSpec,
                    audio_sha256: str | None,
                    progress: ProgressFn | None, done: list[dict[str, Any]], on_segment: SegmentFn | None
                    ) -> dict[str, Any]:
        t0 = time.perf_counter()  # decoding the audio counts: it is interleaved with the model's work
        piece = int(round(self.options.piece_seconds * SAMPLE_RATE))
        offset = audio.start
        at = int(round(offset * SAMPLE_RATE))  # where the current piece starts, in samples
        window = audio.read(piece)
        # The choice needs the length: exact when the first piece is the last, else the
        # declared one, or at least what the first piece shows.
        known = audio.position if audio.ended else (audio.total_seconds() or audio.position)
        mode = choose_decoding(spec.decoding, known, self.options.batched_min_seconds)
        kwargs: dict[str, Any] = dict(
            language=spec.language or None,
            task=spec.task,
            beam_size=spec.beam_size,
            word_timestamps=spec.word_timestamps,
            initial_prompt=spec.initial_prompt or None,
        )
        out_segments = list(done)
        counts = GuardCounts()
        info = None
        after_vad = 0.0
        queue = SpeechQueue()  # batched: clips waiting for a full batch
        while True:
            last = audio.ended
            length = window.shape[0] / SAMPLE_RATE
            regions = speech_regions(window) if mode == "batched" or not last else []
            gap = self.options.clip_gap_seconds
            cut = length if last else seam(regions, length, join_speech(regions, CLIP_SECONDS, gap)
                                           if mode == "batched" else None)
            # on a whole millisecond: segment times are rounded to them, so the last one of a
            # piece and the first one of the next never overlap by a rounding
            part = window if last else window[:int(cut * 1000) * (SAMPLE_RATE // 1000)]
            cut = part.shape[0] / SAMPLE_RATE
            if mode == "sequential" and done:
                # Sequential decoding conditions each window on the text before it; a resumed
                # run gets the tail of the checkpointed text as that context, in its first
                # piece (the docstring says why later pieces do not get the text before them).
                first = at == int(round(offset * SAMPLE_RATE))
                kwargs["initial_prompt"] = (" ".join(s["text"] for s in done[-3:])[-400:] or None if first
                                            else spec.initial_prompt or None)
            # Over VAD-cut speech clips, not fixed 30 s windows (which cut words in half),
            # each up to 30 s of speech with the pauses inside it left out: each clip is one
            # segment (timestamps inside clips cost time and accuracy; the subtitle renderer
            # cuts cues), and long silences split clips so that segment times stay on the
            # speech.
            clips = join_speech([(a, min(b, cut)) for a, b in regions if a < cut], CLIP_SECONDS,
                                gap) if mode == "batched" else []
            queue.add(clips, part, at)
            segments, got = decode_piece(model_of(), part, mode, spec, kwargs, queue, last, counts)
            if got is not None and info is None:
                info = got
                kwargs["language"] = kwargs["language"] or got.language  # one language for every piece
            after_vad += sum(b - a for clip in clips for a, b in clip) if mode == "batched" else (
                float(got.duration_after_vad) if got is not None else 0.0)
            total = audio.total_seconds()  # once per piece: the demuxer's position costs a call
            # segments is a generator: the decoding happens inside this loop.
            for seg in segments:
                item = segment(seg, len(out_segments) + 1, 0.0 if mode == "batched" else at / SAMPLE_RATE,
                               spec.word_timestamps, (at + part.shape[0]) / SAMPLE_RATE)
                out_segments.append(item)
                if on_segment is not None:
                    on_segment(item)
                if progress is not None:
                    _report(progress, item["end"], total)
            if last:
                break
            at += part.shape[0]
            carried = window[part.shape[0]:]
            del part, segments
            window = np.concatenate([carried, audio.read(piece - carried.shape[0])])
            if progress is not None:  # up to the first clip still waiting for its batch
                _report(progress, min(at / SAMPLE_RATE, math.inf if queue.start is None else queue.start),
                        audio.total_seconds())
        duration = audio.position
        elapsed = time.perf_counter() - t0
        if progress is not None:
            progress(duration, duration)
        language = info.language if info is not None else (spec.language or "en")
        return document(out_segments, spec, language=language, duration=duration, after_vad=after_vad,
                        language_probability=float(info.language_probability) if info is not None else 1.0,
                        elapsed=elapsed, mode=mode, audio_sha256=audio_sha256, resumed_at=offset if done else None,
                        guards=counts if mode == "batched" else None)

    def transcribe_many(self, items: list[Item]) -> list[dict[str, Any]]:
        """Several short requests with the same :func:`~.packing.batch_key`, packed into
        shared windows and decoded in one batched call (:mod:`.packing` says how); one
        result document each. ``items`` are (audio, spec, audio SHA-256)."""
        return transcribe_packed(lambda spec: self.model(spec.model, spec.device, spec.compute_type), items,
                                 self.options.clip_gap_seconds)


def choose_decoding(requested: str, duration: float, batched_min_seconds: float) -> str:
    """batched or sequential, for ``spec.decoding`` and the audio's length in seconds.

    An explicit choice stands. ``auto`` batches from ``batched_min_seconds`` up: below it
    the VAD cuts too few 30 s chunks to fill a batch, so batching gains little while
    sequential decoding keeps each window conditioned on the text before it.
    """
    if requested in ("batched", "sequential"):
        return requested
    return "batched" if duration >= batched_min_seconds else "sequential"


def _report(progress: ProgressFn, done: float, total: float | None) -> None:
    """Progress at ``done`` seconds: of the length known so far, or of 0 (unknown)."""
    progress(min(done, total) if total else done, total or 0.0)
