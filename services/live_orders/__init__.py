"""live_orders: sessions, listings and orders; the buyer-facing API. Never touches stock."""
