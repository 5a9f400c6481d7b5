"""kubescribe: Kubernetes-native speech-to-text.

The ``kubescribe`` package holds what the operator, the runner and the CLI share: the
request model (:mod:`kubescribe.models`), the reason table and the runner's outcome
(:mod:`kubescribe.outcomes`), the settings (:mod:`kubescribe.settings`), the Redis store
and result cache (:mod:`kubescribe.store`), the pool's work queue
(:mod:`kubescribe.streams`), the metrics (:mod:`kubescribe.metrics`) and the output
renderers (:mod:`kubescribe.render`). It never imports the operator, the runner or the
CLI (import-linter contracts in pyproject.toml; see docs/architecture.md).
"""

__version__ = "0.1.0"

GROUP = "kubescribe.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TranscriptionRequest"
PLURAL = "transcriptionrequests"
SINGULAR = "transcriptionrequest"
SHORT_NAMES = ["tr"]
CATEGORIES = ["kubescribe"]
