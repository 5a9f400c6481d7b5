"""The runner Job manifests: pure functions of the request and the settings."""

from __future__ import annotations

import json
import os
import re

import pytest

from kubescribe import API_VERSION, KIND
from kubescribe.models import parse_spec
from kubescribe.operator.jobs import (
    CONTAINER,
    LABEL_POOL,
    LABEL_REQUEST,
    LABEL_REQUEST_UID,
    build_job,
    build_pool_job,
    job_name,
)
from kubescribe.outcomes import EXIT_BAD_INPUT
from kubescribe.settings import OperatorSettings

LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
UID = "6f1c1f3e-8b9a-4a55-9f7e-0c2d3b4a5e6f"
AUDIO = "kubescribe:audio:" + "ab" * 32
SECRET = "pa55-w0rd-never-in-a-manifest"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Settings come from keyword arguments only, not from the test runner's environment."""
    for k in list(os.environ):
        if k.startswith("KUBESCRIBE_"):
            monkeypatch.delenv(k)


def settings(**kw) -> OperatorSettings:
    return OperatorSettings(**kw)


def request(name: str = "hello", *, uid: str = UID, generation: int | None = 1, namespace: str = "team-a",
            **spec) -> tuple[dict, object]:
    raw = {"audio": {"redisKey": AUDIO}, **spec}
    meta = {"name": name, "namespace": namespace, "uid": uid}
    if generation is not None:
        meta["generation"] = generation
    body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": raw}
    return body, parse_spec(raw)


def job_for(name: str = "hello", conf: OperatorSettings | None = None, **spec) -> dict:
    body, parsed = request(name, **spec)
    return build_job(body, parsed, conf or settings())


