"""WeChat records in SQLite: tables in the gateway's own SQLite file.

:class:`SQLiteWechatRecords` runs the synchronous functions below on the SQLite store's
thread (its ``run``), never on the event loop. Credit changes are single statements or
``BEGIN IMMEDIATE`` transactions, so a credit is never granted or spent twice, whatever
arrives concurrently.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, Protocol, TypeVar

from .protocol import CLOSED, CREATED, FAILED, PAID, REFUNDED, REFUNDING, Order

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS wx_users (
    openid TEXT PRIMARY KEY,
    unionid TEXT,
    credits INTEGER NOT NULL DEFAULT 0 CHECK (credits >= 0),
    created_at REAL NOT NULL,
    last_login_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS wx_sessions (
    token_hash TEXT PRIMARY KEY,
    openid TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS wx_sessions_expiry ON wx_sessions (expires_at);
CREATE TABLE IF NOT EXISTS wx_orders (
    out_trade_no TEXT PRIMARY KEY,
    openid TEXT NOT NULL,
    product TEXT NOT NULL,
    description TEXT NOT NULL,
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL DEFAULT 'CNY',
    credits INTEGER NOT NULL,
    state TEXT NOT NULL,
    prepay_id TEXT,
    transaction_id TEXT,
    error TEXT,
    out_refund_no TEXT,
    refund_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    paid_at REAL
);
CREATE INDEX IF NOT EXISTS wx_orders_user ON wx_orders (openid, created_at);
CREATE INDEX IF NOT EXISTS wx_orders_state ON wx_orders (state, created_at);
CREATE TABLE IF NOT EXISTS wx_charges (
    task_id TEXT PRIMARY KEY,
    openid TEXT NOT NULL,
    credits INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_owner ON tasks (owner, created_at);
CREATE TABLE IF NOT EXISTS wx_clawbacks (
    out_trade_no TEXT PRIMARY KEY,
    openid TEXT NOT NULL,
    refund_id TEXT,
    granted INTEGER NOT NULL,
    taken INTEGER NOT NULL,
    shortfall INTEGER NOT NULL,
    created_at REAL NOT NULL
);
"""

_ORDER_COLUMNS = (
    "out_trade_no, openid, product, description, amount, currency, credits, state, prepay_id, transaction_id,"
    " error, out_refund_no, refund_id, created_at, updated_at, paid_at"
)


def _order(row: tuple[Any, ...]) -> Order:
    return Order(*row)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:  # SQLite already rolled back on "database or disk is full"
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


# -- users and sessions -------------------------------------------------------------------------


def login(conn: sqlite3.Connection, openid: str, unionid: str | None, token_hash: str, ttl: float) -> None:
    now = time.time()
    with _transaction(conn):
        conn.execute(
            "INSERT INTO wx_users (openid, unionid, credits, created_at, last_login_at) VALUES (?, ?, 0, ?, ?)"
            " ON CONFLICT(openid) DO UPDATE SET last_login_at = excluded.last_login_at,"
            " unionid = COALESCE(excluded.unionid, wx_users.unionid)",
            (openid, unionid, now, now),
        )
        conn.execute("INSERT INTO wx_sessions (token_hash, openid, created_at, expires_at) VALUES (?, ?, ?, ?)",
                     (token_hash, openid, now, now + ttl))


def session_openid(conn: sqlite3.Connection, token_hash: str) -> str | None:
    row = conn.execute("SELECT openid FROM wx_sessions WHERE token_hash = ? AND expires_at > ?",
                       (token_hash, time.time())).fetchone()
    return str(row[0]) if row else None


def purge_sessions(conn: sqlite3.Connection) -> int:
    return conn.execute("DELETE FROM wx_sessions WHERE expires_at <= ?", (time.time(),)).rowcount


def credits(conn: sqlite3.Connection, openid: str) -> int:
    row = conn.execute("SELECT credits FROM wx_users WHERE openid = ?", (openid,)).fetchone()
    return int(row[0]) if row else 0


# -- orders -------------------------------------------------------------------------------------


