"""Kueue's API names, read by both the I/O layer (``kube``, ``main``: the Workload watch
and lookup) and the decisions (``kueue``, ``jobs``). A module of its own so that the
API calls need not import the module that decides what Kueue's answers mean.
"""

#: Kueue's API group and the version of its Workload the operator reads.
GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"

#: Kueue puts the Job's uid on the Workload it makes for it.
LABEL_JOB_UID = "kueue.x-k8s.io/job-uid"

#: Kueue's label naming a Job's LocalQueue (admission engine kueue).
LABEL_QUEUE_NAME = "kueue.x-k8s.io/queue-name"
