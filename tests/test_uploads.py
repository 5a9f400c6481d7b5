"""Uploads of any size: through the gateway, streamed into the object store as they
arrive (above KUBESCRIBE_GATEWAY_STREAM_UPLOAD_BYTES) or PUT by the client to a presigned
URL, and from ``kubescribe submit`` (above KUBESCRIBE_STREAM_UPLOAD_BYTES).

Real parts: the gateway and CLI processes, the API server (TokenReview,
SubjectAccessReview, RBAC, ResourceQuota admission), Redis and versitygw as the object
store. No operator runs: what is checked is what is stored and the request created.
The memory bound on 2 GiB uploads is tests/test_uploads_memory.py.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import urllib.request

import httpx
import pytest

from kubescribe import GROUP, PLURAL, VERSION
from harness.envtest import wait_for
from harness.envtest.cluster import make_namespace
from harness.envtest.s3 import bucket_name
from harness.gateway import WRITER_RULES, Callers, GatewayProcess
from harness.speech import wav_bytes

pytestmark = pytest.mark.kube

MIB = 1024 * 1024
LIMIT = 32 * MIB
PREFIX = "ks/"


def multipart(parts: list[tuple[str, bytes, str | None]], boundary: str = "ksboundary0123456789") -> tuple[bytes, dict]:
    """A multipart/form-data body with the parts in the order given (httpx puts fields
    before files; a client may send them after)."""
    out = bytearray()
    for name, value, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + value + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), {"content-type": f"multipart/form-data; boundary={boundary}"}


@pytest.fixture(scope="module")
def uploads_env(kube_cluster, kube_api, redis_server, crd_installed, s3_server, tmp_path_factory):
    """A gateway with the object store (1 MiB streaming threshold, 32 MiB limit), one
    without, a writer in a namespace, and a writer in a namespace whose ResourceQuota
    admits no request (so the API server refuses the create after the upload)."""
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    ns, quota_ns = make_namespace(core, "uploads"), make_namespace(core, "uploads-quota")
    hard = {f"count/{PLURAL}.{GROUP}": "0"}
    core.create_namespaced_resource_quota(quota_ns, {"metadata": {"name": "no-requests"}, "spec": {"hard": hard}})
    # The quota's usage, as kube-controller-manager's quota controller (not run here) would write it.
    core.patch_namespaced_resource_quota_status("no-requests", quota_ns, {"status": {"hard": hard, "used": hard}})
    callers, quota_callers = Callers(kube_api, ns), Callers(kube_api, quota_ns)
    bucket = s3_server.create_bucket(bucket_name("gw-uploads"))
    workdir = tmp_path_factory.mktemp("gateway-uploads")
    kubeconfig = str(kube_cluster.kubeconfig_path)
    gw = GatewayProcess(kubeconfig, redis_server.url, workdir, gateway_max_upload_bytes=str(LIMIT),
                        gateway_stream_upload_bytes=str(MIB), gateway_auth_cache_seconds="0",
                        ).use_object_store(s3_server, bucket, PREFIX)
    plain = GatewayProcess(kubeconfig, redis_server.url, workdir, gateway_auth_cache_seconds="0")
    try:
        gw.start()
        plain.start()
        yield {
            "gateway": gw, "plain": plain, "namespace": ns, "quota_namespace": quota_ns, "bucket": bucket,
            "s3": s3_server.client(), "writer": callers.token("writer", rules=WRITER_RULES),
            "nobody": callers.token("nobody"), "quota_writer": quota_callers.token("writer", rules=WRITER_RULES),
        }
    finally:
        gw.stop()
        plain.stop()
        for name in (ns, quota_ns):
            try:
                core.delete_namespace(name)
            except Exception:
                pass
        try:
            s3_server.delete_bucket(bucket)
        except Exception:
            pass


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _request(kube_api, ns: str, name: str) -> dict:
    from kubernetes import client

    return client.CustomObjectsApi(kube_api).get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def _uploads(env) -> list[str]:
    """Objects under the uploads prefix and multipart uploads not finished or aborted."""
    s3, bucket = env["s3"], env["bucket"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}uploads/").get("Contents") or ()]
    pending = [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads") or ()]
    return keys + [f"(multipart) {k}" for k in pending]


def _clear_uploads(env) -> None:
    s3, bucket = env["s3"], env["bucket"]
    for key in _uploads(env):
        if not key.startswith("(multipart)"):
            s3.delete_object(Bucket=bucket, Key=key)


def test_a_large_upload_is_streamed_to_the_bucket_and_the_request_names_it(uploads_env, kube_api, redis_server):
    env, gw = uploads_env, uploads_env["gateway"]
    _clear_uploads(env)
    audio = wav_bytes(20 * MIB + 12345, seed=1)  # three parts of 8 MiB (the last one short)
    sha = hashlib.sha256(audio).hexdigest()
    r = httpx.post(f"{gw.url}/v1/transcriptions", files={"file": ("long.wav", audio)},
                   data={"model": "whisper-1", "language": "en"}, headers=_bearer(env["writer"]), timeout=120)
    assert r.status_code == 202, r.text
    spec = _request(kube_api, env["namespace"], r.json()["name"])["spec"]
    s3 = spec["audio"]["s3"]
    assert s3["bucket"] == env["bucket"] and s3["key"].startswith(f"{PREFIX}uploads/")
    assert spec["audio"]["sha256"] == sha and "redisKey" not in spec["audio"]
    assert spec["language"] == "en"
    stored = env["s3"].get_object(Bucket=s3["bucket"], Key=s3["key"])["Body"].read()
    assert len(stored) == len(audio) and hashlib.sha256(stored).hexdigest() == sha
    assert not redis_server.client().exists(f"kubescribe:audio:{sha}"), "a streamed upload is not in Redis"

    # The same with the fields after the file, as some clients send them.
    body, headers = multipart([("file", audio[: 3 * MIB], "short.wav"), ("model", b"whisper-1", None)])
    r = httpx.post(f"{gw.url}/v1/transcriptions", content=body, headers={**headers, **_bearer(env["writer"])},
                   timeout=60)
    assert r.status_code == 202, r.text
    spec = _request(kube_api, env["namespace"], r.json()["name"])["spec"]
    assert spec["audio"]["sha256"] == hashlib.sha256(audio[: 3 * MIB]).hexdigest()
    key = spec["audio"]["s3"]["key"]
    assert env["s3"].head_object(Bucket=env["bucket"], Key=key)["ContentLength"] == 3 * MIB

    # At or below the threshold: Redis, as before.
    small = wav_bytes(MIB, seed=2)
    r = httpx.post(f"{gw.url}/v1/transcriptions", files={"file": ("small.wav", small)}, data={"model": "whisper-1"},
                   headers=_bearer(env["writer"]), timeout=60)
    assert r.status_code == 202, r.text
    small_sha = hashlib.sha256(small).hexdigest()
    spec = _request(kube_api, env["namespace"], r.json()["name"])["spec"]
    assert spec["audio"] == {"redisKey": f"kubescribe:audio:{small_sha}", "sha256": small_sha}
    assert redis_server.client().get(f"kubescribe:audio:{small_sha}") == small
    assert len(_uploads(env)) == 2


def test_a_refused_call_after_the_upload_deletes_what_it_streamed(uploads_env):
    env, gw = uploads_env, uploads_env["gateway"]
    _clear_uploads(env)
    audio = wav_bytes(10 * MIB, seed=3)
    # The API server refuses the create (the namespace's quota): the object goes.
    r = httpx.post(f"{gw.url}/v1/transcriptions", files={"file": ("a.wav", audio)}, data={"model": "whisper-1"},
                   headers={**_bearer(env["quota_writer"]), "X-Kubescribe-Namespace": env["quota_namespace"]},
                   timeout=60)
    assert r.status_code == 403 and r.json()["error"]["code"] == "quota_exceeded", r.text
    assert _uploads(env) == []
    # A field refused once the file is in (it came after the file): the object goes too.
    body, headers = multipart([("file", audio, "a.wav"), ("model", b"whisper-1", None),
                               ("response_format", b"docx", None)])
    r = httpx.post(f"{gw.url}/v1/transcriptions", content=body, headers={**headers, **_bearer(env["writer"])},
                   timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format", r.text
    assert _uploads(env) == []
    # Not audio: refused on its first bytes, nothing ever written.
    r = httpx.post(f"{gw.url}/v1/transcriptions", files={"file": ("notes.html", b"<html>" + b"x" * (4 * MIB))},
                   data={"model": "whisper-1"}, headers=_bearer(env["writer"]), timeout=60)
    assert r.status_code == 400 and "notes.html is not audio" in r.json()["error"]["message"]
    assert _uploads(env) == []


def _posted(env, kube_api, body, headers) -> tuple[dict, bytes]:
    """POST a prepared form body; the created request's spec and the object it names."""
    r = httpx.post(f"{env['gateway'].url}/v1/transcriptions", content=body, timeout=60,
                   headers={**headers, **_bearer(env["writer"])})
    assert r.status_code == 202, r.text
    spec = _request(kube_api, env["namespace"], r.json()["name"])["spec"]
    stored = env["s3"].get_object(Bucket=env["bucket"], Key=spec["audio"]["s3"]["key"])
    return spec, stored["Body"].read()


