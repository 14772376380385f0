"""Publish events of every Ledgerline category as a Python service using Confluent's client would.

For each category the newest schema file (`<category>.v<N>.avsc` in SCHEMA_DIR) is handed to an
AvroSerializer that auto-registers it under TopicNameStrategy (subject
`ledgerline.<category>-value`), and the events are produced with confluent-kafka to the real
topics `ledgerline.<category>`, keyed as Ledgerline keys them. The events vary the way real ones do:

- even-numbered events set every optional field; odd-numbered ones leave them null, some
  by passing None and every fourth by leaving the field out for the schema's default to fill in;
- `occurred_at` is a timezone-aware datetime on some events and integer microseconds on others,
  and `event_id` a `uuid.UUID` on some and a string on others: fastavro accepts both for the
  `timestamp-micros` and `uuid` logical types;
- with the default counts every enum symbol of the record appears; some text is non-ASCII or
  carries quotes, tabs and newlines.

After every delivery is acknowledged, prints one JSON line per event, in the order produced:
category, topic, key, event_id, the schema file and the id the serializer used, the partition and
offset the broker acknowledged, and `event`, the full record as a Ledgerline event in JSON
(timestamps in microseconds, uuids as text, defaults filled in), so that the Rust test can compare
it with what Ledgerline reads back.

usage: confluent_produce_all.py BOOTSTRAP REGISTRY_URL SCHEMA_DIR [PER_CATEGORY [SESSION_EVENTS]]

PER_CATEGORY events (default 6) go to each stored category, SESSION_EVENTS (default 3) to session.
"""

import copy
import json
import pathlib
import re
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

STORED_CATEGORIES = ["audit", "job", "connection", "system"]
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# 2026-11-22T08:30:15.123456Z: microseconds that are not a multiple of 1,000 catch a
# conversion to milliseconds anywhere on the way.
BASE_TIME = datetime(2026, 11, 22, 8, 30, 15, 123456, tzinfo=timezone.utc)

LEVELS = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"]
OUTCOMES = ["SUCCESS", "FAILURE", "DENIED"]
JOB_STATUSES = ["QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"]
PHASES = ["CONNECT", "AUTHENTICATE", "COMMAND", "DISCONNECT", "COMMIT", "SAVE"]
DIRECTIONS = ["INPUT", "OUTPUT"]


def newest_schema(schema_dir: pathlib.Path, category: str) -> pathlib.Path:
    """The schema file with the highest version for `category`: what a new service writes."""
    pattern = re.compile(rf"^{category}\.v(\d+)\.avsc$")
    versions = [
        (int(match.group(1)), path)
        for path in schema_dir.iterdir()
        if (match := pattern.match(path.name))
    ]
    if not versions:
        raise SystemExit(f"no schema file for {category} in {schema_dir}")
    return max(versions)[1]


def micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def as_json(value):
    """json.dumps hook: the Python values fastavro accepts, as Ledgerline's JSON has them."""
    if isinstance(value, datetime):
        return micros(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON serializable: {value!r}")


def envelope(category: str, name: str, n: int, full: bool) -> dict:
    occurred = BASE_TIME + timedelta(seconds=n, microseconds=n)
    return {
        "event_id": uuid.uuid4() if n % 2 == 0 else str(uuid.uuid4()),
        "occurred_at": occurred if n % 2 == 0 else micros(occurred),
        "category": category.upper(),
        "name": name,
        "level": LEVELS[n % len(LEVELS)],
        "service": "python-inventory",
        "service_version": "0.4.2",
        "host": "py-worker-1",
        "message": (
            f"Inventaire n°{n} synchronisé ✓ 🚀 \"quoted\" \\ tab\tnew\nline"
            if full
            else f"{category} event {n} from the python service"
        ),
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736" if full else None,
        "span_id": "00f067aa0ba902b7" if full else None,
        # An empty string is a value, not a null, and must stay one.
        "request_id": (f"py-req-{n}" if n % 4 == 0 else "") if full else None,
        "attributes": {"tenant": "acme", "user_id": f"py-user-{n}", "région": "île-de-france"}
        if full
        else {},
    }


def audit(n: int, full: bool) -> dict:
    return {
        "envelope": envelope("audit", "invoice.update", n, full),
        "actor": {
            "id": f"py-user-{n}",
            "kind": "user",
            "ip": "2001:db8::7" if n % 3 == 0 else "198.51.100.7",
            "user_agent": "python-requests/2.32.3" if full else None,
        },
        "action": "update",
        "target": {"kind": "invoice", "id": f"inv-{n}"} if full else None,
        "outcome": OUTCOMES[n % len(OUTCOMES)],
        "reason": "amount changed by the owner" if full else None,
        "details": json.dumps({"amount_cents": 1250 + n, "note": "é \"x\"\n"}),
    }


def job(n: int, full: bool) -> dict:
    return {
        "envelope": envelope("job", "job.progress", n, full),
        "job_id": f"py-job-{n}",
        "job_type": "inventory-sync",
        "job_name": "Nightly inventory sync",
        "status": JOB_STATUSES[n % len(JOB_STATUSES)],
        "progress": [0, 25, 50, 100, 99, 100][n % 6],
        "details": json.dumps({"devices_done": n}),
        "parent_job_id": "py-job-parent" if full else None,
    }


def connection(n: int, full: bool) -> dict:
    return {
        "envelope": envelope("connection", "device.connect", n, full),
        "device_id": f"py-device-{n}",
        "device_name": "Edge router – Lyon",
        "job_id": f"py-job-{n}" if full else None,
        "phase": PHASES[n % len(PHASES)],
        "outcome": OUTCOMES[n % len(OUTCOMES)],
        # 0 is a value, and 2**40 needs the long.
        "duration_ms": [0, 2**40, 1234][n // 2 % 3] if full else None,
        "error": "ssh: handshake failed" if full else None,
    }


def system(n: int, full: bool) -> dict:
    chains = [["io error", "connection reset by peer"], [], ["timed out"]]
    return {
        "envelope": envelope("system", "service.error", n, full),
        "target": "inventory.worker",
        "file": "inventory/worker.py" if full else None,
        "line": [0, 2**31 - 1, 42][n // 2 % 3] if full else None,
        "fields": {"attempt": str(n), "queue": "sync"} if full else {},
        "error": {"message": f"sync failed ({n})", "chain": chains[n // 2 % 3]} if full else None,
    }


def session(n: int, full: bool) -> dict:
    return {
        "envelope": envelope("session", "session.output", n, full),
        "device_id": f"py-device-{n}",
        "job_id": f"py-job-{n}" if full else None,
        "direction": DIRECTIONS[n % len(DIRECTIONS)],
        "data": "show running-config\r\n",
    }


BUILDERS = {
    "audit": audit,
    "job": job,
    "connection": connection,
    "system": system,
    "session": session,
}


def partition_key(category: str, event: dict) -> str:
    """Ledgerline's keys: events with the same key stay in order."""
    return {
        "audit": lambda: event["actor"]["id"],
        "job": lambda: event["job_id"],
        "connection": lambda: event["device_id"],
        "system": lambda: event["envelope"]["service"],
        "session": lambda: event["device_id"],
    }[category]()


def without_nulls(record: dict) -> dict:
    """The record with its null and empty-map fields left out, as a terse caller writes it:
    the schema's defaults (null, {}) fill them back in."""
    sparse = {}
    for name, value in record.items():
        if value is None or value == {}:
            continue
        sparse[name] = without_nulls(value) if name == "envelope" else value
    return sparse


def main() -> int:
    bootstrap, registry_url, schema_dir = sys.argv[1:4]
    per_category = int(sys.argv[4]) if len(sys.argv) > 4 else 6
    session_events = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    schema_dir = pathlib.Path(schema_dir)

    registry = SchemaRegistryClient({"url": registry_url})
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    failures = []
    acknowledged = {}

    def on_delivery(event_id):
        def report(error, message):
            if error is not None:
                failures.append(f"{event_id}: {error}")
            else:
                acknowledged[event_id] = (message.partition(), message.offset())

        return report

    produced = []
    plan = [(category, per_category) for category in STORED_CATEGORIES]
    plan.append(("session", session_events))
    for category, count in plan:
        schema_file = newest_schema(schema_dir, category)
        serializer = AvroSerializer(
            registry, schema_file.read_text(encoding="utf-8"), conf={"auto.register.schemas": True}
        )
        topic = f"ledgerline.{category}"
        context = SerializationContext(topic, MessageField.VALUE)
        for n in range(count):
            full = n % 2 == 0
            event = BUILDERS[category](n, full)
            written = without_nulls(event) if n % 4 == 3 else copy.deepcopy(event)
            payload = serializer(written, context)
            key = partition_key(category, event)
            event_id = str(event["envelope"]["event_id"])
            producer.produce(topic, key=key, value=payload, on_delivery=on_delivery(event_id))
            producer.poll(0)
            produced.append(
                {
                    "category": category,
                    "topic": topic,
                    "key": key,
                    "event_id": event_id,
                    "schema_file": schema_file.name,
                    "schema_id": int.from_bytes(payload[1:5], "big"),
                    "magic": payload[0],
                    "optional_fields": "set" if full else ("omitted" if n % 4 == 3 else "null"),
                    "event": event,
                }
            )

    remaining = producer.flush(30)
    if remaining or failures:
        print(f"undelivered: {remaining}, failures: {failures}", file=sys.stderr)
        return 1
    for line in produced:
        line["partition"], line["offset"] = acknowledged[line["event_id"]]
        print(json.dumps(line, default=as_json), flush=True)
    return 0


if __name__ == "__main__":
    started = time.time()
    status = main()
    print(f"done in {time.time() - started:.2f}s", file=sys.stderr)
    sys.exit(status)
