"""``python -m amoslabel``: the command line (:mod:`amoslabel.cli`). Only this entry point reaches up to it."""

import sys

from amoslabel.cli.main import main

sys.exit(main())
