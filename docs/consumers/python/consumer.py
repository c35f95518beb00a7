#!/usr/bin/env python3
"""A downstream consumer of xapi-stream's Redis streams (redis-py).

Reads one organization's streams or the fleet-wide firehose with a consumer group, writes each
entry to a sink, then acknowledges it (XACK). Entries another consumer of the group read and
never acknowledged (it crashed) are taken over with XAUTOCLAIM once idle for --claim-idle-ms.
An entry without `org` (entry schema 2 leaves it out of an organization's own streams) gets it
from the stream's key before it is written, so every row of the sink names its organization.

Delivery is at least once: a consumer killed after writing an entry and before its XACK leaves
the entry pending, and the consumer that claims it writes it again. The sink here is idempotent
(SQLite keyed by stream and entry id, a repeat only counts a delivery), which makes the effect
exactly once; do the same in a warehouse (MERGE on stream + id).

    python3 consumer.py --redis redis://127.0.0.1:6379 --prefix xapi --firehose --shards 16 \\
        --group analytics --consumer c1 --sink c1.sqlite
    python3 consumer.py --org <orgId> ...                  # one organization
    python3 consumer.py --cluster --redis redis://node:7000 ...   # Redis Cluster
    REDIS_PASSWORD=<password> python3 consumer.py --user <user> --org <orgId> ...
        # with the consumer credentials of one organization (POST /admin/tenants/<id>/consumers)

On Redis Cluster every firehose shard is in its own slot, so each XREADGROUP names one stream;
on a single Redis all streams are read with one command.
"""
import argparse
import json
import os
import signal
import sqlite3
import sys
import time

import redis

SCHEMA = """CREATE TABLE IF NOT EXISTS entries (
    stream TEXT NOT NULL, id TEXT NOT NULL, fields TEXT NOT NULL, consumer TEXT NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (stream, id))"""


def streams_to_read(args):
    if args.firehose:
        return [f"{args.prefix}:{{all-{n}}}:{kind}"
                for n in range(args.shards) for kind in ("status", "events")]
    if args.org:
        return [f"{args.prefix}:{{{args.org}}}:status", f"{args.prefix}:{{{args.org}}}:events"]
    sys.exit("give --firehose or --org")


def ensure_group(r, stream, group, start):
    try:
        r.xgroup_create(stream, group, id=start, mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


def decode(fields):
    return {k.decode(): v.decode() for k, v in fields.items()}


def with_org(stream, fields):
    """Entry schema 2: an organization's own streams leave `org` out (the key names it, between
    the braces: <p>:{<org>}:status); add it back so the sink has it for every entry. Firehose
    entries and schema 1 entries carry it already."""
    if "org" not in fields:
        start = stream.index("{") + 1
        tag = stream[start:stream.index("}", start)]
        if not tag.startswith("all-"):  # a firehose shard's tag is not an organization
            fields["org"] = tag
    return fields


class Sink:
    """Idempotent: an entry seen again (claimed after a crash) only counts a delivery."""

    def __init__(self, path, consumer):
        self.db = sqlite3.connect(path, timeout=30)
        self.db.execute(SCHEMA)
        self.consumer = consumer

    def write(self, stream, entries):
        rows = [(stream, i.decode(), json.dumps(with_org(stream, decode(f)), sort_keys=True),
                 self.consumer)
                for i, f in entries if f is not None]
        with self.db:  # one transaction: committed before the XACK
            self.db.executemany(
                "INSERT INTO entries (stream, id, fields, consumer) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (stream, id) DO UPDATE SET deliveries = deliveries + 1", rows)
        return len(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--redis", default="redis://127.0.0.1:6379")
    p.add_argument("--user", help="Redis ACL user (a consumer credential: reads one --org)")
    p.add_argument("--password", default=os.environ.get("REDIS_PASSWORD"),
                   help="its password (default: $REDIS_PASSWORD, which keeps it out of ps)")
    p.add_argument("--cluster", action="store_true", help="talk to a Redis Cluster")
    p.add_argument("--prefix", default="xapi", help="redis.key_prefix of the engine")
    p.add_argument("--firehose", action="store_true", help="read <p>:{all-<n>}:status|events")
    p.add_argument("--shards", type=int, default=16, help="streams.shards of the engine")
    p.add_argument("--org", help="read one organization's streams")
    p.add_argument("--group", default="analytics")
    p.add_argument("--consumer", default="c1")
    p.add_argument("--start", default="0", help="where a new group starts: 0 (all) or $ (new)")
    p.add_argument("--sink", default="entries.sqlite")
    p.add_argument("--count", type=int, default=200, help="entries per read")
    p.add_argument("--claim-idle-ms", type=int, default=30000)
    p.add_argument("--exit-when-idle-ms", type=int, default=0,
                   help="stop after this long without an entry (0 = run until SIGTERM)")
    p.add_argument("--crash-after-reads", type=int, default=0,
                   help="for tests: die (no cleanup) right after the Nth read, leaving what it "
                        "read pending")
    args = p.parse_args()

    auth = {}
    if args.user:
        auth["username"] = args.user
    if args.password:
        auth["password"] = args.password
    r = (redis.RedisCluster.from_url(args.redis, **auth) if args.cluster
         else redis.Redis.from_url(args.redis, **auth))
    streams = streams_to_read(args)
    for s in streams:
        ensure_group(r, s, args.group, args.start)
    sink = Sink(args.sink, args.consumer)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    claim_cursor = {s: "0-0" for s in streams}
    last_entry, last_claim, total, reads = time.monotonic(), 0.0, 0, 0
    print(f"{args.consumer}: reading {len(streams)} streams as group {args.group}", flush=True)
    while not stop:
        got = 0
        now = time.monotonic()
        if now - last_claim >= args.claim_idle_ms / 4000:
            last_claim = now
            for s in streams:
                # XAUTOCLAIM: entries pending on any consumer for longer than claim-idle-ms.
                cursor, claimed, *_ = r.xautoclaim(s, args.group, args.consumer,
                                                   args.claim_idle_ms, claim_cursor[s],
                                                   count=args.count)
                claim_cursor[s] = cursor
                if claimed:
                    n = sink.write(s, claimed)
                    r.xack(s, args.group, *[i for i, _ in claimed])
                    print(f"{args.consumer}: claimed {n} from {s}", flush=True)
                    got += n
        groups = [streams] if not args.cluster else [[s] for s in streams]
        for names in groups:
            block = 200 if len(groups) == 1 else None
            reply = r.xreadgroup(args.group, args.consumer, {s: ">" for s in names},
                                 count=args.count, block=block)
            if reply and args.crash_after_reads:
                reads += 1
                if reads >= args.crash_after_reads:
                    print(f"{args.consumer}: crashing with entries pending", flush=True)
                    os._exit(137)
            for stream, entries in reply or []:
                stream = stream.decode() if isinstance(stream, bytes) else stream
                n = sink.write(stream, entries)
                r.xack(stream, args.group, *[i for i, _ in entries])
                got += n
        total += got
        if got:
            last_entry = time.monotonic()
        elif args.exit_when_idle_ms and (time.monotonic() - last_entry) * 1000 > args.exit_when_idle_ms:
            break
        elif len(groups) > 1:
            time.sleep(0.05)
    print(f"{args.consumer}: done, {total} entries", flush=True)


if __name__ == "__main__":
    main()
