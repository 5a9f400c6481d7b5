"""Run kubescribe's benchmarks and write the report.

    python -m benchmarks.run --output BENCHMARKS.md          # everything (make bench)
    python -m benchmarks.run --only cache_hit_latency --quick
    python -m benchmarks.run --list

Needs what ``make test`` needs: redis-server and espeak-ng (hack/setup.sh) and, for the
cluster benchmarks, the Kubernetes binaries (hack/build-test-binaries.sh all). Every
process the run starts (redis-server, etcd, kube-apiserver, kube-controller-manager,
operators, runner processes) is stopped when it ends, also on an error or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from . import NAMES
from .common import Context, Outcome, install_signal_handlers, log
from .machine import LoadMonitor, machine_facts

#: Cluster benchmarks last: the inference ones want the CPUs to themselves, and the
#: control plane, once up, keeps using some CPU.
ORDER = NAMES


def _load(name: str):
    if name == "runner_overhead":
        from . import inference as mod
    elif name in ("long_batched_vs_sequential", "long_batched_vs_sequential_base", "no_invented_text", "resume_after_kill",
                  "pool_cross_request_batching", "long_memory"):
        from . import long_audio as mod
    elif name == "wer_by_model":
        from . import languages as mod
    elif name == "gzip_vs_zstd":
        from . import codec as mod
    elif name == "notify_slow_sink":
        from . import notify as mod
    elif name == "long_vs_faster_whisper":
        from . import versus as mod
    elif name == "pooled_vs_bound":
        from . import pool_bound as mod
    elif name == "job_mode_breakdown":
        from . import breakdown as mod
    elif name == "realnode_pod_start":
        from . import pod_start as mod
    elif name == "scale_10k":
        from . import scale as mod
    elif name == "pool_burst_10k":
        from . import pool_burst as mod
    elif name == "scale_vs_bare_jobs":
        from . import scale_bare as mod
    elif name.startswith("gateway_"):
        from . import gateway as mod
    else:
        from . import cluster as mod
    return getattr(mod, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--output", "-o", help="write the markdown report here (default: stdout)")
    parser.add_argument("--only", help="comma-separated benchmark names (see --list)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for development")
    parser.add_argument("--json", help="also write the raw figures as JSON here")
    parser.add_argument("--keep", action="store_true",
                        help="keep the working directory (logs of every process) after the run")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(NAMES))
        return 0
    selected = list(ORDER)
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [w for w in wanted if w not in NAMES]
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
        selected = [n for n in ORDER if n in wanted]

    os.environ.setdefault("KUBESCRIBE_LOG_LEVEL", "WARNING")
    install_signal_handlers()
    command = "python -m benchmarks.run" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    facts = machine_facts()
    ctx = Context(quick=args.quick, keep=args.keep)
    log(f"working directory {ctx.workdir}")
    outcomes: list[Outcome] = []
    t_run = time.perf_counter()
    failed = False
    try:
        for name in selected:
            log(f"--- {name}")
            t0 = time.perf_counter()
            monitor = LoadMonitor().start()
            try:
                outcome = _load(name)(ctx)
            except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
                failed = True
                log(f"{name} failed: {exc!r}")
                outcome = Outcome(name, "failed to run", status="ERROR", headline="-", baseline="-", ratio="-")
                outcome.notes.append("The benchmark raised an exception:\n\n```\n"
                                     + "".join(traceback.format_exception(exc))[-3000:] + "\n```")
            outcome.seconds = time.perf_counter() - t0
            outcome.foreign_load = monitor.stop()
            outcome.command = "python -m benchmarks.run" + (" --quick" if args.quick else "") + f" --only {name}"
            outcomes.append(outcome)
            log(f"{name}: {outcome.status} ({outcome.seconds:.0f}s) {outcome.headline} | {outcome.ratio}"
                f" | other processes used {outcome.foreign_load * 100:.0f} % CPU")
    finally:
        if failed:
            ctx.keep = True
        ctx.close()
        if failed:
            log(f"logs kept in {ctx.workdir}")
    total = time.perf_counter() - t_run

    from .report import render

    text = render(outcomes, facts, command, args.quick, total)
    if args.output:
        Path(args.output).write_text(text)
        log(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    if args.json:
        Path(args.json).write_text(json.dumps({o.name: {"status": o.status, "seconds": o.seconds, **o.data}
                                               for o in outcomes}, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
