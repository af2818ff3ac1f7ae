"""``python -m braintumor`` is the same as the ``braintumor`` console script."""

import sys

from braintumor.cli import main

sys.exit(main())
