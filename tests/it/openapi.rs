//! docs/openapi.json (served at `GET /openapi.json`) against the route table: the engine serves
//! the document; every documented operation is routed (the engine does not answer it with its
//! unknown-route 404); every route is documented. tests/api/run.sh checks the schemas of the
//! answers with schemathesis.
use std::collections::BTreeSet;

use serde_json::{Value, json};
use xapi_stream::devkit::devenv::ADMIN_TOKEN;
use xapi_stream::devkit::sim::SimConfig;

use crate::utils::*;

/// Every route the engine registers, as (method, path template): `public_routes` and
/// `admin_routes` in src/http/mod.rs, the two routes `tenant_route` dispatches by hand, and
/// `console::routes`. A new route goes here and into docs/openapi.json.
const ROUTES: &[(&str, &str)] = &[
    // public_routes
    ("POST", "/tenants/{tenant_id}/webhook"),
    ("POST", "/tenants/{tenant_id}/actions"),
    ("POST", "/provision"),
    ("GET", "/setup/removed/{tenant_id}"),
    ("GET", "/setup"),
    ("GET", "/setup/{session}"),
    ("POST", "/setup/{session}"),
    // admin_routes
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("POST", "/admin/activations"),
    ("GET", "/admin/tenants"),
    ("GET", "/admin/tenants/{tenant_id}"),
    ("PATCH", "/admin/tenants/{tenant_id}"),
    ("GET", "/admin/tenants/{tenant_id}/devices"),
    ("GET", "/admin/tenants/{tenant_id}/workspaces"),
    ("POST", "/admin/tenants/{tenant_id}/inventory/sync"),
    (
        "POST",
        "/admin/tenants/{tenant_id}/devices/{device_id}/commands/{name}",
    ),
    (
        "GET",
        "/admin/tenants/{tenant_id}/devices/{device_id}/status",
    ),
    (
        "GET",
        "/admin/tenants/{tenant_id}/devices/{device_id}/configurations",
    ),
    (
        "PATCH",
        "/admin/tenants/{tenant_id}/devices/{device_id}/configurations",
    ),
    ("POST", "/admin/tenants/{tenant_id}/manifest-update"),
    ("GET", "/admin/errors/{tracking_id}"),
    ("POST", "/admin/invitations"),
    ("GET", "/admin/invitations"),
    ("POST", "/admin/tenants/{tenant_id}/webhook-secret/rotate"),
    ("POST", "/admin/tenants/{tenant_id}/consumers"),
    ("GET", "/admin/tenants/{tenant_id}/consumers"),
    ("DELETE", "/admin/tenants/{tenant_id}/consumers/{name}"),
    // console::routes
    ("GET", "/console"),
    ("GET", "/console/"),
    ("GET", "/console/tenants"),
    ("GET", "/console/style.css"),
    ("GET", "/setup/style.css"),
    ("POST", "/console/login"),
    ("POST", "/console/logout"),
    ("POST", "/console/sessions/end"),
    ("GET", "/console/tenants/{tenant_id}"),
    ("POST", "/console/tenants/{tenant_id}/{action}"),
    ("GET", "/console/errors/{tracking_id}"),
    ("GET", "/console/invitations"),
    ("POST", "/console/invitations"),
    ("POST", "/console/pending/{session}/{decision}"),
];

/// Scopes registered in src/http (their routes are dispatched by hand and listed above).
const KNOWN_SCOPES: &[&str] = &["/tenants"];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn document() -> Value {
    serde_json::from_str(xapi_stream::http::OPENAPI).expect("docs/openapi.json is JSON")
}

/// Every (METHOD, path template) of the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths is an object");
    let mut ops = BTreeSet::new();
    for (path, item) in paths {
        let item = item.as_object().expect("a path item is an object");
        for method in METHODS {
            if item.contains_key(*method) {
                ops.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    ops
}

fn listed() -> BTreeSet<(String, String)> {
    ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect()
}

/// `{name:regex}` → `{name}`, as OpenAPI spells a path parameter.
fn template(actix: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    let mut skipping = false;
    for c in actix.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push(c);
            }
            '}' if in_param => {
                in_param = false;
                skipping = false;
                out.push(c);
            }
            ':' if in_param => skipping = true,
            _ if skipping => {}
            _ => out.push(c),
        }
    }
    out
}

/// The `.route("<absolute path>", web::<method>()…)` calls of src/http/*.rs, so a route added
/// there without being listed in [`ROUTES`] fails this test. Scopes must be known and
/// `web::resource` is not understood (teach this function when it is used).
fn routes_in_source() -> BTreeSet<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http");
    let mut found = BTreeSet::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("src/http is readable")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    for file in files {
        let src = std::fs::read_to_string(&file).expect("a source file is readable");
        let name = file.display();
        assert!(
            !src.contains("web::resource("),
            "{name} registers a web::resource: teach routes_in_source (tests/it/openapi.rs) to read it"
        );
        let mut rest = src.as_str();
        while let Some(i) = rest.find("web::scope(\"") {
            rest = &rest[i + "web::scope(\"".len()..];
            let scope = &rest[..rest.find('"').expect("a closing quote")];
            assert!(
                KNOWN_SCOPES.contains(&scope),
                "{name} registers the scope {scope:?}: list its routes in ROUTES and the scope in KNOWN_SCOPES"
            );
        }
        let mut rest = src.as_str();
        while let Some(i) = rest.find(".route(") {
            rest = rest[i + ".route(".len()..].trim_start();
            let Some(after_quote) = rest.strip_prefix('"') else {
                continue;
            };
            let end = after_quote.find('"').expect("a closing quote");
            let path = &after_quote[..end];
            let tail = after_quote[end + 1..].trim_start();
            let Some(tail) = tail.strip_prefix(',') else {
                continue;
            };
            let Some(tail) = tail.trim_start().strip_prefix("web::") else {
                panic!("{name}: the route {path:?} is not registered as web::<method>()");
            };
            let method: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            if path.starts_with('/') {
                found.insert((method.to_ascii_uppercase(), template(path)));
            }
        }
    }
    found
}

