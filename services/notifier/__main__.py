"""`python -m services.notifier`: read settings from LC_* variables and serve."""

import sys

from services.common.web_app import serve
from services.notifier.app import create_app

sys.exit(serve("notifier", create_app))
