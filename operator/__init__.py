"""The kubescribe operator: TranscriptionRequest in, runner Job out, status back.

``main`` only registers kopf handlers. ``reconciler`` gathers what a decision needs and
applies it, and ``admitter`` runs the admission pass; the decisions are pure: ``admission`` (validation, cache, queue, admission,
pool size), ``outcomes`` (Job states and runner outcomes), ``pods`` (pods that can never
start), ``scheduler`` (who fits the GPU budget). ``lifecycle`` holds the Transition they
return, ``status`` the status documents, ``jobs`` the Job manifests, ``kube`` and
``kubeapi`` the API calls. docs/architecture.md has the whole picture.
"""
