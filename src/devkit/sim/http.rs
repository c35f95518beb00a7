//! The simulator's HTTP endpoints.
// Handlers return ready responses as errors; boxing them would only add noise here.
#![allow(clippy::result_large_err)]
use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::reply::{bearer_ok, error};
use super::{AccessToken, MAX_POLL_MESSAGES, Sim, WebhookReg, now_rfc3339, random_token};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/jwks/{region}", web::get().to(jwks))
        .route("/v1/access_token", web::post().to(token))
        .route(
            "/xapi/api/organizations/{org}/apps/{app}",
            web::get().to(get_app),
        )
        .route(
            "/xapi/api/organizations/{org}/apps/{app}",
            web::patch().to(patch_app),
        )
        .route(
            "/xapi/api/organizations/{org}/appManifests/{app}",
            web::get().to(manifest),
        )
        .route("/queue/{org}/poll", web::get().to(poll))
        .route(
            "/{cluster}/xapi/api/organizations/{org}/apps/{app}",
            web::get().to(get_app_moved),
        )
        .route(
            "/{cluster}/xapi/api/organizations/{org}/apps/{app}",
            web::patch().to(patch_app_moved),
        )
        .route("/{cluster}/queue/{org}/poll", web::get().to(poll_moved))
        .route("/_sim/orgs", web::get().to(list_orgs))
        .route("/_sim/orgs/{i}/activation", web::post().to(activation))
        .route("/_sim/orgs/{i}/emit", web::post().to(emit));
}

async fn jwks(sim: web::Data<Sim>) -> HttpResponse {
    sim.inner
        .jwks_fetches
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    HttpResponse::Ok().json(sim.jwks())
}

/// `POST /v1/access_token`: refresh-token grant with rotation.
async fn token(sim: web::Data<Sim>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let is_json = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let params: std::collections::HashMap<String, String> = if is_json {
        match serde_json::from_slice::<serde_json::Map<String, Value>>(&body) {
            Ok(m) => m
                .into_iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
                .collect(),
            Err(_) => return error(400, "invalid_request", "body is not JSON"),
        }
    } else {
        url::form_urlencoded::parse(&body).into_owned().collect()
    };
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    if let Some(status) = sim.state().oauth_status {
        let mut r = error(status, "temporarily_unavailable", "forced by the simulator");
        if status == 429 {
            r.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from_static("1"),
            );
        }
        return r;
    }
    if get("grant_type") != "refresh_token" {
        return error(400, "unsupported_grant_type", "only refresh_token");
    }
    let cfg = &sim.inner.cfg;
    if get("client_id") != cfg.client_id || get("client_secret") != cfg.client_secret {
        sim.inner.oauth.lock().expect("oauth lock").bad_client += 1;
        return error(401, "invalid_client", "client authentication failed");
    }
    let presented = get("refresh_token").to_string();
    let ttl = cfg.access_token_ttl;
    let access = random_token("at_");
    let refresh = random_token("rt_");
    let rotated = {
        let mut s = sim.state();
        match s.refresh.get_mut(&presented) {
            Some(t) if !t.used => {
                t.used = true;
                let org = t.org;
                s.access.insert(
                    access.clone(),
                    AccessToken {
                        org,
                        expires: Instant::now() + ttl,
                    },
                );
                s.refresh
                    .insert(refresh.clone(), super::RefreshToken { org, used: false });
                s.issued.push(access.clone());
                s.issued.push(refresh.clone());
                let hold = s.oauth_orgs[org].hold;
                if hold {
                    s.oauth_orgs[org].held += 1;
                }
                Ok((org, hold))
            }
            Some(t) => {
                let org = t.org;
                s.oauth_orgs[org].reused += 1;
                Err(true)
            }
            None => Err(false),
        }
    };
    let (org, hold) = match rotated {
        Ok(r) => r,
        Err(reused) => {
            let mut o = sim.inner.oauth.lock().expect("oauth lock");
            o.invalid_grant += 1;
            if reused {
                o.reused += 1;
                return error(400, "invalid_grant", "refresh token already used");
            }
            return error(400, "invalid_grant", "unknown refresh token");
        }
    };
    sim.inner.oauth.lock().expect("oauth lock").exchanges_ok += 1;
    if hold {
        // Rotated, answer held: until released or the simulator stops.
        let mut stop = sim.inner.stop.subscribe();
        loop {
            let released = sim.inner.token_release.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !sim.state().oauth_orgs[org].hold || *stop.borrow() {
                break;
            }
            tokio::select! {
                _ = released => {}
                _ = stop.changed() => {}
            }
        }
        sim.state().oauth_orgs[org].held -= 1;
    }
    HttpResponse::Ok().json(json!({
        "access_token": access,
        "expires_in": ttl.as_secs(),
        "token_type": "Bearer",
        "refresh_token": refresh,
        "refresh_token_expires_in": 5_090_490,
    }))
}

