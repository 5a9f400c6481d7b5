"""Every inherited metric is exported over HTTP and moves when work happens."""

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from kubescribe.metrics import Metrics, OperatorMetrics
from kubescribe.models import parse_spec
from kubescribe.runner.resources import Nvml, refresh_resource_gauges
from kubescribe.runner.task import TaskError, run_task
from kubescribe.serving import MetricsServer
from kubescribe.store import Store

INHERITED = [
    "kubescribe_transcriptions_total",
    "kubescribe_transcription_duration_seconds",
    "kubescribe_file_size_bytes",
    "kubescribe_audio_duration_seconds",
    "kubescribe_cache_operations_total",
    "kubescribe_cache_hit_rate",
    "kubescribe_queue_size",
    "kubescribe_active_workers",
    "kubescribe_gpu_utilization_percent",
    "kubescribe_ram_usage_bytes",
    "kubescribe_errors_total",
]


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    families = {fam.name for fam in text_string_to_metric_families(text)}
    return families, samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def test_every_inherited_family_is_exposed_and_moves(redis_server, speech_dir, engine):
    metrics = Metrics()
    nvml = Nvml()
    server = MetricsServer(metrics.registry, port=0, host="127.0.0.1",
                           before_scrape=lambda: refresh_resource_gauges(metrics, nvml)).start()
    try:
        families, before = scrape(server.port)
        # counters are exposed without their _total suffix in the family name
        names = {f if not f.endswith("_total") else f for f in families}
        for name in INHERITED:
            assert name.removesuffix("_total") in names or name in names, name

        client = redis_server.client()
        client.flushdb()
        store = Store(client, metrics=metrics)
        key = store.put_audio((speech_dir / "fox.wav").read_bytes())
        spec = parse_spec({"audio": {"redisKey": key}, "device": "cpu"})
        # As the CLI does: the process that sees a request end counts it from its outcome.
        for _ in range(2):  # miss, transcribe, set; then a hit
            metrics.observe_outcome(spec.model, run_task(store, engine, spec, metrics=metrics).outcome)
        bad = parse_spec({"audio": {"redisKey": store.put_audio(b"not audio" * 50)}, "device": "cpu"})
        try:
            run_task(store, engine, bad, metrics=metrics)
        except TaskError as exc:
            metrics.observe_outcome(bad.model, exc.outcome())
        metrics.queue_size.set(3)

        _, after = scrape(server.port)
        # A cache answer is a finished request too, counted as the operator counts it.
        assert value(after, "kubescribe_transcriptions_total", status="succeeded", model="tiny.en") == 2
        assert value(after, "kubescribe_transcriptions_total", status="failed", model="tiny.en") == 1
        assert value(after, "kubescribe_transcription_duration_seconds_count", model="tiny.en") == 1
        assert value(after, "kubescribe_file_size_bytes_sum") > 10_000
        assert value(after, "kubescribe_audio_duration_seconds_sum") > 1
        assert value(after, "kubescribe_cache_operations_total", operation="get", result="hit") == 1
        assert value(after, "kubescribe_cache_operations_total", operation="get", result="miss") == 2
        assert value(after, "kubescribe_cache_operations_total", operation="set", result="ok") == 1
        assert value(after, "kubescribe_cache_hit_rate") == 1 / 3
        assert value(after, "kubescribe_queue_size") == 3
        assert value(after, "kubescribe_active_workers") == 0
        assert value(after, "kubescribe_ram_usage_bytes") > 50_000_000
        assert value(after, "kubescribe_errors_total", type="bad_audio") == 1
        assert value(after, "kubescribe_realtime_factor_count", model="tiny.en") == 1
        # No GPU here: NVML has no readings, so the labelled GPU gauge has no samples,
        # but its family is still declared for the dashboard.
        if not nvml.available:
            assert not any(k[0] == "kubescribe_gpu_utilization_percent" for k in after)
    finally:
        server.stop()


def test_health_endpoint_reports_failure(tmp_path):
    state = {"ok": True}
    server = MetricsServer(OperatorMetrics().registry, port=0, host="127.0.0.1",
                           health=lambda: (state["ok"], "watching")).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as r:
            assert r.status == 200
        state["ok"] = False
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
            raise AssertionError("expected 503")
        except urllib.error.HTTPError as err:
            assert err.code == 503
    finally:
        server.stop()
