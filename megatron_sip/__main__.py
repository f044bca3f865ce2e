import sys

from megatron_sip.cli import main

# The guard matters: Megatron's checkpoint writer starts worker processes that re-import __main__.
if __name__ == "__main__":
    sys.exit(main())
