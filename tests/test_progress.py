"""Progress and checkpoints: the operator's write rule (pure), the Redis board (real
redis-server), resuming after a checkpoint (real faster-whisper), and a request watched
rising to 100 % through the real control plane."""

from __future__ import annotations

import numpy as np
import pytest

from kubescribe.models import parse_spec
from kubescribe.operator.progress_writes import RUNNING_CAP, progress_to_write
from kubescribe.progress import CHECKPOINT_PREFIX, Progress, ProgressReporter, RunBoard
from kubescribe.runner.task import run_task
from kubescribe.store import Store
from harness.envtest import wait_for
from harness.speech import CORPUS, SENTENCES, SpeechBank, wer, write_wav


# -- when the operator writes status.progress: a specification ------------------------------

def write(**kw):
    args = dict(phase="Running", written=None, reported=Progress(30, 100), running_for=10.0, period=10.0)
    args.update(kw)
    return progress_to_write(**args)


def test_progress_is_written_once_a_period_has_passed_while_running():
    assert write() == 30


def test_a_request_that_ends_within_its_first_period_costs_no_progress_write():
    assert write(running_for=9.9) is None


def test_only_a_running_request_gets_progress_written():
    for phase in ("Pending", "Queued", "Succeeded", "Failed", None):
        assert write(phase=phase) is None


def test_nothing_is_written_without_a_report_or_when_the_percent_did_not_rise():
    assert write(reported=None) is None
    assert write(written=30) is None
    assert write(written=45) is None  # a retry starting over does not move the bar back
    assert write(written=29) == 30


def test_running_stops_at_99_because_100_belongs_to_the_final_status():
    assert write(reported=Progress(100, 100)) == RUNNING_CAP
    assert write(reported=Progress(100, 100), written=RUNNING_CAP) is None


def test_percent_is_rounded_down_and_bounded():
    assert Progress(99.9, 100).percent == 99
    assert Progress(150, 100).percent == 100
    assert Progress(5, 0).percent == 0


# -- the board on a real redis-server ----------------------------------------------------------

def test_reports_are_throttled_but_the_last_one_always_lands(redis_server):
    client = redis_server.client()
    client.flushdb()
    board = RunBoard(client)
    now = [0.0]
    reporter = ProgressReporter(board, "uid-1", every=2.0, clock=lambda: now[0])
    for t in range(10):  # a report a second for 10 s ...
        now[0] = float(t)
        reporter(t * 10.0, 200.0)
    assert reporter.reports == 5  # ... lands every 2 s
    assert board.progress(["uid-1"])["uid-1"].done_seconds == 80.0
    reporter(200.0, 200.0)  # the end is never throttled away
    assert board.progress(["uid-1", "nobody"]) == {"uid-1": Progress(200.0, 200.0,
                                                                      board.progress(["uid-1"])["uid-1"].at)}
    assert 0 < client.ttl("kubescribe:progress:uid-1") <= 3600


def test_checkpoints_come_back_in_order_and_stop_at_a_damaged_entry(redis_server):
    client = redis_server.client()
    client.flushdb()
    board = RunBoard(client)
    for i in range(3):
        board.checkpoint("key", {"id": i + 1, "start": i, "end": i + 0.5, "text": f"s{i}"})
    assert [s["text"] for s in board.checkpointed("key")] == ["s0", "s1", "s2"]
    client.rpush(CHECKPOINT_PREFIX + "key", b"{not json", b'{"start": 9, "end": 9.5, "text": "after"}')
    assert [s["text"] for s in board.checkpointed("key")] == ["s0", "s1", "s2"]
    board.drop_checkpoint("key")
    assert board.checkpointed("key") == []


# -- resuming after a checkpoint (real faster-whisper) -----------------------------------------

