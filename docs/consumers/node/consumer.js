#!/usr/bin/env node
// A downstream consumer of xapi-stream's Redis streams (ioredis): a consumer group on one
// organization's streams or on the firehose, one JSON line per entry on stdout, XACK after the
// line is written, XAUTOCLAIM of entries another consumer left pending longer than
// --claim-idle-ms. Delivery is at least once: make the sink idempotent on (stream, id). An entry
// without `org` (entry schema 2 leaves it out of an organization's own streams) gets it from
// the stream's key, so every line names its organization.
//
//   node consumer.js --redis redis://127.0.0.1:6379 --prefix xapi --firehose --shards 16 \
//       --group analytics --consumer c1
//   node consumer.js --org <orgId> ...
//   node consumer.js --cluster --redis redis://node:7000 ...   (one stream per read: slots)
//   REDIS_PASSWORD=<password> node consumer.js --user <user> --org <orgId> ...
//       (the consumer credentials of one organization: POST /admin/tenants/<id>/consumers)
"use strict";
const Redis = require("ioredis");

function options(argv) {
  const o = {
    redis: "redis://127.0.0.1:6379", prefix: "xapi", shards: 16, group: "analytics",
    consumer: "c1", start: "0", count: 200, claimIdleMs: 30000, exitWhenIdleMs: 0,
    firehose: false, cluster: false, org: null, user: null,
    password: process.env.REDIS_PASSWORD || null,
  };
  const names = { "--claim-idle-ms": "claimIdleMs", "--exit-when-idle-ms": "exitWhenIdleMs" };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--firehose") o.firehose = true;
    else if (a === "--cluster") o.cluster = true;
    else if (a.startsWith("--")) {
      const key = names[a] || a.slice(2);
      if (!(key in o)) throw new Error(`unknown option ${a}`);
      const v = argv[++i];
      o[key] = typeof o[key] === "number" ? Number(v) : v;
    }
  }
  return o;
}

function streams(o) {
  if (o.firehose) {
    const out = [];
    for (let n = 0; n < o.shards; n++) {
      out.push(`${o.prefix}:{all-${n}}:status`, `${o.prefix}:{all-${n}}:events`);
    }
    return out;
  }
  if (o.org) return [`${o.prefix}:{${o.org}}:status`, `${o.prefix}:{${o.org}}:events`];
  throw new Error("give --firehose or --org");
}

function fields(flat) {
  const f = {};
  for (let i = 0; i < flat.length; i += 2) f[flat[i]] = flat[i + 1];
  return f;
}

// Entry schema 2: an organization's own streams leave `org` out (the key names it, between the
// braces: <p>:{<org>}:status); put it back in front, as firehose entries carry it, so every
// printed entry has it. Firehose entries and schema 1 entries carry it already.
function withOrg(stream, f) {
  if ("org" in f) return f;
  const open = stream.indexOf("{");
  const tag = stream.slice(open + 1, stream.indexOf("}", open));
  return tag.startsWith("all-") ? f : { org: tag, ...f }; // a shard's tag is no organization
}

async function main() {
  const o = options(process.argv);
  // A consumer credential may not run INFO: no ready check (ioredis would warn and skip it).
  const auth = o.user ? { username: o.user, password: o.password, enableReadyCheck: false }
    : o.password ? { password: o.password } : {};
  const r = o.cluster ? new Redis.Cluster([o.redis], { redisOptions: auth })
    : new Redis(o.redis, auth);
  const names = streams(o);
  for (const s of names) {
    try {
      await r.xgroup("CREATE", s, o.group, o.start, "MKSTREAM");
    } catch (e) {
      if (!String(e.message).includes("BUSYGROUP")) throw e;
    }
  }
  let stop = false;
  process.on("SIGTERM", () => { stop = true; });
  const emit = async (stream, entries) => {
    const ids = [];
    for (const [id, flat] of entries) {
      if (!flat) continue; // deleted (trimmed) while pending
      const f = withOrg(stream, fields(flat));
      process.stdout.write(JSON.stringify({ stream, id, fields: f }) + "\n");
      ids.push(id);
    }
    if (ids.length) await r.xack(stream, o.group, ...ids);
    return ids.length;
  };
  const cursors = Object.fromEntries(names.map((s) => [s, "0-0"]));
  const groups = o.cluster ? names.map((s) => [s]) : [names];
  let lastEntry = Date.now(), lastClaim = 0;
  while (!stop) {
    let got = 0;
    if (Date.now() - lastClaim >= o.claimIdleMs / 4) {
      lastClaim = Date.now();
      for (const s of names) {
        const [cursor, claimed] = await r.xautoclaim(s, o.group, o.consumer, o.claimIdleMs,
          cursors[s], "COUNT", o.count);
        cursors[s] = cursor;
        got += await emit(s, claimed);
      }
    }
    for (const g of groups) {
      const block = groups.length === 1 ? ["BLOCK", 200] : [];
      const reply = await r.xreadgroup("GROUP", o.group, o.consumer, "COUNT", o.count, ...block,
        "STREAMS", ...g, ...g.map(() => ">"));
      for (const [stream, entries] of reply || []) got += await emit(stream, entries);
    }
    if (got) lastEntry = Date.now();
    else if (o.exitWhenIdleMs && Date.now() - lastEntry > o.exitWhenIdleMs) break;
    else if (groups.length > 1) await new Promise((res) => setTimeout(res, 50));
  }
  r.disconnect();
}

main().catch((e) => { console.error(`error: ${e.message}`); process.exit(1); });