def insert_order(conn: sqlite3.Connection, order: Order) -> None:
    values = asdict(order)
    conn.execute(f"INSERT INTO wx_orders ({_ORDER_COLUMNS}) VALUES ({', '.join('?' * len(values))})",
                 tuple(values.values()))


def update_order(conn: sqlite3.Connection, out_trade_no: str, changes: dict[str, str | None]) -> None:
    values: dict[str, object] = {**changes, "updated_at": time.time()}
    assignments = ", ".join(f"{k} = ?" for k in values)
    conn.execute(f"UPDATE wx_orders SET {assignments} WHERE out_trade_no = ?", (*values.values(), out_trade_no))


def get_order(conn: sqlite3.Connection, out_trade_no: str) -> Order | None:
    row = conn.execute(f"SELECT {_ORDER_COLUMNS} FROM wx_orders WHERE out_trade_no = ?", (out_trade_no,)).fetchone()
    return _order(row) if row else None


def user_orders(conn: sqlite3.Connection, openid: str, limit: int = 20) -> list[Order]:
    rows = conn.execute(f"SELECT {_ORDER_COLUMNS} FROM wx_orders WHERE openid = ? ORDER BY created_at DESC LIMIT ?",
                        (openid, limit)).fetchall()
    return [_order(r) for r in rows]


def stale_orders(conn: sqlite3.Connection, before: float, limit: int = 100) -> list[Order]:
    rows = conn.execute(
        f"SELECT {_ORDER_COLUMNS} FROM wx_orders WHERE state = ? AND created_at < ? ORDER BY created_at LIMIT ?",
        (CREATED, before, limit)).fetchall()
    return [_order(r) for r in rows]


def pending_refunds(conn: sqlite3.Connection, before: float, limit: int = 100) -> list[Order]:
    """Orders ``refunding`` since before ``before``: the refund sweep asks WeChat about them."""
    rows = conn.execute(
        f"SELECT {_ORDER_COLUMNS} FROM wx_orders WHERE state = ? AND out_refund_no IS NOT NULL AND updated_at < ?"
        " ORDER BY updated_at LIMIT ?", (REFUNDING, before, limit)).fetchall()
    return [_order(r) for r in rows]


def mark_paid(conn: sqlite3.Connection, out_trade_no: str, transaction_id: str) -> bool:
    """Mark the order paid and grant its credits, once: ``True`` only for the call that did it.

    A ``closed`` order may still be paid (WeChat took the money before our close): credit it.
    """
    now = time.time()
    with _transaction(conn):
        changed = conn.execute(
            "UPDATE wx_orders SET state = ?, transaction_id = ?, paid_at = ?, updated_at = ?, error = NULL"
            " WHERE out_trade_no = ? AND state IN (?, ?, ?)",
            (PAID, transaction_id, now, now, out_trade_no, CREATED, CLOSED, FAILED),
        ).rowcount
        if changed:
            conn.execute(
                "UPDATE wx_users SET credits = credits + (SELECT credits FROM wx_orders WHERE out_trade_no = ?)"
                " WHERE openid = (SELECT openid FROM wx_orders WHERE out_trade_no = ?)",
                (out_trade_no, out_trade_no),
            )
    return bool(changed)


def mark_closed(conn: sqlite3.Connection, out_trade_no: str) -> bool:
    now = time.time()
    return bool(conn.execute("UPDATE wx_orders SET state = ?, updated_at = ? WHERE out_trade_no = ? AND state = ?",
                             (CLOSED, now, out_trade_no, CREATED)).rowcount)


def begin_refund(conn: sqlite3.Connection, out_trade_no: str, out_refund_no: str, force: bool) -> str:
    """Take the order's credits back and mark it ``refunding``. Returns ``ok``, ``state`` (not
    paid) or ``spent`` (the user has fewer credits left than the order granted, and not ``force``)."""
    now = time.time()
    with _transaction(conn):
        order = get_order(conn, out_trade_no)
        if order is None or order.state != PAID:
            return "state"
        taken = conn.execute("UPDATE wx_users SET credits = credits - ? WHERE openid = ? AND credits >= ?",
                             (order.credits, order.openid, order.credits)).rowcount
        if not taken:
            if not force:
                return "spent"
            conn.execute("UPDATE wx_users SET credits = 0 WHERE openid = ?", (order.openid,))
        conn.execute("UPDATE wx_orders SET state = ?, out_refund_no = ?, updated_at = ? WHERE out_trade_no = ?",
                     (REFUNDING, out_refund_no, now, out_trade_no))
    return "ok"


