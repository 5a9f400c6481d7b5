"""Runner pods that can never start (operator/pods.py): pure decisions, no server."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from kubescribe.operator.pods import stuck_pod

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=timezone.utc)
IMAGE = "registry.example/kubescribe-runner:typo"


def pod(waiting_reason: str | None, age: float, *, message: str = "", name: str = "tr-x-abc",
        container: str = "runner", deleting: bool = False) -> dict:
    state = {"waiting": {"reason": waiting_reason, "message": message}} if waiting_reason else {"running": {}}
    meta = {"name": name, "creationTimestamp": (NOW - timedelta(seconds=age)).isoformat().replace("+00:00", "Z")}
    if deleting:
        meta["deletionTimestamp"] = NOW.isoformat()
    return {"metadata": meta,
            "spec": {"containers": [{"name": container, "image": IMAGE}]},
            "status": {"containerStatuses": [{"name": container, "image": IMAGE, "state": state}]}}


def decide(*pods: dict, grace: float = 60):
    return stuck_pod(pods, container="runner", now=NOW, grace=grace)


def test_a_never_pull_image_that_is_missing_fails_at_once_naming_the_image():
    stuck = decide(pod("ErrImageNeverPull", 1, message='Container image "x" is not present'))
    assert stuck is not None and stuck.reason == "ImagePullFailed"
    assert IMAGE in stuck.message and "ErrImageNeverPull" in stuck.message and "not present" in stuck.message
    assert stuck.pod == "tr-x-abc"


def test_an_invalid_image_name_fails_at_once():
    assert decide(pod("InvalidImageName", 0)).reason == "ImagePullFailed"


def test_a_pull_backoff_gets_the_grace_period_then_fails():
    assert decide(pod("ImagePullBackOff", 59)) is None
    assert decide(pod("ErrImagePull", 30)) is None
    stuck = decide(pod("ImagePullBackOff", 61, message="Back-off pulling image"))
    assert stuck.reason == "ImagePullFailed" and "for 61s" in stuck.message and IMAGE in stuck.message


def test_a_config_error_that_lasts_is_a_start_failure_not_an_image_failure():
    assert decide(pod("CreateContainerConfigError", 10)) is None
    stuck = decide(pod("CreateContainerConfigError", 120, message='secret "redis" not found'))
    assert stuck.reason == "RunnerStartFailed" and 'secret "redis" not found' in stuck.message


def test_pods_that_are_starting_running_or_going_away_are_left_alone():
    assert decide(pod("ContainerCreating", 3600)) is None
    assert decide(pod(None, 3600)) is None
    assert decide(pod("ErrImageNeverPull", 10, deleting=True)) is None
    assert decide(pod("ErrImageNeverPull", 10, container="sidecar")) is None
    assert decide() is None


def test_the_first_stuck_pod_of_several_is_reported():
    stuck = decide(pod(None, 5, name="a"), pod("ErrImageNeverPull", 5, name="b"))
    assert stuck.pod == "b"


def test_a_long_kubelet_message_is_cut():
    stuck = decide(pod("ErrImageNeverPull", 1, message="x" * 5000))
    assert len(stuck.message) < 500
