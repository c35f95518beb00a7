//! The Webex cloud simulator: one HTTP server that plays Webex for N organizations — regional
//! JWKS with its own P-256 keys, ES256 activation and action JWTs, the OAuth token endpoint with
//! refresh-token rotation, appUrl GET/PATCH, long-poll queues, and device models whose changes
//! arrive as HMAC-signed webhooks and/or queue messages. It shares no code with the engine: it
//! is the oracle the engine is tested against.
//!
//! # Layout
//! - [`keys`]: signing keys and JWKS entries.
//! - [`devices`]: device models producing realistic status changes and events.
//! - `http`: the endpoints of the integration protocol (JWKS, OAuth, appUrl, queues).
//! - `api`: the Webex public API a device integration uses: `/devices`, `/workspaces`,
//!   `/xapi/status`, `/xapi/command/<Name>`, `/deviceConfigurations`, with paging, rate limits
//!   (429 + Retry-After), forced 403/5xx and a log of every call.
mod api;
mod devices;
mod http;
pub mod keys;
mod reply;
pub use api::{ApiCall, CommandCall};
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use serde_json::{Value, json};
use sha1::Sha1;
use tokio::sync::Notify;

use devices::DeviceModel;
use keys::SigningKey;

/// The five regions of the protocol's JWKS table.
pub const REGIONS: [&str; 5] = [
    "us-west-2_r",
    "us-east-2_a",
    "eu-central-1_k",
    "me-central-1_d",
    "us-gov-west-1_a1",
];
/// At most this many messages per poll.
pub const MAX_POLL_MESSAGES: usize = 10;
/// Activation JWTs expire after a day.
const ACTIVATION_TTL_HOURS: i64 = 24;
/// Scopes granted to every organization.
const SCOPES: &str = "spark-admin:devices_read,spark:xapi_statuses,spark-admin:workspaces_read,spark:xapi_commands,spark-admin:devices_write";

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub orgs: usize,
    pub devices_per_org: usize,
    pub app_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub access_token_ttl: Duration,
    pub poll_wait: Duration,
    pub retention: Duration,
    pub seed: u64,
    /// A PATCH that *changes* a registered webhook (new secret, scheme or URL) takes effect
    /// this long after it was answered, as Webex applies new settings about five minutes
    /// later; until then messages are still sent with the old registration. A first
    /// registration applies at once. Default zero.
    pub webhook_apply_delay: Duration,
    /// A PATCH that enables or removes a transport — a webhook registered where none was,
    /// `{"webhook": {"type": "none"}}`, `{"queue": {"state": "enabled"}}` or `"remove"` — takes
    /// effect this long after it was answered, as Webex's caches do (up to 10 minutes): until
    /// then messages flow as before (an enabled queue exists at once, and is polled, but
    /// receives messages only from then on). A removed queue's poll URL answers 404. Default
    /// zero: at once.
    pub transport_apply_delay: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            orgs: 3,
            devices_per_org: 4,
            app_id: "ac6b6972-538e-11ec-bf63-0242ac130002".into(),
            client_id: "sim-client-id".into(),
            client_secret: "sim-client-secret".into(),
            access_token_ttl: Duration::from_secs(7199),
            poll_wait: Duration::from_secs(20),
            retention: Duration::from_secs(600),
            seed: 1,
            webhook_apply_delay: Duration::ZERO,
            transport_apply_delay: Duration::ZERO,
        }
    }
}

/// A simulated customer organization.
#[derive(Debug, Clone, Serialize)]
pub struct OrgInfo {
    pub index: usize,
    /// The JWT `sub`.
    pub org_id: String,
    pub org_uuid: String,
    pub name: String,
    pub region: String,
    pub app_url: String,
    pub devices: Vec<DeviceInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    pub device_id: String,
    pub workspace_id: String,
    pub name: String,
    pub product: String,
}

