"""Lua scripts of the notifier (loaded with importlib.resources)."""