@pytest.fixture(scope="module")
def three_sentences(speech_dir, tmp_path_factory):
    from faster_whisper.audio import decode_audio

    from kubescribe.settings import EngineSettings

    # a pause past the clip gap: batched decoding makes one clip per sentence
    gap = np.zeros(int((EngineSettings().clip_gap_seconds + 1.0) * 16000), dtype=np.float32)
    parts = []
    for name in ("fox", "weather", "library"):
        parts += [decode_audio(str(speech_dir / f"{name}.wav"), sampling_rate=16000), gap]
    path = write_wav(tmp_path_factory.mktemp("three") / "three.wav", np.concatenate(parts))
    return path.read_bytes(), " ".join(SENTENCES[n] for n in ("fox", "weather", "library"))


class Killed(Exception):
    pass


@pytest.mark.parametrize("decoding", ["sequential", "batched"])
def test_a_task_killed_midway_resumes_after_its_last_checkpoint_without_a_seam(
        redis_store, engine, three_sentences, decoding):
    data, text = three_sentences
    key = redis_store.put_audio(data)
    spec = parse_spec({"audio": {"redisKey": key}, "device": "cpu", "decoding": decoding, "batchSize": 1,
                       "cache": {"enabled": False}})
    board = RunBoard(redis_store.client)
    whole = run_task(redis_store, engine, spec).result

    seen = []

    def die_after_first(done, total):  # the runner is killed right after its first segment
        seen.append(done)
        if len(board.checkpointed(_cache_key(key, spec))) >= 1:
            raise Killed

    with pytest.raises(Killed):
        run_task(redis_store, engine, spec, board=board, progress=die_after_first)
    saved = board.checkpointed(_cache_key(key, spec))
    assert 1 <= len(saved) < len(whole["segments"]), (saved, whole["segments"])

    resumed = run_task(redis_store, engine, spec, board=board).result
    assert resumed["decoding"]["resumed_at_seconds"] == saved[-1]["end"]
    segs = resumed["segments"]
    assert segs[:len(saved)] == saved  # checkpointed segments kept as they were
    assert [s["id"] for s in segs] == list(range(1, len(segs) + 1))
    assert all(a["end"] <= b["start"] + 1e-6 for a, b in zip(segs, segs[1:]))  # no overlap at the seam
    assert wer(whole["text"], resumed["text"]) <= 0.1, (whole["text"], resumed["text"])
    assert wer(text, resumed["text"]) <= 0.3
    assert board.checkpointed(_cache_key(key, spec)) == []  # dropped once the result is stored


def _cache_key(audio_key, spec):
    from kubescribe.cache_layout import cache_key

    return cache_key(audio_key.rsplit(":", 1)[1], spec.output_params())


# -- the whole path: runner -> Redis -> operator -> status.progress --------------------------------

