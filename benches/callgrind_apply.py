#!/usr/bin/env python3
"""Counts Redis's instructions per message of apply.lua under valgrind's callgrind.

Instruction counts repeat run after run, where this shared machine's seconds move by a third,
so a change of a few % to the script shows here and not in `xapi-bench`. It starts
`redis-server` under callgrind, feeds it the calls the writer makes for the bench's bodies (one
organization; 16 status messages of 2 updated + 1 removed key per call, 4 calls per pipeline,
4,000 devices each rotating through 8 keys, the dedupe set's expiry already set), warms up,
zeroes the counters, applies `--messages` more and prints Redis's instructions per message.
With `--orgs N` the messages spread over N organizations, as the engine's calls do when many
tenants share a group commit: message n is organization n % N's, and a call passes each
organization's messages with its keys once (one message each when N ≥ 16). The devices stay
4,000 in all (4,000 / N per organization), so the data set is the same size.

    python3 benches/callgrind_apply.py [--messages 3200] [--orgs 1] [--script actors/src/store/writer/apply.lua]

Needs valgrind and redis-server (Debian's packages); nothing else.
"""
import argparse
import glob
import os
import subprocess
import sys
import time

from redis_wire import resp, start_redis

PER_CALL, CALLS_PER_PIPELINE, DEVICES = 16, 4, 4000
KEYS = [
    "RoomAnalytics.PeopleCount.Current",
    "RoomAnalytics.PeoplePresence",
    "Audio.Volume",
    "Standby.State",
    "Conference.Presentation.Mode",
    "RoomAnalytics.AmbientNoise.Level.A",
    "SystemUnit.State.NumberOfActiveCalls",
    "Video.Output.Monitor.Count",
]
VALUES = ['3', '"Yes"', '45', '"Off"', '"Receiving"', '31', '1', '2']
ORG = "0b8b3d8a-6f0a-4a1e-9c2b-5d6e7f8a9b0c"
PREFIX = "xapi"


ORGS = 1


def org_of(n):
    """The organization of the n-th message."""
    return ORG if ORGS == 1 else "%s-%05d" % (ORG, n % ORGS)


def message_args(n, now_ms):
    """KEYS and ARGV of the n-th message (device n % DEVICES, its (n // DEVICES)-th message)."""
    device, j = n % DEVICES, n // DEVICES
    dev = "Y2lzY29zcGFyazovL3VybjpURUFNOnVzLXdlc3QtMl9yL0RFVklDRS8%08d" % device
    org = org_of(n)
    keys = [
        "%s:{%s}:state:%s" % (PREFIX, org, dev),
        "%s:{%s}:stamps:%s" % (PREFIX, org, dev),
        "%s:{%s}:seen:%d" % (PREFIX, org, now_ms // 300000),
    ]
    ms = now_ms + n
    updated = [(KEYS[(j + i) % 8], VALUES[(j + i + n) % 8]) for i in (0, 1)]
    removed = [KEYS[(j - 1) % 8]]
    argv = ["status", "Y2lzY29zcGFyazovL3VybjpURUFNOnVzLXdlc3QtMl9yL1dPUktTUEFDRS8x", dev,
            time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ms / 1000)), "webhook",
            "0x%x" % ms,
            os.urandom(16), "-%d" % (ms // 1000 + 2100), "0", "%x" % len(updated)]
    for k, v in updated:
        argv += [k, v]
    argv += ["%x" % len(removed)] + removed
    return keys, argv


def pipeline(conn, sha, start, now_ms):
    """One pipeline of CALLS_PER_PIPELINE calls of PER_CALL messages from message `start`."""
    out = []
    for c in range(CALLS_PER_PIPELINE):
        keys, argv = [], ["100000", "0", "0", "0", "1", "0", "00"]
        # The call's messages grouped by organization, in order of first appearance.
        first = start + c * PER_CALL
        groups = {}
        for n in range(first, first + PER_CALL):
            groups.setdefault(org_of(n), []).append(n)
        for org, ns in groups.items():
            keys += ["%s:{%s}:status" % (PREFIX, org), "%s:{%s}:events" % (PREFIX, org)]
            argv += ["%x" % len(ns)]  # no org: the firehose is off
            for n in ns:
                k, a = message_args(n, now_ms)
                keys += k
                argv += a
        out.append(resp("EVALSHA", sha, str(len(keys)), *keys, *argv))
    conn.s.sendall(b"".join(out))
    for _ in range(CALLS_PER_PIPELINE):
        conn.reply()
    return CALLS_PER_PIPELINE * PER_CALL


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=3200)
    ap.add_argument("--warmup", type=int, default=2 * DEVICES)
    ap.add_argument("--orgs", type=int, default=1)
    ap.add_argument("--script", default=os.path.join(os.path.dirname(__file__), "..",
                                                      "actors/src/store/writer/apply.lua"))
    opts = ap.parse_args()
    global ORGS
    ORGS = opts.orgs
    redis, conn, work, _ = start_redis(
        "callgrind-apply-",
        ["valgrind", "--tool=callgrind", "--callgrind-out-file={work}/callgrind.out"], 60)
    out = os.path.join(work, "callgrind.out")
    try:
        sha = conn.call("SCRIPT", "LOAD", open(opts.script).read()).decode()
        now_ms = int(time.time() * 1000)
        n, batch = 0, CALLS_PER_PIPELINE * PER_CALL
        print("warming up: %d messages" % opts.warmup, flush=True)
        while n < opts.warmup:
            n += pipeline(conn, sha, n, now_ms)
        subprocess.run(["callgrind_control", "-z", str(redis.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        measured = 0
        print("measuring: %d messages" % opts.messages, flush=True)
        while measured < opts.messages:
            measured += pipeline(conn, sha, n + measured, now_ms)
        subprocess.run(["callgrind_control", "-d", str(redis.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        entries = sum(int(conn.call("XLEN", "%s:{%s}:status" % (PREFIX, org_of(i))))
                      for i in range(ORGS))
        dumps = sorted(glob.glob(out + "*"), key=os.path.getmtime)
        total = None
        for line in open(dumps[-1]):
            if line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
        if total is None:
            sys.exit("no instruction count in " + dumps[-1])
        print("%s: %d instructions per message (%d messages measured, batch %d, %d "
              "organization(s); %d status entries in all)" % (
                  os.path.basename(opts.script), total // measured, measured, batch, ORGS,
                  entries))
    finally:
        redis.terminate()
        redis.wait()


if __name__ == "__main__":
    main()