fn org_index(sim: &Sim, org_uuid: &str) -> Option<usize> {
    sim.inner.orgs.iter().position(|o| o.org_uuid == org_uuid)
}

/// Resolves the org of an appUrl, applying forced statuses and the bearer check.
fn app_guard(sim: &Sim, req: &HttpRequest, path: &(String, String)) -> Result<usize, HttpResponse> {
    let i =
        org_index(sim, &path.0).ok_or_else(|| error(404, "not_found", "unknown organization"))?;
    if path.1 != sim.inner.cfg.app_id {
        return Err(error(404, "not_found", "unknown app"));
    }
    if let Some(status) = sim.state().app_status[i] {
        return Err(error(status, "forced", "forced by the simulator"));
    }
    if !bearer_ok(sim, req, i) {
        return Err(error(
            401,
            "unauthorized",
            "missing, expired or foreign access token",
        ));
    }
    Ok(i)
}

fn details(sim: &Sim, i: usize, cluster: &str) -> Value {
    let s = sim.state();
    let a = &s.apps[i];
    let mut d = json!({
        "id": sim.inner.cfg.app_id,
        "manifestVersion": 1,
        "scopes": super::SCOPES.split(',').collect::<Vec<_>>(),
        "xapiAccessKeys": {
            "commands": ["Message.Send"],
            "statuses": ["RoomAnalytics.*", "Standby.State", "SystemUnit.State.NumberOfActiveCalls", "Audio.Microphones.Mute"],
        },
        "createdAt": "2021-10-27T08:48:26.232928Z",
        "updatedAt": now_rfc3339(),
        "provisioningState": a.provisioning_state,
        "actionsUrl": a.actions_url,
        "customer": a.customer,
    });
    if let Some(w) = &a.webhook {
        d["webhook"] = json!({ "targetUrl": w.target_url });
    }
    if let Some(q) = &a.queue_state {
        // After a move to another cluster, the queue is polled there.
        let poll = if cluster.is_empty() {
            a.poll_url.clone()
        } else {
            Some(format!(
                "{}/{cluster}/queue/{}/poll",
                sim.inner.base_url, sim.inner.orgs[i].org_uuid
            ))
        };
        d["queue"] = json!({ "state": q, "pollUrl": poll });
    }
    d
}

async fn get_app(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    match app_guard(&sim, &req, &path) {
        Ok(i) => {
            sim.inner
                .app_reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            HttpResponse::Ok().json(details(&sim, i, ""))
        }
        Err(r) => r,
    }
}

