#!/usr/bin/env python3
"""The shipment role: `shipment.prepare` ships to a serviceable country or is rejected;
`shipment.cancel` cancels a prepared shipment (nothing to undo is fine). The runtime
(inbox, fences, replies) is `participant.py`. Run: KAFKA_BROKERS=... python3 shipment.py
"""

import uuid

import participant

NAME = "shipment"
SCHEMA = """
CREATE TABLE IF NOT EXISTS shipments (
    saga_id TEXT PRIMARY KEY, tracking TEXT NOT NULL, cancelled INTEGER NOT NULL DEFAULT 0);
"""
SERVICEABLE = {"KR", "JP", "US", "CA", "GB", "DE", "FR", "NL"}


def effect(db, command):
    if command["name"] != "shipment.prepare":
        return participant.rejected(f"unknown command {command['name']}")
    saga = command["saga_id"]
    address = (command.get("payload") or {}).get("input", {}).get("shipping_address") or {}
    country = str(address.get("country", "")).upper()
    if country not in SERVICEABLE:
        return participant.rejected(f"address not serviceable: we do not ship to {country or 'nowhere'}")
    tracking = "PY" + uuid.uuid4().hex[:12].upper()
    db.execute("INSERT OR IGNORE INTO shipments (saga_id, tracking) VALUES (?, ?)", (saga, tracking))
    tracking = db.execute("SELECT tracking FROM shipments WHERE saga_id = ?", (saga,)).fetchone()[0]
    return participant.succeeded({"tracking_number": tracking, "country": country})


def undo(db, command):
    if command["name"] != "shipment.cancel":
        return participant.rejected(f"unknown command {command['name']}")
    changed = db.execute(
        "UPDATE shipments SET cancelled = 1 WHERE saga_id = ? AND cancelled = 0", (command["saga_id"],)
    ).rowcount
    return participant.succeeded({"cancelled": changed == 1})


if __name__ == "__main__":
    import sys

    participant.run(sys.modules[__name__])