def _receiving(s3_server) -> list[int]:
    """Sizes of the files the S3 server has open under its data directory (an object
    being received is one, unlinked until it is complete)."""
    sizes, root = [], str(s3_server.data_dir)
    fds = f"/proc/{s3_server.process.pid}/fd"
    for fd in os.listdir(fds):
        try:
            if os.readlink(f"{fds}/{fd}").startswith(root):
                st = os.stat(f"{fds}/{fd}")
                if stat.S_ISREG(st.st_mode):
                    sizes.append(st.st_size)
        except OSError:
            pass  # closed meanwhile
    return sizes


def test_a_known_length_goes_up_as_one_put_and_a_wrong_forecast_still_stores_the_exact_bytes(uploads_env, kube_api):
    """The file's length is forecast from Content-Length when the file comes last: one
    PUT, no parts for the server to assemble. When the forecast misses (fields after the
    file; a form without its final CRLF) the object is trimmed to the bytes that came;
    without a Content-Length the upload goes in parts. Each stores exactly the file."""
    env = uploads_env
    _clear_uploads(env)
    audio = wav_bytes(12 * MIB + 7, seed=11)
    sha = hashlib.sha256(audio).hexdigest()

    def etag(spec) -> str:
        return env["s3"].head_object(Bucket=env["bucket"], Key=spec["audio"]["s3"]["key"])["ETag"]

    # The file last, as clients send it: one PUT (a multipart object's ETag ends "-<parts>").
    body, headers = multipart([("model", b"whisper-1", None), ("file", audio, "a.wav")])
    spec, stored = _posted(env, kube_api, body, headers)
    assert stored == audio and spec["audio"]["sha256"] == sha
    assert "-" not in etag(spec), etag(spec)
    # Fields after the file: the PUT was padded to the forecast, then trimmed by a copy.
    body, headers = multipart([("file", audio, "a.wav"), ("model", b"whisper-1", None),
                               ("prompt", b"p" * 4000, None)])
    spec, stored = _posted(env, kube_api, body, headers)
    assert stored == audio and spec["audio"]["sha256"] == sha
    # No CRLF after the closing delimiter: the file is 2 bytes longer than forecast.
    body, headers = multipart([("model", b"whisper-1", None), ("file", audio, "a.wav")])
    assert body.endswith(b"--\r\n")
    spec, stored = _posted(env, kube_api, body[:-2], headers)
    assert stored == audio and spec["audio"]["sha256"] == sha
    # Chunked, no Content-Length: parts (12 MiB: two).
    body, headers = multipart([("model", b"whisper-1", None), ("file", audio, "a.wav")])
    spec, stored = _posted(env, kube_api, iter([body[i:i + MIB] for i in range(0, len(body), MIB)]), headers)
    assert stored == audio and spec["audio"]["sha256"] == sha
    assert etag(spec).strip('"').endswith("-2"), etag(spec)
    # One object per request: the padded ones are gone, no multipart upload left open.
    assert len(_uploads(env)) == 4 and not [k for k in _uploads(env) if k.startswith("(multipart)")]


