#!/usr/bin/env python3
"""The shipment participant, written from openapi/asyncapi.json alone.

It consumes `{prefix}.commands.shipment` as the consumer group `{prefix}.shipment`, applies
each command once, and publishes its reply to `{prefix}.replies`, keyed by the saga id:

- `shipment.prepare` (forward) ships to a serviceable country, or is rejected;
- `shipment.cancel` (compensate) cancels a prepared shipment (nothing to undo is fine);
- a fence (direction `fence`) makes the step's forward command unable to take effect from
  now on and reports whether it already did.

Exactly-once effects over at-least-once delivery: an inbox keyed by the command id holds
the stored reply. The inbox row, the business change and the reply commit in one SQLite
transaction; the reply is published after that commit, and the Kafka offset committed
after the publish. A redelivered command gets its stored reply again and changes nothing.

The command's `traceparent` header, when there is one, goes back on the reply unchanged.

Environment: KAFKA_BROKERS (required), TOPIC_PREFIX (default `sagaflow`), INBOX_DB (a
SQLite file, default `shipment.db`), PARTICIPANT_LOG (optional: one JSON line per
command, for tests). Needs `confluent-kafka` from PyPI.
"""

import json
import os
import signal
import sqlite3
import sys
import uuid
from datetime import datetime, timezone

from confluent_kafka import Consumer, Producer

SERVICEABLE = {"KR", "JP", "US", "CA", "GB", "DE", "FR", "NL"}


def now():
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def open_inbox(path):
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS inbox (command_id TEXT PRIMARY KEY, reply TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS shipments (
            saga_id TEXT PRIMARY KEY, tracking TEXT NOT NULL, cancelled INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE IF NOT EXISTS fences (
            saga_id TEXT NOT NULL, step INTEGER NOT NULL, applied INTEGER NOT NULL DEFAULT 0,
            fenced INTEGER NOT NULL DEFAULT 0, output TEXT, PRIMARY KEY (saga_id, step));
        """
    )
    return db


def outcome_of(db, command):
    """The command's effect, inside the caller's transaction; returns the reply's outcome."""
    saga, step = command["saga_id"], command["step"]
    direction, name = command["direction"], command["name"]
    db.execute("INSERT OR IGNORE INTO fences (saga_id, step) VALUES (?, ?)", (saga, step))
    applied, fenced, output = db.execute(
        "SELECT applied, fenced, output FROM fences WHERE saga_id = ? AND step = ?", (saga, step)
    ).fetchone()
    if direction == "fence":
        db.execute("UPDATE fences SET fenced = 1 WHERE saga_id = ? AND step = ?", (saga, step))
        fenced_output = {"applied": bool(applied), "output": json.loads(output) if output else None}
        return {"status": "succeeded", "output": fenced_output}
    if direction == "compensate":
        db.execute("UPDATE fences SET fenced = 1 WHERE saga_id = ? AND step = ?", (saga, step))
        if name != "shipment.cancel":
            return {"status": "rejected", "reason": f"unknown command {name}"}
        changed = db.execute(
            "UPDATE shipments SET cancelled = 1 WHERE saga_id = ? AND cancelled = 0", (saga,)
        ).rowcount
        return {"status": "succeeded", "output": {"cancelled": changed == 1}}
    if name != "shipment.prepare":
        return {"status": "rejected", "reason": f"unknown command {name}"}
    if fenced:
        return {"status": "rejected", "reason": "step fenced: the saga has compensated past it"}
    address = (command.get("payload") or {}).get("input", {}).get("shipping_address") or {}
    country = str(address.get("country", "")).upper()
    if country not in SERVICEABLE:
        return {
            "status": "rejected",
            "reason": f"address not serviceable: we do not ship to {country or 'nowhere'}",
        }
    tracking = "PY" + uuid.uuid4().hex[:12].upper()
    db.execute("INSERT OR IGNORE INTO shipments (saga_id, tracking) VALUES (?, ?)", (saga, tracking))
    tracking = db.execute("SELECT tracking FROM shipments WHERE saga_id = ?", (saga,)).fetchone()[0]
    output = {"tracking_number": tracking, "country": country}
    db.execute(
        "UPDATE fences SET applied = 1, output = ? WHERE saga_id = ? AND step = ?",
        (json.dumps(output), saga, step),
    )
    return {"status": "succeeded", "output": output}


def handle(db, command):
    """(reply, whether it was stored before): one transaction per command."""
    stored = db.execute("SELECT reply FROM inbox WHERE command_id = ?", (command["id"],)).fetchone()
    if stored:
        return json.loads(stored[0]), True
    db.execute("BEGIN IMMEDIATE")
    try:
        reply = {
            "id": str(uuid.uuid4()),
            "command_id": command["id"],
            "saga_id": command["saga_id"],
            "step": command["step"],
            "attempt": command["attempt"],
            "direction": command["direction"],
            "outcome": outcome_of(db, command),
            "command_issued_at": command["issued_at"],
            "replied_at": now(),
        }
        db.execute("INSERT INTO inbox (command_id, reply) VALUES (?, ?)", (command["id"], json.dumps(reply)))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return reply, False


def main():
    brokers = os.environ.get("KAFKA_BROKERS")
    if not brokers:
        sys.exit("KAFKA_BROKERS is required")
    prefix = os.environ.get("TOPIC_PREFIX", "sagaflow")
    db = open_inbox(os.environ.get("INBOX_DB", "shipment.db"))
    log_path = os.environ.get("PARTICIPANT_LOG")
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"{prefix}.shipment",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 10,
    })
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 0})
    consumer.subscribe([f"{prefix}.commands.shipment"])
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"shipment participant consuming {prefix}.commands.shipment", flush=True)
    while running:
        message = consumer.poll(0.2)
        if message is None:
            continue
        if message.error():
            print(f"receive error: {message.error()}", file=sys.stderr, flush=True)
            continue
        try:
            command = json.loads(message.value())
        except ValueError as err:
            print(f"undecodable command skipped: {err}", file=sys.stderr, flush=True)
            consumer.commit(message=message, asynchronous=False)
            continue
        reply, redelivered = handle(db, command)
        # This participant records no spans of its own: it hands the command's trace context
        # on unchanged, so the saga stays one trace (asyncapi.json, TraceHeaders).
        trace = [(k, v) for k, v in (message.headers() or []) if k == "traceparent"]
        producer.produce(f"{prefix}.replies", key=command["saga_id"], value=json.dumps(reply),
                         headers=trace)
        producer.flush(10)
        consumer.commit(message=message, asynchronous=False)
        if log_path:
            with open(log_path, "a", encoding="utf-8") as log:
                entry = {"command_id": command["id"], "reply_id": reply["id"],
                         "handled": "redelivered" if redelivered else "applied"}
                log.write(json.dumps(entry) + "\n")
    consumer.close()


if __name__ == "__main__":
    main()