async fn get_app_moved(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> HttpResponse {
    let (cluster, org, app) = path.into_inner();
    match app_guard(&sim, &req, &(org, app)) {
        Ok(i) => {
            sim.inner
                .app_reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            HttpResponse::Ok().json(details(&sim, i, &cluster))
        }
        Err(r) => r,
    }
}

async fn patch_app_moved(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let (cluster, org, app) = path.into_inner();
    let resp = patch_app(sim.clone(), req, web::Path::from((org.clone(), app)), body).await;
    if !resp.status().is_success() {
        return resp;
    }
    match org_index(&sim, &org) {
        Some(i) => HttpResponse::Ok().json(details(&sim, i, &cluster)),
        None => resp,
    }
}

async fn poll_moved(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (cluster, org) = path.into_inner();
    *sim.inner
        .polls_by_cluster
        .lock()
        .expect("polls lock")
        .entry(cluster)
        .or_default() += 1;
    poll(sim, req, web::Path::from(org)).await
}

async fn patch_app(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let i = match app_guard(&sim, &req, &path) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "invalid_request", "body is not JSON");
    };
    {
        let mut s = sim.state();
        let refuse = &mut s.oauth_orgs[i].refuse_patches;
        if *refuse > 0 {
            *refuse -= 1;
            return error(400, "invalid_request", "refused by the simulator");
        }
    }
    if let Some(ps) = patch.get("provisioningState")
        && !matches!(ps.as_str(), Some("completed" | "error"))
    {
        return error(
            400,
            "invalid_request",
            "provisioningState must be completed or error",
        );
    }
    let webhook = match patch.get("webhook") {
        None => None,
        Some(w) => {
            let kind = w["type"].as_str().unwrap_or("");
            if !matches!(
                kind,
                "hmac_signature" | "basic_authentication" | "authorization_header" | "none"
            ) {
                return error(400, "invalid_request", "webhook.type invalid");
            }
            let secret = w["secret"].as_str().map(str::to_string);
            if matches!(kind, "hmac_signature" | "authorization_header")
                && secret.as_ref().is_none_or(|s| s.len() < 20)
            {
                return error(
                    400,
                    "invalid_request",
                    "webhook.secret must be 20 characters or longer",
                );
            }
            if kind != "none" && w["targetUrl"].as_str().is_none() {
                return error(400, "invalid_request", "webhook.targetUrl required");
            }
            Some((kind.to_string(), w.clone(), secret))
        }
    };
    let queue = patch
        .pointer("/queue/state")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(q) = &queue
        && !matches!(q.as_str(), "enabled" | "disabled" | "remove")
    {
        return error(400, "invalid_request", "queue.state invalid");
    }
    {
        let base = sim.inner.base_url.clone();
        let uuid = sim.inner.orgs[i].org_uuid.clone();
        let mut s = sim.state();
        let a = &mut s.apps[i];
        a.patches.push(patch.clone());
        if let Some(ps) = patch["provisioningState"].as_str() {
            a.provisioning_state = Some(ps.to_string());
        }
        if let Some(u) = patch["actionsUrl"].as_str() {
            a.actions_url = Some(u.to_string());
        }
        if let Some(c) = patch.get("customer") {
            a.customer = Some(c.clone());
        }
        let later = sim.inner.cfg.transport_apply_delay;
        let at = std::time::Instant::now() + later;
        a.apply_due();
        // A transport enabled or removed takes effect later (Webex's caches), in order.
        // A registration waits behind a webhook change still pending (in order), or — where
        // none was registered — for the delay itself; a change of a registration in force is
        // `webhook_apply_delay`'s.
        let webhook_pending = a
            .pending_transport
            .iter()
            .any(|(_, c)| matches!(c, super::TransportChange::Webhook(_)));
        let registered = a.webhook.is_some() && !webhook_pending;
        match webhook {
            Some((kind, _, _)) if kind == "none" => {
                a.pending_webhook = None;
                if later.is_zero() {
                    a.webhook = None;
                } else {
                    a.pending_transport
                        .push((at, super::TransportChange::Webhook(None)));
                }
            }
            Some((kind, w, secret)) => {
                let reg = WebhookReg {
                    target_url: w["targetUrl"].as_str().unwrap_or_default().to_string(),
                    kind,
                    secret,
                    username: w["username"].as_str().map(str::to_string),
                    password: w["password"].as_str().map(str::to_string),
                };
                let delay = sim.inner.cfg.webhook_apply_delay;
                if !registered && !later.is_zero() {
                    a.pending_transport
                        .push((at, super::TransportChange::Webhook(Some(reg))));
                } else if a.webhook.is_some() && !delay.is_zero() {
                    // A change of an existing registration applies later (Webex: about 5
                    // minutes).
                    a.pending_webhook = Some((std::time::Instant::now() + delay, reg));
                } else {
                    a.pending_webhook = None;
                    a.webhook = Some(reg);
                }
            }
            None => {}
        }
        match queue.as_deref() {
            Some("enabled") => {
                a.pending_transport
                    .retain(|(_, c)| !matches!(c, super::TransportChange::QueueRemoved));
                if a.queue_state.as_deref() != Some("enabled") {
                    a.queue_flowing_from = (!later.is_zero()).then_some(at);
                }
                a.queue_state = Some("enabled".into());
                a.queue_removed = false;
                a.poll_url = Some(format!("{base}/queue/{uuid}/poll"));
            }
            Some("disabled") => a.queue_state = Some("disabled".into()),
            Some("remove") if !later.is_zero() => a
                .pending_transport
                .push((at, super::TransportChange::QueueRemoved)),
            Some("remove") => a.remove_queue(),
            _ => {}
        }
    }
    hold_patch_answer(&sim, i).await;
    HttpResponse::Ok().json(details(&sim, i, ""))
}