def test_a_client_gone_in_the_middle_of_one_put_leaves_nothing(uploads_env, s3_server):
    import socket
    from urllib.parse import urlsplit

    env = uploads_env
    _clear_uploads(env)
    body, headers = multipart([("model", b"whisper-1", None), ("file", wav_bytes(20 * MIB, seed=12), "a.wav")])
    url = urlsplit(env["gateway"].url)
    head = (f"POST /v1/transcriptions HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: {headers['content-type']}\r\nAuthorization: Bearer {env['writer']}\r\n\r\n")
    assert _receiving(s3_server) == []
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(head.encode() + body[: 12 * MIB])
        # Past the 1 MiB threshold: the server is receiving the PUT.
        wait_for(lambda: any(n >= 4 * MIB for n in _receiving(s3_server)), timeout=20, interval=0.05,
                 description="the S3 server receiving 4 MiB of the gateway's PUT")
    wait_for(lambda: _receiving(s3_server) == [], timeout=20, interval=0.1,
             description="the server to drop the broken PUT")
    assert _uploads(env) == []
    log = wait_for(lambda: (text := env["gateway"].log_path.read_text()) and "closed the connection" in text and text,
                   timeout=10, interval=0.1, description="the gateway to log the client's going")
    assert "ClientDisconnect" not in log, "a client's going is one line, not a traceback"


