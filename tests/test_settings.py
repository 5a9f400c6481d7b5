"""Settings are declared once: a variable shared by several processes lives in one class
that each process's settings inherit, so its default and description cannot drift."""

from __future__ import annotations

import inspect

from pydantic_settings import BaseSettings

from kubescribe import settings


def test_no_setting_is_declared_in_two_classes():
    """A variable with one meaning is declared once. Only a per-process value (each
    process's own metrics port, with its own default) is declared in each process."""
    declared: dict[str, dict[str, object]] = {}
    for name, cls in inspect.getmembers(settings, inspect.isclass):
        if issubclass(cls, BaseSettings) and cls.__module__ == settings.__name__:
            for field in cls.__dict__.get("__annotations__", {}):
                if not field.startswith("_") and field != "model_config":
                    declared.setdefault(field, {})[name] = cls.model_fields[field].default
    twice = {field: owners for field, owners in declared.items()
             if len(owners) > 1 and len({repr(d) for d in owners.values()}) < len(owners)}
    assert not twice, twice


def test_processes_that_share_a_setting_read_the_same_variable(monkeypatch):
    monkeypatch.setenv("KUBESCRIBE_POOL_IDLE_SECONDS", "12")
    monkeypatch.setenv("KUBESCRIBE_MAX_AUDIO_BYTES", "1234")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBECONFIG", "/tmp/kc")
    assert settings.OperatorSettings().pool_idle_seconds == settings.RunnerSettings().pool_idle_seconds == 12
    assert settings.OperatorSettings().max_audio_bytes == settings.RunnerSettings().max_audio_bytes == 1234
    assert settings.GatewaySettings().kubernetes_service_host == settings.RunnerSettings().kubernetes_service_host \
        == "10.96.0.1"
    assert settings.GatewaySettings().kubeconfig == settings.CliSettings().kubeconfig == "/tmp/kc"