#[test]
fn every_route_is_documented_and_every_operation_is_a_route() {
    let doc = document();
    let documented = documented(&doc);
    let listed = listed();
    assert_eq!(listed.len(), ROUTES.len(), "ROUTES lists a route twice");

    let in_source = routes_in_source();
    let unlisted: Vec<_> = in_source.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "routes registered in src/http but missing from ROUTES in tests/it/openapi.rs (and so \
         perhaps from docs/openapi.json): {unlisted:?}"
    );
    let undocumented: Vec<_> = listed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from docs/openapi.json: {undocumented:?}"
    );
    let unrouted: Vec<_> = documented.difference(&listed).collect();
    assert!(
        unrouted.is_empty(),
        "operations of docs/openapi.json that are not routes (ROUTES): {unrouted:?}"
    );
}

/// Resolves a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("a local $ref");
            resolve(
                doc,
                doc.pointer(pointer)
                    .unwrap_or_else(|| panic!("{r} resolves")),
            )
        }
        None => v,
    }
}

#[test]
fn errors_are_the_contract_json_and_admin_operations_need_the_bearer() {
    let doc = document();
    assert_eq!(
        doc.pointer("/components/securitySchemes/adminToken"),
        Some(&json!({"type": "http", "scheme": "bearer", "description": "server.admin_token."})),
    );
    let error = doc
        .pointer("/components/schemas/Error")
        .expect("an Error schema");
    assert_eq!(error["required"], json!(["description", "trackingId"]));
    assert_eq!(
        error["properties"]["trackingId"]["pattern"],
        "^[0-9a-f]{32}$"
    );
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let what = format!("{} {path}", method.to_ascii_uppercase());
            let responses = op["responses"].as_object().expect("responses");
            assert!(!responses.is_empty(), "{what} documents no response");
            for (status, resp) in responses {
                let resp = resolve(&doc, resp);
                let Some(schema) = resp.pointer("/content/application~1json/schema") else {
                    continue;
                };
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        schema,
                        &json!({"$ref": "#/components/schemas/Error"}),
                        "{what} {status} is not the Error JSON"
                    );
                }
            }
            if path.starts_with("/admin/") {
                assert_eq!(
                    op["security"],
                    json!([{"adminToken": []}]),
                    "{what} lacks the adminToken security"
                );
                assert!(
                    responses.contains_key("401"),
                    "{what} does not document 401"
                );
            }
        }
    }
}

#[actix_web::test]
async fn openapi_is_served_and_every_operation_is_routed() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let base = engine.admin_url();
    assert_eq!(
        base,
        engine.base_url(),
        "one listener: every route is on it"
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // (a) The document as served is the file, and OpenAPI 3.1.
    let r = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let served: Value = r.json().await.unwrap();
    let on_disk: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        served, on_disk,
        "GET /openapi.json is not docs/openapi.json"
    );
    assert_eq!(served, document());
    let version = served["openapi"].as_str().expect("an openapi version");
    assert!(version.starts_with("3.1."), "openapi {version}, not 3.1.x");

    // (b) Every documented operation reaches a handler: the engine's unknown-route answer is
    // 404 with the description "<path> not found" (a handler's own 404 names what it did not
    // find, e.g. "tenant probe not found"); a method it does not route answers the same.
    let doc = document();
    let mut missed = Vec::new();
    for (method, template) in documented(&doc) {
        let op = &doc["paths"][&template][method.to_ascii_lowercase()];
        let path = fill(&template);
        let mut req = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN);
        let content = &op["requestBody"]["content"];
        if content.get("application/json").is_some() {
            req = req.header("content-type", "application/json").body(
                if template.ends_with("/configurations") {
                    "[]"
                } else {
                    "{}"
                },
            );
        } else if content.get("application/x-www-form-urlencoded").is_some() {
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body("");
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        let description = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["description"].as_str().map(str::to_string));
        let unknown_route =
            status == 404 && description.as_deref() == Some(&format!("{path} not found"));
        if unknown_route || status == 405 {
            missed.push(format!(
                "{method} {template} ({method} {path} answered {status} {body})"
            ));
        }
    }
    assert!(
        missed.is_empty(),
        "documented operations the engine does not route:\n{}",
        missed.join("\n")
    );

    // The probe of the check above: an undocumented path and a wrong method do answer it.
    for (method, path) in [("GET", "/no/such/route"), ("DELETE", "/admin/tenants")] {
        let r = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["description"],
            format!("{path} not found"),
            "{method} {path}"
        );
    }

    engine.shutdown().await;
    sim.shutdown().await;
}

/// A concrete path for a template: every `{param}` becomes `probe-<param>` (a tenant, device
/// or session no one has).
fn fill(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').expect("a closing brace") + open;
        out.push_str(&rest[..open]);
        out.push_str("probe-");
        out.push_str(&rest[open + 1..close].replace('_', "-"));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}
