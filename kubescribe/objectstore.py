"""The object store: where a transcript is kept for as long as its request exists.

Redis is the cache and the queue; an S3-compatible object store, when one is configured
(``KUBESCRIBE_S3_BUCKET``), is the system of record. Key layout under the install's
prefix (``KUBESCRIBE_S3_PREFIX``, ``kubescribe/`` by default)::

    results/<cache key>/result.json.gz   the result document, gzip JSON (as in Redis)
    results/<cache key>/transcript.<fmt> the formats a request asked for (txt, srt, vtt, json)
    refs/<cache key>/<request uid>       one object per request that uses the result

A result is content-addressed like the cache, so requests for the same audio and
settings share it; the ``refs/`` objects say who still needs it. A request takes its
reference *before* it reads or writes the result, and the operator drops it when the
request is deleted; the last one out deletes the result (``Store.release`` holds the
order that makes this safe without a lock).

The client is boto3: the S3 API as AWS defines it, with the standard credential chain
(environment from a Secret, web identity, the pod's cloud identity), path-style
addressing for S3-compatible servers, multipart uploads from a stream and presigned
URLs. docs/architecture.md says why boto3 rather than obstore.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from kubescribe.settings import ObjectStoreSettings

log = logging.getLogger(__name__)

#: Above this, uploads go up in parts: S3's smallest part is 5 MiB, and 8 MiB parts keep
#: a stream's memory at a few parts however long the recording.
MULTIPART_BYTES = 8 * 1024 * 1024
RESULT_OBJECT = "result.json.gz"
#: Content types of the rendered formats, so a browser or a pipeline reads them right.
CONTENT_TYPES = {"json": "application/json", "txt": "text/plain; charset=utf-8",
                 "srt": "application/x-subrip; charset=utf-8", "vtt": "text/vtt; charset=utf-8"}

#: S3 error codes that mean the credentials or the policy refuse us: a retry cannot help.
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "XAdminUserNotFound", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
           "AllAccessDisabled", "AccountProblem", "InvalidSecurity", "403", "Forbidden"}
_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}


class ObjectStoreError(RuntimeError):
    """An object store call failed; ``reason`` is its entry in kubescribe.outcomes' table
    (ObjectStoreUnavailable is worth a retry, the others are not)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class ObjectNotFound(LookupError):
    """The object does not exist (NoSuchKey)."""


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key (or key prefix)."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> "S3Location":
        """``s3://bucket/key`` -> S3Location; a ValueError that says what is wrong otherwise."""
        u = urlparse(url)
        if u.scheme != "s3" or not u.netloc or not u.path.lstrip("/"):
            raise ValueError(f"{url!r} is not an s3://bucket/key URL")
        return cls(u.netloc, u.path.lstrip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    err = response.get("Error") or {}
    return str(err.get("Code") or (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or "")


def classify(exc: Exception, what: str) -> Exception:
    """A botocore failure as ObjectNotFound or an ObjectStoreError with its reason, and a
    message that names the call and says what to do."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return ObjectStoreError("ObjectStoreAccessDenied", f"{what}: no object store credentials ({exc}); "
                                "set the credentials Secret (storage.s3.existingSecret) or the pod's identity")
    code = _code(exc) if isinstance(exc, ClientError) else ""
    if code in _MISSING_KEY:
        return ObjectNotFound(f"{what}: no such object")
    if code == "NoSuchBucket":
        return ObjectStoreError("ObjectStoreBucketMissing", f"{what}: the bucket does not exist; create it "
                                "or fix the bucket name")
    if code in _DENIED:
        return ObjectStoreError("ObjectStoreAccessDenied", f"{what}: access denied ({code}); check the "
                                "credentials and the bucket policy")
    detail = f"{code}: {exc}" if code else f"{type(exc).__name__}: {exc}"
    return ObjectStoreError("ObjectStoreUnavailable", f"{what}: {detail}")


def make_client(settings: "ObjectStoreSettings") -> Any:
    """A boto3 S3 client for the install's settings.

    Timeouts are bounded (5 s connect, 30 s read) so an endpoint that went silent fails a
    call instead of holding a thread; botocore's standard retry mode retries throttling
    and 5xx answers with backoff, three attempts in all.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=settings.s3_region or None,
        s3={"addressing_style": "path" if settings.s3_path_style else "auto"},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        signature_version="s3v4",
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=settings.s3_endpoint or None, config=config,
        verify=settings.s3_ca_file or None)


class ObjectStore:
    """The bucket of one install, and buckets that requests name (``spec.audio.s3``,
    ``spec.output.s3``), through one S3 client.

    Args:
        client: a boto3 S3 client (:func:`make_client`).
        bucket: the install's bucket, where results and references live; None for a
            client of the buckets requests name only (:meth:`for_requests`), whose every
            call names its bucket.
        prefix: key prefix of everything kubescribe writes in that bucket.
    """

    def __init__(self, client: Any, bucket: str | None, prefix: str = "kubescribe/"):
        if bucket is not None and not bucket:
            raise ValueError("an object store needs a bucket (KUBESCRIBE_S3_BUCKET)")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"

    @classmethod
    def from_settings(cls, settings: "ObjectStoreSettings") -> "ObjectStore | None":
        """The install's object store, or None when no bucket is configured."""
        if not settings.s3_enabled:
            return None
        return cls(make_client(settings), settings.s3_bucket, settings.s3_prefix)

    @classmethod
    def for_requests(cls, settings: "ObjectStoreSettings") -> "ObjectStore":
        """A client for the buckets requests name (``spec.audio.s3``, ``spec.output.s3``)
        on the install's endpoint, with the same credential chain, even when the install
        keeps no results in a bucket of its own (then it has no ``bucket``, and a call
        that does not name one is a ValueError). The install's store serves as well
        when there is one: it is the same client."""
        return cls.from_settings(settings) or cls(make_client(settings), None)

    def __repr__(self) -> str:
        return f"ObjectStore(s3://{self.bucket}/{self.prefix})" if self.bucket else "ObjectStore(no bucket)"

    # -- plumbing -------------------------------------------------------------------
    def _bucket(self, bucket: str | None) -> str:
        b = bucket or self.bucket
        if not b:
            raise ValueError("this object store has no bucket of its own: name the bucket")
        return b

    def _call(self, what: str, fn, **kwargs):
        try:
            return fn(**kwargs)
        except Exception as exc:
            raise classify(exc, what) from exc

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            bucket: str | None = None) -> None:
        b = self._bucket(bucket)
        self._call(f"PUT s3://{b}/{key}", self.client.put_object, Bucket=b, Key=key, Body=data,
                   ContentType=content_type)

    def get(self, key: str, *, bucket: str | None = None) -> bytes:
        """The object's bytes; ObjectNotFound when it does not exist."""
        b = self._bucket(bucket)
        resp = self._call(f"GET s3://{b}/{key}", self.client.get_object, Bucket=b, Key=key)
        try:
            return resp["Body"].read()
        except Exception as exc:
            raise classify(exc, f"GET s3://{b}/{key}") from exc

    def size(self, key: str, *, bucket: str | None = None) -> int:
        """The object's size in bytes (HEAD); ObjectNotFound when it does not exist,
        ObjectStoreBucketMissing when its bucket does not.

        A HEAD answer has no body, so S3 says a bare 404 for a missing key and a missing
        bucket alike; after a 404 a HEAD of the bucket tells the two apart.
        """
        b = self._bucket(bucket)
        try:
            return int(self._call(f"HEAD s3://{b}/{key}", self.client.head_object, Bucket=b,
                                  Key=key)["ContentLength"])
        except ObjectNotFound:
            try:
                self._call(f"HEAD s3://{b}", self.client.head_bucket, Bucket=b)
            except ObjectNotFound:
                raise ObjectStoreError("ObjectStoreBucketMissing", f"HEAD s3://{b}/{key}: the bucket does not "
                                       "exist; create it or fix the bucket name") from None
            raise

    def open(self, key: str, *, bucket: str | None = None) -> IO[bytes]:
        """A stream of the object's bytes, read as it is consumed (nothing buffered whole)."""
        b = self._bucket(bucket)
        return self._call(f"GET s3://{b}/{key}", self.client.get_object, Bucket=b, Key=key)["Body"]

    def presign_put(self, key: str, expires: int, *, bucket: str | None = None) -> str:
        """A URL that lets its holder PUT this one key for ``expires`` seconds."""
        b = self._bucket(bucket)
        return self._call(f"presign s3://{b}/{key}", self.client.generate_presigned_url,
                          ClientMethod="put_object", Params={"Bucket": b, "Key": key}, ExpiresIn=expires)

    def keys(self, prefix: str, *, bucket: str | None = None) -> list[str]:
        """Every key under ``prefix`` (paged ListObjectsV2)."""
        return [k for k, _ in self.listing(prefix, bucket=bucket)]

    def listing(self, prefix: str, *, bucket: str | None = None) -> list[tuple[str, float]]:
        """(key, last modified as a Unix time) of every object under ``prefix``."""
        b = self._bucket(bucket)
        out: list[tuple[str, float]] = []
        token = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": b, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(f"LIST s3://{b}/{prefix}", self.client.list_objects_v2, **kwargs)
            out.extend((item["Key"], item["LastModified"].timestamp()) for item in page.get("Contents") or ())
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return out

    def abort_unfinished(self, prefix: str, older_than: float, *, bucket: str | None = None) -> int:
        """Abort the multipart uploads under ``prefix`` started before ``older_than`` (a
        Unix time): an upload cut off mid-way leaves its parts stored, and billed, until
        then. Returns how many."""
        b = self._bucket(bucket)
        stale: list[tuple[str, str]] = []
        kwargs: dict[str, Any] = {"Bucket": b, "Prefix": prefix}
        while True:
            page = self._call(f"LIST multipart s3://{b}/{prefix}", self.client.list_multipart_uploads, **kwargs)
            stale += [(u["Key"], u["UploadId"]) for u in page.get("Uploads") or ()
                      if u["Initiated"].timestamp() < older_than]
            if not page.get("IsTruncated"):
                break
            kwargs.update(KeyMarker=page.get("NextKeyMarker"), UploadIdMarker=page.get("NextUploadIdMarker"))
        for key, upload_id in stale:
            self._call(f"ABORT s3://{b}/{key}", self.client.abort_multipart_upload, Bucket=b, Key=key,
                       UploadId=upload_id)
        return len(stale)

    def delete(self, keys: Iterable[str], *, bucket: str | None = None) -> int:
        """Delete keys, a thousand per call (S3's batch limit); a missing key is no error."""
        b = self._bucket(bucket)
        keys = list(keys)
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i:i + 1000]]
            resp = self._call(f"DELETE s3://{b}/{keys[i]}…", self.client.delete_objects, Bucket=b,
                              Delete={"Objects": batch, "Quiet": True})
            errors = resp.get("Errors") or []
            if errors:
                e = errors[0]
                raise classify(_Failed(e.get("Code", ""), e.get("Message", "")), f"DELETE s3://{b}/{e.get('Key')}")
        return len(keys)

    def ping(self) -> None:
        """HEAD the install's bucket: raises ObjectStoreError when it cannot be used."""
        b = self._bucket(None)
        self._call(f"HEAD s3://{b}", self.client.head_bucket, Bucket=b)

    # -- results and their references ------------------------------------------------
    def result_dir(self, cache_key: str) -> str:
        return f"{self.prefix}results/{cache_key}/"

    def refs_dir(self, cache_key: str) -> str:
        return f"{self.prefix}refs/{cache_key}/"

    def put_result(self, cache_key: str, blob: bytes, renders: Mapping[str, str] | None = None) -> str:
        """Write a result document (``blob``: the gzip or zstd bytes the cache keeps) and
        its rendered formats; returns the document's key."""
        d = self.result_dir(cache_key)
        for fmt, text in (renders or {}).items():
            self.put(f"{d}transcript.{fmt}", text.encode(), content_type=CONTENT_TYPES.get(fmt, "text/plain"))
        # The document last: its presence says the result is complete.
        self.put(d + RESULT_OBJECT, blob, content_type="application/gzip" if blob[:2] == b"\x1f\x8b" else "application/octet-stream")
        return d + RESULT_OBJECT

    def get_result(self, cache_key: str) -> bytes | None:
        try:
            return self.get(self.result_dir(cache_key) + RESULT_OBJECT)
        except ObjectNotFound:
            return None

    def has_result(self, cache_key: str) -> bool:
        """Whether the result document is there (a HEAD, not a read)."""
        try:
            self.size(self.result_dir(cache_key) + RESULT_OBJECT)
            return True
        except ObjectNotFound:
            return False

    def delete_result(self, cache_key: str) -> int:
        return self.delete(self.keys(self.result_dir(cache_key)))

    def retain(self, cache_key: str, uid: str, name: str) -> None:
        """Record that request ``uid`` (``namespace/name``) uses this result."""
        self.put(self.refs_dir(cache_key) + uid, name.encode(), content_type="text/plain")

    def drop_ref(self, cache_key: str, uid: str) -> None:
        self.delete([self.refs_dir(cache_key) + uid])

    def holders(self, cache_key: str) -> list[str]:
        """uids of the requests that still use the result."""
        d = self.refs_dir(cache_key)
        return [k[len(d):] for k in self.keys(d)]

    def all_refs(self) -> list[tuple[str, str, float]]:
        """(cache key, uid, last modified as a Unix time) of every reference of the
        install: for the sweep of references whose request is gone."""
        d = f"{self.prefix}refs/"
        out = []
        for k, modified in self.listing(d):
            parts = k[len(d):].split("/")
            if len(parts) == 2 and all(parts):
                out.append((parts[0], parts[1], modified))
        return out


class _Failed(Exception):
    """A per-key error of a DeleteObjects answer, in the shape ``classify`` reads."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.response = {"Error": {"Code": code, "Message": message}}
