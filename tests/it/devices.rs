//! The device API against the simulator's public API and a real Redis: inventory sync (paging,
//! rename, removal), the command stream with its results, local refusals outside the granted
//! xapiAccess, rate limits (429 + Retry-After), retries of 5xx and none of 4xx, and the admin
//! HTTP routes.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::{Value, json};
use xapi_stream::devkit::devenv::ADMIN_TOKEN;
use xapi_stream::devkit::redis_server::RedisServer;
use xapi_stream::devkit::sim::{Sim, SimConfig};

use crate::utils::*;

/// Every entry of a stream as (id, field map).
fn entries(redis: &RedisServer, key: &str) -> Vec<(String, HashMap<String, String>)> {
    let mut conn = redis.client().get_connection().unwrap();
    let reply: redis::streams::StreamRangeReply = conn.xrange_all(key).unwrap();
    reply
        .ids
        .into_iter()
        .map(|e| {
            let fields = e
                .map
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        redis::from_redis_value::<String>(v.clone()).unwrap(),
                    )
                })
                .collect();
            (e.id, fields)
        })
        .collect()
}

fn hlen(redis: &RedisServer, key: &str) -> usize {
    let mut conn = redis.client().get_connection().unwrap();
    conn.hlen(key).unwrap()
}

fn hget(redis: &RedisServer, key: &str, field: &str) -> Option<Value> {
    let mut conn = redis.client().get_connection().unwrap();
    let v: Option<String> = conn.hget(key, field).unwrap();
    v.map(|s| serde_json::from_str(&s).unwrap())
}

/// Writes a request to org's command stream.
fn xadd(redis: &RedisServer, key: &str, fields: &[(&str, &str)]) {
    let mut conn = redis.client().get_connection().unwrap();
    let _: String = conn.xadd(key, "*", fields).unwrap();
}

/// The result entries of `results_key` by request id, waiting until `n` exist.
async fn results(
    redis: &RedisServer,
    key: &str,
    n: usize,
    limit: Duration,
) -> Vec<HashMap<String, String>> {
    let ok = eventually(limit, || async { entries(redis, key).len() >= n }).await;
    let all: Vec<HashMap<String, String>> =
        entries(redis, key).into_iter().map(|(_, f)| f).collect();
    assert!(ok, "only {} of {n} results in {key}: {all:?}", all.len());
    all
}

fn by_id<'a>(all: &'a [HashMap<String, String>], id: &str) -> &'a HashMap<String, String> {
    all.iter()
        .find(|r| r.get("id").map(String::as_str) == Some(id))
        .unwrap_or_else(|| panic!("no result for {id}: {all:?}"))
}

