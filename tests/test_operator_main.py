"""The operator's wiring, with no server: the settings it gives kopf, the parts it builds
once (controllers.build), and where a watch event goes."""

import warnings

import kopf

from kubescribe.operator.main import configure_kopf
from kubescribe.settings import OperatorSettings


def test_kopf_settings_use_no_deprecated_name():
    """kopf 1.45 renamed ``settings.batching`` to ``settings.queueing``; the old name warns."""
    settings = kopf.OperatorSettings()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        configure_kopf(settings, OperatorSettings(redis_url="memory://", namespace="ns"))
    assert settings.queueing.idle_timeout == 1.0
    assert settings.posting.enabled is False and settings.scanning.disabled is True


def test_kopf_keeps_no_diff_base_and_nothing_needs_one():
    """kopf's diff base is a deep copy of every object on every event, for change
    handlers; the operator registers none (only ``on.event``), so it keeps none."""
    from kubescribe.operator import main
    from kubescribe.operator.main import NoDiffBase

    settings = kopf.OperatorSettings()
    configure_kopf(settings, OperatorSettings(redis_url="memory://"))
    storage = settings.persistence.diffbase_storage
    assert isinstance(storage, NoDiffBase)
    body = {"metadata": {"name": "r", "annotations": {"a": "b"}}, "spec": {"model": "tiny.en"}}
    assert storage.build(body=body) == {} and storage.fetch(body=body) is None
    registry = kopf.get_default_registry()
    assert main.request_event in [h.fn for h in registry._watching.get_all_handlers()]
    # a change or daemon handler would get no diff: it needs kopf's own storage back
    assert not registry._changing.get_all_handlers() and not registry._spawning.get_all_handlers()


def test_once_started_what_exists_is_frozen_and_young_objects_are_collected_less_often():
    import gc

    from kubescribe.operator.main import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS and GC_THRESHOLDS[0] > before[0]
        assert gc.get_freeze_count() > 10_000  # this test process's modules, at least
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_every_part_shares_one_applier_and_the_pool_consumer_exists_only_in_pool_mode():
    from kubescribe.metrics import OperatorMetrics
    from kubescribe.operator import controllers
    from kubescribe.store import MemoryStore

    from tests.support.operator_parts import FakeKube

    for mode in ("job", "pool"):
        metrics = OperatorMetrics()
        parts = controllers.build(OperatorSettings(redis_url="memory://", mode=mode), MemoryStore(metrics=metrics),
                                  FakeKube(), metrics)
        a = parts.applier
        assert parts.requests.applier is a and parts.jobs.applier is a and parts.resync.applier is a
        assert parts.progress.applier is a and parts.admitter.applier is a and parts.gauges.registry is a.registry
        assert parts.resync.synced is parts.admitter.synced and not parts.admitter.synced.is_set()
        assert (parts.pool_outcomes is not None) == (mode == "pool")
        assert parts.health.healthy() == parts.admitter.healthy()


def test_a_watch_event_is_queued_for_its_kinds_handler():
    from kubescribe.operator.main import _record

    class Events:
        def __init__(self):
            self.put_calls = []

        def put(self, key, handler, event_type, body):
            self.put_calls.append((key, handler, event_type, body["metadata"]["name"]))

    memo = kopf.Memo()
    memo.events = Events()
    body = {"metadata": {"uid": "u1", "name": "r"}}
    _record(memo, "job", {"type": "ADDED", "object": body})
    assert memo.events.put_calls == []  # before startup built the handlers
    memo.handlers = {"request": print, "job": len, "workload": repr}
    _record(memo, "job", {"type": "ADDED", "object": body})
    assert memo.events.put_calls == [(("job", "u1"), len, "ADDED", "r")]