/// Holds a PATCH's answer while the test says so (see `Sim::hold_patch_answers`).
async fn hold_patch_answer(sim: &Sim, i: usize) {
    if !sim.state().oauth_orgs[i].hold_patches {
        return;
    }
    sim.state().oauth_orgs[i].patches_held += 1;
    let stop = sim.inner.stop.subscribe();
    while sim.state().oauth_orgs[i].hold_patches && !*stop.borrow() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    sim.state().oauth_orgs[i].patches_held -= 1;
}

async fn manifest(sim: web::Data<Sim>, path: web::Path<(String, String)>) -> HttpResponse {
    if org_index(&sim, &path.0).is_none() {
        return error(404, "not_found", "unknown organization");
    }
    HttpResponse::Ok().json(json!({
        "id": sim.inner.cfg.app_id, "manifestVersion": 1, "displayName": "xapi-stream",
        "vendor": "xapi-stream", "email": "ops@example.com", "description": "Simulated manifest",
        "availability": "org_private", "apiAccess": [], "xapiAccess": {}, "provisioning": {"type": "manual"}
    }))
}

/// How often a waiting long-poll looks whether its client is still connected.
const PEER_CHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// The socket of one connection (see [`remember_socket`]).
#[derive(Clone, Copy)]
struct PeerSocket(std::os::fd::RawFd);

/// `on_connect` hook: remembers the connection's socket in its extensions.
pub(super) fn remember_socket(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
    use std::os::fd::AsRawFd;
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        ext.insert(PeerSocket(tcp.as_raw_fd()));
    }
}

/// True when the client closed the connection (or it was reset). A server's socket sees a
/// client that died: its kernel closed the connection. actix-web does not drop a pending
/// handler when that happens, so a long-poll would hand queued messages to a dead client;
/// Webex's behaviour here is not documented, and a real server may do just that.
fn peer_gone(req: &HttpRequest) -> bool {
    let Some(PeerSocket(fd)) = req.conn_data::<PeerSocket>().copied() else {
        return false;
    };
    let mut byte = 0u8;
    // SAFETY: `fd` is the socket of the connection this request arrived on, which stays open
    // while its handler runs; MSG_PEEK reads nothing out of it, MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => !matches!(
            std::io::Error::last_os_error().kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        ),
    }
}

/// Decrements the poller counts (of the queue, of the connection) when a poll ends, however
/// it ends.
struct PollerGuard<'a>(&'a Sim, usize, Option<i32>);

impl Drop for PollerGuard<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.queues[self.1].pollers -= 1;
        if let Some(fd) = self.2
            && let Some(n) = s.polls_on_connection.get_mut(&fd)
        {
            *n -= 1;
            if *n == 0 {
                s.polls_on_connection.remove(&fd);
            }
        }
    }
}