@pytest.mark.kube
def test_a_long_request_shows_rising_progress_to_100_and_resumes_after_its_runner_is_killed(
        operator_factory, requests_api, kube_namespace, redis_server, tmp_path, fake_kubelet):
    import os
    import signal

    redis_server.client().flushdb()
    # Every sentence of the corpus once, a second of silence after each (~2.5 min): distinct
    # text, so tiny.en's loops on a text said many times (the three test sentences twelve
    # times once looped through every kept segment) do not stand in for a lost resume.
    bank = SpeechBank(tmp_path / "bank")
    gap = np.zeros(16000, dtype=np.float32)
    spans, parts, t = [], [], 0.0  # (start, end) seconds of each sentence in the recording
    for i in range(len(CORPUS)):
        samples = bank.samples(i)
        spans.append((t, t + samples.shape[0] / 16000))
        parts += [samples, gap]
        t = spans[-1][1] + 1.0
    audio = np.concatenate(parts)
    reference = " ".join(CORPUS)
    store = Store(redis_server.client())
    key = store.put_audio(write_wav(tmp_path / "long.wav", audio).read_bytes())
    board = RunBoard(redis_server.client())
    op = operator_factory(progress_seconds="5")
    requests_api.create("long", {"audio": {"redisKey": key}, "device": "cpu", "language": "en",
                                 "decoding": "sequential", "beamSize": 5, "retries": 1,
                                 "cache": {"enabled": False}})
    seen: list[int] = []
    gauge_seen = []

    def watch(status):
        if status.get("progress") is not None and (not seen or seen[-1] != status["progress"]):
            seen.append(status["progress"])
        return status

    # Freeze the runner once about a third of the segments are checkpointed, wait for the
    # operator to show its progress, then kill it. Freezing (SIGSTOP), not waiting for both
    # at once: a fast machine decodes this recording in 6 s, before the operator's first
    # progress period (5 s) has passed, and the checkpoints are gone with the result.
    def third_done():
        status = watch(requests_api.status("long"))
        ck = status.get("cacheKey")
        return ck if ck and len(board.checkpointed(ck)) >= 8 else None

    cache_key = wait_for(third_done, timeout=600, interval=0.05, description="a third of the segments checkpointed")
    run = next(r for r in fake_kubelet.runs(requests_api.namespace) if r.pid and r.exit_code is None)
    os.kill(run.pid, signal.SIGSTOP)
    saved = board.checkpointed(cache_key)

    def shown():
        status = watch(requests_api.status("long"))
        if status.get("phase") == "Running" and 'name="long"' in op.metrics_text():
            gauge_seen.append(True)
        return bool(seen and gauge_seen)

    wait_for(shown, timeout=60, interval=0.2, description="the frozen runner's progress shown")
    os.kill(run.pid, signal.SIGKILL)
    assert run.done.wait(30)

    status = wait_for(lambda: (lambda s: s if s.get("phase") in ("Succeeded", "Failed") else None)(
        watch(requests_api.status("long"))), timeout=600, interval=0.2, description="long request finished")
    assert status["phase"] == "Succeeded" and status["attempts"] == 2, status
    # progress: shown while running, never moved back by the kill, 100 at the end
    assert status["progress"] == 100
    assert seen == sorted(seen) and seen[-1] == 100, seen
    assert any(0 < p < 100 for p in seen), f"no progress shown while running: {seen}"
    assert gauge_seen, "no kubescribe_request_progress_ratio series while running"
    wait_for(lambda: 'name="long"' not in op.metrics_text(), timeout=30, interval=0.5,
             description="the request's progress series removed after it ended")
    # resumed: the killed attempt's segments kept, the rest decoded after them, no seam
    result = store.read_result_key(status["resultKey"])
    assert result["decoding"]["resumed_at_seconds"] >= saved[-1]["end"] > 0
    segs = result["segments"]
    assert segs[:len(saved)] == saved
    assert [s["id"] for s in segs] == list(range(1, len(segs) + 1))
    assert all(a["end"] <= b["start"] + 1e-6 for a, b in zip(segs, segs[1:]))
    # The seam is checked above, segment by segment. The words are checked per side of the
    # seam: the kept segments against the sentences said before it, the resumed ones against
    # those after it (a sentence belongs to the side its middle falls on; segments end in the
    # silences between sentences). A lost or repeated stretch on either side costs it a
    # third of its words or more; tiny.en's mishearings of espeak-ng cost a few.
    seam = saved[-1]["end"]
    for side, part, said in (
            ("kept", segs[:len(saved)], [c for c, (a, b) in zip(CORPUS, spans) if (a + b) / 2 < seam]),
            ("resumed", segs[len(saved):], [c for c, (a, b) in zip(CORPUS, spans) if (a + b) / 2 >= seam])):
        heard = " ".join(s["text"] for s in part)
        assert said and wer(" ".join(said), heard) <= 0.3, (side, seam, said, heard)
    n_ref, n_got = len(reference.split()), len(result["text"].split())
    assert 0.5 * n_ref <= n_got <= 1.5 * n_ref, (n_ref, n_got)
    assert board.checkpointed(cache_key) == []
