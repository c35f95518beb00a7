//! The simulator's Webex public API for device integrations, under `/v1`: `GET /devices` and
//! `GET /workspaces` (paged with `Link: <…>; rel="next"`), `GET /xapi/status`,
//! `POST /xapi/command/<Name>`, `GET`/`PATCH /deviceConfigurations`. The bearer token decides
//! the organization. Knobs make an organization answer 429 with `Retry-After`, 403, or a run of
//! 5xx; every call is logged (time, method, path, raw query, status) so tests can check what
//! reached "Webex" and when.
// Handlers return ready responses as errors; boxing them would only add noise here.
#![allow(clippy::result_large_err)]
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use serde_json::{Value, json};

use super::Sim;
use super::reply::error;

/// Largest page the simulator serves, whatever `max` asks (forces paging in tests).
pub const MAX_PAGE: usize = 100;
/// At most this many `name` parameters per status query (as Webex).
const MAX_STATUS_NAMES: usize = 10;

/// Inventory attributes of one simulated device that tests can change.
#[derive(Debug, Clone)]
pub struct InventoryDevice {
    pub display_name: String,
    pub connection_status: String,
    pub tags: Vec<String>,
    pub removed: bool,
    /// Configured values (the default applies to keys absent here).
    pub configured: BTreeMap<String, Value>,
}

impl InventoryDevice {
    pub fn new(name: &str) -> Self {
        Self {
            display_name: name.to_string(),
            connection_status: "connected".into(),
            tags: vec!["sim".into()],
            removed: false,
            configured: BTreeMap::new(),
        }
    }
}

/// Configuration keys every device has, with their defaults.
fn default_configs() -> BTreeMap<&'static str, Value> {
    BTreeMap::from([
        ("Audio.Ultrasound.MaxVolume", json!(70)),
        ("Conference.MaxReceiveCallRate", json!(6000)),
        ("FacilityService.Service[1].Name", json!("")),
        ("FacilityService.Service[1].Type", json!("Helpdesk")),
        ("Standby.Delay", json!(10)),
    ])
}

/// One call that reached the public API.
#[derive(Debug, Clone, Serialize)]
pub struct ApiCall {
    #[serde(skip)]
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// The raw query string, as sent (percent-encoding kept).
    pub query: String,
    pub status: u16,
}

/// A command the simulator executed.
#[derive(Debug, Clone, Serialize)]
pub struct CommandCall {
    pub device_id: String,
    pub name: String,
    pub arguments: Value,
    pub body: Option<String>,
}

/// Knobs and log of one organization's public API.
#[derive(Debug, Default)]
pub struct ApiState {
    throttle_until: Option<Instant>,
    retry_after_secs: u64,
    forbidden: bool,
    fail_next: Vec<u16>,
    calls: Vec<ApiCall>,
    commands: Vec<CommandCall>,
    /// Base URL of the `Link: rel="next"` targets when set (default: the simulator's own).
    next_link_base: Option<String>,
    /// (start, device): remove that device just before answering the devices page at that
    /// offset, once (a removal while a listing pages).
    remove_before_page: Option<(usize, usize)>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/devices", web::get().to(devices))
        .route("/v1/workspaces", web::get().to(workspaces))
        .route("/v1/xapi/status", web::get().to(status))
        .route("/v1/xapi/command/{name}", web::post().to(command))
        .route("/v1/deviceConfigurations", web::get().to(config_get))
        .route("/v1/deviceConfigurations", web::patch().to(config_patch));
}

impl Sim {
    /// Org `i` answers every public-API call with 429 and `Retry-After: retry_after_secs`
    /// for the next `window`.
    pub fn throttle_api(&self, i: usize, window: Duration, retry_after_secs: u64) {
        let mut s = self.state();
        s.api[i].throttle_until = Some(Instant::now() + window);
        s.api[i].retry_after_secs = retry_after_secs;
    }

    /// Org `i` answers the next `n` public-API calls with `status` (e.g. 503).
    pub fn fail_api_next(&self, i: usize, n: usize, status: u16) {
        self.state().api[i]
            .fail_next
            .extend(std::iter::repeat_n(status, n));
    }

    /// Org `i`'s paged listings point their `rel="next"` links at `base` (another host, say)
    /// while set.
    pub fn set_next_link_base(&self, i: usize, base: Option<&str>) {
        self.state().api[i].next_link_base = base.map(str::to_string);
    }

    /// Org `i` removes device `d` just before it answers the devices page starting at `start`
    /// (once): the later devices shift back by one, as on Webex when a device is deleted while
    /// someone pages through the list.
    pub fn remove_device_before_page(&self, i: usize, start: usize, d: usize) {
        self.state().api[i].remove_before_page = Some((start, d));
    }

