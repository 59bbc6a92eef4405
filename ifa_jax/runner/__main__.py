"""``python -m ifa_jax.runner run|compare --config FILE ...``: the ``ifa-jax`` command."""

import sys

from ifa_jax.runner.main import main

if __name__ == "__main__":
    sys.exit(main())
