import os

# Python processes the tests start never get the repository root on sys.path, where
# operator/ would hide the standard library's `operator` (hack/test.sh sets it too).
os.environ.setdefault("PYTHONSAFEPATH", "1")

pytest_plugins = ["tests.fixtures.core", "tests.fixtures.envtest", "tests.fixtures.operator", "tests.fixtures.gateway",
                  "tests.fixtures.sentinel", "tests.support.durations", "tests.support.workers"]
