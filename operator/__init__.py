"""The kubescribe operator: TranscriptionRequest in, runner Job out, status back.

Like kueue's controllers: ``main`` only wires kopf's events and the loops to the parts
``controllers`` builds. Each part gathers what a decision needs and hands the decision's
Transition to the one ``applier`` (status, registry, counts, Events, locks):
``request_handler`` (request events), ``job_handler`` (Jobs, Kueue Workloads),
``pool_outcome_handler`` (the pool's done stream), ``resync`` (the periodic pass and
TTL expiry), ``progress_reporter``, ``admitter`` (the admission pass) and ``health``
(gauges, liveness, readiness).

The decisions are pure: ``intake`` (invalid, cached, queued, admitted), ``runs`` (Job
states, runner outcomes, pool timeouts), ``scheduler`` (who fits the GPU budget, queue
positions), ``pool_size``, ``kueue`` (Kueue's answers), ``pods`` (pods that can never
start), ``progress_writes``. ``lifecycle`` holds the Transition they return, ``status``
the status documents, ``jobs`` the Job manifests, ``registry`` the in-memory view of the
requests; ``kube``, ``kubeapi``, ``kueue_api`` and ``cache_lookup`` the I/O.
docs/architecture.md has the whole picture.
"""
