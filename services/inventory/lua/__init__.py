"""Lua scripts of inventory, loaded with `importlib.resources` by the Redis adapter."""
