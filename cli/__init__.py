"""The ``kubescribe`` command line: a layer of its own, above the shared core and the
runner (local transcription runs the runner's task in process)."""

from .main import main

__all__ = ["main"]