/// A webhook registered by a PATCH.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookReg {
    pub target_url: String,
    pub kind: String,
    pub secret: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// What the simulator knows of one organization's integration.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AppState {
    pub provisioning_state: Option<String>,
    pub actions_url: Option<String>,
    pub webhook: Option<WebhookReg>,
    pub queue_state: Option<String>,
    pub poll_url: Option<String>,
    pub patches: Vec<Value>,
    pub customer: Option<Value>,
    /// A changed registration not in effect yet (see [`SimConfig::webhook_apply_delay`]).
    #[serde(skip)]
    pub pending_webhook: Option<(Instant, WebhookReg)>,
    /// Transports enabled or removed, not in effect yet (see
    /// [`SimConfig::transport_apply_delay`]), in the order they were asked for.
    #[serde(skip)]
    pub pending_transport: Vec<(Instant, TransportChange)>,
    /// The enabled queue receives messages from then on.
    #[serde(skip)]
    pub queue_flowing_from: Option<Instant>,
    /// The queue was removed (`state: remove`, in effect): its poll URL answers 404.
    pub queue_removed: bool,
}

/// A transport change waiting to take effect.
#[derive(Debug, Clone)]
pub enum TransportChange {
    /// The webhook registered (`Some`) or removed (`None`).
    Webhook(Option<WebhookReg>),
    QueueRemoved,
}

impl AppState {
    /// Puts a pending webhook registration into effect once its time has come.
    fn apply_due(&mut self) {
        if self
            .pending_webhook
            .as_ref()
            .is_some_and(|(at, _)| Instant::now() >= *at)
            && let Some((_, w)) = self.pending_webhook.take()
        {
            self.webhook = Some(w);
        }
        let now = Instant::now();
        while self
            .pending_transport
            .first()
            .is_some_and(|(at, _)| now >= *at)
        {
            match self.pending_transport.remove(0).1 {
                TransportChange::Webhook(w) => self.webhook = w,
                TransportChange::QueueRemoved => self.remove_queue(),
            }
        }
    }

    fn remove_queue(&mut self) {
        self.queue_state = None;
        self.poll_url = None;
        self.queue_flowing_from = None;
        self.queue_removed = true;
    }

    /// Whether messages go to the queue now.
    pub fn queue_receives(&self) -> bool {
        self.queue_state.as_deref() == Some("enabled")
            && self.queue_flowing_from.is_none_or(|t| Instant::now() >= t)
    }
}

/// Counters of the OAuth endpoint.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct OAuthStats {
    /// Successful exchanges.
    pub exchanges_ok: u64,
    /// Refused refresh tokens (unknown, revoked, or already used).
    pub invalid_grant: u64,
    /// Of those, tokens that had been valid but were already used (rotation violated).
    pub reused: u64,
    /// Wrong client id or secret.
    pub bad_client: u64,
}

/// Outcome of [`Sim::deliver`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeliveryReport {
    pub queued: usize,
    pub webhook_statuses: Vec<u16>,
}

struct RefreshToken {
    org: usize,
    used: bool,
}

struct AccessToken {
    org: usize,
    expires: Instant,
}

struct QueueState {
    messages: VecDeque<(Instant, Value)>,
    pollers: usize,
    max_pollers: usize,
    /// When an authorized poll last arrived.
    last_poll: Option<Instant>,
}

struct State {
    refresh: HashMap<String, RefreshToken>,
    access: HashMap<String, AccessToken>,
    apps: Vec<AppState>,
    app_status: Vec<Option<u16>>,
    oauth_status: Option<u16>,
    queues: Vec<QueueState>,
    devices: Vec<Vec<DeviceModel>>,
    rng: StdRng,
    issued: Vec<String>,
    poll_wait: Duration,
    regions: Vec<String>,
    /// Per organization: inventory attributes of each device (parallel to `devices`).
    inventory: Vec<Vec<api::InventoryDevice>>,
    /// Per organization: the public API's knobs and call log.
    api: Vec<api::ApiState>,
    /// Per organization: the OAuth knobs and what happened to its refresh tokens.
    oauth_orgs: Vec<OrgOAuth>,
    /// Polls waiting now per connection (by socket), the most seen on one, and how many
    /// polls came over HTTP/2.
    polls_on_connection: HashMap<i32, usize>,
    max_polls_on_connection: usize,
    http2_polls: u64,
}

