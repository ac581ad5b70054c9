import sys

from celerynb.cluster.cli import main

sys.exit(main())
