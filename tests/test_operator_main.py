"""The operator's kopf wiring, with no server: the settings it gives kopf."""

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
