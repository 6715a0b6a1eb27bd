"""Lua scripts of live_orders, loaded with `importlib.resources` by the Redis adapters."""
