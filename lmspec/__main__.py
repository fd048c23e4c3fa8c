import sys

from lmspec.cli import main

sys.exit(main())
