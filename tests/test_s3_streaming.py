"""Audio in a bucket is streamed to the decoder, never held whole: a real S3 server
(versitygw) and a real runner process.

The object is read as a seekable file (runner.objectfile): one streaming GET for a
sequential read, a ranged GET after a seek away, every GET pinned to the first one's
ETag so a recording replaced mid-read fails instead of splicing two files. The decoder
reads it exactly as it reads the same bytes in memory. And the runner's peak RSS for a
recording 4.5 times longer (and 4.5 times the bytes, 450 MiB) is what it is for the short one.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import wave

import numpy as np
import pytest

from kubescribe.models import S3Object
from kubescribe.objectstore import ObjectStore
from kubescribe.runner import buckets
from kubescribe.runner.audio import SAMPLE_RATE, AudioStream
from kubescribe.runner.failures import TaskError, task_errors
from kubescribe.runner.objectfile import SKIP_BYTES
from harness.envtest import require_binary
from harness.speech import SENTENCES, speak

MIB = 1 << 20


@pytest.fixture
def objects(s3_server) -> ObjectStore:
    return ObjectStore(s3_server.client(), None)


def test_an_object_reads_like_its_bytes_with_one_get_per_jump(objects, s3_bucket):
    data = os.urandom(3 * MIB + 123)
    objects.put("blob", data, bucket=s3_bucket)
    with buckets.stream_audio(objects, S3Object(bucket=s3_bucket, key="blob"), 10 * MIB) as f:
        assert f.size == len(data) and f.seekable() and f.tell() == 0
        assert f.seek(0, io.SEEK_END) == len(data) and f.requests == 0  # a seek asks for nothing
        f.seek(0)
        got = b"".join(iter(lambda: f.read(64 * 1024), b""))
        assert got == data and f.requests == 1, "a sequential read is one streaming GET"
        f.seek(1000)  # back: a ranged GET
        assert f.read(10) == data[1000:1010] and f.requests == 2
        f.seek(SKIP_BYTES // 2, io.SEEK_CUR)  # a short hop ahead reads on
        assert f.read(10) == data[1010 + SKIP_BYTES // 2:][:10] and f.requests == 2
        f.seek(-5, io.SEEK_END)  # far ahead: a ranged GET
        assert f.read(100) == data[-5:] and f.read(100) == b"" and f.requests == 3


def test_a_recording_replaced_or_deleted_while_it_is_read_fails_and_is_never_spliced(objects, s3_bucket):
    first, second = os.urandom(2 * MIB), os.urandom(2 * MIB)
    objects.put("call.wav", first, bucket=s3_bucket)
    obj = S3Object(bucket=s3_bucket, key="call.wav")
    with buckets.stream_audio(objects, obj, 10 * MIB) as f:
        assert f.read(1000) == first[:1000]
        objects.put("call.wav", second, bucket=s3_bucket)
        f.seek(MIB)
        with pytest.raises(TaskError) as err, task_errors():
            f.read(1000)
    assert err.value.reason == "ObjectStoreUnavailable" and not err.value.final, "a retry reads the new one"
    assert err.value.message == f"GET {obj} from byte {MIB}: the object was replaced while it was read; " \
                                "a retry reads the new one"
    with buckets.stream_audio(objects, obj, 10 * MIB) as f:
        assert f.read(10) == second[:10]
        objects.delete(["call.wav"], bucket=s3_bucket)
        f.seek(MIB)
        with pytest.raises(TaskError) as err, task_errors():
            f.read(10)
    assert err.value.reason == "AudioNotFound" and err.value.message == f"{obj} was deleted while it was read"


def test_a_lost_connection_is_a_transient_failure_not_bad_audio(s3_bucket, tmp_path):
    """The decoder's own errors are BadAudio (final); the file's errors stay themselves."""
    from harness.envtest.s3 import S3Server

    with S3Server(tmp_path / "s3") as own:
        objects = ObjectStore(own.client(), None)
        bucket = own.create_bucket("audio")
        objects.put("a.wav", os.urandom(MIB), bucket=bucket)
        f = buckets.stream_audio(objects, S3Object(bucket=bucket, key="a.wav"), 10 * MIB)
        own.stop()
        with pytest.raises(TaskError) as err, task_errors():
            AudioStream(f)
        assert err.value.reason == "ObjectStoreUnavailable" and not err.value.final
        own.start()


def test_a_connection_closed_while_the_model_works_is_reopened_where_it_left_off(tmp_path):
    """The server restarts between two reads (its connections close, as an idle timeout
    closes them): the next read opens a ranged GET at the position, of the same object."""
    from harness.envtest.s3 import S3Server

    data = os.urandom(64 * MIB)  # more than the socket buffers hold at their largest (tcp_rmem: 32 MiB)
    with S3Server(tmp_path / "s3") as own:
        objects = ObjectStore(own.client(), None)
        bucket = own.create_bucket("audio")
        objects.put("long.flac", data, bucket=bucket)
        with buckets.stream_audio(objects, S3Object(bucket=bucket, key="long.flac"), 100 * MIB) as f:
            head = f.read(MIB)
            own.stop()
            own.start()
            rest = b"".join(iter(lambda: f.read(MIB), b""))
            assert head + rest == data and f.requests == 2


@pytest.fixture(scope="module")
def flac(tmp_path_factory) -> bytes:
    sox = require_binary("sox", "sox")
    path = tmp_path_factory.mktemp("flac") / "mix.flac"
    subprocess.run([sox, "-n", "-r", "44100", "-c", "2", "-b", "16", str(path), "synth", "75", "sine", "150",
                    "sine", "230", "pinknoise", "remix", "1,2,3", "1,2,3", "vol", "0.3"], check=True)
    return path.read_bytes()


@pytest.mark.parametrize("start", [0.0, 47.31234])
def test_the_decoder_reads_an_object_as_it_reads_the_same_bytes(objects, s3_bucket, flac, start):
    objects.put("mix.flac", flac, bucket=s3_bucket)
    with AudioStream(io.BytesIO(flac), start=start) as stream:
        expected = stream.read(10**8)
    with buckets.stream_audio(objects, S3Object(bucket=s3_bucket, key="mix.flac"), 10 * MIB) as f:
        with AudioStream(f, start=start) as stream:
            assert stream.start == round(start * SAMPLE_RATE) / SAMPLE_RATE
            got = np.concatenate([stream.read(7 * SAMPLE_RATE) for _ in range(12)])
            assert stream.ended
        # one GET for a read from the start; a seek in a FLAC without a seek table
        # bisects (11 GETs here): a few per seek, never one per read
        assert f.requests <= (1 if start == 0 else 16), f.requests
    np.testing.assert_array_equal(got, expected)


# -- the runner's memory ----------------------------------------------------------------------------

#: The recordings: a sentence, then faint noise up to the next sentence every PERIOD seconds,
#: written as 44.1 kHz stereo 16-bit WAV (10 MiB a minute), so that the bytes, which the
#: runner used to hold whole, are large beside the model's memory while the speech, which
#: costs model time, stays short.
#: Both are several pieces long (the engine's default, 300 s): the first piece of a
#: recording that has more costs a little more than a whole one-piece recording (the
#: audio carried across the cut), once, whatever the length after it.
PERIOD = 150.0
MINUTES = {"short": 10, "long": 45}
#: ``kubescribe-runner run`` (main() as the container runs it), then its RSS high-water mark.
RUNNER_REPORTING_PEAK = (
    "import sys\n"
    "from kubescribe.runner.main import main\n"
    "code = main(['run'])\n"
    "for line in open('/proc/self/status'):\n"
    "    if line.startswith('VmHWM:'):\n"
    "        print('VmHWM', line.split()[1], file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _recording(path, minutes: float, sentence: np.ndarray) -> None:
    """Written period by period through sox (16 kHz mono in, 44.1 kHz stereo out), never
    whole in this process."""
    rng = np.random.default_rng(3)
    sox = subprocess.Popen([require_binary("sox", "sox"), "-t", "raw", "-r", str(SAMPLE_RATE), "-e", "signed-integer",
                            "-b", "16", "-c", "1", "-", "-r", "44100", "-c", "2", str(path)], stdin=subprocess.PIPE)
    for _ in range(int(minutes * 60 / PERIOD)):
        unit = np.concatenate([sentence, np.zeros(int(PERIOD * SAMPLE_RATE) - sentence.shape[0], np.float32)])
        unit += rng.normal(0.0, 0.002, unit.shape[0]).astype(np.float32)
        sox.stdin.write((np.clip(unit, -1, 1) * 32767).astype("<i2").tobytes())
    sox.stdin.close()
    assert sox.wait() == 0


@pytest.mark.slow
def test_the_runners_peak_memory_does_not_grow_with_the_recording_it_reads_from_a_bucket(
        redis_server, s3_server, s3_bucket, tmp_path):
    from faster_whisper.audio import decode_audio

    sentence = decode_audio(str(speak(SENTENCES["fox"], tmp_path / "fox.wav")), sampling_rate=SAMPLE_RATE)
    client = s3_server.client()
    runs = {}
    for name, minutes in MINUTES.items():
        path = tmp_path / f"{name}.wav"
        _recording(path, minutes, sentence)
        client.upload_file(str(path), s3_bucket, f"{name}.wav")
        size = path.stat().st_size
        with wave.open(str(path)) as w:
            assert (w.getframerate(), w.getnchannels()) == (44100, 2)
        path.unlink()
        # batches of 2, which both recordings fill (tests/test_cli.py says why)
        spec = {"audio": {"url": f"s3://{s3_bucket}/{name}.wav"}, "device": "cpu", "language": "en",
                "beamSize": 1, "batchSize": 2, "cache": {"enabled": False}}
        env = {**os.environ, **s3_server.env(), "AWS_EC2_METADATA_DISABLED": "true",
               "KUBESCRIBE_S3_ENDPOINT": s3_server.endpoint, "KUBESCRIBE_S3_PATH_STYLE": "true",
               "KUBESCRIBE_S3_BUCKET": "", "KUBESCRIBE_REDIS_URL": redis_server.url,
               "KUBESCRIBE_SPEC": json.dumps(spec), "KUBESCRIBE_METRICS_PORT": "-1",
               "KUBESCRIBE_MAX_AUDIO_BYTES": str(1 << 30), "KUBESCRIBE_TERMINATION_LOG": str(tmp_path / "out.json")}
        proc = subprocess.run([sys.executable, "-c", RUNNER_REPORTING_PEAK], env=env, capture_output=True, text=True,
                              timeout=1800)
        assert proc.returncode == 0, proc.stderr[-3000:]
        peak = int(proc.stderr.rsplit("VmHWM", 1)[1].split()[0]) * 1024
        outcome = json.loads((tmp_path / "out.json").read_text())
        runs[name] = {"size": size, "peak": peak, "outcome": outcome}
        print(f"\n{name}: {minutes} min, object {size / MIB:.0f} MiB, runner peak RSS {peak / MIB:.0f} MiB, "
              f"audio {outcome['audioDurationSeconds']:.0f} s")
    short, long = runs["short"], runs["long"]
    for name, run in runs.items():
        assert run["outcome"]["audioDurationSeconds"] == pytest.approx(MINUTES[name] * 60, abs=0.5)
    ratio = long["peak"] / short["peak"]
    grown = (long["peak"] - short["peak"]) / (long["size"] - short["size"])
    print(f"peak ratio {ratio:.3f} for {long['size'] / short['size']:.1f}x the bytes; the peak grew by "
          f"{grown:.1%} of the extra bytes")
    assert long["size"] > 4 * short["size"]
    # Held whole (before runner.objectfile), the bytes came on top: 621 -> 991 MiB, a ratio of
    # 1.6 and 105 % of the extra bytes. Streamed, three runs gave 0.99-1.07 and -1 to +11 %: the
    # allocator's heap after more pieces, not the bytes (benchmarks' long_memory: 3 h at 1.055x 10 min).
    assert ratio <= 1.15 and grown <= 0.25, (ratio, grown)