def undo_refund(conn: sqlite3.Connection, out_trade_no: str, error: str) -> None:
    """WeChat refused the refund: the order is paid again and its credits come back."""
    now = time.time()
    with _transaction(conn):
        changed = conn.execute(
            "UPDATE wx_orders SET state = ?, out_refund_no = NULL, error = ?, updated_at = ?"
            " WHERE out_trade_no = ? AND state = ?", (PAID, error, now, out_trade_no, REFUNDING)).rowcount
        if changed:
            conn.execute(
                "UPDATE wx_users SET credits = credits + (SELECT credits FROM wx_orders WHERE out_trade_no = ?)"
                " WHERE openid = (SELECT openid FROM wx_orders WHERE out_trade_no = ?)", (out_trade_no, out_trade_no))


def refund_succeeded(conn: sqlite3.Connection, out_trade_no: str, refund_id: str) -> tuple[int, int] | None:
    """WeChat reports the order refunded: mark it ``refunded``, once.

    A ``paid`` order (refunded outside the gateway, in the merchant console) still holds
    its credits: take them back, or all the user has left when some are spent, and record
    the shortfall in ``wx_clawbacks``. A ``refunding`` order (an admin refund) gave its
    credits back already. Returns ``(taken, shortfall)``; ``None`` when the order was
    refunded already (a repeated notification) or is unknown.
    """
    now = time.time()
    with _transaction(conn):
        order = get_order(conn, out_trade_no)
        if order is None or order.state == REFUNDED:
            return None
        taken = shortfall = 0
        if order.state == PAID:
            row = conn.execute("SELECT credits FROM wx_users WHERE openid = ?", (order.openid,)).fetchone()
            taken = min(int(row[0]) if row else 0, order.credits)
            shortfall = order.credits - taken
            conn.execute("UPDATE wx_users SET credits = credits - ? WHERE openid = ?", (taken, order.openid))
            conn.execute("INSERT INTO wx_clawbacks (out_trade_no, openid, refund_id, granted, taken, shortfall,"
                         " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (out_trade_no, order.openid, refund_id or None, order.credits, taken, shortfall, now))
        conn.execute("UPDATE wx_orders SET state = ?, refund_id = COALESCE(?, refund_id), updated_at = ?"
                     " WHERE out_trade_no = ?", (REFUNDED, refund_id or None, now, out_trade_no))
    return taken, shortfall


# -- credits for tasks --------------------------------------------------------------------------


def charge(conn: sqlite3.Connection, openid: str, task_id: str, amount: int) -> bool:
    """Spend ``amount`` credits on ``task_id``; ``False`` (nothing changed) if the user has too few."""
    now = time.time()
    with _transaction(conn):
        if not conn.execute("UPDATE wx_users SET credits = credits - ? WHERE openid = ? AND credits >= ?",
                            (amount, openid, amount)).rowcount:
            return False
        conn.execute("INSERT INTO wx_charges (task_id, openid, credits, state, created_at, updated_at)"
                     " VALUES (?, ?, ?, 'charged', ?, ?)", (task_id, openid, amount, now, now))
    return True


def refund_charge(conn: sqlite3.Connection, task_id: str) -> int:
    """Give a task's credits back, once; returns the credits given back (0 if already done or none)."""
    now = time.time()
    with _transaction(conn):
        row = conn.execute("SELECT openid, credits FROM wx_charges WHERE task_id = ? AND state = 'charged'",
                           (task_id,)).fetchone()
        if row is None:
            return 0
        conn.execute("UPDATE wx_charges SET state = 'refunded', updated_at = ? WHERE task_id = ?", (now, task_id))
        conn.execute("UPDATE wx_users SET credits = credits + ? WHERE openid = ?", (row[1], row[0]))
    return int(row[1])


def failed_charged_tasks(conn: sqlite3.Connection) -> list[str]:
    """Tasks that failed while their charge stands (a crash between the two): to refund."""
    rows = conn.execute("SELECT c.task_id FROM wx_charges c JOIN tasks t ON t.task_id = c.task_id"
                        " WHERE c.state = 'charged' AND t.status = 'failed'").fetchall()
    return [str(r[0]) for r in rows]


def user_tasks(conn: sqlite3.Connection, openid: str, limit: int = 20) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT task_id, status, created_at, error FROM tasks WHERE owner = ?"
                        " ORDER BY created_at DESC LIMIT ?", (openid, limit)).fetchall()
    return [{"task_id": r[0], "status": r[1], "created_at": r[2],
             "result_url": f"/api/v1/download/{r[0]}" if r[1] == "completed" else None,
             "error": r[3] if r[1] == "failed" else None} for r in rows]


