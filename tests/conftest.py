pytest_plugins = ["tests.support.core", "tests.envtest.fixtures", "tests.support.operator", "tests.support.gateway",
                  "tests.support.sentinel"]