/// Test switches and counters of one organization's token exchanges and polls.
#[derive(Default)]
struct OrgOAuth {
    /// Hold every token answer for this org *after* rotating (the new refresh token exists,
    /// the old one is spent) until released: a client killed meanwhile loses the new one.
    hold: bool,
    /// Answers being held right now.
    held: usize,
    /// Refresh tokens of this org presented again after they were used.
    reused: u64,
    /// The next this many polls of the queue are answered 503.
    fail_polls: usize,
    /// The next this many PATCHes of the appUrl are refused (400).
    refuse_patches: usize,
    /// Hold every answer to a PATCH of the appUrl *after* applying it, until released: a
    /// client killed meanwhile never learns that Webex took it.
    hold_patches: bool,
    /// PATCH answers being held right now.
    patches_held: usize,
}

struct Inner {
    cfg: SimConfig,
    base_url: String,
    keys: Mutex<Vec<SigningKey>>,
    orgs: Vec<OrgInfo>,
    state: Mutex<State>,
    queue_notify: Vec<Notify>,
    /// Wakes held token answers (see [`Sim::hold_token_answers`]).
    token_release: Notify,
    oauth: Mutex<OAuthStats>,
    jwks_fetches: AtomicU64,
    expired_bearer_calls: AtomicU64,
    app_reads: AtomicU64,
    polls: AtomicU64,
    polls_by_cluster: Mutex<HashMap<String, u64>>,
    http: reqwest::Client,
    server: Mutex<Option<actix_web::dev::ServerHandle>>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// The running simulator. Cheap to clone.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

/// Lowercase hex HMAC-SHA1 of `body` with `secret` (the `X-Spark-Signature`).
pub fn sign_webhook(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn deterministic_uuid(seed: u64, kind: u64, i: usize) -> uuid::Uuid {
    let mut rng = StdRng::seed_from_u64(seed ^ (kind << 32) ^ i as u64);
    uuid::Builder::from_random_bytes(rand::Rng::random(&mut rng)).into_uuid()
}

fn webex_id(region: &str, kind: &str, id: &uuid::Uuid) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(format!("ciscospark://urn:TEAM:{region}/{kind}/{id}"))
}

fn random_token(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(rand::random::<[u8; 24]>()))
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Sim {
    /// Binds `bind` and serves in the background on the current actix runtime.
    pub async fn start(cfg: SimConfig, bind: SocketAddr) -> std::io::Result<Sim> {
        let listener = std::net::TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let base_url = format!("http://{addr}");
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let region = "us-east-2_a";
        let mut orgs = Vec::with_capacity(cfg.orgs);
        let mut devices = Vec::with_capacity(cfg.orgs);
        for i in 0..cfg.orgs {
            let org_uuid = deterministic_uuid(cfg.seed, 1, i);
            let models: Vec<DeviceModel> = (0..cfg.devices_per_org)
                .map(|d| {
                    let k = i * 100_000 + d;
                    DeviceModel::new(
                        webex_id(region, "DEVICE", &deterministic_uuid(cfg.seed, 2, k)),
                        webex_id(region, "WORKSPACE", &deterministic_uuid(cfg.seed, 3, k)),
                        d,
                        &mut rng,
                    )
                })
                .collect();
            orgs.push(OrgInfo {
                index: i,
                org_id: webex_id(region, "ORGANIZATION", &org_uuid),
                org_uuid: org_uuid.to_string(),
                name: format!("Customer {:03}", i + 1),
                region: region.into(),
                app_url: format!(
                    "{base_url}/xapi/api/organizations/{org_uuid}/apps/{}",
                    cfg.app_id
                ),
                devices: models
                    .iter()
                    .map(|m| DeviceInfo {
                        device_id: m.device_id.clone(),
                        workspace_id: m.workspace_id.clone(),
                        name: m.name.clone(),
                        product: m.product.clone(),
                    })
                    .collect(),
            });
            devices.push(models);
        }
        let state = State {
            refresh: HashMap::new(),
            access: HashMap::new(),
            apps: vec![AppState::default(); cfg.orgs],
            app_status: vec![None; cfg.orgs],
            oauth_status: None,
            queues: (0..cfg.orgs)
                .map(|_| QueueState {
                    messages: VecDeque::new(),
                    pollers: 0,
                    max_pollers: 0,
                    last_poll: None,
                })
                .collect(),
            devices,
            rng,
            issued: Vec::new(),
            poll_wait: cfg.poll_wait,
            regions: vec![region.to_string(); cfg.orgs],
            inventory: orgs
                .iter()
                .map(|o| {
                    o.devices
                        .iter()
                        .map(|d| api::InventoryDevice::new(&d.name))
                        .collect()
                })
                .collect(),
            api: (0..cfg.orgs).map(|_| api::ApiState::default()).collect(),
            oauth_orgs: (0..cfg.orgs).map(|_| OrgOAuth::default()).collect(),
            polls_on_connection: HashMap::new(),
            max_polls_on_connection: 0,
            http2_polls: 0,
        };
        let (stop, _) = tokio::sync::watch::channel(false);
        let inner = Arc::new(Inner {
            queue_notify: (0..cfg.orgs).map(|_| Notify::new()).collect(),
            token_release: Notify::new(),
            cfg,
            base_url,
            keys: Mutex::new(vec![SigningKey::generate()]),
            orgs,
            state: Mutex::new(state),
            oauth: Mutex::new(OAuthStats::default()),
            jwks_fetches: AtomicU64::new(0),
            expired_bearer_calls: AtomicU64::new(0),
            app_reads: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            polls_by_cluster: Mutex::new(HashMap::new()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client builds"),
            server: Mutex::new(None),
            stop,
        });
        let sim = Sim { inner };
        let data = actix_web::web::Data::new(sim.clone());
        let server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .app_data(data.clone())
                .configure(http::routes)
                .configure(api::routes)
        })
        // Each connection's socket, so that a long-poll can tell its client is gone.
        .on_connect(http::remember_socket)
        .workers(2)
        .disable_signals()
        .shutdown_timeout(1)
        // HTTP/1.1, and HTTP/2 with prior knowledge (an engine with webex.plain_http2).
        .listen_auto_h2c(listener)?
        .run();
        *sim.inner.server.lock().expect("server lock") = Some(server.handle());
        tokio::spawn(server);
        Ok(sim)
    }

    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    pub fn jwks_url(&self, region: &str) -> String {
        format!("{}/jwks/{region}", self.inner.base_url)
    }