class Connection(Protocol):
    """What the records need of the SQLite store: a function run on its own thread."""

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


class SQLiteWechatRecords:
    """:class:`~.protocol.WechatRecords` in the gateway's SQLite file."""

    def __init__(self, store: Connection) -> None:
        self.store = store

    async def create_schema(self) -> None:
        await self.store.run(create_schema)

    async def login(self, openid: str, unionid: str | None, token_hash: str, ttl: float) -> None:
        await self.store.run(lambda conn: login(conn, openid, unionid, token_hash, ttl))

    async def session_openid(self, token_hash: str) -> str | None:
        return await self.store.run(lambda conn: session_openid(conn, token_hash))

    async def purge_sessions(self) -> int:
        return await self.store.run(purge_sessions)

    async def credits(self, openid: str) -> int:
        return await self.store.run(lambda conn: credits(conn, openid))

    async def insert_order(self, order: Order) -> None:
        await self.store.run(lambda conn: insert_order(conn, order))

    async def update_order(self, out_trade_no: str, **changes: str | None) -> None:
        await self.store.run(lambda conn: update_order(conn, out_trade_no, changes))

    async def get_order(self, out_trade_no: str) -> Order | None:
        return await self.store.run(lambda conn: get_order(conn, out_trade_no))

    async def user_orders(self, openid: str, limit: int = 20) -> list[Order]:
        return await self.store.run(lambda conn: user_orders(conn, openid, limit))

    async def stale_orders(self, before: float, limit: int = 100) -> list[Order]:
        return await self.store.run(lambda conn: stale_orders(conn, before, limit))

    async def pending_refunds(self, before: float, limit: int = 100) -> list[Order]:
        return await self.store.run(lambda conn: pending_refunds(conn, before, limit))

    async def mark_paid(self, out_trade_no: str, transaction_id: str) -> bool:
        return await self.store.run(lambda conn: mark_paid(conn, out_trade_no, transaction_id))

    async def mark_closed(self, out_trade_no: str) -> bool:
        return await self.store.run(lambda conn: mark_closed(conn, out_trade_no))

    async def begin_refund(self, out_trade_no: str, out_refund_no: str, force: bool) -> str:
        return await self.store.run(lambda conn: begin_refund(conn, out_trade_no, out_refund_no, force))

    async def undo_refund(self, out_trade_no: str, error: str) -> None:
        await self.store.run(lambda conn: undo_refund(conn, out_trade_no, error))

    async def refund_succeeded(self, out_trade_no: str, refund_id: str) -> tuple[int, int] | None:
        return await self.store.run(lambda conn: refund_succeeded(conn, out_trade_no, refund_id))

    async def charge(self, openid: str, task_id: str, amount: int) -> bool:
        return await self.store.run(lambda conn: charge(conn, openid, task_id, amount))

    async def refund_charge(self, task_id: str) -> int:
        return await self.store.run(lambda conn: refund_charge(conn, task_id))

    async def failed_charged_tasks(self) -> list[str]:
        return await self.store.run(failed_charged_tasks)

    async def user_tasks(self, openid: str, limit: int = 20) -> list[dict[str, Any]]:
        return await self.store.run(lambda conn: user_tasks(conn, openid, limit))
