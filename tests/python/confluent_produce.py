"""Publish Ledgerline audit events the way a Python service using Confluent's own client would.

Registers the schema with SchemaRegistryClient (auto-registration through AvroSerializer),
serializes with AvroSerializer (Confluent wire format) and produces with confluent-kafka.
Prints one JSON line per event with its event_id and the schema id the serializer used, so the
Rust test can check that Ledgerline's decoder reads back exactly these events.

usage: confluent_produce.py BOOTSTRAP REGISTRY_URL TOPIC SCHEMA_FILE COUNT
"""

import json
import sys
import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main() -> int:
    bootstrap, registry_url, topic, schema_file, count = sys.argv[1:6]
    with open(schema_file, encoding="utf-8") as handle:
        schema_text = handle.read()

    registry = SchemaRegistryClient({"url": registry_url})
    serializer = AvroSerializer(registry, schema_text, conf={"auto.register.schemas": True})
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    context = SerializationContext(topic, MessageField.VALUE)

    failures = []

    def on_delivery(error, _message):
        if error is not None:
            failures.append(str(error))

    for n in range(int(count)):
        event_id = str(uuid.uuid4())
        event = {
            "envelope": {
                "event_id": event_id,
                "occurred_at": 1_795_305_600_000_000 + n,
                "category": "AUDIT",
                "name": "user.login.success",
                "level": "INFO",
                "service": "python-billing",
                "service_version": "3.1.0",
                "host": "py-host",
                "message": f"user signed in from the python service ({n})",
                "trace_id": None,
                "span_id": None,
                "request_id": f"py-req-{n}",
                "attributes": {"user_id": f"py-user-{n}"},
            },
            "actor": {"id": f"py-user-{n}", "kind": "user", "ip": "198.51.100.7", "user_agent": None},
            "action": "login",
            "target": {"kind": "account", "id": "acct-1"},
            "outcome": "SUCCESS",
            "reason": None,
            "details": json.dumps({"via": "python"}),
        }
        payload = serializer(event, context)
        schema_id = int.from_bytes(payload[1:5], "big")
        producer.produce(topic, key=f"py-user-{n}", value=payload, on_delivery=on_delivery)
        print(json.dumps({"event_id": event_id, "schema_id": schema_id, "magic": payload[0]}), flush=True)

    remaining = producer.flush(30)
    if remaining or failures:
        print(f"undelivered: {remaining}, failures: {failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    started = time.time()
    status = main()
    print(f"done in {time.time() - started:.2f}s", file=sys.stderr)
    sys.exit(status)
