#!/usr/bin/env python3
"""The loyalty role, which no Rust code knows: `loyalty.award` credits the charged user with
1 point per started 10.00 of the saga's charge, once per saga. The charge is the payment
role's answer to `payment.charge` (found by that command, never by a step name or in the
input, which a caller writes): no charge, no award. It is meant as a forward-only step after
a pivot, so it has no compensation.

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
    charge = participant.output_from(command, "payment", "payment.charge")
    if not isinstance(charge, dict):
        return participant.rejected("loyalty.award needs the payment role's answer to payment.charge")
    user = str(charge.get("user_id") or "")
    cents = charge.get("amount_cents")
    if not user or not isinstance(cents, int) or isinstance(cents, bool) or cents < 0:
        return participant.rejected("the charge names no user_id and amount_cents")
    points = (cents + 999) // 1000
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
