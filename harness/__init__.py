"""What kubescribe's tests and benchmarks share: the real processes they run against.

The envtest control plane and its neighbours (``harness.envtest``), the operator and
gateway as child processes, redis-server and Sentinel, certificates, speech and its word
error rate. Tests (through the fixtures in ``tests/fixtures``) and benchmarks import it;
it imports neither, needs no pytest, and product code imports none of it (import-linter
contracts in pyproject.toml).
"""