    /// Org `i` answers public-API calls with 403 while set.
    pub fn set_api_forbidden(&self, i: usize, on: bool) {
        self.state().api[i].forbidden = on;
    }

    /// Every public-API call org `i` received, in order.
    pub fn api_calls(&self, i: usize) -> Vec<ApiCall> {
        self.state().api[i].calls.clone()
    }

    /// Every command org `i`'s devices executed, in order.
    pub fn commands_received(&self, i: usize) -> Vec<CommandCall> {
        self.state().api[i].commands.clone()
    }

    /// Renames device `d` of org `i` in the inventory.
    pub fn rename_device(&self, i: usize, d: usize, name: &str) {
        self.state().inventory[i][d].display_name = name.to_string();
    }

    /// Removes device `d` of org `i` (gone from listings; its API calls answer 404).
    pub fn remove_device(&self, i: usize, d: usize) {
        self.state().inventory[i][d].removed = true;
    }

    /// The configured value of `key` on device `d` of org `i`, if any.
    pub fn device_configured(&self, i: usize, d: usize, key: &str) -> Option<Value> {
        self.state().inventory[i][d].configured.get(key).cloned()
    }
}

/// Authenticates and applies the organization's knobs (throttle, 403, forced 5xx).
fn guard(sim: &Sim, req: &HttpRequest) -> Result<usize, (Option<usize>, HttpResponse)> {
    let Some(i) = super::reply::bearer_org(sim, req) else {
        return Err((
            None,
            error(
                401,
                "unauthorized",
                "missing, expired or unknown access token",
            ),
        ));
    };
    let mut s = sim.state();
    let a = &mut s.api[i];
    if let Some(until) = a.throttle_until {
        if Instant::now() < until {
            let mut r = error(429, "too_many_requests", "rate limited by the simulator");
            r.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from(a.retry_after_secs),
            );
            return Err((Some(i), r));
        }
        a.throttle_until = None;
    }
    if a.forbidden {
        return Err((
            Some(i),
            error(403, "forbidden", "forbidden by the simulator"),
        ));
    }
    if !a.fail_next.is_empty() {
        let status = a.fail_next.remove(0);
        return Err((
            Some(i),
            error(status, "server_error", "forced by the simulator"),
        ));
    }
    Ok(i)
}

/// Logs the call for org `i` (when known) and returns the response.
fn finish(sim: &Sim, i: Option<usize>, req: &HttpRequest, resp: HttpResponse) -> HttpResponse {
    if let Some(i) = i {
        sim.state().api[i].calls.push(ApiCall {
            at: Instant::now(),
            method: req.method().to_string(),
            path: req.path().to_string(),
            query: req.query_string().to_string(),
            status: resp.status().as_u16(),
        });
    }
    resp
}

/// Runs `f` for the authenticated organization and logs the call.
fn handle(sim: &Sim, req: &HttpRequest, f: impl FnOnce(usize) -> HttpResponse) -> HttpResponse {
    match guard(sim, req) {
        Ok(i) => {
            let resp = f(i);
            finish(sim, Some(i), req, resp)
        }
        Err((i, resp)) => finish(sim, i, req, resp),
    }
}

fn query(req: &HttpRequest) -> Vec<(String, String)> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect()
}

fn param(q: &[(String, String)], key: &str) -> Option<String> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

/// One page of org `i`'s `items` with a `Link` to the next when there is more.
fn page(sim: &Sim, req: &HttpRequest, i: usize, path: &str, items: Vec<Value>) -> HttpResponse {
    let q = query(req);
    let max = param(&q, "max")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(MAX_PAGE)
        .clamp(1, MAX_PAGE);
    let start = param(&q, "start")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let end = (start + max).min(items.len());
    let slice = items.get(start..end).unwrap_or_default().to_vec();
    let mut resp = HttpResponse::Ok();
    if end < items.len() {
        let base = sim.state().api[i]
            .next_link_base
            .clone()
            .unwrap_or_else(|| sim.inner.base_url.clone());
        resp.insert_header((
            "Link",
            format!("<{base}{path}?max={max}&start={end}>; rel=\"next\""),
        ));
    }
    resp.json(json!({ "items": slice }))
}

/// Index of `device_id` among org `i`'s devices, when it exists and is not removed.
fn device_index(sim: &Sim, i: usize, device_id: &str) -> Option<usize> {
    let d = sim.inner.orgs[i]
        .devices
        .iter()
        .position(|d| d.device_id == device_id)?;
    (!sim.state().inventory[i][d].removed).then_some(d)
}

