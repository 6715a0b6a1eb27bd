"""inventory: stock, lots and reservations, decided atomically in Redis Lua scripts."""
