#!/usr/bin/env python3
"""Build the shopping carts' read model from a Statehouse journal, outside Rust.

Reads every partition of `<prefix><service>.journal` from the beginning with
isolation.level=read_committed (events of aborted transactions never come out),
up to the end offsets found at start; decodes each value as a single-object-
encoded Avro `EventRecord` (schemas/avro/README.md: marker C3 01, the writer
schema's fingerprint, then the record) with the writer schema the fingerprint
names; folds the shopping cart's events (protobuf ItemAdded / ItemRemoved of
schemas/proto/shoppingcart/persistence/domain.proto) per cart, in seq order;
and prints the read model as JSON: {cart id: {product id: quantity}}.

    python consumer.py --bootstrap 127.0.0.1:9092 --topic statehouse.shopping-cart.journal

Records are taken as compaction will leave them: the latest record of each key
(`<persistence_id>|<entity_id>#<seq>`) wins, and a tombstone (null value) removes
its key — that is how `statehouse admin erase` erases an entity, which may then
start again from seq 1. Other records that are not events (the writers' settle
markers) are skipped; an event whose seq is not the cart's next one is a hard
error (the journal guarantees contiguous seqs from 1).
"""

import argparse
import io
import json
import os
import struct
import sys

import fastavro
from confluent_kafka import Consumer, TopicPartition

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SCHEMAS = os.path.join(HERE, "..", "..", "schemas", "avro")

# Writer-schema fingerprints of EventRecord versions (schemas/avro/README.md).
EVENT_RECORD_SCHEMAS = {
    0x814B49C175059580: "event_record.avsc",
    0x2599D1CA188D650F: os.path.join("history", "event_record.v1.avsc"),
}
MARKER = b"\xc3\x01"
PERSISTENCE_ID = "shopping-cart"
ITEM_ADDED = "type.googleapis.com/com.example.shoppingcart.persistence.ItemAdded"
ITEM_REMOVED = "type.googleapis.com/com.example.shoppingcart.persistence.ItemRemoved"


def load_schemas(directory):
    with open(os.path.join(directory, "event_record.avsc")) as f:
        reader = fastavro.parse_schema(json.load(f))
    writers = {}
    for fingerprint, name in EVENT_RECORD_SCHEMAS.items():
        with open(os.path.join(directory, name)) as f:
            writers[fingerprint] = fastavro.parse_schema(json.load(f))
    return writers, reader


def decode_event(value, writers, reader):
    if value[:2] != MARKER:
        raise ValueError("not a single-object-encoded Avro record")
    (fingerprint,) = struct.unpack("<Q", value[2:10])
    writer = writers.get(fingerprint)
    if writer is None:
        raise ValueError(f"unknown writer schema fingerprint {fingerprint:#018x}")
    return fastavro.schemaless_reader(io.BytesIO(value[10:]), writer, reader)


# --- protobuf wire format, enough for the cart's two events --------------------------------


def varint(data, i):
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def fields(data):
    """(field number, value) pairs: ints for varints, bytes for length-delimited."""
    i = 0
    while i < len(data):
        tag, i = varint(data, i)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = varint(data, i)
        elif wire == 2:
            n, i = varint(data, i)
            value, i = data[i : i + n], i + n
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, value


def int32(value):
    return value - (1 << 64) if value >= 1 << 63 else value


def item_added(payload):
    """ItemAdded{item: LineItem{productId=1, name=2, quantity=3}} -> (product id, quantity)."""
    product, quantity = "", 0
    for number, value in fields(payload):
        if number == 1:
            for n, v in fields(value):
                if n == 1:
                    product = v.decode()
                elif n == 3:
                    quantity = int32(v)
    return product, quantity


def item_removed(payload):
    """ItemRemoved{productId=1} -> product id."""
    for number, value in fields(payload):
        if number == 1:
            return value.decode()
    return ""


# --- the fold ------------------------------------------------------------------------------


class Carts:
    def __init__(self):
        self.items = {}  # cart -> {product: quantity}, in insertion order
        self.seq = {}  # cart -> last seq applied

    def apply(self, event):
        cart = event["entity_id"]
        expected = self.seq.get(cart, 0) + 1
        if event["seq"] != expected:
            raise ValueError(f"cart {cart}: seq {event['seq']} where {expected} was next")
        self.seq[cart] = event["seq"]
        items = self.items.setdefault(cart, {})
        if event["type_url"] == ITEM_ADDED:
            product, quantity = item_added(event["payload"])
            items[product] = items.get(product, 0) + quantity
        elif event["type_url"] == ITEM_REMOVED:
            items.pop(item_removed(event["payload"]), None)
        else:
            raise ValueError(f"cart {cart}: unknown event type {event['type_url']}")


def read_journal(bootstrap, topic, schemas_dir, timeout_s):
    writers, reader = load_schemas(schemas_dir)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "statehouse-journal-consumer-sample",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    metadata = consumer.list_topics(topic, timeout=timeout_s)
    if topic not in metadata.topics or metadata.topics[topic].error is not None:
        raise SystemExit(f"topic {topic} not found at {bootstrap}")
    partitions = sorted(metadata.topics[topic].partitions)
    # The end of each partition now: for read_committed, the last stable offset.
    ends = {}
    for p in partitions:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
        ends[p] = high
    pending = {p for p in partitions if ends[p] > 0}
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    latest = {}  # journal key -> event, in offset order per partition
    while pending:
        message = consumer.poll(timeout_s)
        if message is None:
            raise SystemExit(f"no record within {timeout_s}s; partitions still to read: {sorted(pending)}")
        if message.error():
            if message.error().code() == -191:  # _PARTITION_EOF
                pending.discard(message.partition())
                continue
            raise SystemExit(f"consuming {topic}: {message.error()}")
        if message.offset() + 1 >= ends[message.partition()]:
            pending.discard(message.partition())
        value = message.value()
        if value is None:
            latest.pop(message.key(), None)  # a tombstone: an erased event
            continue
        if not value.startswith(MARKER):
            continue  # a writer's settle marker
        event = decode_event(value, writers, reader)
        if event["persistence_id"] == PERSISTENCE_ID:
            latest[message.key()] = event
    consumer.close()
    return list(latest.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", required=True, help="the journal topic, <prefix><service>.journal")
    parser.add_argument("--schemas", default=DEFAULT_SCHEMAS, help="the directory of the .avsc files")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    events = read_journal(args.bootstrap, args.topic, args.schemas, args.timeout)
    # An entity's events are in one partition, in seq order; sorting makes that explicit.
    events.sort(key=lambda e: (e["entity_id"], e["seq"]))
    carts = Carts()
    for event in events:
        carts.apply(event)
    json.dump(carts.items, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
