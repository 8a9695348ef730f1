"""What the CAP feed asks of every store: alerts between two ids, oldest first, per reader (SQLite and PostgreSQL)."""

from __future__ import annotations

from relay.store.base import Store
from tests.test_store_contract import backend, new_alert, store  # noqa: F401 - the contract's fixtures

pytest_plugins = ("tests.support.postgres",)


async def test_alerts_after_an_id_come_oldest_first_and_stop_before_the_upper_bound(store: Store) -> None:  # noqa: F811
    for n in range(6):
        await store.accept(new_alert(f"r-{n}", operator="op-1" if n % 2 else "op-2", desks=("d-1",) if n < 3 else
                                     ("d-2",)))
    ids = sorted(a.alert_id for a in await store.list_alerts(states=None, limit=100))
    assert len(ids) == 6

    async def between(after: str, before: str | None = None, limit: int = 100, **reader: str) -> list[str]:
        found = await store.list_alerts(states=None, limit=limit, after_id=after, before_id=before, **reader)
        return [a.alert_id for a in found]

    assert await between("") == ids
    assert await between(ids[1]) == ids[2:]
    assert await between(ids[1], limit=2) == ids[2:4]
    assert await between(ids[0], ids[4]) == ids[1:4]
    assert await between(ids[-1]) == []
    by_operator = [a.alert_id for a in await store.list_alerts(states=None, limit=100, operator_id="op-1")]
    assert await between("", operator_id="op-1") == sorted(by_operator)
    by_desk = [a.alert_id for a in await store.list_alerts(states=None, limit=100, desk_id="d-2")]
    assert await between("", desk_id="d-2") == sorted(by_desk)
    # without after_id the list is newest first, as before
    assert [a.alert_id for a in await store.list_alerts(states=None, limit=100, before_id=ids[3])] == ids[2::-1]
