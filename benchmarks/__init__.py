"""kubescribe's benchmark suite: ``python -m benchmarks.run`` (``make bench``).

Every benchmark runs the real parts (faster-whisper with the bundled tiny.en model, a
real redis-server, a real kube-apiserver with the real operator) and compares kubescribe
with a baseline measured in the same run, on the same machine, a moment apart:

==========================  ==============================================================
runner_overhead             runner.task.run_task vs plain faster-whisper, same audio/model
long_batched_vs_sequential  batched-by-default vs sequential on >= 10 min of speech
long_batched_vs_sequential_base  the same on the multilingual base model (hack/setup.sh models)
no_invented_text            60 s of silence, noise and tones: words with the defaults
resume_after_kill           a long request killed at 60 %: retry from checkpoint vs whole run
pool_cross_request_batching 20 short requests: shared batches vs one at a time, warm model
long_vs_faster_whisper      10 minutes: kubescribe transcribe vs faster-whisper's batched and
                            plain paths, each a fresh process
long_memory                 peak RSS: a 3-hour recording vs 10 minutes, piece by piece
gzip_vs_zstd                result size and encode/decode speed of the two codecs
cache_hit_latency           create -> watch sees Succeeded for a cached result
pooled_vs_per_job           20 short requests: warm pooled runners vs one Job each
pooled_vs_bound             20 short requests on a warm pool vs the same clips on warm engines
burst_1000                  1,000 requests at once: time to admit/queue, operator CPU/RSS
notify_slow_sink            1,000 cached requests with a sink answering after 10 s vs no sink
scale_10k                   10,000 requests on 1,000 kwok GPU nodes: admission, throughput,
                            writes per request (audit log), etcd object counts with the TTL
scale_vs_bare_jobs          10,000 requests through the operator vs 10,000 plain runner Jobs
                            on the same kwok cluster: wall time, CPU per component
pool_burst_10k              10,000 short requests in pool mode, runners simulated: time to
                            dispatch all, operator CPU/RSS, writes per request
gateway_cache_hit_overhead  gateway HTTP round trip vs creating the request directly (hits)
gateway_concurrent_uploads  200 concurrent small uploads through the gateway, its peak RSS
gateway_upload_throughput   1 GiB through the gateway into the object store vs a direct PUT
wer_by_model                WER and real-time factor of tiny.en and base by language (base:
                            hack/setup.sh models), against tiny.en on the same English clips
job_mode_breakdown          one runner Job's seconds by phase (runner timings, watch); VAD on
                            vs off alternating, transcription vs a warm engine
realnode_pod_start          a runner Job's pod, creation to Running on the real node (root),
                            against the same Job with the pause image
==========================  ==============================================================

``benchmarks.run --only NAME[,NAME]`` runs a subset and ``--quick`` shrinks the sizes
(for development: quick figures are not comparable with the targets).
"""

NAMES = (
    "runner_overhead",
    "long_batched_vs_sequential",
    "long_batched_vs_sequential_base",
    "no_invented_text",
    "resume_after_kill",
    "pool_cross_request_batching",
    "long_vs_faster_whisper",
    "long_memory",
    "wer_by_model",
    "gzip_vs_zstd",
    "cache_hit_latency",
    "pooled_vs_per_job",
    "pooled_vs_bound",
    "job_mode_breakdown",
    "realnode_pod_start",
    "burst_1000",
    "notify_slow_sink",
    "scale_10k",
    "scale_vs_bare_jobs",
    "pool_burst_10k",
    "gateway_cache_hit_overhead",
    "gateway_concurrent_uploads",
    "gateway_upload_throughput",
)
