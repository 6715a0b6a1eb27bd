"""`python -m services.live_orders`: read settings from LC_* variables and serve."""

import sys

from services.common.web_app import serve
from services.live_orders.app import create_app

sys.exit(serve("live_orders", create_app))