async fn devices(sim: web::Data<Sim>, req: HttpRequest) -> HttpResponse {
    handle(&sim, &req, |i| {
        let org = &sim.inner.orgs[i];
        let items: Vec<Value> = {
            let mut s = sim.state();
            let start = param(&query(&req), "start").and_then(|v| v.parse::<usize>().ok());
            if let Some((at, d)) = s.api[i].remove_before_page
                && start == Some(at)
            {
                s.api[i].remove_before_page = None;
                s.inventory[i][d].removed = true;
            }
            org.devices
                .iter()
                .zip(&s.inventory[i])
                .enumerate()
                .filter(|(_, (_, inv))| !inv.removed)
                .map(|(d, (info, inv))| {
                    json!({
                        "id": info.device_id,
                        "displayName": inv.display_name,
                        "placeId": info.workspace_id,
                        "workspaceId": info.workspace_id,
                        "orgId": org.org_id,
                        "capabilities": ["xapi"],
                        "permissions": ["xapi"],
                        "product": info.product,
                        "type": "roomdesk",
                        "tags": inv.tags,
                        "ip": format!("10.{}.{}.{}", i % 250, d / 250, d % 250),
                        "mac": format!("00:1B:D4:{:02X}:{:02X}:{:02X}", i % 256, d / 256, d % 256),
                        "serial": format!("FOC{:04}{:05}", i, d),
                        "software": "RoomOS 11.14.1.4",
                        "upgradeChannel": "Stable",
                        "connectionStatus": inv.connection_status,
                        "created": "2024-01-01T00:00:00.000Z",
                        "firstSeen": "2024-01-01T00:00:00.000Z",
                        // Changes on every listing, as on Webex: not inventory.
                        "lastSeen": super::now_rfc3339(),
                    })
                })
                .collect()
        };
        page(&sim, &req, i, "/v1/devices", items)
    })
}

async fn workspaces(sim: web::Data<Sim>, req: HttpRequest) -> HttpResponse {
    handle(&sim, &req, |i| {
        let org = &sim.inner.orgs[i];
        let items: Vec<Value> = org
            .devices
            .iter()
            .enumerate()
            .map(|(d, info)| {
                json!({
                    "id": info.workspace_id,
                    "orgId": org.org_id,
                    "displayName": format!("Workspace {:03}", d + 1),
                    "type": if d % 5 == 0 { "huddle" } else { "meetingRoom" },
                    "capacity": 4 + (d % 4) * 2,
                    "sipAddress": format!("workspace-{:03}@{}.example.com", d + 1, org.org_uuid),
                    "calling": { "type": "freeCalling" },
                    "calendar": { "type": "none" },
                    "hotdeskingStatus": "off",
                    "created": "2024-01-01T00:00:00.000Z",
                })
            })
            .collect();
        page(&sim, &req, i, "/v1/workspaces", items)
    })
}

/// Sets `value` at the dotted `key` of a nested object.
fn insert_path(tree: &mut Value, key: &str, value: Value) {
    let mut node = tree;
    let parts: Vec<&str> = key.split('.').collect();
    for (n, part) in parts.iter().enumerate() {
        let obj = node.as_object_mut().expect("tree nodes are objects");
        if n + 1 == parts.len() {
            obj.insert(part.to_string(), value);
            return;
        }
        node = obj.entry(part.to_string()).or_insert_with(|| json!({}));
    }
}

/// Whether status `key` is selected by `name` (exact, a node above it, or `Node.*`).
fn selects(name: &str, key: &str) -> bool {
    let name = name.strip_suffix(".*").unwrap_or(name);
    key.eq_ignore_ascii_case(name)
        || (key.len() > name.len()
            && key[..name.len()].eq_ignore_ascii_case(name)
            && key.as_bytes()[name.len()] == b'.')
}

async fn status(sim: web::Data<Sim>, req: HttpRequest) -> HttpResponse {
    handle(&sim, &req, |i| {
        let q = query(&req);
        let names: Vec<String> = q
            .iter()
            .filter(|(k, _)| k == "name")
            .map(|(_, v)| v.clone())
            .collect();
        if names.is_empty() || names.len() > MAX_STATUS_NAMES {
            return error(400, "bad_request", "between 1 and 10 name parameters");
        }
        let Some(device_id) = param(&q, "deviceId") else {
            return error(400, "bad_request", "deviceId is required");
        };
        let Some(d) = device_index(&sim, i, &device_id) else {
            return error(404, "not_found", "unknown device");
        };
        let mut result = json!({});
        let s = sim.state();
        for (key, value) in s.devices[i][d].status_values() {
            if names.iter().any(|n| selects(n, key)) {
                insert_path(&mut result, key, value.clone());
            }
        }
        HttpResponse::Ok().json(json!({ "deviceId": device_id, "result": result }))
    })
}

