import sys

from megatron_sip.cli import main

sys.exit(main())
