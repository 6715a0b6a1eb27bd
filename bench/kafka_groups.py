"""The stack's consumer groups as the broker sees them: members, the partitions each was
given, what the group has not committed yet; and keys placed on chosen members.

Each service consumes in one group, `<LC_TOPIC_PREFIX><service>` (web_app.consumer_for),
and a group spreads over partitions, never within one: every event keyed by a SKU goes to
one partition of each topic (services/common/kafka_producer.py KeyHashPartitioner), so
one member of each group handles that SKU. A benchmark of two processes must therefore
load SKUs that the groups hand to different members (`spread_keys`), or the second
inventory process stays idle however much load there is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from services.common.kafka_producer import KeyHashPartitioner
from services.common.settings import Settings
from services.common.transport_security import kafka_security_kwargs

# group -> (topic, partition) -> the member (its client id) that was given it
Owners = Mapping[str, Mapping[tuple[str, int], str]]


@dataclass(frozen=True)
class Group:
    name: str
    state: str  # Stable, PreparingRebalance, CompletingRebalance, Empty, Dead
    members: dict[str, list[tuple[str, int]]]  # client id -> its (topic, partition)s
    lag: int  # records on its partitions it has not committed yet

    def settled(self, members: int) -> bool:
        return self.state == "Stable" and len(self.members) == members and self.lag == 0

    def owners(self) -> dict[tuple[str, int], str]:
        return {tp: member for member, tps in self.members.items() for tp in tps}

    def describe(self) -> str:
        spread = ", ".join(f"{m} {len(tps)}" for m, tps in sorted(self.members.items()))
        return f"{self.name} {self.state}, lag {self.lag}, partitions per member: {spread}"


class GroupsNotSettled(RuntimeError):
    """The groups did not settle in time; the message says how they stood."""


def partition_of(key: str, partitions: int) -> int:
    """The partition the services' producer puts an event keyed `key` in."""
    return int(KeyHashPartitioner()(key.encode(), list(range(partitions)), []))


# ---------------------------------------------------------------------------- the broker


class Broker:
    """Reads group and topic metadata of the stack's broker (admin calls only; the
    consumer it opens for end offsets joins no group)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        kwargs = kafka_security_kwargs(settings)
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap, client_id="bench-scale-admin", **kwargs
        )
        self._ends = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id="bench-scale-ends",
            group_id=None,
            enable_auto_commit=False,
            **kwargs,
        )

    async def __aenter__(self) -> Broker:
        await self._admin.start()
        await self._ends.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._ends.stop()
        await self._admin.close()

    async def partition_counts(self, topics: Iterable[str]) -> dict[str, int]:
        described = await self._admin.describe_topics(list(topics))
        return {str(t["topic"]): len(t["partitions"]) for t in described if not t["error_code"]}

    async def group(self, name: str) -> Group:
        # One group per request: aiokafka 0.14 sends DescribeGroups v3 but reads the answer
        # as v2, which lacks each group's trailing authorized_operations; with one group
        # those 4 bytes are simply left over, with several the second group misparses.
        (response,) = await self._admin.describe_consumer_groups([name])
        (described,) = response.groups
        state = str(described[2])
        members: dict[str, list[tuple[str, int]]] = {}
        for member in described[5]:
            client_id, assignment = str(member[1]), bytes(member[4])
            tps = (
                ConsumerProtocolMemberAssignment.decode(assignment).partitions()
                if assignment
                else []
            )
            members.setdefault(client_id, []).extend((tp.topic, tp.partition) for tp in tps)
        owned = [TopicPartition(t, p) for tps in members.values() for t, p in tps]
        lag = 0
        if owned:
            committed = await self._admin.list_consumer_group_offsets(name, partitions=owned)
            ends = await self._ends.end_offsets(owned)
            for tp in owned:
                done = committed.get(tp)
                lag += max(0, ends[tp] - max(done.offset if done is not None else 0, 0))
        return Group(name, state, members, lag)

    async def wait_settled(
        self,
        groups: Mapping[str, int],
        deadline_s: float,
        interval_s: float = 0.5,
    ) -> dict[str, Group]:
        """Until every group (name -> members expected) is Stable with that many members
        and has committed everything on its partitions; how they stand then."""
        end = time.monotonic() + deadline_s
        while True:
            seen = {name: await self.group(name) for name in groups}
            if all(seen[name].settled(members) for name, members in groups.items()):
                return seen
            if time.monotonic() > end:
                raise GroupsNotSettled(
                    f"consumer groups not settled within {deadline_s:.0f}s (expected "
                    + ", ".join(f"{n}: {m} member(s)" for n, m in groups.items())
                    + "): "
                    + "; ".join(g.describe() for g in seen.values())
                )
            await asyncio.sleep(interval_s)  # polling interval


# ---------------------------------------------------------------------------- placing keys


def key_owners(
    key: str, owners: Owners, partition_counts: Mapping[str, int], topics: Sequence[str]
) -> dict[str, frozenset[str]]:
    """group -> the members that get the events keyed `key` on `topics`."""
    found: dict[str, frozenset[str]] = {}
    for group, by_partition in owners.items():
        members = {
            by_partition[(topic, partition_of(key, partition_counts[topic]))]
            for topic in topics
            if topic in partition_counts
            and (topic, partition_of(key, partition_counts[topic])) in by_partition
        }
        found[group] = frozenset(members)
    return found


def spread_keys(
    stem: str,
    count: int,
    *,
    owners: Owners,
    partition_counts: Mapping[str, int],
    topics: Sequence[str],
    tries: int = 2_000,
) -> list[str]:
    """`count` keys `<stem>-<i>`, each taken so that, in every group with a member no
    earlier key went to, it goes to such members only. A group with one member (or fewer
    partitions than keys) cannot spread: it is left out of the choice. The first key that
    does best is taken (deterministic for a stem)."""
    chosen: list[str] = []
    used: dict[str, set[str]] = {group: set() for group in owners}
    members = {group: set(by_partition.values()) for group, by_partition in owners.items()}
    candidates = (f"{stem}-{i}" for i in range(tries * count))
    for _ in range(count):
        spreadable = [g for g in owners if members[g] - used[g]]
        best: tuple[int, str] | None = None
        for _ in range(tries):
            key = next(candidates)
            got = key_owners(key, owners, partition_counts, topics)
            score = sum(1 for g in spreadable if got[g] and not got[g] & used[g])
            if best is None or score > best[0]:
                best = (score, key)
            if score == len(spreadable):
                break
        assert best is not None
        chosen.append(best[1])
        for group, got_members in key_owners(best[1], owners, partition_counts, topics).items():
            used[group] |= got_members
    return chosen
