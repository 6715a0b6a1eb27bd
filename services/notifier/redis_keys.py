"""Names of every Redis key the notifier writes.

All of them carry the one hash tag `{nt}`: the exactly-once step of a consumed batch
touches the offsets, the totals of several sessions, the stock of several SKUs and the
leaderboard in one Lua call, and Redis Cluster runs a script only on keys of one slot.
The notifier writes once per consumed batch (not per event), so one slot carries it
comfortably; the hot per-SKU keys of inventory are spread by their own `{sku}` tags.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NotifierKeys:
    prefix: str

    @property
    def base(self) -> str:
        return f"{self.prefix}nt:{{nt}}:"

    # -- projection (counters, sessions, stock, leaderboard)
    @property
    def offsets(self) -> str:
        """Hash `topic:partition` -> highest offset applied (the replay guard)."""
        return f"{self.base}offsets"

    def totals(self, session_id: str) -> str:
        return f"{self.base}totals:{session_id}"

    def session(self, session_id: str) -> str:
        return f"{self.base}session:{session_id}"

    def seen(self, session_id: str) -> str:
        """Set of `type:order_id` already counted for a session (republished outcomes)."""
        return f"{self.base}seen:{session_id}"

    @property
    def stock(self) -> str:
        """Hash sku -> JSON [received, available, reserved, sold]."""
        return f"{self.base}stock"

    @property
    def stock_versions(self) -> str:
        """Hash sku -> version of the stock.changed stored in `stock` (only for events
        that carry one). Kept apart from `stock` so its values keep their shape."""
        return f"{self.base}stock-versions"

    @property
    def leaderboard(self) -> str:
        """Sorted set session_id -> paid GMV in cents."""
        return f"{self.base}leaderboard"

    def pavilion(self, pavilion: str) -> str:
        """Set of the session_ids of a pavilion (a session's pavilion never changes)."""
        return f"{self.base}pavilion:{pavilion}"

    # -- trace read model (DESIGN 4.6)
    @property
    def lots(self) -> str:
        """Hash lot field (JSON [sku, lot_code]) -> JSON of the newest lot.updated's
        fields (trace.LotRecord)."""
        return f"{self.base}lots"

    @property
    def lot_versions(self) -> str:
        """Hash lot field -> journal_seq of the lot stored in `lots` (newer wins)."""
        return f"{self.base}lot-versions"

    @property
    def order_buyers(self) -> str:
        """Hash order_id -> buyer_id of every paid order (reservation.committed): who may
        read the order's trace."""
        return f"{self.base}order-buyers"

    @property
    def order_buyers_due(self) -> str:
        """Sorted set order_id -> epoch ms its `order-buyers` field may go (the trace
        retention after payment; retention.RetentionSweep drops it)."""
        return f"{self.base}order-buyers-due"

    def order_picks(self, order_id: str) -> str:
        """Set of the pick_ids of one order."""
        return f"{self.base}order-picks:{order_id}"

    def trace(self, trace_code: str) -> str:
        """String: the pick_id whose box label carries `trace_code`."""
        return f"{self.base}trace:{trace_code}"

    # -- pick queue
    def pick(self, pick_id: str) -> str:
        return f"{self.base}pick:{pick_id}"

    def picks_open(self, warehouse_id: str) -> str:
        """Sorted set pick_id -> seq when it was opened."""
        return f"{self.base}picks:{warehouse_id}:open"

    def picks_done(self, warehouse_id: str) -> str:
        """Sorted set pick_id -> seq when it was completed."""
        return f"{self.base}picks:{warehouse_id}:done"

    def picks_done_due(self, warehouse_id: str) -> str:
        """Sorted set pick_id -> epoch ms the completed pick leaves `done` (the pick
        retention after completion)."""
        return f"{self.base}picks:{warehouse_id}:done-due"

    @property
    def pick_warehouses(self) -> str:
        """Set of every warehouse_id that ever had a pick (read by the metrics)."""
        return f"{self.base}picks:warehouses"

    @property
    def completions_outbox(self) -> str:
        """Sorted set pick_id -> ms of its completion, while its pick.completed is not
        acknowledged by the broker (pick_completion.PickCompletion)."""
        return f"{self.base}picks:completed-outbox"

    @property
    def pick_seq(self) -> str:
        """One counter orders every pick change (opened or completed) of every warehouse."""
        return f"{self.base}picks:seq"