def pod(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def container(job: dict) -> dict:
    (c,) = pod(job)["containers"]
    assert c["name"] == CONTAINER
    return c


def env(job: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container(job)["env"]}


def all_labels(job: dict) -> dict[str, str]:
    return {**job["metadata"]["labels"], **job["spec"]["template"]["metadata"]["labels"]}


# -- names ------------------------------------------------------------------------------


def test_job_name_is_deterministic_and_depends_on_uid_and_generation():
    a = job_name("hello", UID, 1)
    assert a == job_name("hello", UID, 1)
    assert a.startswith("kubescribe-hello-")
    assert job_name("hello", UID, 2) != a
    assert job_name("hello", "another-uid", 1) != a
    assert job_name("hello", UID, None) == job_name("hello", UID, 1)  # generation defaults to 1


@pytest.mark.parametrize("name", [
    "a",
    "hello",
    "x" * 63,
    "a" * 253,
    ("segment." * 40)[:253].rstrip("."),
    "UPPER.case.dots-and-dashes",
    "-" * 10 + "z",
    "a" + "-" * 60 + "b",
    "9" * 253,
])
def test_job_name_is_a_valid_dns_label_of_at_most_63_chars(name):
    n = job_name(name, UID, 7)
    assert len(n) <= 63, n
    assert DNS_LABEL.match(n), n
    # The Job controller puts the Job name in the pods' batch.kubernetes.io/job-name label.
    assert LABEL_VALUE.match(n)


def test_long_names_that_share_a_prefix_still_get_different_job_names():
    a = job_name("a" * 200 + "x", "uid-1", 1)
    b = job_name("a" * 200 + "y", "uid-2", 1)
    assert a != b and len(a) == len(b) == 63


def test_job_metadata_name_matches_job_name():
    body, parsed = request("hello", generation=3)
    job = build_job(body, parsed, settings())
    assert job["metadata"]["name"] == job_name("hello", UID, 3)
    assert job["metadata"]["namespace"] == "team-a"
    assert job["metadata"]["annotations"]["kubescribe.io/generation"] == "3"


@pytest.mark.parametrize("name", ["hello", "a" * 253, "my.request.with.dots", ("b." * 126) + "c"])
def test_label_values_are_valid(name):
    job = job_for(name)
    for key, value in all_labels(job).items():
        assert len(value) <= 63, (key, value)
        assert LABEL_VALUE.match(value), (key, value)
    assert job["metadata"]["labels"] == job["spec"]["template"]["metadata"]["labels"]
    assert job["metadata"]["labels"][LABEL_REQUEST_UID] == UID


def test_request_label_keeps_short_names_and_hashes_long_ones():
    assert job_for("hello")["metadata"]["labels"][LABEL_REQUEST] == "hello"
    long_a = job_for("a" * 253)["metadata"]["labels"][LABEL_REQUEST]
    long_b = job_for("a" * 252 + "b")["metadata"]["labels"][LABEL_REQUEST]
    assert long_a != long_b and len(long_a) <= 63


# -- ownership and Job spec -------------------------------------------------------------


def test_owned_by_the_request_as_controller():
    job = job_for("hello")
    (ref,) = job["metadata"]["ownerReferences"]
    assert ref == {"apiVersion": API_VERSION, "kind": KIND, "name": "hello", "uid": UID,
                   "controller": True, "blockOwnerDeletion": True}


def test_retries_timeout_and_ttl():
    job = job_for(retries=4, timeoutSeconds=120, conf=settings(job_ttl_seconds=77))
    assert job["spec"]["backoffLimit"] == 4
    assert job["spec"]["activeDeadlineSeconds"] == 120
    assert job["spec"]["ttlSecondsAfterFinished"] == 77
    default = job_for()
    assert default["spec"]["backoffLimit"] == 2 and default["spec"]["activeDeadlineSeconds"] == 3600
    assert job_for(retries=0)["spec"]["backoffLimit"] == 0


def test_pod_failure_policy_fails_the_job_on_bad_input():
    job = job_for()
    rules = job["spec"]["podFailurePolicy"]["rules"]
    fail = [r for r in rules if r["action"] == "FailJob"]
    assert fail == [{"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                          "values": [EXIT_BAD_INPUT]}}]
    assert EXIT_BAD_INPUT == 65
    ignore = [r for r in rules if r["action"] == "Ignore"]
    assert ignore and ignore[0]["onPodConditions"] == [{"type": "DisruptionTarget"}]
    # podFailurePolicy requires restartPolicy Never.
    assert pod(job)["restartPolicy"] == "Never"


def test_spec_and_request_reach_the_runner():
    job = job_for("hello", model="base.en", language="en", beamSize=3)
    e = env(job)
    spec = json.loads(e["KUBESCRIBE_SPEC"]["value"])
    assert spec["model"] == "base.en" and spec["beamSize"] == 3 and spec["audio"]["redisKey"] == AUDIO
    assert parse_spec(spec).model_dump() == parse_spec({"audio": {"redisKey": AUDIO}, "model": "base.en",
                                                        "language": "en", "beamSize": 3}).model_dump()
    assert e["KUBESCRIBE_REQUEST"]["value"] == "team-a/hello"
    assert e["KUBESCRIBE_REDIS_URL"]["value"] == "redis://localhost:6379/0"
    assert e["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_image_command_and_extra_env_from_settings():
    conf = settings(runner_image="reg.example/runner:9", runner_command=["run-me", "--now"],
                    runner_image_pull_policy="Always", runner_env={"B": "2", "A": "1"})
    job = job_for(conf=conf)
    c = container(job)
    assert c["image"] == "reg.example/runner:9" and c["imagePullPolicy"] == "Always"
    assert c["command"] == ["run-me", "--now"]
    names = [x["name"] for x in c["env"]]
    assert names[-2:] == ["A", "B"]
    assert env(job)["A"]["value"] == "1"


# -- GPUs -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, gpus", [
    ({}, "1"),
    ({"device": "cuda"}, "1"),
    ({"gpus": 3}, "3"),
    ({"device": "cuda", "gpus": 2}, "2"),
])
def test_gpu_limits_from_the_spec(spec, gpus):
    res = container(job_for(**spec))["resources"]
    assert res["limits"]["nvidia.com/gpu"] == gpus
    assert res["requests"]["nvidia.com/gpu"] == gpus
    assert res["requests"]["cpu"] == "1" and res["limits"]["memory"] == "8Gi"


@pytest.mark.parametrize("spec", [{"device": "cpu"}, {"device": "cpu", "gpus": 0}, {"gpus": 0}])
def test_no_gpus_for_cpu_requests(spec):
    res = container(job_for(**spec))["resources"]
    assert not any("gpu" in k for part in res.values() for k in part), res


def test_gpu_resource_name_and_resources_from_settings_are_not_shared_between_jobs():
    conf = settings(gpu_resource_name="amd.com/gpu", runner_resources={"limits": {"memory": "1Gi"}})
    a = container(job_for(conf=conf, gpus=2))["resources"]
    b = container(job_for(conf=conf, device="cpu"))["resources"]
    assert a["limits"] == {"memory": "1Gi", "amd.com/gpu": "2"}
    assert b == {"limits": {"memory": "1Gi"}}
    assert conf.runner_resources == {"limits": {"memory": "1Gi"}}  # not mutated by build_job


# -- scheduling -------------------------------------------------------------------------


def test_scheduling_settings_reach_the_pod():
    tol = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    conf = settings(runner_node_selector={"pool": "gpu"}, runner_tolerations=tol, runner_runtime_class="nvidia",
                    runner_priority_class="batch-low", runner_service_account="runner")
    p = pod(job_for(conf=conf))
    assert p["nodeSelector"] == {"pool": "gpu"}
    assert p["tolerations"] == tol
    assert p["runtimeClassName"] == "nvidia"
    assert p["priorityClassName"] == "batch-low"
    assert p["serviceAccountName"] == "runner"


def test_scheduling_fields_absent_by_default():
    p = pod(job_for())
    for key in ("nodeSelector", "tolerations", "runtimeClassName", "priorityClassName", "serviceAccountName"):
        assert key not in p, key


def test_scheduling_settings_from_environment(monkeypatch):
    monkeypatch.setenv("KUBESCRIBE_RUNNER_NODE_SELECTOR", '{"gpu": "a100"}')
    monkeypatch.setenv("KUBESCRIBE_RUNNER_TOLERATIONS", '[{"key": "k", "operator": "Exists"}]')
    monkeypatch.setenv("KUBESCRIBE_RUNNER_RUNTIME_CLASS", "nvidia")
    p = pod(job_for(conf=OperatorSettings()))
    assert p["nodeSelector"] == {"gpu": "a100"}
    assert p["tolerations"] == [{"key": "k", "operator": "Exists"}]
    assert p["runtimeClassName"] == "nvidia"


# -- Redis credentials ------------------------------------------------------------------


def test_redis_password_only_through_a_secret_reference():
    conf = settings(redis_password=SECRET, redis_secret_name="redis-auth", redis_secret_key="pw")
    for job in (job_for(conf=conf), build_pool_job(conf, "ns", "pool-1")):
        assert SECRET not in json.dumps(job)
        e = {x["name"]: x for x in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        pw = e["KUBESCRIBE_REDIS_PASSWORD"]
        assert "value" not in pw
        assert pw["valueFrom"] == {"secretKeyRef": {"name": "redis-auth", "key": "pw"}}


def test_no_password_env_without_a_secret_and_never_the_literal():
    conf = settings(redis_password=SECRET)
    job = job_for(conf=conf)
    assert SECRET not in json.dumps(job)
    assert "KUBESCRIBE_REDIS_PASSWORD" not in env(job)
    for e in container(job)["env"]:
        assert "value" in e or "valueFrom" in e
        if "value" in e:
            assert SECRET not in e["value"]


def test_password_from_environment_is_not_copied_into_the_job(monkeypatch):
    monkeypatch.setenv("KUBESCRIBE_REDIS_PASSWORD", SECRET)
    monkeypatch.setenv("KUBESCRIBE_REDIS_SECRET_NAME", "redis")
    conf = OperatorSettings()
    assert conf.redis_password == SECRET
    assert SECRET not in json.dumps(job_for(conf=conf))
    assert env(job_for(conf=conf))["KUBESCRIBE_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "redis"


def test_audio_url_allow_list_reaches_job_and_pooled_runners(monkeypatch):
    assert "KUBESCRIBE_AUDIO_URL_ALLOW_CIDRS" not in env(job_for())
    monkeypatch.setenv("KUBESCRIBE_AUDIO_URL_ALLOW_CIDRS", "10.0.0.5/32, 127.0.0.1/8")
    conf = OperatorSettings()
    for job in (job_for(conf=conf), build_pool_job(conf, "ns", "pool-1")):
        e = {x["name"]: x for x in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert e["KUBESCRIBE_AUDIO_URL_ALLOW_CIDRS"]["value"] == "10.0.0.5/32,127.0.0.0/8"


# -- volumes ----------------------------------------------------------------------------


def test_model_cache_volume_is_read_only():
    conf = settings(model_cache_pvc="whisper-models", model_cache_mount_path="/models")
    job = job_for(conf=conf)
    vols = {v["name"]: v for v in pod(job)["volumes"]}
    assert vols["models"]["persistentVolumeClaim"] == {"claimName": "whisper-models", "readOnly": True}
    mounts = {m["name"]: m for m in container(job)["volumeMounts"]}
    assert mounts["models"] == {"name": "models", "mountPath": "/models", "readOnly": True}
    assert env(job)["KUBESCRIBE_MODEL_DIR"]["value"] == "/models"


def test_no_model_volume_by_default_and_tmp_is_writable():
    job = job_for()
    vols = {v["name"]: v for v in pod(job)["volumes"]}
    assert "models" not in vols and vols["tmp"] == {"name": "tmp", "emptyDir": {}}
    mounts = {m["name"]: m for m in container(job)["volumeMounts"]}
    assert mounts["tmp"]["mountPath"] == "/tmp" and not mounts["tmp"].get("readOnly")
    assert env(job)["HOME"]["value"] == "/tmp"
    assert "KUBESCRIBE_MODEL_DIR" not in env(job)


# -- security ---------------------------------------------------------------------------


def assert_restricted(p: dict) -> None:
    assert p["automountServiceAccountToken"] is False
    assert p["securityContext"]["runAsNonRoot"] is True
    assert p["securityContext"]["runAsUser"] != 0
    assert p["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in p["containers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert "privileged" not in sc or sc["privileged"] is False
    assert not p.get("hostNetwork") and not p.get("hostPID") and not p.get("hostIPC")
    assert not any("hostPath" in v for v in p.get("volumes", []))


def test_restricted_security_context():
    assert_restricted(pod(job_for()))
    assert_restricted(pod(job_for(conf=settings(model_cache_pvc="m", runner_service_account="sa"))))
    assert_restricted(build_pool_job(settings(), "ns", "pool-1")["spec"]["template"]["spec"])


# -- pooled runners ---------------------------------------------------------------------


def test_pool_job():
    conf = settings(pool_command=["kubescribe-runner", "pool"], pool_gpus=2, pool_idle_seconds=45,
                    job_ttl_seconds=3600, runner_node_selector={"pool": "gpu"})
    job = build_pool_job(conf, "kubescribe", "kubescribe-pool-abc-1")
    assert job["metadata"]["name"] == "kubescribe-pool-abc-1"
    assert job["metadata"]["namespace"] == "kubescribe"
    assert "ownerReferences" not in job["metadata"]
    assert job["metadata"]["labels"][LABEL_POOL] == "true"
    for key, value in all_labels(job).items():
        assert LABEL_VALUE.match(value) and len(value) <= 63, (key, value)
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["ttlSecondsAfterFinished"] == 600
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["kubescribe-runner", "pool"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    e = {x["name"]: x for x in c["env"]}
    assert e["KUBESCRIBE_POOL_IDLE_SECONDS"]["value"] == "45.0"
    assert e["KUBESCRIBE_POOL_PRELOAD_MODEL"]["value"] == "tiny.en"
    assert "KUBESCRIBE_SPEC" not in e
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}


def test_pool_job_without_gpus():
    job = build_pool_job(settings(pool_gpus=0), "ns", "p")
    res = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert not any("gpu" in k for part in res.values() for k in part)


def test_manifests_are_json_serialisable_and_independent():
    conf = settings(runner_tolerations=[{"key": "a", "operator": "Exists"}], runner_node_selector={"x": "y"})
    a, b = job_for("a", conf=conf), job_for("b", conf=conf)
    json.dumps(a)
    pod(a)["nodeSelector"]["x"] = "changed"
    pod(a)["tolerations"].append({"key": "b"})
    assert pod(b)["nodeSelector"] == {"x": "y"}
    assert pod(b)["tolerations"] == [{"key": "a", "operator": "Exists"}]
    assert conf.runner_node_selector == {"x": "y"}


def test_credentials_in_the_redis_url_never_reach_a_job():
    from kubescribe.operator.jobs import redis_url_without_credentials

    assert redis_url_without_credentials("redis://:pw@redis:6379/0") == "redis://redis:6379/0"
    assert redis_url_without_credentials("rediss://user:p%40ss@r.example:6380/1") == "rediss://r.example:6380/1"
    assert redis_url_without_credentials("redis://redis:6379/0") == "redis://redis:6379/0"


def test_pooled_runners_take_as_many_requests_at_once_as_the_pool_sizing_gives_them():
    def pool_env(conf):
        return {x["name"]: x.get("value") for x in
                build_pool_job(conf, "ns", "pool-1")["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert pool_env(settings(requests_per_runner=6))["KUBESCRIBE_POOL_BATCH_MAX"] == "6"
    assert pool_env(settings(requests_per_runner=500))["KUBESCRIBE_POOL_BATCH_MAX"] == "64"  # the runner's cap
    # runner env set by the user wins, and the variable appears once
    e = build_pool_job(settings(runner_env={"KUBESCRIBE_POOL_BATCH_MAX": "1"}), "ns", "p")
    names = [x["name"] for x in e["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert names.count("KUBESCRIBE_POOL_BATCH_MAX") == 1
    assert pool_env(settings(runner_env={"KUBESCRIBE_POOL_BATCH_MAX": "1"}))["KUBESCRIBE_POOL_BATCH_MAX"] == "1"
