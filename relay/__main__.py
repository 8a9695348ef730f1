import sys

from relay.operations.cli import main

sys.exit(main())