async fn command(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let name = path.into_inner();
    handle(&sim, &req, |i| {
        let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
            return error(400, "bad_request", "body is not JSON");
        };
        let Some(device_id) = payload["deviceId"].as_str().map(str::to_string) else {
            return error(400, "bad_request", "deviceId is required");
        };
        if device_index(&sim, i, &device_id).is_none() {
            return error(404, "not_found", "unknown device");
        }
        if !name
            .split('.')
            .all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return error(400, "bad_request", "not an xAPI command name");
        }
        let arguments = payload.get("arguments").cloned().unwrap_or(json!({}));
        sim.state().api[i].commands.push(CommandCall {
            device_id: device_id.clone(),
            name: name.clone(),
            arguments: arguments.clone(),
            body: payload["body"].as_str().map(str::to_string),
        });
        HttpResponse::Ok().json(json!({
            "deviceId": device_id,
            "arguments": arguments,
            "result": { "status": "OK" },
        }))
    })
}

/// The configuration items of device `d` selected by `key` (all when `None`).
fn config_items(sim: &Sim, i: usize, d: usize, key: Option<&str>) -> Value {
    let s = sim.state();
    let configured = &s.inventory[i][d].configured;
    let mut items = serde_json::Map::new();
    for (k, default) in default_configs() {
        if key.is_some_and(|want| !selects(want, k)) {
            continue;
        }
        let set = configured.get(k);
        items.insert(
            k.to_string(),
            json!({
                "value": set.unwrap_or(&default),
                "source": if set.is_some() { "configured" } else { "default" },
                "sources": {
                    "default": { "value": default, "editability": { "isEditable": true } },
                    "configured": { "value": set, "editability": { "isEditable": true } },
                },
            }),
        );
    }
    Value::Object(items)
}

async fn config_get(sim: web::Data<Sim>, req: HttpRequest) -> HttpResponse {
    handle(&sim, &req, |i| {
        let q = query(&req);
        let Some(device_id) = param(&q, "deviceId") else {
            return error(400, "bad_request", "deviceId is required");
        };
        let Some(d) = device_index(&sim, i, &device_id) else {
            return error(404, "not_found", "unknown device");
        };
        let key = param(&q, "key");
        HttpResponse::Ok().json(json!({
            "deviceId": device_id,
            "items": config_items(&sim, i, d, key.as_deref()),
        }))
    })
}

async fn config_patch(sim: web::Data<Sim>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    handle(&sim, &req, |i| {
        let is_patch = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json-patch+json"));
        if !is_patch {
            return HttpResponse::build(StatusCode::UNSUPPORTED_MEDIA_TYPE)
                .json(json!({ "message": "Content-Type must be application/json-patch+json" }));
        }
        let q = query(&req);
        let Some(device_id) = param(&q, "deviceId") else {
            return error(400, "bad_request", "deviceId is required");
        };
        let Some(d) = device_index(&sim, i, &device_id) else {
            return error(404, "not_found", "unknown device");
        };
        let Ok(Value::Array(ops)) = serde_json::from_slice::<Value>(&body) else {
            return error(400, "bad_request", "body must be a JSON-patch array");
        };
        let defaults = default_configs();
        let mut changes = Vec::new();
        for op in &ops {
            let path = op["path"].as_str().unwrap_or("");
            let Some(key) = path.strip_suffix("/sources/configured/value") else {
                return error(400, "bad_request", "unsupported patch path");
            };
            if !defaults.contains_key(key) {
                return error(400, "bad_request", "unknown configuration key");
            }
            match op["op"].as_str() {
                Some("replace") => changes.push((key.to_string(), Some(op["value"].clone()))),
                Some("remove") => changes.push((key.to_string(), None)),
                _ => return error(400, "bad_request", "op must be replace or remove"),
            }
        }
        {
            let mut s = sim.state();
            let configured = &mut s.inventory[i][d].configured;
            for (k, v) in changes {
                match v {
                    Some(v) => configured.insert(k, v),
                    None => configured.remove(&k),
                };
            }
        }
        HttpResponse::Ok().json(json!({
            "deviceId": device_id,
            "items": config_items(&sim, i, d, None),
        }))
    })
}
