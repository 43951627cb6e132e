import sys

from navistore.cli import main

sys.exit(main())
