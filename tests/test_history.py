"""``kubescribe history clear``: which requests it picks (pure), and against a real API
server that it deletes exactly what it listed, never a request that has not finished."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from kubescribe import GROUP, PLURAL, VERSION
from kubescribe.cli.history import parse_age, select

CLI = [sys.executable, "-m", "kubescribe.cli"]
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def stamp(ago: timedelta, now: datetime = NOW) -> str:
    return (now - ago).strftime("%Y-%m-%dT%H:%M:%SZ")


def body(name, phase, completed=None, *, generation=1, observed=1, deleting=False):
    meta = {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": "5", "generation": generation}
    if deleting:
        meta["deletionTimestamp"] = stamp(timedelta(0))
    status = {"phase": phase, "observedGeneration": observed} if phase else {}
    if completed is not None:
        status["completedAt"] = completed
    return {"metadata": meta, "status": status}


# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600),
    ("1d12h", 129600), ("1.5h", 5400), (" 10M ", 600),
])
def test_ages_read_like_kubectl_durations(text, seconds):
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "5x", "-1d", "1d 2h", "1d2", "seven days"])
def test_a_bad_age_says_what_is_accepted(text):
    with pytest.raises(ValueError, match="30m, 12h, 7d"):
        parse_age(text)


def test_only_finished_requests_are_picked_whatever_the_filters():
    items = [body("new", None), body("pending", "Pending"), body("queued", "Queued"),
             body("running", "Running", stamp(timedelta(days=9))),
             body("ok", "Succeeded", stamp(timedelta(days=2))), body("bad", "Failed", stamp(timedelta(days=3)))]
    picked = select(items, phases=("Succeeded", "Failed", "Running", "Queued"), older_than=0, now=NOW)
    assert [f.name for f in picked] == ["bad", "ok"]  # oldest first


def test_the_age_filter_counts_from_completion_and_unknown_ages_are_kept():
    items = [body("old", "Succeeded", stamp(timedelta(days=8))), body("young", "Succeeded", stamp(timedelta(hours=1))),
             body("unknown", "Succeeded", None), body("garbled", "Failed", "last week")]
    assert [f.name for f in select(items, phases=("Succeeded", "Failed"), older_than=7 * 86400, now=NOW)] == ["old"]
    assert [f.name for f in select(items, phases=("Succeeded", "Failed"), older_than=0, now=NOW)] == ["old", "young"]


def test_the_phase_filter_and_requests_edited_or_going_away_are_left_alone():
    done = stamp(timedelta(days=1))
    items = [body("ok", "Succeeded", done), body("bad", "Failed", done),
             body("edited", "Succeeded", done, generation=2, observed=1),
             body("going", "Failed", done, deleting=True)]
    assert [f.name for f in select(items, phases=("Failed",), older_than=0, now=NOW)] == ["bad"]
    assert [f.name for f in select(items, phases=("Succeeded",), older_than=0, now=NOW)] == ["ok"]


# --------------------------------------------------------------------------- real API server


class Seeded:
    """Requests in two namespaces, each given a status as the operator would write it."""

    def __init__(self, kube_api, namespaces):
        from kubernetes import client

        self.custom = client.CustomObjectsApi(kube_api)
        self.namespaces = namespaces
        now = datetime.now(timezone.utc)
        self.plan = {  # name: (phase, finished how long ago)
            "done-old": ("Succeeded", timedelta(days=10)),
            "failed-old": ("Failed", timedelta(days=10)),
            "done-new": ("Succeeded", timedelta(minutes=5)),
            "running": ("Running", None),
            "queued": ("Queued", None),
        }
        for ns in namespaces:
            for name, (phase, ago) in self.plan.items():
                obj = self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "TranscriptionRequest", "metadata": {"name": name},
                    "spec": {"audio": {"redisKey": "kubescribe:audio:" + "a" * 64}}})
                status = {"phase": phase, "observedGeneration": obj["metadata"]["generation"]}
                if ago is not None:
                    status["completedAt"] = stamp(ago, now)
                self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, name,
                                                                  {"status": status})

    def names(self, ns):
        return sorted(o["metadata"]["name"] for o in self.custom.list_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL)["items"] if not o["metadata"].get("deletionTimestamp"))


@pytest.fixture
def two_namespaces(kube_api, crd_installed):
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    names = [f"history-{uuid.uuid4().hex[:6]}-{i}" for i in range(2)]
    for n in names:
        core.create_namespace({"metadata": {"name": n, "labels": {"kubescribe.io/test": "true"}}})
    yield names
    for n in names:
        core.delete_namespace(n)


def history_clear(kube_cluster, *args, input=""):
    return subprocess.run([*CLI, "history", "clear", "--kubeconfig", kube_cluster.kubeconfig_path, *args],
                          input=input, capture_output=True, text=True, timeout=120)


@pytest.mark.kube
def test_history_clear_deletes_only_the_finished_requests_it_listed(kube_cluster, kube_api, two_namespaces):
    a, b = two_namespaces
    seeded = Seeded(kube_api, two_namespaces)
    everything = sorted(seeded.plan)

    dry = history_clear(kube_cluster, "-n", a, "--older-than", "7d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.split()[:3] == ["NAME", "PHASE", "FINISHED"]
    assert sorted(line.split()[0] for line in dry.stdout.splitlines()[1:]) == ["done-old", "failed-old"]
    assert "2 request(s) would be deleted" in dry.stderr and seeded.names(a) == everything

    declined = history_clear(kube_cluster, "-n", a, "--older-than", "7d", input="n\n")
    assert declined.returncode == 1 and "nothing deleted" in declined.stderr
    assert seeded.names(a) == everything

    agreed = history_clear(kube_cluster, "-n", a, "--older-than", "7d", input="y\n")
    assert agreed.returncode == 0, agreed.stderr
    assert "deleted 2 request(s) from namespace " + a in agreed.stderr
    assert seeded.names(a) == ["done-new", "queued", "running"]
    assert seeded.names(b) == everything  # another namespace is not touched

    failed_only = history_clear(kube_cluster, "-n", b, "--phase", "failed", "--yes")
    assert failed_only.returncode == 0, failed_only.stderr
    assert seeded.names(b) == ["done-new", "done-old", "queued", "running"]

    # No age filter, every namespace: every finished request goes, nothing that is not.
    everywhere = history_clear(kube_cluster, "-A", "--yes")
    assert everywhere.returncode == 0, everywhere.stderr
    assert seeded.names(a) == seeded.names(b) == ["queued", "running"]
    again = history_clear(kube_cluster, "-n", a, "--yes")
    assert again.returncode == 0 and "no finished requests to delete" in again.stderr


@pytest.mark.kube
def test_history_clear_errors_are_one_line_with_their_exit_code(kube_cluster, tmp_path):
    for args, code, says in ((("-n", "x", "-A"), 2, "exclude each other"),
                             (("--older-than", "soon"), 2, "--older-than"),
                             (("--kubeconfig", str(tmp_path / "missing")), 2, "no Kubernetes credentials from kubeconfig")):
        proc = subprocess.run([*CLI, "history", "clear", "--kubeconfig", kube_cluster.kubeconfig_path, *args],
                              capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
        assert proc.returncode == code and says in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
