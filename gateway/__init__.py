"""The kubescribe HTTP gateway: an OpenAI-compatible transcription API on TranscriptionRequests.

``kubescribe-gateway`` (installed as ``kubescribe.gateway``) authenticates every call
with a Kubernetes TokenReview (or an API key from a Secret), authorizes it with a
SubjectAccessReview, stores the audio (in Redis, or streamed into the object store when
large) and creates a TranscriptionRequest in the caller's namespace; the operator does
the rest. It imports the shared core
(``kubescribe/``) only, never the operator or the runner (import-linter contract).

- :mod:`.app`: the routes (Starlette), one handler per endpoint.
- :mod:`.form`: the upload form, read as it streams in.
- :mod:`.uploads`: large uploads into the object store in parts, hashed on the way
  (also used by ``kubescribe submit``); presigned upload ids.
- :mod:`.errors`: the error a handler raises for the client.
- :mod:`.auth`: who is calling (TokenReview, API keys) and what they may do (SAR).
- :mod:`.kubeclient`: the few API server calls the gateway makes, on httpx.
- :mod:`.openai`: OpenAI's fields to a request spec, results to OpenAI's shapes.
- :mod:`.sniff`: is this upload audio at all.
- :mod:`.main`: the ``kubescribe-gateway`` entry point.
"""