    pub fn jwks_table(&self) -> BTreeMap<String, String> {
        REGIONS
            .iter()
            .map(|r| (r.to_string(), self.jwks_url(r)))
            .collect()
    }

    pub fn orgs(&self) -> Vec<OrgInfo> {
        self.inner.orgs.clone()
    }

    pub fn org(&self, i: usize) -> OrgInfo {
        self.inner.orgs[i].clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("sim state lock")
    }

    /// A new refresh token valid at the OAuth endpoint for org `i`.
    pub fn mint_refresh_token(&self, i: usize) -> String {
        let t = random_token("rt_");
        let mut s = self.state();
        s.refresh.insert(
            t.clone(),
            RefreshToken {
                org: i,
                used: false,
            },
        );
        s.issued.push(t.clone());
        t
    }

    /// Makes every refresh token of org `i` invalid (as a revocation or cluster move does).
    pub fn revoke_refresh_tokens(&self, i: usize) {
        self.state().refresh.retain(|_, t| t.org != i);
    }

    /// Forgets every access token of org `i`: its next call is answered 401, and the engine
    /// exchanges its refresh token.
    pub fn revoke_access_tokens(&self, i: usize) {
        self.state().access.retain(|_, t| t.org != i);
    }

    /// The claims an activation JWT for org `i` carries (fresh jti and refresh token).
    pub fn activation_claims(&self, i: usize) -> Value {
        let org = &self.inner.orgs[i];
        let base = &self.inner.base_url;
        let now = chrono::Utc::now();
        let region = self.state().regions[i].clone();
        json!({
            "sub": org.org_id,
            "oauthUrl": format!("{base}/v1/access_token"),
            "orgName": org.name,
            "appUrl": org.app_url,
            "userId": webex_id(&region, "PEOPLE", &deterministic_uuid(self.inner.cfg.seed, 4, i)),
            "manifestUrl": format!("{base}/xapi/api/organizations/{}/appManifests/{}", org.org_uuid, self.inner.cfg.app_id),
            "appId": self.inner.cfg.app_id,
            "expiryTime": (now + chrono::Duration::hours(ACTIVATION_TTL_HOURS)).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            "action": "provision",
            "webexapisBaseUrl": format!("{base}/v1"),
            "scopes": SCOPES,
            "region": region,
            "iat": now.timestamp(),
            "jti": base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>()),
            "refreshToken": self.mint_refresh_token(i),
            "xapiAccess": json!({
                "commands": ["Message.Send"],
                "statuses": ["RoomAnalytics.*", "Standby.State", "SystemUnit.State.NumberOfActiveCalls", "Audio.Microphones.Mute"],
                "events": ["BootEvent", "UserInterface.Message.Prompt.Response", "Bookings.Start"],
            }).to_string(),
        })
    }

    /// A signed activation JWT for org `i`.
    pub fn activation_jwt(&self, i: usize) -> String {
        self.sign_claims(&self.activation_claims(i), None)
    }

    /// A signed action JWT (`healthCheck`, `update`, `updateApproved`, `deprovision`).
    pub fn action_jwt(&self, i: usize, action: &str, extra: Value) -> String {
        let mut claims = json!({
            "sub": self.inner.orgs[i].org_id,
            "iat": chrono::Utc::now().timestamp(),
            "jti": base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>()),
            "appId": self.inner.cfg.app_id,
            "action": action,
        });
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        self.sign_claims(&claims, None)
    }

    /// Signs `claims` with the current key.
    pub fn sign_claims(&self, claims: &Value, kid: Option<&str>) -> String {
        let keys = self.inner.keys.lock().expect("keys lock");
        keys.last().expect("at least one key").sign(claims, kid)
    }

    /// Publishes a new key and signs with it from now on.
    pub fn rotate_signing_key(&self) {
        self.inner
            .keys
            .lock()
            .expect("keys lock")
            .push(SigningKey::generate());
    }

    /// `f` of the newest signing key.
    fn current_key<T>(&self, f: impl FnOnce(&SigningKey) -> T) -> T {
        f(self
            .inner
            .keys
            .lock()
            .expect("keys lock")
            .last()
            .expect("a key"))
    }

    pub fn current_kid(&self) -> String {
        self.current_key(|k| k.kid.clone())
    }

    pub fn public_key_pem(&self) -> String {
        self.current_key(|k| k.public_pem.clone())
    }

    fn jwks(&self) -> Value {
        let keys = self.inner.keys.lock().expect("keys lock");
        json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }

    pub fn app_state(&self, i: usize) -> AppState {
        let mut s = self.state();
        s.apps[i].apply_due();
        s.apps[i].clone()
    }

    pub fn oauth_stats(&self) -> OAuthStats {
        *self.inner.oauth.lock().expect("oauth lock")
    }

    pub fn jwks_fetches(&self) -> u64 {
        self.inner.jwks_fetches.load(Ordering::Relaxed)
    }

    /// Calls that presented an expired, unknown or other-organization access token.
    pub fn expired_bearer_calls(&self) -> u64 {
        self.inner.expired_bearer_calls.load(Ordering::Relaxed)
    }

    /// Successful GETs of any appUrl.
    pub fn app_reads(&self) -> u64 {
        self.inner.app_reads.load(Ordering::Relaxed)
    }

    /// Queue polls received (any organization, any outcome).
    pub fn polls(&self) -> u64 {
        self.inner.polls.load(Ordering::Relaxed)
    }

    /// Polls of queues under a cluster prefix (after an `update` moved the appUrl there).
    pub fn polls_in_cluster(&self, cluster: &str) -> u64 {
        self.inner
            .polls_by_cluster
            .lock()
            .expect("polls lock")
            .get(cluster)
            .copied()
            .unwrap_or(0)
    }

    /// org `i`'s appUrl as seen after a move to `cluster` (for `update` actions).
    pub fn moved_app_url(&self, i: usize, cluster: &str) -> String {
        let o = &self.inner.orgs[i];
        format!(
            "{}/{cluster}/xapi/api/organizations/{}/apps/{}",
            self.inner.base_url, o.org_uuid, self.inner.cfg.app_id
        )
    }

    /// Every refresh and access token the simulator issued (to look for leaks).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state().issued.clone()
    }

    pub fn set_app_url_status(&self, i: usize, status: Option<u16>) {
        self.state().app_status[i] = status;
    }

    pub fn set_oauth_status(&self, status: Option<u16>) {
        self.state().oauth_status = status;
    }

    /// While on, every successful token exchange of org `i` rotates the refresh token and
    /// then holds its answer until switched off (a client that dies meanwhile never learns the
    /// new refresh token, and the old one is spent).
    pub fn hold_token_answers(&self, i: usize, on: bool) {
        self.state().oauth_orgs[i].hold = on;
        if !on {
            self.inner.token_release.notify_waiters();
        }
    }

    /// Token answers of org `i` being held right now (rotation done, answer not sent).
    pub fn token_answers_held(&self, i: usize) -> usize {
        self.state().oauth_orgs[i].held
    }

    /// Refresh tokens of org `i` that were presented again after being used.
    pub fn reused_refresh_tokens(&self, i: usize) -> u64 {
        self.state().oauth_orgs[i].reused
    }

    /// Holds (or releases) the answers to PATCHes of org `i`'s appUrl, each after applying it.
    pub fn hold_patch_answers(&self, i: usize, on: bool) {
        self.state().oauth_orgs[i].hold_patches = on;
    }

    /// PATCH answers of org `i` being held right now (applied, not answered).
    pub fn patch_answers_held(&self, i: usize) -> usize {
        self.state().oauth_orgs[i].patches_held
    }

    /// The next `n` PATCHes of org `i`'s appUrl are refused (400, nothing applied).
    pub fn refuse_next_patches(&self, i: usize, n: usize) {
        self.state().oauth_orgs[i].refuse_patches = n;
    }

    /// The next `n` polls of org `i`'s queue are answered 503 (they count in [`Sim::polls`],
    /// not in [`Sim::last_poll`]).
    pub fn fail_next_polls(&self, i: usize, n: usize) {
        self.state().oauth_orgs[i].fail_polls = n;
    }

    /// The most pollers seen waiting on org `i`'s queue at once.
    pub fn max_concurrent_pollers(&self, i: usize) -> usize {
        self.state().queues[i].max_pollers
    }

    /// The most polls seen waiting at once on one connection (HTTP/2 multiplexes them), and
    /// how many polls came over HTTP/2.
    pub fn poll_connections(&self) -> (usize, u64) {
        let s = self.state();
        (s.max_polls_on_connection, s.http2_polls)
    }

    /// When an authorized poll of org `i`'s queue last arrived.
    pub fn last_poll(&self, i: usize) -> Option<Instant> {
        self.state().queues[i].last_poll
    }

    /// `n` realistic messages from org `i`'s devices.
    pub fn generate(&self, i: usize, n: usize) -> Vec<Value> {
        let app = self.inner.cfg.app_id.clone();
        let org = self.inner.orgs[i].org_id.clone();
        let mut s = self.state();
        let State { devices, rng, .. } = &mut *s;
        let models = &mut devices[i];
        if models.is_empty() {
            return Vec::new();
        }
        (0..n)
            .map(|_| {
                let d = rand::Rng::random_range(rng, 0..models.len());
                models[d].step(&app, &org, rng)
            })
            .collect()
    }

    /// The full sync of one device.
    pub fn full_sync(&self, i: usize, device: usize) -> Value {
        let app = self.inner.cfg.app_id.clone();
        let org = self.inner.orgs[i].org_id.clone();
        self.state().devices[i][device].full_sync(&app, &org)
    }

    /// Appends to org `i`'s queue (retained for `retention`).
    pub fn enqueue(&self, i: usize, msg: Value) {
        self.state().queues[i]
            .messages
            .push_back((Instant::now(), msg));
        self.inner.queue_notify[i].notify_waiters();
    }

    pub fn queue_len(&self, i: usize) -> usize {
        let retention = self.inner.cfg.retention;
        let mut s = self.state();
        let q = &mut s.queues[i].messages;
        while q.front().is_some_and(|(t, _)| t.elapsed() > retention) {
            q.pop_front();
        }
        q.len()
    }

    /// Delivers as Webex does: to the queue if enabled, and as a signed webhook if registered.
    pub async fn deliver(&self, i: usize, msgs: &[Value]) -> DeliveryReport {
        let (queue_on, hook) = {
            let mut s = self.state();
            let a = &mut s.apps[i];
            a.apply_due();
            (a.queue_receives(), a.webhook.clone())
        };
        let mut report = DeliveryReport::default();
        if queue_on {
            for m in msgs {
                self.enqueue(i, m.clone());
            }
            report.queued = msgs.len();
        }
        if let Some(h) = hook {
            let posts = msgs.iter().map(|m| self.post_webhook(&h, m));
            report.webhook_statuses = futures::future::join_all(posts).await;
        }
        report
    }

    /// POSTs one message to a webhook, authenticated per its type; 0 when unreachable.
    pub async fn post_webhook(&self, hook: &WebhookReg, msg: &Value) -> u16 {
        let body = serde_json::to_vec(msg).expect("message serializes");
        let mut req = self
            .inner
            .http
            .post(&hook.target_url)
            .header("Content-Type", "application/json");
        match hook.kind.as_str() {
            "hmac_signature" => {
                req = req.header(
                    "X-Spark-Signature",
                    sign_webhook(hook.secret.as_deref().unwrap_or(""), &body),
                );
            }
            "authorization_header" => {
                req = req.header("Authorization", hook.secret.clone().unwrap_or_default())
            }
            "basic_authentication" => {
                req = req.basic_auth(
                    hook.username.clone().unwrap_or_default(),
                    hook.password.clone(),
                );
            }
            _ => {}
        }
        match req.body(body).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Background traffic: `rate` messages per second over the organizations that have a
    /// webhook or an enabled queue, until [`shutdown`](Self::shutdown).
    pub fn start_traffic(&self, rate: f64) {
        if rate <= 0.0 {
            return;
        }
        let sim = self.clone();
        let mut stop = self.inner.stop.subscribe();
        tokio::spawn(async move {
            const TICK: Duration = Duration::from_millis(50);
            let mut tick = tokio::time::interval(TICK);
            let mut carry = 0.0;
            let mut next_org = 0usize;
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tick.tick() => {}
                }
                carry += rate * TICK.as_secs_f64();
                let n = carry.floor() as usize;
                carry -= n as f64;
                let active: Vec<usize> = {
                    let s = sim.state();
                    (0..s.apps.len())
                        .filter(|&i| s.apps[i].webhook.is_some() || s.apps[i].queue_receives())
                        .collect()
                };
                if active.is_empty() || n == 0 {
                    continue;
                }
                let mut batch: HashMap<usize, usize> = HashMap::new();
                for _ in 0..n {
                    *batch.entry(active[next_org % active.len()]).or_default() += 1;
                    next_org += 1;
                }
                for (i, k) in batch {
                    let msgs = sim.generate(i, k);
                    let s2 = sim.clone();
                    tokio::spawn(async move { s2.deliver(i, &msgs).await });
                }
            }
        });
    }

    /// Stops the HTTP server and the traffic generator.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        for n in &self.inner.queue_notify {
            n.notify_waiters();
        }
        let handle = self.inner.server.lock().expect("server lock").take();
        if let Some(h) = handle {
            h.stop(false).await;
        }
    }
}
