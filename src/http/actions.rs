//! `POST /tenants/<tenant_id>/actions`: signed action JWTs from Webex (healthCheck, update,
//! updateApproved, deprovision), verified like activations (signature, iat ≤ 5 minutes, appId,
//! jti) and run for the tenant.
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use actors::actions::{self, ActionOutcome};
use actors::protocol::jwt::{Expect, Verified};

use super::activation::verify_error;
use super::{ApiError, AppState, body};

pub async fn receive(
    state: web::Data<AppState>,
    req: HttpRequest,
    tenant_id: String,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let count = |action: &str, result: &str| state.metrics.action(action, result);
    let bytes = body::read(&req, payload, state.config.server.max_body_bytes).await?;
    let handle = super::live_tenant(&state, &tenant_id).await?;
    let jwt: body::JwtBody = body::object(&bytes)?;
    let claims = match state.verifier.verify(&jwt.jwt, Expect::Action).await {
        Ok(Verified::Action(c)) => c,
        Ok(Verified::Activation(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "wrong_action",
                "activation JWT at the actions endpoint",
            ));
        }
        Err(e) => {
            count("unknown", "rejected");
            return Err(verify_error(e));
        }
    };
    let action = claims.action.as_str();
    if claims.sub != handle.shared.org_id {
        count(action, "rejected");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_org",
            "the action JWT is for another organization than this tenant",
        ));
    }
    match actions::run(&handle, claims).await {
        Ok(outcome) => {
            count(action, "ok");
            state.registry.update_gauges();
            Ok(match outcome {
                ActionOutcome::Health {
                    operational_state,
                    tokens_state,
                } => HttpResponse::Ok().json(serde_json::json!({
                    "operationalState": operational_state,
                    "tokensState": tokens_state,
                })),
                ActionOutcome::NoContent => HttpResponse::NoContent().finish(),
                ActionOutcome::Redirect(url) => {
                    HttpResponse::Ok().json(serde_json::json!({ "redirectUrl": url }))
                }
            })
        }
        Err(e) => {
            count(action, "error");
            Err(ApiError::unavailable(&format!(
                "{action} could not be completed: {e}"
            )))
        }
    }
}

/// `GET /setup/removed/<tenant_id>`: the page an interactive deprovisioning redirects to.
pub async fn removed_page(state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    let id = path.into_inner();
    match state.registry.get(&id) {
        Some(h) if h.shared.is_deprovisioned() => super::html::page(
            StatusCode::OK,
            "Integration removed",
            &format!(
                "<p>xapi-stream no longer receives data for <b>{}</b>. Its credentials were deleted; \
                 the data already delivered stays with your analytics team.</p>",
                super::html::esc(&h.record().org_name)
            ),
        ),
        _ => super::html::page(
            StatusCode::NOT_FOUND,
            "Not found",
            "<p>Unknown or active tenant.</p>",
        ),
    }
}
