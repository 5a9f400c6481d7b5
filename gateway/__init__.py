"""The kubescribe HTTP gateway: an OpenAI-compatible transcription API on TranscriptionRequests.

``kubescribe-gateway`` (installed as ``kubescribe.gateway``) authenticates every call
with a Kubernetes TokenReview (or an API key from a Secret), authorizes it with a
SubjectAccessReview, stores the audio (in Redis, or streamed into the object store when
large) and creates a TranscriptionRequest in the caller's namespace; the operator does
the rest. It imports the shared core
(``kubescribe/``) only, never the operator or the runner (import-linter contract).

- :mod:`.app`: the route table and the app built from it (Starlette).
- :mod:`.context`: what the handlers share; who calls; per-identity concurrency.
- :mod:`.routes_openai`: ``/v1/audio/*`` and ``/v1/models``, OpenAI's API.
- :mod:`.routes_async`: ``/v1/transcriptions`` (create, state, result, analysis,
  delete, events) and ``/v1/uploads``; :mod:`.events`: the SSE stream and keep-alives.
- :mod:`.routes_admin`: the cache admin routes and the probes.
- :mod:`.submit`: a call that creates work: checks, audio kept, request created.
- :mod:`.results`: a request's public state and its transcript.
- :mod:`.waiter`: the one way to wait: a shared watch per namespace.
- :mod:`.form`: the upload form, read as it streams in.
- :mod:`.uploads`: large uploads into the object store in parts, hashed on the way;
  presigned upload ids.
- :mod:`.errors`: the error a handler raises, and every failure to an OpenAI-shaped answer.
- :mod:`.middleware`: calls counted and timed by route.
- :mod:`.auth`: who is calling (TokenReview, API keys) and what they may do (SAR).
- :mod:`.kubeclient`: the few API server calls the gateway makes, on httpx.
- :mod:`.openai`: OpenAI's fields to a request spec, results to OpenAI's shapes.
- :mod:`.sniff`: is this upload audio at all.
- :mod:`.main`: the ``kubescribe-gateway`` entry point.
"""
