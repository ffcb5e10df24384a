"""``python -m suite.distill --config FILE`` (also under ``torchrun --nproc_per_node=N``)."""

import sys

from suite.distill.cli import main

sys.exit(main())