/// A device id made safe for a URL path segment (Webex ids are base64 and may hold '/').
fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn admin(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut rb = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn assert_contract_error(body: &Value) {
    let t = body["trackingId"].as_str().unwrap_or_default();
    assert!(
        t.len() == 32
            && t.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{body}"
    );
    assert!(
        body["description"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
}

/// Waits until the first inventory sync of org `i` landed.
async fn inventory_ready(redis: &RedisServer, prefix: &str, sim: &Sim, i: usize) {
    let org = sim.org(i).org_id;
    let n = sim.config().devices_per_org;
    assert!(
        eventually(Duration::from_secs(20), || async {
            hlen(redis, &format!("{prefix}:{{{org}}}:devices")) == n
                && hlen(redis, &format!("{prefix}:{{{org}}}:workspaces")) == n
        })
        .await,
        "inventory of org {i} did not land"
    );
}

/// One organization with `devices` devices, activated on a fresh engine (with `extra`
/// settings) whose first inventory sync has landed: (sim, engine, prefix, tenant id).
async fn one_org(
    devices: usize,
    extra: &[(&str, &str)],
) -> (Sim, xapi_stream::engine::RunningEngine, String, String) {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig {
        orgs: 1,
        devices_per_org: devices,
        ..Default::default()
    })
    .await;
    let engine = start_engine(&sim, &redis.url(), &prefix, extra).await;
    let tenant = activate_org(&sim, &engine.base_url(), 0).await;
    inventory_ready(redis, &prefix, &sim, 0).await;
    (sim, engine, prefix, tenant)
}

#[actix_web::test]
async fn inventory_of_three_tenants_lands_and_follows_rename_and_removal() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig {
        orgs: 3,
        devices_per_org: 200,
        ..Default::default()
    })
    .await;
    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[("DEVICES__INVENTORY_INTERVAL_SECS", "1.5")],
    )
    .await;
    let base = engine.base_url();
    let mut tenants = Vec::new();
    for i in 0..3 {
        tenants.push(activate_org(&sim, &base, i).await);
    }
    for i in 0..3 {
        inventory_ready(redis, &prefix, &sim, i).await;
    }
    // Every device as the simulator lists it, reduced to the join fields.
    let org0 = sim.org(0);
    let d3 = &org0.devices[3];
    let stored = hget(
        redis,
        &format!("{prefix}:{{{}}}:devices", org0.org_id),
        &d3.device_id,
    )
    .unwrap();
    assert_eq!(stored["display_name"], d3.name);
    assert_eq!(stored["workspace_id"], d3.workspace_id);
    assert_eq!(stored["product"], d3.product);
    assert_eq!(stored["connection_status"], "connected");
    assert_eq!(stored["tags"], json!(["sim"]));
    assert!(stored.get("lastSeen").is_none() && stored.get("last_seen").is_none());
    let ws = hget(
        redis,
        &format!("{prefix}:{{{}}}:workspaces", org0.org_id),
        &d3.workspace_id,
    )
    .unwrap();
    assert_eq!(ws["display_name"], "Workspace 004");
    // 200 items at the simulator's 100 per page: the second page was followed.
    let calls = sim.api_calls(0);
    assert!(
        calls
            .iter()
            .any(|c| c.path == "/v1/devices" && c.query.contains("start=100")),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.path == "/v1/workspaces" && c.query.contains("start=100"))
    );

    // A second periodic sync of unchanged data writes no change entries.
    let first_pages = |c: &Vec<xapi_stream::devkit::sim::ApiCall>| {
        c.iter()
            .filter(|c| c.path == "/v1/devices" && !c.query.contains("start="))
            .count()
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            // Syncs run one after another: a third one started means the second was applied.
            first_pages(&sim.api_calls(0)) >= 3
        })
        .await,
        "no periodic sync"
    );
    let inv0 = format!("{prefix}:{{{}}}:inventory", org0.org_id);
    let e0 = entries(redis, &inv0);
    assert_eq!(
        e0.len(),
        400,
        "200 devices + 200 workspaces added, nothing more"
    );
    assert!(e0.iter().all(|(_, f)| f["op"] == "add"));

    // Rename one device and remove another of org 1: the next periodic sync follows.
    let org1 = sim.org(1);
    let renamed = &org1.devices[5];
    let removed = &org1.devices[7];
    sim.rename_device(1, 5, "Boardroom");
    sim.remove_device(1, 7);
    let devices1 = format!("{prefix}:{{{}}}:devices", org1.org_id);
    assert!(
        eventually(Duration::from_secs(10), || async {
            hget(redis, &devices1, &renamed.device_id)
                .is_some_and(|d| d["display_name"] == "Boardroom")
                && hget(redis, &devices1, &removed.device_id).is_none()
        })
        .await,
        "rename/removal not followed"
    );
    assert_eq!(hlen(redis, &devices1), 199);
    let inv1 = entries(redis, &format!("{prefix}:{{{}}}:inventory", org1.org_id));
    let changes: Vec<&HashMap<String, String>> = inv1
        .iter()
        .map(|(_, f)| f)
        .filter(|f| f["op"] != "add")
        .collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    let upd = changes.iter().find(|f| f["op"] == "update").unwrap();
    assert_eq!(upd["id"], renamed.device_id);
    assert_eq!(upd["kind"], "device");
    let prev: Value = serde_json::from_str(&upd["prev"]).unwrap();
    let value: Value = serde_json::from_str(&upd["value"]).unwrap();
    assert_eq!(
        (
            prev["display_name"].as_str(),
            value["display_name"].as_str()
        ),
        (Some(renamed.name.as_str()), Some("Boardroom"))
    );
    let rem = changes.iter().find(|f| f["op"] == "remove").unwrap();
    assert_eq!(rem["id"], removed.device_id);
    assert!(!rem.contains_key("value") && rem.contains_key("prev"));

    // On demand: a sync now, with its report; nothing changed since.
    let (status, report) = admin(
        reqwest::Method::POST,
        format!("{base}/admin/tenants/{}/inventory/sync", tenants[1]),
        None,
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["devices"],
        json!({"total": 199, "added": 0, "updated": 0, "removed": 0})
    );
    assert_eq!(report["workspaces"]["total"], 200);
    let (status, list) = admin(
        reqwest::Method::GET,
        format!("{base}/admin/tenants/{}/devices", tenants[1]),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 199);
    assert_eq!(
        list[0]["display_name"], "Boardroom",
        "sorted by display name"
    );
    let text = scrape(
        &base,
        "xapi_stream_inventory_changes_total{kind=\"device\",op=\"update\"}",
    )
    .await;
    assert_eq!(text, 1.0);
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn a_device_removed_while_the_listing_pages_removes_only_that_device() {
    let redis = shared_redis();
    let sim = start_sim(SimConfig {
        orgs: 1,
        devices_per_org: 200,
        ..Default::default()
    })
    .await;
    let prefix = unique_prefix();
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let base = engine.base_url();
    let tenant = activate_org(&sim, &base, 0).await;
    inventory_ready(redis, &prefix, &sim, 0).await;
    // Device 7 goes away between page 1 (0–99, which had it) and page 2 (from 100): device 100
    // moves to offset 99, which page 2 no longer covers. Device 100 must not be taken for
    // removed; device 7 goes with the next sync (it was in this sync's first listing).
    sim.remove_device_before_page(0, 100, 7);
    let org = sim.org(0);
    let devices = format!("{prefix}:{{{}}}:devices", org.org_id);
    let sync = || async {
        let (status, report) = admin(
            reqwest::Method::POST,
            format!("{base}/admin/tenants/{tenant}/inventory/sync"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{report}");
        report
    };
    let report = sync().await;
    assert_eq!(report["devices"]["removed"], 0, "{report}");
    assert!(hget(redis, &devices, &org.devices[100].device_id).is_some());
    let report = sync().await;
    assert_eq!(report["devices"]["removed"], 1, "{report}");
    assert_eq!(hlen(redis, &devices), 199);
    assert!(hget(redis, &devices, &org.devices[7].device_id).is_none());
    assert!(hget(redis, &devices, &org.devices[100].device_id).is_some());
    let inv = entries(redis, &format!("{prefix}:{{{}}}:inventory", org.org_id));
    let removes: Vec<&String> = inv
        .iter()
        .filter(|(_, f)| f["op"] == "remove" && f["kind"] == "device")
        .map(|(_, f)| &f["id"])
        .collect();
    assert_eq!(removes, [&org.devices[7].device_id]);
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn command_stream_runs_each_request_once_and_refuses_what_is_not_granted() {
    let redis = shared_redis();
    let (sim, engine, prefix, _) = one_org(3, &[("DEVICES__COMMANDS_POLL_MS", "50")]).await;
    let base = engine.base_url();
    let org = sim.org(0);
    let dev = org.devices[0].device_id.clone();
    let commands = format!("{prefix}:{{{}}}:commands", org.org_id);
    let results_key = format!("{prefix}:{{{}}}:command_results", org.org_id);
    xadd(
        redis,
        &commands,
        &[
            ("id", "req-1"),
            ("device", &dev),
            ("name", "Message.Send"),
            ("arguments", r#"{"Text": "Welcome", "Duration": 10}"#),
            ("body", "line one\nline two"),
        ],
    );
    xadd(
        redis,
        &commands,
        &[
            ("id", "req-2"),
            ("device", &dev),
            ("name", "SystemUnit.Boot"),
        ],
    );
    xadd(
        redis,
        &commands,
        &[
            ("id", "req-3"),
            ("device", &dev),
            ("kind", "status"),
            ("names", "Standby.State,RoomAnalytics.PeopleCount.Current"),
        ],
    );
    xadd(
        redis,
        &commands,
        &[
            ("id", "req-4"),
            ("device", &dev),
            ("kind", "status"),
            ("names", "Audio.Volume"),
        ],
    );
    xadd(
        redis,
        &commands,
        &[("id", "req-1"), ("device", &dev), ("name", "Message.Send")],
    );
    xadd(
        redis,
        &commands,
        &[
            ("id", "req-5"),
            ("device", "no-such-device"),
            ("name", "Message.Send"),
        ],
    );
    xadd(
        redis,
        &commands,
        &[
            ("id", "req-6"),
            ("device", &dev),
            ("name", "Message.Send"),
            ("expires", "2020-01-01T00:00:00Z"),
        ],
    );
    let all = results(redis, &results_key, 7, Duration::from_secs(20)).await;
    assert_eq!(all.len(), 7, "one result per request: {all:?}");

    let r1 = by_id(&all, "req-1");
    assert_eq!(r1["status"], "ok", "{r1:?}");
    assert_eq!(r1["device"], dev);
    assert_eq!(r1["name"], "Message.Send");
    let result: Value = serde_json::from_str(&r1["result"]).unwrap();
    assert_eq!(result["result"]["status"], "OK");
    let r2 = by_id(&all, "req-2");
    assert_eq!(
        (r2["status"].as_str(), r2["error"].as_str()),
        ("error", "forbidden")
    );
    assert!(r2["description"].contains("SystemUnit.Boot"), "{r2:?}");
    assert_eq!(r2["trackingId"].len(), 32);
    let r3 = by_id(&all, "req-3");
    assert_eq!(r3["status"], "ok", "{r3:?}");
    let status: Value = serde_json::from_str(&r3["result"]).unwrap();
    assert!(status["result"]["Standby"]["State"].is_string(), "{status}");
    assert!(
        status["result"]["RoomAnalytics"]["PeopleCount"]["Current"].is_number(),
        "{status}"
    );
    assert_eq!(by_id(&all, "req-4")["error"], "forbidden");
    let dups: Vec<_> = all.iter().filter(|r| r["id"] == "req-1").collect();
    assert_eq!(dups.len(), 2);
    assert!(
        dups.iter()
            .any(|r| r["status"] == "error" && r["description"].contains("already used")),
        "{dups:?}"
    );
    assert_eq!(by_id(&all, "req-5")["error"], "not_found");
    assert_eq!(by_id(&all, "req-6")["error"], "invalid_request");

    // Exactly one command reached "Webex", with its arguments and multiline body.
    let received = sim.commands_received(0);
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].name, "Message.Send");
    assert_eq!(
        received[0].arguments,
        json!({"Text": "Welcome", "Duration": 10})
    );
    assert_eq!(received[0].body.as_deref(), Some("line one\nline two"));
    let calls = sim.api_calls(0);
    assert!(!calls.iter().any(|c| c.path.contains("SystemUnit.Boot")));
    assert!(!calls.iter().any(|c| c.query.contains("Audio.Volume")));
    // Everything acknowledged.
    let mut conn = redis.client().get_connection().unwrap();
    let pending: redis::streams::StreamPendingReply =
        conn.xpending(&commands, "xapi-stream").unwrap();
    assert_eq!(pending.count(), 0);
    assert_eq!(
        scrape(
            &base,
            "xapi_stream_device_requests_total{result=\"ok\",source=\"stream\"}"
        )
        .await,
        2.0
    );
    assert_eq!(
        scrape(
            &base,
            "xapi_stream_device_requests_total{result=\"refused\",source=\"stream\"}"
        )
        .await,
        4.0
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn a_429_burst_waits_for_retry_after_then_completes() {
    let redis = shared_redis();
    let (sim, engine, prefix, _) = one_org(3, &[("DEVICES__COMMANDS_POLL_MS", "50")]).await;
    let base = engine.base_url();
    let org = sim.org(0);
    let dev = org.devices[1].device_id.clone();
    let commands = format!("{prefix}:{{{}}}:commands", org.org_id);
    let results_key = format!("{prefix}:{{{}}}:command_results", org.org_id);
    let before = sim.api_calls(0).len();
    sim.throttle_api(0, Duration::from_secs(2), 2);
    let burst = 20;
    for n in 0..burst {
        let args = format!(r#"{{"Text": "burst {n}"}}"#);
        xadd(
            redis,
            &commands,
            &[
                ("id", &format!("b-{n}")),
                ("device", &dev),
                ("name", "Message.Send"),
                ("arguments", &args),
            ],
        );
    }
    let started = Instant::now();
    let all = results(redis, &results_key, burst, Duration::from_secs(30)).await;
    assert!(all.iter().all(|r| r["status"] == "ok"), "{all:?}");
    let calls: Vec<_> = sim.api_calls(0).into_iter().skip(before).collect();
    let limited: Vec<_> = calls.iter().filter(|c| c.status == 429).collect();
    assert!(!limited.is_empty(), "the burst met the rate limit");
    let first = limited.iter().map(|c| c.at).min().unwrap();
    // Calls already in flight when the first 429 came back arrive together with it (500 ms of
    // slack for a loaded machine); after that nothing until Retry-After (2 s) has passed.
    let early: Vec<Duration> = calls
        .iter()
        .filter(|c| {
            c.at > first + Duration::from_millis(500) && c.at < first + Duration::from_secs(2)
        })
        .map(|c| c.at - first)
        .collect();
    assert!(
        early.is_empty(),
        "calls before Retry-After passed: {early:?}"
    );
    assert!(
        limited.len() <= 4,
        "at most max_concurrency calls were in flight: {}",
        limited.len()
    );
    // Every command ran exactly once.
    let mut texts: Vec<String> = sim
        .commands_received(0)
        .iter()
        .map(|c| c.arguments["Text"].as_str().unwrap().to_string())
        .collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), burst);
    assert_eq!(sim.commands_received(0).len(), burst);
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(
        scrape(
            &base,
            "xapi_stream_device_api_calls_total{kind=\"command\",result=\"rate_limited\"}"
        )
        .await
            >= 1.0
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn admin_routes_query_status_run_commands_and_patch_configurations() {
    let (sim, engine, _prefix, tenant) = one_org(3, &[]).await;
    let base = engine.base_url();
    let dev = sim.org(0).devices[0].device_id.clone();
    let root = format!("{base}/admin/tenants/{tenant}/devices/{}", seg(&dev));
    use reqwest::Method;

    // A granted command.
    let (s, body) = admin(
        Method::POST,
        format!("{root}/commands/Message.Send"),
        Some(json!({"arguments": {"Text": "Hi"}})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["result"]["status"], "OK");
    assert_eq!(sim.commands_received(0).len(), 1);
    // Not granted: refused locally, never sent.
    let (s, body) = admin(
        Method::POST,
        format!("{root}/commands/SystemUnit.Boot"),
        None,
    )
    .await;
    assert_eq!(s, 403, "{body}");
    assert_contract_error(&body);
    assert_eq!(sim.commands_received(0).len(), 1);
    // A JSON array is not a command body (serde would read it as the struct's fields).
    for array in [json!([null]), json!([{"Text": "Hi"}])] {
        let (s, body) = admin(
            Method::POST,
            format!("{root}/commands/Message.Send"),
            Some(array),
        )
        .await;
        assert_eq!(s, 400, "{body}");
        assert_contract_error(&body);
    }
    assert_eq!(sim.commands_received(0).len(), 1);

    // 12 names: two calls of at most 10, merged.
    let names = [
        "Standby.State",
        "RoomAnalytics.PeopleCount.Current",
        "RoomAnalytics.AmbientTemperature",
        "RoomAnalytics.PeoplePresence",
        "RoomAnalytics.RelativeHumidity",
        "RoomAnalytics.Sound.Level.A",
        "SystemUnit.State.NumberOfActiveCalls",
        "Audio.Microphones.Mute",
        "RoomAnalytics.Engagement.CloseProximity",
        "RoomAnalytics.PeopleCount.Capacity",
        "RoomAnalytics.ReverberationTime.Middle",
        "RoomAnalytics.T3",
    ];
    let query: String = names
        .iter()
        .map(|n| format!("name={n}"))
        .collect::<Vec<_>>()
        .join("&");
    let before = sim.api_calls(0).len();
    let (s, body) = admin(Method::GET, format!("{root}/status?{query}"), None).await;
    assert_eq!(s, 200, "{body}");
    assert!(body["result"]["Standby"]["State"].is_string(), "{body}");
    assert!(
        body["result"]["RoomAnalytics"]["AmbientTemperature"].is_string(),
        "{body}"
    );
    assert!(
        body["result"]["SystemUnit"]["State"]["NumberOfActiveCalls"].is_number(),
        "{body}"
    );
    let status_calls: Vec<_> = sim.api_calls(0).into_iter().skip(before).collect();
    assert_eq!(status_calls.len(), 2, "{status_calls:?}");
    assert!(
        status_calls
            .iter()
            .all(|c| c.query.matches("name=").count() <= 10)
    );
    let (s, body) = admin(
        Method::GET,
        format!("{root}/status?name=Audio.Volume"),
        None,
    )
    .await;
    assert_eq!(s, 403, "{body}");
    assert_contract_error(&body);

    // Configurations: the key's brackets travel percent-encoded; JSON-patch sets a value.
    let (s, body) = admin(
        Method::GET,
        format!("{root}/configurations?key=FacilityService.Service%5B1%5D.Name"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(
        body["items"]["FacilityService.Service[1].Name"].is_object(),
        "{body}"
    );
    let last = sim.api_calls(0).pop().unwrap();
    assert!(
        last.query.contains("FacilityService.Service%5B1%5D.Name"),
        "{}",
        last.query
    );
    let (s, body) = admin(
        Method::PATCH,
        format!("{root}/configurations"),
        Some(json!([{"op": "replace", "path": "FacilityService.Service[1].Name/sources/configured/value", "value": "Reception"}])),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        sim.device_configured(0, 0, "FacilityService.Service[1].Name"),
        Some(json!("Reception"))
    );
    let calls_before_bad = sim.api_calls(0).len();
    let (s, body) = admin(
        Method::PATCH,
        format!("{root}/configurations"),
        Some(json!([{"op": "add", "path": "Standby.Delay/sources/configured/value", "value": 5}])),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert_contract_error(&body);
    assert_eq!(sim.api_calls(0).len(), calls_before_bad, "refused locally");

    // 5xx is retried with backoff; 4xx is not.
    sim.fail_api_next(0, 2, 503);
    let before = sim.api_calls(0).len();
    let (s, body) = admin(
        Method::GET,
        format!("{root}/status?name=Standby.State"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let statuses: Vec<u16> = sim
        .api_calls(0)
        .into_iter()
        .skip(before)
        .map(|c| c.status)
        .collect();
    assert_eq!(statuses, vec![503, 503, 200]);
    // A command is retried after 503 (not processed) but not after another 5xx: it may
    // have run, so the answer is outcome_unknown and it is not sent again.
    let sent = sim.commands_received(0).len();
    sim.fail_api_next(0, 1, 503);
    let (s, body) = admin(Method::POST, format!("{root}/commands/Message.Send"), None).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(sim.commands_received(0).len(), sent + 1);
    sim.fail_api_next(0, 1, 504);
    let before = sim.api_calls(0).len();
    let (s, body) = admin(Method::POST, format!("{root}/commands/Message.Send"), None).await;
    assert_eq!(s, 504, "{body}");
    assert_contract_error(&body);
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("outcome is unknown"),
        "{body}"
    );
    assert_eq!(
        sim.api_calls(0).len() - before,
        1,
        "a command is not re-sent after a 504"
    );
    assert_eq!(sim.commands_received(0).len(), sent + 1);
    sim.set_api_forbidden(0, true);
    let before = sim.api_calls(0).len();
    let (s, body) = admin(
        Method::GET,
        format!("{root}/status?name=Standby.State"),
        None,
    )
    .await;
    assert_eq!(s, 403, "{body}");
    assert_contract_error(&body);
    assert_eq!(sim.api_calls(0).len() - before, 1, "a 4xx is not retried");
    sim.set_api_forbidden(0, false);

    // Unknown device → Webex's 404; unknown tenant → 404; no token → 401.
    let (s, _) = admin(
        Method::GET,
        format!("{base}/admin/tenants/{tenant}/devices/nope/status?name=Standby.State"),
        None,
    )
    .await;
    assert_eq!(s, 404);
    let (s, body) = admin(
        Method::GET,
        format!("{base}/admin/tenants/nope/devices/x/status?name=Standby.State"),
        None,
    )
    .await;
    assert_eq!(s, 404);
    assert_contract_error(&body);
    let r = reqwest::Client::new()
        .get(format!("{root}/status?name=Standby.State"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        scrape(
            &base,
            "xapi_stream_device_requests_total{result=\"refused\",source=\"http\"}"
        )
        .await,
        3.0
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn entries_left_by_a_dead_consumer_are_claimed_and_never_sent_twice() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig {
        orgs: 1,
        devices_per_org: 2,
        ..Default::default()
    })
    .await;
    let org = sim.org(0);
    let dev = org.devices[0].device_id.clone();
    let commands = format!("{prefix}:{{{}}}:commands", org.org_id);
    let results_key = format!("{prefix}:{{{}}}:command_results", org.org_id);
    // A replica that died: it took two requests; it had sent the first (its marker is set)
    // and not yet the second.
    let mut conn = redis.client().get_connection().unwrap();
    let _: () = conn
        .xgroup_create_mkstream(&commands, "xapi-stream", "0")
        .unwrap();
    xadd(
        redis,
        &commands,
        &[
            ("id", "sent-before-crash"),
            ("device", &dev),
            ("name", "Message.Send"),
        ],
    );
    xadd(
        redis,
        &commands,
        &[
            ("id", "not-sent-yet"),
            ("device", &dev),
            ("name", "Message.Send"),
        ],
    );
    let taken: redis::streams::StreamReadReply = conn
        .xread_options(
            &[&commands],
            &[">"],
            &redis::streams::StreamReadOptions::default()
                .group("xapi-stream", "dead-replica")
                .count(2),
        )
        .unwrap();
    let first_entry = taken.keys[0].ids[0].id.clone();
    let marker =
        actors::store::keys::Keys::new(&prefix).command_request(&org.org_id, "sent-before-crash");
    let _: () = conn.set(&marker, &first_entry).unwrap();
    // And this engine's own consumer (same name: a restarted child) left two pending: one
    // that was deleted from the stream meanwhile, one to run.
    xadd(
        redis,
        &commands,
        &[
            ("id", "deleted-while-pending"),
            ("device", &dev),
            ("name", "Message.Send"),
        ],
    );
    xadd(
        redis,
        &commands,
        &[
            ("id", "own-pending"),
            ("device", &dev),
            ("name", "Message.Send"),
        ],
    );
    // The engine below reads as this consumer (its replica id).
    let own = "replica-under-test";
    let taken: redis::streams::StreamReadReply = conn
        .xread_options(
            &[&commands],
            &[">"],
            &redis::streams::StreamReadOptions::default()
                .group("xapi-stream", own)
                .count(2),
        )
        .unwrap();
    let deleted = taken.keys[0].ids[0].id.clone();
    let _: i64 = conn.xdel(&commands, &[&deleted]).unwrap();

    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[
            ("DEVICES__COMMANDS_POLL_MS", "50"),
            ("DEVICES__COMMANDS_CLAIM_IDLE_SECS", "1"),
            ("DEVICES__CALL_DEADLINE_SECS", "0.5"),
            ("SCALING__REPLICA_ID", own),
        ],
    )
    .await;
    activate_org(&sim, &engine.base_url(), 0).await;
    let all = results(redis, &results_key, 4, Duration::from_secs(20)).await;
    let unknown = by_id(&all, "sent-before-crash");
    assert_eq!(unknown["error"], "outcome_unknown", "{unknown:?}");
    assert_eq!(by_id(&all, "not-sent-yet")["status"], "ok");
    assert_eq!(by_id(&all, "own-pending")["status"], "ok");
    let gone = all
        .iter()
        .find(|r| r["request"] == deleted)
        .expect("a result for the deleted entry");
    assert!(gone["description"].contains("deleted"), "{gone:?}");
    // Only the two requests that had not been sent reached Webex.
    assert_eq!(sim.commands_received(0).len(), 2);
    let pending: redis::streams::StreamPendingReply =
        conn.xpending(&commands, "xapi-stream").unwrap();
    assert_eq!(pending.count(), 0, "both acknowledged");
    engine.shutdown().await;
    sim.shutdown().await;
}

/// A listing whose next page points at another host is not followed (the bearer token never
/// leaves the API's origin) and is a failed listing: nothing written, counted `error`, logged.
/// Taking the first page for the whole list would remove every device after it. The next good
/// listing applies normally.
#[actix_web::test]
async fn a_next_page_on_another_host_fails_the_sync_and_writes_nothing() {
    let redis = shared_redis();
    let (sim, engine, prefix, tenant) = one_org(150, &[("DEVICES__PAGE_SIZE", "100")]).await;
    let base = engine.base_url();
    let org = sim.org(0).org_id;
    let devices_key = format!("{prefix}:{{{org}}}:devices");
    let inventory_key = format!("{prefix}:{{{org}}}:inventory");
    assert_eq!(hlen(redis, &devices_key), 150);
    let entries_before = entries(redis, &inventory_key).len();
    let errors =
        |text: String| metric(&text, "xapi_stream_inventory_syncs_total{result=\"error\"}");
    let errors_before = errors(metrics_text(&base).await).unwrap_or(0.0);

    let calls_before = sim.api_calls(0).len();
    sim.set_next_link_base(0, Some("http://127.0.0.1:9"));
    let (status, body) = admin(
        reqwest::Method::POST,
        format!("{base}/admin/tenants/{tenant}/inventory/sync"),
        None,
    )
    .await;
    assert!(status >= 500, "{status} {body}");
    assert_contract_error(&body);
    assert!(
        body["description"]
            .as_str()
            .is_some_and(|d| d.contains("another host")),
        "{body}"
    );
    assert_eq!(hlen(redis, &devices_key), 150, "the inventory hash changed");
    assert_eq!(
        entries(redis, &inventory_key).len(),
        entries_before,
        "inventory entries were written"
    );
    assert_eq!(
        errors(metrics_text(&base).await).unwrap_or(0.0),
        errors_before + 1.0,
        "not counted as an error"
    );
    // The token never went to the other host: every call the simulator saw was on its origin,
    // and nothing was asked for page 2.
    assert!(
        sim.api_calls(0)[calls_before..]
            .iter()
            .all(|c| !c.query.contains("start=100")),
        "page 2 was fetched"
    );

    // Fixed on the Webex side: the next sync applies normally (one device renamed meanwhile).
    sim.set_next_link_base(0, None);
    sim.rename_device(0, 120, "After the outage");
    let (status, report) = admin(
        reqwest::Method::POST,
        format!("{base}/admin/tenants/{tenant}/inventory/sync"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["devices"],
        json!({"total": 150, "added": 0, "updated": 1, "removed": 0})
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

/// The command bell under 1,000 idle tenants: with polling and sweeps pushed out to ten
/// minutes, only the keyspace notification can deliver a request in time. Two waves of
/// requests (the second after every consumer's first read, with repeated request ids) run
/// each request once, answer each entry once, and leave nothing pending.
#[actix_web::test]
async fn the_command_bell_wakes_1000_idle_consumers_and_runs_each_request_once() {
    const ORGS: usize = 1000;
    const SWEEP_SECS: u64 = 600;
    let env = TestEnv::own(SimConfig {
        orgs: ORGS,
        devices_per_org: 1,
        ..Default::default()
    })
    .await;
    let (redis, prefix, sim) = (&env.redis, &env.prefix, &env.sim);
    let engine = env
        .engine(&[
            ("INTEGRATION__INGEST", "queue"),
            (
                "DEVICES__COMMANDS_POLL_MS",
                &(SWEEP_SECS * 1000).to_string(),
            ),
            ("DEVICES__COMMANDS_SWEEP_SECS", &SWEEP_SECS.to_string()),
        ])
        .await;
    let base = engine.base_url();
    for chunk in (0..ORGS).collect::<Vec<_>>().chunks(100) {
        let base = &base;
        let answers = futures::future::join_all(
            chunk
                .iter()
                .map(|&i| async move { admin_activate(base, &sim.activation_jwt(i)).await }),
        )
        .await;
        for (s, body) in answers {
            assert_eq!(s, 202, "{body}");
        }
    }
    let orgs: Vec<_> = (0..ORGS).map(|i| sim.org(i)).collect();
    let key = |i: usize, what: &str| format!("{prefix}:{{{}}}:{what}", orgs[i].org_id);
    let mut conn = redis.client().get_connection().unwrap();
    // Every consumer has created its group (its first read follows at once).
    let groups_ready = eventually(Duration::from_secs(120), || async {
        let mut pipe = redis::pipe();
        for i in 0..ORGS {
            pipe.exists(key(i, "commands"));
        }
        let exist: Vec<bool> = pipe
            .query(&mut redis.client().get_connection().unwrap())
            .unwrap();
        exist.iter().all(|e| *e)
    })
    .await;
    assert!(groups_ready, "not every command consumer started");
    assert_eq!(
        scrape(&base, "xapi_stream_command_notifications_up").await,
        1.0,
        "the bell is not ringing"
    );
    // Far below the sweep: a request that arrives in time was delivered by the bell.
    let limit = Duration::from_secs(SWEEP_SECS / 10);
    let send = |conn: &mut redis::Connection, wave: &str, repeat_every: usize| {
        let mut pipe = redis::pipe();
        for (i, org) in orgs.iter().enumerate() {
            let dev = &org.devices[0].device_id;
            let fields = |id: String| {
                vec![
                    ("id".to_string(), id),
                    ("device".to_string(), dev.clone()),
                    ("name".to_string(), "Message.Send".to_string()),
                ]
            };
            pipe.xadd(key(i, "commands"), "*", &fields(format!("{wave}-{i}")))
                .ignore();
            if repeat_every > 0 && i.is_multiple_of(repeat_every) {
                pipe.xadd(key(i, "commands"), "*", &fields(format!("a-{i}")))
                    .ignore();
            }
        }
        let _: () = pipe.query(conn).unwrap();
    };
    let results_at_least = |want: &dyn Fn(usize) -> usize| {
        let want: Vec<usize> = (0..ORGS).map(want).collect();
        async move {
            let mut pipe = redis::pipe();
            for i in 0..ORGS {
                pipe.xlen(key(i, "command_results"));
            }
            let have: Vec<usize> = pipe
                .query(&mut redis.client().get_connection().unwrap())
                .unwrap();
            let short = (0..ORGS).filter(|&i| have[i] < want[i]).count();
            (short, have)
        }
    };
    send(&mut conn, "a", 0);
    let mut short = ORGS;
    let started = Instant::now();
    while started.elapsed() < limit && short > 0 {
        short = results_at_least(&|_| 1).await.0;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        short, 0,
        "{short} orgs got no result for wave a in {limit:?}"
    );
    // The bell listens on each consumer's own channel, not on a pattern (which Redis would
    // match against the notification of every stream entry written).
    let channels: Vec<String> = (0..ORGS)
        .map(|i| format!("__keyspace@0__:{}", key(i, "commands")))
        .collect();
    let subscribed = eventually(Duration::from_secs(30), || async {
        let numsub: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channels)
            .query(&mut redis.client().get_connection().unwrap())
            .unwrap();
        numsub.iter().all(|(_, n)| *n == 1)
    })
    .await;
    assert!(
        subscribed,
        "not every consumer's channel is subscribed once"
    );
    let patterns: u64 = redis::cmd("PUBSUB").arg("NUMPAT").query(&mut conn).unwrap();
    assert_eq!(patterns, 0);
    // Every consumer is idle now: wave b reaches them only through the bell; every tenth org
    // also gets wave a's request id again.
    send(&mut conn, "b", 10);
    let want = |i: usize| if i.is_multiple_of(10) { 3 } else { 2 };
    let started = Instant::now();
    let mut have = Vec::new();
    short = ORGS;
    while started.elapsed() < limit && short > 0 {
        (short, have) = results_at_least(&want).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        short, 0,
        "{short} orgs short of results for wave b in {limit:?}"
    );
    for (i, &n) in have.iter().enumerate() {
        assert_eq!(n, want(i), "org {i}: one result per entry");
        let all: Vec<HashMap<String, String>> = entries(redis, &key(i, "command_results"))
            .into_iter()
            .map(|(_, f)| f)
            .collect();
        assert_eq!(by_id(&all, &format!("b-{i}"))["status"], "ok", "{all:?}");
        let a: Vec<_> = all.iter().filter(|r| r["id"] == format!("a-{i}")).collect();
        assert_eq!(a.iter().filter(|r| r["status"] == "ok").count(), 1, "{a:?}");
        if i.is_multiple_of(10) {
            assert!(
                a.iter().any(|r| r
                    .get("description")
                    .is_some_and(|d| d.contains("already used"))),
                "{a:?}"
            );
        }
        assert_eq!(
            sim.commands_received(i).len(),
            2,
            "org {i}: each request sent once"
        );
        let pending: redis::streams::StreamPendingReply =
            conn.xpending(key(i, "commands"), "xapi-stream").unwrap();
        assert_eq!(pending.count(), 0, "org {i}");
    }
    engine.shutdown().await;
    env.sim.shutdown().await;
}

/// With `devices.command_notifications = false` the engine neither turns on nor waits for
/// keyspace notifications: the gauge says 0 and idle streams are read every
/// `devices.commands_poll_ms`, so a request still runs.
#[actix_web::test]
async fn without_notifications_command_streams_are_polled() {
    let env = TestEnv::own(SimConfig {
        orgs: 1,
        devices_per_org: 1,
        ..Default::default()
    })
    .await;
    let (redis, prefix, sim) = (&env.redis, &env.prefix, &env.sim);
    let engine = env
        .engine(&[
            ("DEVICES__COMMAND_NOTIFICATIONS", "false"),
            ("DEVICES__COMMANDS_POLL_MS", "50"),
        ])
        .await;
    let base = engine.base_url();
    activate_org(sim, &base, 0).await;
    let org = sim.org(0);
    let commands = format!("{prefix}:{{{}}}:commands", org.org_id);
    let results_key = format!("{prefix}:{{{}}}:command_results", org.org_id);
    assert!(
        eventually(Duration::from_secs(20), || async {
            let mut conn = redis.client().get_connection().unwrap();
            let exists: bool = conn.exists(&commands).unwrap();
            exists
        })
        .await,
        "the command consumer did not start"
    );
    xadd(
        redis,
        &commands,
        &[
            ("id", "polled-1"),
            ("device", &org.devices[0].device_id),
            ("name", "Message.Send"),
        ],
    );
    let all = results(redis, &results_key, 1, Duration::from_secs(20)).await;
    assert_eq!(by_id(&all, "polled-1")["status"], "ok", "{all:?}");
    assert_eq!(
        scrape(&base, "xapi_stream_command_notifications_up").await,
        0.0
    );
    let events: String = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query::<Vec<String>>(&mut redis.client().get_connection().unwrap())
        .unwrap()
        .pop()
        .unwrap_or_default();
    assert!(
        !events.contains('K'),
        "notifications were turned on: {events:?}"
    );
    engine.shutdown().await;
    env.sim.shutdown().await;
}
