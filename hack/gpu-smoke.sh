#!/usr/bin/env bash
# GPU smoke test: transcribe the bundled sample on CUDA with float16 through the runner's
# engine (what `kubescribe-runner` runs with `device: cuda`), batched and sequential, and
# print the real-time factor of each. For a machine with an NVIDIA GPU, the driver and
# CUDA 12 / cuBLAS 12 libraries (the runner image has them); runs in the project venv
# (hack/venv.sh runner installs it).
#
#   hack/gpu-smoke.sh [REPEAT]    # REPEAT copies of the sample joined (default 20, ~3 min)
#
# Exit codes: 0 done, 69 no usable GPU (EX_UNAVAILABLE), 70 the transcription failed or
# its text does not match the sample (EX_SOFTWARE).
set -euo pipefail
REPEAT="${1:-20}"
cd "$(dirname "$0")/.."
PY=$(hack/venv.sh runner)

if ! "$PY" -P -c 'import ctranslate2, sys; sys.exit(0 if ctranslate2.get_cuda_device_count() > 0 else 1)' 2>/dev/null; then
  echo "gpu-smoke: no CUDA device visible to CTranslate2 (check nvidia-smi, the driver and CUDA 12 libraries)" >&2
  exit 69
fi

exec "$PY" -P - "$REPEAT" <<'PYEOF'
import sys
import time
from importlib import resources

import numpy as np

from kubescribe.models import parse_spec
from kubescribe.runner.engine import Engine, decode

repeat = int(sys.argv[1])
sample = resources.files("kubescribe") / "samples"
one = decode((sample / "sample.wav").read_bytes())
gap = np.zeros(8000, dtype=np.float32)
audio = np.concatenate([part for _ in range(repeat) for part in (one, gap)])
seconds = audio.shape[0] / 16000
engine = Engine()
try:
    for decoding in ("batched", "sequential"):
        spec = parse_spec({"audio": {"redisKey": "kubescribe:audio:gpu-smoke"}, "device": "cuda",
                           "computeType": "float16", "gpus": 1, "language": "en", "decoding": decoding,
                           "batchSize": 16})
        engine.transcribe(one, spec)  # warm-up: load the model, allocate CUDA memory
        t0 = time.perf_counter()
        result = engine.transcribe(audio, spec)
        elapsed = time.perf_counter() - t0
        if "quick brown fox" not in result["text"].lower():
            print(f"gpu-smoke: {decoding}: unexpected text {result['text'][:80]!r}", file=sys.stderr)
            sys.exit(70)
        print(f"{decoding:>10}: {seconds:.0f} s of audio in {elapsed:.2f} s on cuda/float16, "
              f"real-time factor {elapsed / seconds:.4f} ({seconds / elapsed:.0f}x real time)")
except Exception as exc:  # one line, never a traceback
    print(f"gpu-smoke: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
    sys.exit(70)
PYEOF
