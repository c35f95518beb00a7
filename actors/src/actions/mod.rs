//! Webex → integration actions for one tenant: `healthCheck`, `update`, `updateApproved` and
//! `deprovision`. Each runs against the tenant's shared state; starting and stopping children
//! goes through the supervisor.
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use crate::protocol::jwt::{ActionClaims, ActionKind, split_scopes};
use crate::store::tenants::{ProvisioningState, TokensState};
use crate::supervisor::TenantHandle;
use crate::tenant::{TenantShared, TokenError, WithToken};
use crate::webex::client::AppUrlError;

/// A health check answers within this bound even when Webex or Redis hang.
pub const HEALTH_CHECK_BOUND: Duration = Duration::from_secs(8);

/// What to answer Webex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOutcome {
    Health {
        operational_state: &'static str,
        tokens_state: &'static str,
    },
    NoContent,
    Redirect(String),
}

/// The action could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("storage unavailable: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Runs a verified action for the tenant.
pub async fn run(
    handle: &TenantHandle,
    claims: ActionClaims,
) -> Result<ActionOutcome, ActionError> {
    let shared = &handle.shared;
    match claims.action {
        ActionKind::HealthCheck => Ok(health_check(shared).await),
        ActionKind::Update => update(handle, claims).await,
        ActionKind::UpdateApproved => update_approved(shared, claims).await,
        ActionKind::Deprovision => deprovision(handle, claims.interactive.unwrap_or(false)).await,
        ActionKind::Provision => Ok(ActionOutcome::NoContent),
    }
}

/// `tokensState` per the protocol (GET appUrl: 200 valid; 401/403 and no new token: invalid;
/// anything else unknown) and `operationalState` (Redis unreachable: outage; ingest saturated or
/// the queue poller failing: impaired).
pub async fn health_check(shared: &TenantShared) -> ActionOutcome {
    let tokens = tokio::time::timeout(HEALTH_CHECK_BOUND, tokens_state(shared))
        .await
        .unwrap_or(TokensState::Unknown);
    let deps = &shared.deps();
    let operational = if deps.store().ping().await.is_err() {
        "outage"
    } else if deps.writer().capacity() == 0 || shared.poller_failing.load(Ordering::Relaxed) {
        "impaired"
    } else {
        "operational"
    };
    ActionOutcome::Health {
        operational_state: operational,
        tokens_state: match tokens {
            TokensState::Valid => "valid",
            TokensState::Invalid => "invalid",
            TokensState::Unknown => "unknown",
        },
    }
}

async fn tokens_state(shared: &TenantShared) -> TokensState {
    let deps = &shared.deps();
    let app_url = shared.record().app_url;
    match shared
        .with_token(|t| {
            let (webex, url) = (deps.webex(), &app_url);
            async move { webex.get_app(url, &t).await }
        })
        .await
    {
        Ok(_) => TokensState::Valid,
        Err(WithToken::Call(AppUrlError::Unauthorized(_))) => TokensState::Invalid,
        Err(WithToken::Token(TokenError::Invalid | TokenError::Gone)) => TokensState::Invalid,
        Err(_) => TokensState::Unknown,
    }
}

/// `update`: new appUrl / manifestUrl / region and possibly a new refresh token; exchange it,
/// persist, restart the poller on the new URLs.
async fn update(handle: &TenantHandle, c: ActionClaims) -> Result<ActionOutcome, ActionError> {
    let shared = &handle.shared;
    if let Some(rt) = c.refresh_token.clone() {
        shared.tokens.adopt_refresh_token(rt, None).await?;
    }
    shared
        .update(|r| {
            if let Some(u) = &c.app_url {
                r.app_url = u.clone();
            }
            if let Some(u) = &c.manifest_url {
                r.manifest_url = u.clone();
            }
            if let Some(reg) = &c.region {
                r.region = reg.clone();
            }
        })
        .await?;
    // The owner (this replica or another, told by pub/sub) exchanges the new token, learns
    // the queue of the new appUrl and restarts its poller.
    let _ = handle.restart_children().await;
    shared.lifecycle("updated").await;
    Ok(ActionOutcome::NoContent)
}

/// `updateApproved`: new manifest version, scopes and xAPI access; a fresh access token.
async fn update_approved(
    shared: &TenantShared,
    c: ActionClaims,
) -> Result<ActionOutcome, ActionError> {
    shared
        .update(|r| {
            if let Some(v) = &c.manifest_version {
                r.manifest_version = Some(v.clone());
            }
            if let Some(s) = &c.scopes {
                r.scopes = split_scopes(s);
            }
            if let Some(a) = &c.xapi_access {
                r.xapi_access = a.clone();
            }
        })
        .await?;
    let current = shared.tokens.current_token();
    let res = shared.tokens.refresh(current.as_ref()).await;
    shared.note_token_result(&res).await;
    shared.lifecycle("update_approved").await;
    Ok(ActionOutcome::NoContent)
}

/// `deprovision`: stop the tenant's work, forget its credentials, keep (or purge) its streams.
pub async fn deprovision(
    handle: &TenantHandle,
    interactive: bool,
) -> Result<ActionOutcome, ActionError> {
    let shared = &handle.shared;
    handle.deprovision().await;
    shared.tokens.clear().await;
    // First, while a failure still brings Webex's retry: the customer's consumers read nothing
    // more (their records go, and their ACL users on every node).
    let deps = &shared.deps();
    deps.consumers().revoke_all(&shared.tenant_id).await?;
    deps.tenants().delete_secrets(&shared.org_id).await?;
    shared
        .update(|r| {
            r.provisioning_state = ProvisioningState::Deprovisioned;
            // A transport switch under way ends with the tenant.
            r.transport_switch = None;
            r.poll_url = None;
        })
        .await?;
    if deps.config().activation.purge_streams_on_deprovision {
        deps.tenants().purge_streams(&shared.org_id).await?;
    }
    shared.lifecycle("deprovisioned").await;
    tracing::info!(tenant = %shared.tenant_id, "tenant deprovisioned");
    Ok(if interactive {
        ActionOutcome::Redirect(format!(
            "{}/setup/removed/{}",
            deps.config().public_base(),
            shared.tenant_id
        ))
    } else {
        ActionOutcome::NoContent
    })
}

/// Asks Webex to offer a new manifest to this customer's admin: `PATCH {appUrl}` with
/// `updateRequest.newManifest` (the integration → Webex direction of the Management section).
pub async fn request_manifest_update(
    shared: &TenantShared,
    manifest: Value,
) -> Result<Value, WithToken<AppUrlError>> {
    let app_url = shared.record().app_url;
    let body = serde_json::json!({ "updateRequest": { "newManifest": manifest } });
    shared.patch_app(&app_url, None, &body).await
}