/// `GET /queue/<org>/poll`: up to 10 messages; waits up to the poll wait when empty.
async fn poll(sim: web::Data<Sim>, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    sim.inner
        .polls
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let Some(i) = org_index(&sim, &path) else {
        return error(404, "not_found", "unknown queue");
    };
    {
        let mut s = sim.state();
        let a = &mut s.apps[i];
        a.apply_due();
        if a.queue_removed {
            return error(404, "not_found", "the queue was removed");
        }
    }
    if !bearer_ok(&sim, &req, i) {
        return error(
            401,
            "unauthorized",
            "missing, expired or foreign access token",
        );
    }
    {
        let mut s = sim.state();
        let fail = &mut s.oauth_orgs[i].fail_polls;
        if *fail > 0 {
            *fail -= 1;
            return error(503, "unavailable", "forced by the simulator");
        }
    }
    let fd = req.conn_data::<PeerSocket>().map(|p| p.0);
    let wait = {
        let mut s = sim.state();
        let q = &mut s.queues[i];
        q.pollers += 1;
        q.max_pollers = q.max_pollers.max(q.pollers);
        q.last_poll = Some(std::time::Instant::now());
        if let Some(fd) = fd {
            let n = s.polls_on_connection.entry(fd).or_default();
            *n += 1;
            let n = *n;
            s.max_polls_on_connection = s.max_polls_on_connection.max(n);
        }
        if req.version() == actix_web::http::Version::HTTP_2 {
            s.http2_polls += 1;
        }
        s.poll_wait
    };
    let _guard = PollerGuard(&sim, i, fd);
    let deadline = tokio::time::Instant::now() + wait;
    let mut stop = sim.inner.stop.subscribe();
    loop {
        let notified = sim.inner.queue_notify[i].notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if peer_gone(&req) {
            // Nothing is taken for a client that is gone: the messages stay queued.
            return error(499, "client_closed", "the poller went away");
        }
        let taken = take(&sim, i);
        if !taken.is_empty() || tokio::time::Instant::now() >= deadline || *stop.borrow() {
            return HttpResponse::Ok().json(json!({ "messages": taken }));
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = tokio::time::sleep(PEER_CHECK) => {}
            _ = stop.changed() => {}
        }
    }
}

fn take(sim: &Sim, i: usize) -> Vec<Value> {
    let retention = sim.inner.cfg.retention;
    let mut s = sim.state();
    let q = &mut s.queues[i].messages;
    while q.front().is_some_and(|(t, _)| t.elapsed() > retention) {
        q.pop_front();
    }
    let n = q.len().min(MAX_POLL_MESSAGES);
    q.drain(..n).map(|(_, m)| m).collect()
}

async fn list_orgs(sim: web::Data<Sim>) -> HttpResponse {
    let orgs: Vec<Value> = sim
        .orgs()
        .into_iter()
        .map(|o| {
            let i = o.index;
            json!({ "org": o, "app": sim.app_state(i), "queue_length": sim.queue_len(i) })
        })
        .collect();
    HttpResponse::Ok().json(orgs)
}

fn index(sim: &Sim, raw: &str) -> Result<usize, HttpResponse> {
    raw.parse::<usize>()
        .ok()
        .filter(|i| *i < sim.inner.orgs.len())
        .ok_or_else(|| error(404, "not_found", "no such organization index"))
}

async fn activation(sim: web::Data<Sim>, path: web::Path<String>) -> HttpResponse {
    match index(&sim, &path) {
        Ok(i) => HttpResponse::Ok().json(json!({ "jwt": sim.activation_jwt(i) })),
        Err(r) => r,
    }
}

#[derive(serde::Deserialize)]
struct EmitQuery {
    n: Option<usize>,
}

async fn emit(
    sim: web::Data<Sim>,
    path: web::Path<String>,
    q: web::Query<EmitQuery>,
) -> HttpResponse {
    let i = match index(&sim, &path) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let msgs = sim.generate(i, q.n.unwrap_or(1).min(1000));
    let report = sim.deliver(i, &msgs).await;
    HttpResponse::Ok().json(report)
}
