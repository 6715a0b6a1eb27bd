"""notifier: live views for hosts (counters) and warehouse staff (pick queue)."""
