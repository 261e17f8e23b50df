"""``python -m cloud_hub`` is ``cloud-hub``."""

import sys

from cloud_hub.cli import main

sys.exit(main())
