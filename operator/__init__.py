"""The kubescribe operator: TranscriptionRequest in, runner Job out, status back.

``main`` only registers kopf handlers; the logic lives in ``handlers``, ``scheduler``
(admission under the GPU budget), ``jobs`` (the runner Job manifest) and ``status``
(phases, conditions, Events).
"""
