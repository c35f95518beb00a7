#!/usr/bin/env python3
"""What a status entry costs Redis, per layout: entry schema 1, schema 2 and a firehose entry.

Writes `--entries` status entries with ids of Webex's real length (organization 87, workspace
78, device 79 characters: unpadded base64 of `ciscospark://us/<KIND>/<uuid>`) into one stream
per layout of a private `redis-server`, with the mix the engine writes for devices whose state
is known or not (sets with and without a previous value, removals), and prints
`MEMORY USAGE <stream> SAMPLES 0` (every node counted) over the entries. Redis keeps a stream
entry's field names once per stream node when it has exactly the node's first entry's fields:
schema 2's fixed fields in a fixed order let every entry do so.

    python3 benches/entry_bytes.py [--entries 30000]

Needs redis-server (Debian's package); nothing else. `xapi-bench` prints the same figure for the
entries the engine wrote in its run.
"""
import argparse
import base64
import random
import time
import uuid

from redis_wire import start_redis

KEYS = ["RoomAnalytics.PeopleCount.Current", "Audio.Volume", "Standby.State",
        "RoomAnalytics.PeoplePresence", "Conference.Presentation.Mode"]
VALUES = ['3', '"Yes"', '45', '"Off"', '"Receiving"', '31', '1', '"Standby"']


def webex_id(kind):
    raw = "ciscospark://us/%s/%s" % (kind, uuid.uuid4())
    return base64.b64encode(raw.encode()).decode().rstrip("=")


def entries(n, rng):
    """(op, value, prev) per entry: 60 % sets with a previous value, 20 % sets of a key whose
    previous value is unknown (a device's first message), 20 % removals."""
    org, app = webex_id("ORGANIZATION"), webex_id("APPLICATION")
    devices = [(webex_id("PLACE"), webex_id("DEVICE")) for _ in range(200)]
    ts0 = int(time.time() * 1000)
    for i in range(n):
        ws, dev = devices[i % len(devices)]
        r = rng.random()
        op, value, prev = ("remove", None, rng.choice(VALUES)) if r < 0.2 else \
            ("set", rng.choice(VALUES), None if r < 0.4 else rng.choice(VALUES))
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((ts0 + i) / 1000)) + \
            ".%03dZ" % ((ts0 + i) % 1000)
        yield org, app, ws, dev, KEYS[i % len(KEYS)], op, value, prev, ts


def schema1(org, app, ws, dev, key, op, value, prev, ts):
    f = ["org", org, "workspace", ws, "device", dev, "key", key, "op", op]
    if value is not None:
        f += ["value", value]
    if prev is not None:
        f += ["prev", prev]
    return f + ["ts", ts, "full_sync", "0", "source", "webhook", "app", app, "schema", "1"]


def schema2(org, app, ws, dev, key, op, value, prev, ts):
    return ["workspace", ws, "device", dev, "key", key, "op", op, "value", value or "",
            "prev", prev or "", "ts", ts, "full_sync", "0", "source", "webhook", "schema", "2"]


def firehose(org, *rest):
    return ["org", org] + schema2(org, *rest)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=30000)
    opts = ap.parse_args()
    redis, conn, _, _ = start_redis("entry-bytes-")
    try:
        version = [l for l in conn.pipeline([["INFO", "server"]])[0].decode().splitlines()
                   if l.startswith("redis_version:")][0].split(":")[1]
        sample = list(entries(opts.entries, random.Random(1)))
        print("%d status entries, ids of Webex's length (org %d, workspace %d, device %d "
              "characters), Redis %s:" % (len(sample), len(sample[0][0]), len(sample[0][2]),
                                          len(sample[0][3]), version))
        print("| entry layout | bytes per entry |")
        print("| --- | --- |")
        for name, layout in [("schema 1 (fields vary; org and app in every entry)", schema1),
                             ("schema 2, an organization's stream", schema2),
                             ("schema 2, a firehose shard (org first)", firehose)]:
            key = "bytes:" + layout.__name__
            for i in range(0, len(sample), 1000):
                conn.pipeline([["XADD", key, "*"] + layout(*e) for e in sample[i:i + 1000]])
            length, used = conn.pipeline([["XLEN", key], ["MEMORY", "USAGE", key, "SAMPLES", "0"]])
            print("| %s | %.0f |" % (name, int(used) / int(length)))
    finally:
        redis.terminate()
        redis.wait()


if __name__ == "__main__":
    main()
