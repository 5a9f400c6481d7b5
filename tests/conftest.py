import os

# Python processes the tests start never get the repository root on sys.path, where
# operator/ would hide the standard library's `operator` (hack/test.sh sets it too).
os.environ.setdefault("PYTHONSAFEPATH", "1")

pytest_plugins = ["tests.support.core", "tests.envtest.fixtures", "tests.support.operator", "tests.support.gateway",
                  "tests.support.sentinel", "tests.support.durations"]
