#!/usr/bin/env python3
"""The loyalty role, which no Rust code knows: `loyalty.award` credits the saga's user with
the input's `points` (default 1 per started 10.00 of `total_cents`), once per saga. It is
meant as a forward-only step after a pivot, so it has no compensation.

LOYALTY_FAIL_FIRST=N answers the first N award commands `failed` (the service is down),
to show a forward-only step retried until the service recovers. The runtime (inbox,
fences, replies) is `participant.py`. Run: KAFKA_BROKERS=... python3 loyalty.py
"""

import os

import participant

NAME = "loyalty"
SCHEMA = """
CREATE TABLE IF NOT EXISTS awards (
    saga_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, points INTEGER NOT NULL);
"""
outages_left = int(os.environ.get("LOYALTY_FAIL_FIRST", "0"))


def effect(db, command):
    global outages_left
    if command["name"] != "loyalty.award":
        return participant.rejected(f"unknown command {command['name']}")
    if outages_left > 0:
        outages_left -= 1
        return participant.failed("loyalty service unavailable")
    given = (command.get("payload") or {}).get("input") or {}
    user = str(given.get("user_id", ""))
    if not user:
        return participant.rejected("the input names no user_id")
    points = given.get("points")
    if not isinstance(points, int) or points < 0:
        points = (int(given.get("total_cents", 0)) + 999) // 1000
    db.execute(
        "INSERT OR IGNORE INTO awards (saga_id, user_id, points) VALUES (?, ?, ?)",
        (command["saga_id"], user, points),
    )
    user, points = db.execute(
        "SELECT user_id, points FROM awards WHERE saga_id = ?", (command["saga_id"],)
    ).fetchone()
    total = db.execute("SELECT SUM(points) FROM awards WHERE user_id = ?", (user,)).fetchone()[0]
    return participant.succeeded({"user_id": user, "points": points, "balance": total})


def undo(db, command):
    return participant.rejected(f"{command['name']}: loyalty awards are forward-only")


if __name__ == "__main__":
    import sys

    participant.run(sys.modules[__name__])
