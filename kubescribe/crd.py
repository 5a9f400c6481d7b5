"""Generate the TranscriptionRequest CRD from the pydantic models.

One source of truth: the models in :mod:`kubescribe.models`. ``make crds`` (or
``kubescribe crd``) writes ``crds/`` and the chart's copy; a test fails when either
drifts from this generator.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from kubescribe import CATEGORIES, GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from kubescribe.models import TranscriptionSpec, TranscriptionStatus

#: Keys of pydantic's JSON schema that a structural Kubernetes schema keeps.
_KEEP = {
    "type", "description", "properties", "items", "required", "enum", "default",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
    "pattern", "minItems", "maxItems", "format", "nullable",
    "x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
}


def _structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline $refs, collapse Optional unions and drop what Kubernetes does not accept."""
    node = dict(schema)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        target.update({k: v for k, v in node.items() if k in ("description", "default")})
        node = target
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {options}")
        inner = _structural(options[0], defs)
        inner.update({k: v for k, v in node.items() if k in ("description", "default")})
        node = inner
    if node.get("default", 0) is None:
        node.pop("default")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _KEEP:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _schema(model) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}))


def _strip_defaults(node: dict[str, Any]) -> dict[str, Any]:
    node.pop("default", None)
    for sub in (node.get("properties") or {}).values():
        _strip_defaults(sub)
    if "items" in node:
        _strip_defaults(node["items"])
    return node


def _status_schema() -> dict[str, Any]:
    """Status is written only by the operator: no defaults, nothing required at the top."""
    raw = TranscriptionStatus.model_json_schema(by_alias=True, mode="validation")
    schema = _strip_defaults(_structural(raw, raw.get("$defs", {})))
    schema.pop("required", None)
    return schema


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Where the request is."},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
    {"name": "Language", "type": "string", "jsonPath": ".status.language"},
    {"name": "Audio-s", "type": "number", "jsonPath": ".status.audioDurationSeconds",
     "description": "Audio length in seconds."},
    {"name": "Cached", "type": "boolean", "jsonPath": ".status.cached"},
    {"name": "Progress", "type": "integer", "jsonPath": ".status.progress",
     "description": "Percent of the audio transcribed."},
    {"name": "Queue", "type": "integer", "jsonPath": ".status.queuePosition", "priority": 1},
    {"name": "Job", "type": "string", "jsonPath": ".status.jobName", "priority": 1},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    spec = _schema(TranscriptionSpec)
    spec["description"] = "What to transcribe and how."
    status = _status_schema()
    status["description"] = "What kubescribe observed and did. Written by the operator."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "kubescribe", "app.kubernetes.io/part-of": "kubescribe"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": CATEGORIES,
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A request to transcribe one audio file with faster-whisper. "
                            "kubescribe answers it from the result cache or runs a GPU runner Job.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "API version: kubescribe.io/v1alpha1."},
                                "kind": {"type": "string", "description": "TranscriptionRequest."},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = (
        "# TranscriptionRequest CRD. Generated from kubescribe/models.py by `make crds`;\n"
        "# do not edit by hand (tests/test_crd.py fails when it drifts).\n"
    )
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100, allow_unicode=True)
