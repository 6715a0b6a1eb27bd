"""live_orders' session use cases against in-memory stores."""

from __future__ import annotations

from services.common.messages import SessionUpdated
from services.live_orders.sessions import SessionService
from tests.unit.fakes import FakePublisher, FakeSessionRecords


class NoCache:
    def invalidate(self, session_id: str) -> None:
        return None


async def test_a_session_keeps_its_pavilion_and_publishes_it() -> None:
    store, publisher = FakeSessionRecords(), FakePublisher()
    sessions = SessionService(store, publisher, "lc.sessions", "test", NoCache())

    created = await sessions.create("host-1", "Crab night", "阳澄湖馆")
    plain = await sessions.create("host-1", "Rice night")

    assert created.pavilion == "阳澄湖馆" and plain.pavilion is None
    assert created.to_message().pavilion == "阳澄湖馆"
    published = publisher.messages(SessionUpdated)
    assert [(m.session_id, m.pavilion) for m in published] == [
        (created.session_id, "阳澄湖馆"),
        (plain.session_id, None),
    ]
    assert [key for _, key, _ in publisher.sent] == [created.session_id, plain.session_id]
