"""The S3 test server itself (versitygw, ``harness/envtest/s3.py``), against boto3.

These pin what the object store tests rely on: the fixtures give a working bucket,
multipart uploads and SigV4 presigned URLs work, errors come back as S3 error codes,
and a stopped server comes back on the same endpoint with its data.
"""

from __future__ import annotations

import io
import os
import urllib.request

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError, EndpointConnectionError

from harness.envtest.s3 import S3Server

MiB = 1024 * 1024


def error_code(exc_info: pytest.ExceptionInfo[ClientError]) -> str:
    return exc_info.value.response["Error"]["Code"]


def test_an_object_is_put_read_and_deleted(s3_server: S3Server, s3_bucket: str) -> None:
    s3 = s3_server.client()
    s3.put_object(Bucket=s3_bucket, Key="requests/a.txt", Body=b"hello world", Metadata={"job": "a"})

    head = s3.head_object(Bucket=s3_bucket, Key="requests/a.txt")
    assert head["ContentLength"] == 11 and head["Metadata"] == {"job": "a"}
    assert s3.get_object(Bucket=s3_bucket, Key="requests/a.txt")["Body"].read() == b"hello world"
    assert s3.get_object(Bucket=s3_bucket, Key="requests/a.txt", Range="bytes=6-10")["Body"].read() == b"world"
    listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix="requests/")
    assert [o["Key"] for o in listed["Contents"]] == ["requests/a.txt"]

    s3.delete_object(Bucket=s3_bucket, Key="requests/a.txt")
    with pytest.raises(ClientError) as exc_info:
        s3.get_object(Bucket=s3_bucket, Key="requests/a.txt")
    assert error_code(exc_info) == "NoSuchKey"


def test_a_15_mib_upload_goes_up_in_three_5_mib_parts(s3_server: S3Server, s3_bucket: str) -> None:
    s3 = s3_server.client()
    data = os.urandom(15 * MiB)
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)

    s3.upload_fileobj(io.BytesIO(data), s3_bucket, "audio/long.wav", Config=config)

    head = s3.head_object(Bucket=s3_bucket, Key="audio/long.wav")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # a multipart ETag: 3 parts
    assert s3.get_object(Bucket=s3_bucket, Key="audio/long.wav")["Body"].read() == data
    assert not s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


def test_a_presigned_put_url_works_without_credentials(s3_server: S3Server, s3_bucket: str) -> None:
    s3 = s3_server.client()
    url = s3.generate_presigned_url("put_object", Params={"Bucket": s3_bucket, "Key": "upload.wav"}, ExpiresIn=300)
    assert url.startswith(f"{s3_server.endpoint}/{s3_bucket}/upload.wav?") and "X-Amz-Signature=" in url

    request = urllib.request.Request(url, data=b"RIFF....WAVE", method="PUT")
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200

    assert s3.get_object(Bucket=s3_bucket, Key="upload.wav")["Body"].read() == b"RIFF....WAVE"


def test_wrong_credentials_are_refused_with_an_s3_error_code(s3_server: S3Server, s3_bucket: str) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="k", Body=b"1")

    # versitygw answers an unknown access key with XAdminUserNotFound and HTTP 404
    # (AWS: InvalidAccessKeyId, 403), so a HEAD, which has no body to carry the code,
    # cannot be told from a missing object: code that maps 404 to "not there" must
    # not meet this server with a wrong key id and conclude the object is gone.
    unknown = s3_server.client(access_key="KSNOSUCHKEY000000000")
    with pytest.raises(ClientError) as exc_info:
        unknown.get_object(Bucket=s3_bucket, Key="k")
    assert error_code(exc_info) == "XAdminUserNotFound"
    assert exc_info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as exc_info:
        unknown.head_object(Bucket=s3_bucket, Key="k")
    assert error_code(exc_info) == "404"

    wrong_secret = s3_server.client(secret_key="not-the-secret")
    with pytest.raises(ClientError) as exc_info:
        wrong_secret.get_object(Bucket=s3_bucket, Key="k")
    assert error_code(exc_info) == "SignatureDoesNotMatch"
    assert exc_info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_a_missing_bucket_is_no_such_bucket(s3_server: S3Server) -> None:
    s3 = s3_server.client()
    with pytest.raises(s3.exceptions.NoSuchBucket):
        s3.put_object(Bucket="kubescribe-no-such-bucket", Key="x", Body=b"x")
    with pytest.raises(ClientError) as exc_info:
        s3.get_object(Bucket="kubescribe-no-such-bucket", Key="x")
    assert error_code(exc_info) == "NoSuchBucket"


def test_the_aws_environment_points_a_default_client_at_the_server(s3_server: S3Server, s3_bucket: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)

    s3 = boto3.session.Session().client("s3")

    s3.put_object(Bucket=s3_bucket, Key="from-env", Body=b"env")
    assert s3_server.client().get_object(Bucket=s3_bucket, Key="from-env")["Body"].read() == b"env"


def test_a_restarted_server_keeps_its_endpoint_and_data(tmp_path) -> None:
    with S3Server(tmp_path) as server:
        s3 = server.client()
        server.create_bucket("kept")
        s3.put_object(Bucket="kept", Key="result.json", Body=b"{}")
        endpoint = server.endpoint

        server.stop()
        assert not server.running
        with pytest.raises(EndpointConnectionError):  # refused, after botocore's one retry
            s3.head_bucket(Bucket="kept")

        server.start()
        assert server.endpoint == endpoint
        assert s3.get_object(Bucket="kept", Key="result.json")["Body"].read() == b"{}"
    assert (tmp_path / "versitygw.log").stat().st_size > 0