def test_the_size_limit_holds_while_streaming_and_leaves_nothing(uploads_env):
    env, gw = uploads_env, uploads_env["gateway"]
    _clear_uploads(env)
    boundary = "ksboundary0123456789"
    sent = 0

    def body():  # chunked, no Content-Length: only the count while streaming can stop it
        nonlocal sent
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
               f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n').encode()
        chunk = wav_bytes(MIB, seed=4)
        for _ in range(3 * LIMIT // MIB):
            sent += len(chunk)
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        r = httpx.post(f"{gw.url}/v1/transcriptions", content=body(), timeout=60,
                       headers={"content-type": f"multipart/form-data; boundary={boundary}", **_bearer(env["writer"])})
        assert r.status_code == 413 and f"{LIMIT} bytes" in r.json()["error"]["message"], r.text
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the gateway answered 413 and closed while the client was still sending
    assert sent < 3 * LIMIT, "the gateway stopped the upload, it did not read it all"
    wait_for(lambda: _uploads(env) == [], timeout=10, interval=0.1, description="no object and no open upload")
    # With a Content-Length over the limit, refused before a byte of the body is read.
    r = httpx.post(f"{gw.url}/v1/transcriptions", files={"file": ("big.wav", wav_bytes(LIMIT + 1, seed=5))},
                   data={"model": "whisper-1"}, headers=_bearer(env["writer"]), timeout=60)
    assert r.status_code == 413
    assert _uploads(env) == []


def test_a_presigned_upload_becomes_a_request(uploads_env, kube_api):
    env, gw = uploads_env, uploads_env["gateway"]
    _clear_uploads(env)
    assert httpx.post(f"{gw.url}/v1/uploads").status_code == 401
    r = httpx.post(f"{gw.url}/v1/uploads", headers=_bearer(env["nobody"]))
    assert r.status_code == 403 and "may not create transcriptionrequests" in r.json()["error"]["message"]

    r = httpx.post(f"{gw.url}/v1/uploads", headers=_bearer(env["writer"]))
    assert r.status_code == 200, r.text
    slot = r.json()
    assert set(slot) == {"upload_url", "upload_id", "expires_at", "method", "max_bytes"}
    assert slot["method"] == "PUT" and slot["max_bytes"] == LIMIT and slot["expires_at"].endswith("Z")
    # Creating from it before the PUT: the client is told what to do.
    r = httpx.post(f"{gw.url}/v1/transcriptions", data={"upload_id": slot["upload_id"], "model": "whisper-1"},
                   headers=_bearer(env["writer"]))
    assert r.status_code == 400
    assert r.json()["error"]["message"] == (f"upload {slot['upload_id']} not found: PUT the file to "
                                            "upload_url first")

    audio = wav_bytes(5 * MIB, seed=6)
    put = urllib.request.Request(slot["upload_url"], data=audio, method="PUT")
    with urllib.request.urlopen(put, timeout=60) as resp:
        assert resp.status == 200
    # multipart/form-data without a file, as `curl -F upload_id=...` sends it.
    body, headers = multipart([("upload_id", slot["upload_id"].encode(), None), ("model", b"whisper-1", None)])
    r = httpx.post(f"{gw.url}/v1/transcriptions", content=body, headers={**headers, **_bearer(env["writer"])})
    assert r.status_code == 202, r.text
    assert r.json()["name"] == f"gateway-{slot['upload_id']}"
    spec = _request(kube_api, env["namespace"], r.json()["name"])["spec"]
    assert spec["audio"] == {"s3": {"bucket": env["bucket"], "key": f"{PREFIX}uploads/{slot['upload_id']}"}}
    # One upload, one request: the operator deletes the upload with the request that names it.
    r = httpx.post(f"{gw.url}/v1/transcriptions", data={"upload_id": slot["upload_id"], "model": "whisper-1"},
                   headers=_bearer(env["writer"]))
    assert r.status_code == 409 and r.json()["error"]["code"] == "upload_used", r.text

    # Too large for the gateway's limit, not audio, not an id: refused, named.
    for data, status, words in ((wav_bytes(LIMIT + 1, seed=7), 413, f"{LIMIT} bytes"),
                                (b"<html>" + b"x" * 100, 400, "is not audio")):
        slot = httpx.post(f"{gw.url}/v1/uploads", headers=_bearer(env["writer"])).json()
        with urllib.request.urlopen(urllib.request.Request(slot["upload_url"], data=data, method="PUT"), timeout=60):
            pass
        r = httpx.post(f"{gw.url}/v1/transcriptions", data={"upload_id": slot["upload_id"], "model": "whisper-1"},
                       headers=_bearer(env["writer"]))
        assert r.status_code == status and words in r.json()["error"]["message"], r.text
    r = httpx.post(f"{gw.url}/v1/transcriptions", data={"upload_id": "../results/x", "model": "whisper-1"},
                   headers=_bearer(env["writer"]))
    assert r.status_code == 400 and "is not an upload id" in r.json()["error"]["message"]


def test_without_an_object_store_presigned_uploads_are_501_and_uploads_go_to_redis(uploads_env, kube_api,
                                                                                   redis_server):
    env, plain = uploads_env, uploads_env["plain"]
    r = httpx.post(f"{plain.url}/v1/uploads", headers=_bearer(env["writer"]))
    assert r.status_code == 501 and "object storage is not configured" in r.json()["error"]["message"]
    assert "\n" not in r.json()["error"]["message"]
    r = httpx.post(f"{plain.url}/v1/transcriptions", data={"upload_id": "0" * 32, "model": "whisper-1"},
                   headers=_bearer(env["writer"]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "upload_id"
    audio = wav_bytes(3 * MIB, seed=8)  # above the other gateway's threshold: here it still goes to Redis
    r = httpx.post(f"{plain.url}/v1/transcriptions", files={"file": ("a.wav", audio)}, data={"model": "whisper-1"},
                   headers=_bearer(env["writer"]), timeout=60)
    assert r.status_code == 202, r.text
    sha = hashlib.sha256(audio).hexdigest()
    assert _request(kube_api, env["namespace"], r.json()["name"])["spec"]["audio"]["redisKey"] == f"kubescribe:audio:{sha}"
    assert redis_server.client().get(f"kubescribe:audio:{sha}") == audio


def cli_env(uploads_env, kube_cluster, redis_server, s3_server) -> dict[str, str]:
    """``kubescribe``'s environment with the install's object store, as a user's shell has it."""
    return {**os.environ, **s3_server.env(), "AWS_EC2_METADATA_DISABLED": "true",
            "KUBECONFIG": str(kube_cluster.kubeconfig_path), "KUBESCRIBE_REDIS_URL": redis_server.url,
            "KUBESCRIBE_S3_BUCKET": uploads_env["bucket"], "KUBESCRIBE_S3_ENDPOINT": s3_server.endpoint,
            "KUBESCRIBE_S3_PATH_STYLE": "true", "KUBESCRIBE_S3_PREFIX": PREFIX}


def test_kubescribe_submit_streams_a_large_file_and_a_refused_create_deletes_it(
        uploads_env, kube_cluster, kube_api, redis_server, s3_server, tmp_path):
    env, ns = uploads_env, uploads_env["namespace"]
    _clear_uploads(env)
    shell = cli_env(env, kube_cluster, redis_server, s3_server)
    big = tmp_path / "long.wav"
    big.write_bytes(wav_bytes(12 * MIB + 7, seed=9))  # above the 8 MiB default
    sha = hashlib.sha256(big.read_bytes()).hexdigest()

    def submit(path, name):
        return subprocess.run([sys.executable, "-m", "kubescribe.cli", "submit", str(path), "-n", ns, "--name", name],
                              env=shell, capture_output=True, text=True, timeout=120)

    proc = submit(big, "cli-long")
    assert proc.returncode == 0, proc.stderr
    audio = _request(kube_api, ns, "cli-long")["spec"]["audio"]
    assert audio["sha256"] == sha and audio["s3"]["bucket"] == env["bucket"]
    assert audio["s3"]["key"].startswith(f"{PREFIX}uploads/")
    stored = env["s3"].get_object(Bucket=env["bucket"], Key=audio["s3"]["key"])
    assert stored["Body"].read() == big.read_bytes()
    assert "-" not in stored["ETag"], stored["ETag"]  # one PUT: the file's length is known (parts: "<md5>-2")

    # The name is taken: the API server refuses the create and the upload is deleted.
    proc = submit(big, "cli-long")
    assert proc.returncode == 1 and "409" in proc.stderr, proc.stderr
    assert _uploads(env) == [audio["s3"]["key"]]

    small = tmp_path / "short.wav"
    small.write_bytes(wav_bytes(MIB, seed=10))
    proc = submit(small, "cli-short")
    assert proc.returncode == 0, proc.stderr
    small_sha = hashlib.sha256(small.read_bytes()).hexdigest()
    assert _request(kube_api, ns, "cli-short")["spec"]["audio"] == {"redisKey": f"kubescribe:audio:{small_sha}",
                                                                    "sha256": small_sha}


def test_parts_stay_within_s3s_ten_thousand():
    from kubescribe.uploads import MAX_PARTS, part_size_for

    assert part_size_for(25 * MIB) == 8 * MIB and part_size_for(2 * 1024 * MIB) == 8 * MIB
    for size in (100 * 1024 * MIB, 5 * 1024 * 1024 * MIB):
        part = part_size_for(size)
        assert part % MIB == 0 and -(-size // part) <= MAX_PARTS


def test_the_result_route_reads_the_bucket_after_redis_lost_everything(uploads_env, kube_api, redis_server):
    """A Succeeded request's transcript through the gateway's result and analysis routes
    after FLUSHALL: read from the object store (and put back in Redis). The request's end is
    written here as a runner and the operator would write it (no operator runs here)."""
    from kubernetes import client

    from kubescribe.objectstore import ObjectStore
    from kubescribe.cache_layout import Owner
    from kubescribe.store import Store

    env, gw = uploads_env, uploads_env["gateway"]
    r = httpx.post(f"{gw.url}/v1/transcriptions", files={"file": ("a.wav", wav_bytes(MIB // 2, seed=9))},
                   data={"model": "whisper-1"}, headers=_bearer(env["writer"]), timeout=60)
    assert r.status_code == 202, r.text
    name = r.json()["name"]
    obj = _request(kube_api, env["namespace"], name)
    key = "e" * 64
    result = {"text": "Kept for as long as the request exists.", "language": "en", "audio_duration_seconds": 2.5,
              "segments": [{"id": 1, "start": 0.0, "end": 2.5, "text": "Kept for as long as the request exists."}]}
    store = Store(redis_server.client(), objects=ObjectStore(env["s3"], env["bucket"], PREFIX))
    rkey = store.put_result(key, result, owner=Owner(obj["metadata"]["uid"], f"{env['namespace']}/{name}"))
    client.CustomObjectsApi(kube_api).patch_namespaced_custom_object_status(
        GROUP, VERSION, env["namespace"], PLURAL, name,
        {"status": {"phase": "Succeeded", "cacheKey": key, "resultKey": rkey, "observedGeneration": 1}})

    redis_server.client().flushall()
    got = httpx.get(f"{gw.url}/v1/transcriptions/{name}/result", params={"format": "text"},
                    headers=_bearer(env["writer"]), timeout=30)
    assert got.status_code == 200, got.text
    assert got.text.strip() == result["text"]
    assert redis_server.client().exists(rkey) == 1, "the read warmed the cache"
    redis_server.client().flushall()
    analysis = httpx.get(f"{gw.url}/v1/transcriptions/{name}/analysis", headers=_bearer(env["writer"]), timeout=30)
    assert analysis.status_code == 200, analysis.text
    assert analysis.json()["word_count"] == 8


def test_a_file_that_changes_length_while_it_is_put_is_refused_and_nothing_is_kept(uploads_env, tmp_path):
    """``kubescribe submit`` knows a file's length before it sends it; a file longer or
    shorter than that when read (still being written, truncated) is refused with one
    line, and the PUT is broken off before its last byte, so the server keeps nothing."""
    from kubescribe.objectstore import ObjectStore, ObjectStoreError
    from kubescribe.streamed_put import put_file
    from kubescribe.uploads import new_upload_id, upload_key

    env = uploads_env
    _clear_uploads(env)
    objects = ObjectStore(env["s3"], env["bucket"], PREFIX)
    path = tmp_path / "growing.wav"
    path.write_bytes(wav_bytes(3 * MIB, seed=13))
    for told in (3 * MIB - 100, 3 * MIB + 100):  # the file grew since; it shrank since
        with pytest.raises(ObjectStoreError, match="changed while it was read"):
            put_file(objects, upload_key(objects, new_upload_id()), path, told, "audio/wav")
    assert _uploads(env) == []
    key = upload_key(objects, new_upload_id())
    assert put_file(objects, key, path, 3 * MIB, "audio/wav") == hashlib.sha256(path.read_bytes()).hexdigest()
    assert env["s3"].head_object(Bucket=env["bucket"], Key=key)["ContentLength"] == 3 * MIB
