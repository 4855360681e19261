import sys

from qlevents.cli import main

sys.exit(main())
