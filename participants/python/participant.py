"""A sagaflow participant's runtime, written from openapi/asyncapi.json alone.

A role consumes `{prefix}.commands.{role}` as the consumer group `{prefix}.{role}`, applies
each command once, and publishes its reply to `{prefix}.replies`, keyed by the saga id. A
role module supplies only its business: `effect(db, command)` for a forward command and
`undo(db, command)` for a compensation, each returning the reply's outcome.

Exactly-once effects over at-least-once delivery: an inbox keyed by the command id holds
the stored reply. The inbox row, the business change and the reply commit in one SQLite
transaction; the reply is published after that commit, and the Kafka offset committed
after the publish. A redelivered command gets its stored reply again and changes nothing.

Fences: a fence (direction `fence`) or a compensation makes the step's forward command
unable to take effect from now on; a fence reports whether it already did.

The command's `traceparent` header, when there is one, goes back on the reply unchanged.

Environment: KAFKA_BROKERS (required), TOPIC_PREFIX (default `sagaflow`), INBOX_DB (a
SQLite file, default `<role>.db`), KAFKA_INSTANCE_ID (optional: a static group member
under this id), PARTICIPANT_LOG (optional: one JSON line per command, for tests). Needs `confluent-kafka` from PyPI.
"""

import json
import os
import signal
import sqlite3
import sys
import uuid
from datetime import datetime, timezone

from confluent_kafka import Consumer, Producer


def now():
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def rejected(reason):
    return {"status": "rejected", "reason": reason}


def failed(reason):
    """A transient failure: the saga's retry policy tries again."""
    return {"status": "failed", "reason": reason}


def succeeded(output):
    return {"status": "succeeded", "output": output}


def output_from(command, role, name):
    """The output of the step whose forward command `name` the role `role` answered, or None.

    Never look an output up by step name: a signal step may carry any name, and its body is
    whatever its caller sent. Each entry of `payload.outputs` says what produced it (`by`);
    two entries from the same command are ambiguous and count as none.
    """
    outputs = (command.get("payload") or {}).get("outputs") or {}
    found = [
        entry.get("output")
        for entry in outputs.values()
        if isinstance(entry, dict)
        and entry.get("by") == {"kind": "command", "role": role, "command": name}
    ]
    return found[0] if len(found) == 1 else None


def open_inbox(path, schema):
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS inbox (command_id TEXT PRIMARY KEY, reply TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS fences (
            saga_id TEXT NOT NULL, step INTEGER NOT NULL, applied INTEGER NOT NULL DEFAULT 0,
            fenced INTEGER NOT NULL DEFAULT 0, output TEXT, PRIMARY KEY (saga_id, step));
        """
        + schema
    )
    return db


def outcome_of(db, role, command):
    """The command's effect, inside the caller's transaction; returns the reply's outcome."""
    saga, step = command["saga_id"], command["step"]
    direction = command["direction"]
    db.execute("INSERT OR IGNORE INTO fences (saga_id, step) VALUES (?, ?)", (saga, step))
    applied, fenced, output = db.execute(
        "SELECT applied, fenced, output FROM fences WHERE saga_id = ? AND step = ?", (saga, step)
    ).fetchone()
    if direction in ("fence", "compensate"):
        db.execute("UPDATE fences SET fenced = 1 WHERE saga_id = ? AND step = ?", (saga, step))
    if direction == "fence":
        return succeeded({"applied": bool(applied), "output": json.loads(output) if output else None})
    if direction == "compensate":
        return role.undo(db, command)
    if fenced:
        return rejected("step fenced: the saga has compensated past it")
    outcome = role.effect(db, command)
    if outcome["status"] == "succeeded":
        db.execute(
            "UPDATE fences SET applied = 1, output = ? WHERE saga_id = ? AND step = ?",
            (json.dumps(outcome["output"]), saga, step),
        )
    return outcome


def handle(db, role, command):
    """(reply, whether it was stored before): one transaction per command. A `failed`
    outcome is answered but not stored, so a later delivery of the command tries again."""
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
            "outcome": outcome_of(db, role, command),
            "command_issued_at": command["issued_at"],
            "replied_at": now(),
        }
        if reply["outcome"]["status"] == "failed":
            db.execute("ROLLBACK")
            return reply, False
        db.execute("INSERT INTO inbox (command_id, reply) VALUES (?, ?)", (command["id"], json.dumps(reply)))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return reply, False


def run(role):
    """Consumes the role's commands until SIGTERM or SIGINT."""
    brokers = os.environ.get("KAFKA_BROKERS")
    if not brokers:
        sys.exit("KAFKA_BROKERS is required")
    prefix = os.environ.get("TOPIC_PREFIX", "sagaflow")
    db = open_inbox(os.environ.get("INBOX_DB", f"{role.NAME}.db"), role.SCHEMA)
    log_path = os.environ.get("PARTICIPANT_LOG")
    settings = {
        "bootstrap.servers": brokers,
        "group.id": f"{prefix}.{role.NAME}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 10,
    }
    instance = os.environ.get("KAFKA_INSTANCE_ID")
    if instance:
        # A static member, as the Rust processes are: a restart under the same id takes
        # the old member's place at once (a broker may never evict a dead dynamic one).
        settings["group.instance.id"] = f"{prefix}.{role.NAME}:{instance}"
        settings["session.timeout.ms"] = 45000
    consumer = Consumer(settings)
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 0})
    topic = f"{prefix}.commands.{role.NAME}"
    consumer.subscribe([topic])
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"{role.NAME} participant consuming {topic}", flush=True)
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
        reply, redelivered = handle(db, role, command)
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
                         "outcome": reply["outcome"]["status"],
                         "handled": "redelivered" if redelivered else "applied"}
                log.write(json.dumps(entry) + "\n")
    consumer.close()
