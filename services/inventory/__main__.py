"""`python -m services.inventory`: read settings from LC_* variables and serve."""

import sys

from services.common.web_app import serve
from services.inventory.app import create_app

sys.exit(serve("inventory", create_app))
