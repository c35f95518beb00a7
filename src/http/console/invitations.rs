//! Invitations and pending activations in the console: list, create, approve or reject.
use std::fmt::Write as _;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::session::{csrf, post_form};
use super::{layout, notice, page, query};
use crate::http::html::{enc, esc, see_other};
use crate::http::{AppState, activation};

/// `GET /console/invitations`: invitations (and the form for a new one), pending activations.
pub async fn invitations(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    page(&state, &req, |s| invitations_page(&state, &req, s)).await
}

async fn invitations_page(state: &AppState, req: &HttpRequest, s: String) -> HttpResponse {
    let q = query(req);
    render_invitations(state, &s, &notice(&q)).await
}

pub(super) async fn render_invitations(state: &AppState, s: &str, top: &str) -> HttpResponse {
    let token = csrf(state, s);
    let mut html = format!(
        r#"{top}<h2>Invite a customer</h2><form method=post action="/console/invitations"><input type=hidden name=csrf value="{token}">
<label>Customer id <input name=customer_id required maxlength=200></label> <label>Name <input name=name required maxlength=200></label> <button>Create invitation</button></form>
<h2>Pending activations</h2>"#
    );
    match state.onboarding.pending_list(100).await {
        Ok(list) if list.is_empty() => html.push_str("<p id=pending>None.</p>"),
        Ok(list) => {
            html.push_str("<table id=pending><tr><th>Organization</th><th>Region</th><th>Scopes</th><th>State</th><th></th></tr>");
            for (session, p) in list {
                let st = if p.rejected {
                    "rejected".to_string()
                } else if let Some(t) = &p.tenant_id {
                    format!(
                        "activated: <a href=\"/console/tenants/{t}\">{t}</a>",
                        t = esc(t)
                    )
                } else {
                    "awaiting the customer's code".into()
                };
                let buttons = if p.rejected || p.tenant_id.is_some() {
                    String::new()
                } else {
                    format!(
                        r#"<form class=inline method=post action="/console/pending/{ss}/approve"><input type=hidden name=csrf value="{token}"><input name=customer_id placeholder="customer id (optional)" maxlength=200> <input name=name placeholder="customer name" maxlength=200> <button>Approve</button></form>
<form class=inline method=post action="/console/pending/{ss}/reject"><input type=hidden name=csrf value="{token}"><button>Reject</button></form>"#,
                        ss = esc(&session)
                    )
                };
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{st}</td><td>{buttons}</td></tr>",
                    esc(&p.claims.org_name),
                    esc(&p.claims.region),
                    esc(&p.claims.scopes_list().join(" "))
                );
            }
            html.push_str("</table>");
        }
        Err(e) => {
            let _ = write!(
                html,
                "<p class=err>Unavailable: {}</p>",
                esc(&e.to_string())
            );
        }
    }
    html.push_str("<h2>Invitations</h2>");
    match activation::invitations_json(state, 200).await {
        Ok(list) => {
            html.push_str("<table id=invitations><tr><th>Customer</th><th>Name</th><th>State</th><th>Created</th><th>Expires</th><th>Used</th></tr>");
            for i in list {
                let f = |k: &str| esc(i[k].as_str().unwrap_or("—"));
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    f("customer_id"),
                    f("name"),
                    f("state"),
                    f("created_at"),
                    f("expires_at"),
                    f("used_at")
                );
            }
            html.push_str("</table>");
        }
        Err(e) => {
            let _ = write!(
                html,
                "<p class=err>Unavailable: {}</p>",
                esc(&e.description)
            );
        }
    }
    layout(
        StatusCode::OK,
        "Invitations & pending activations",
        Some(s),
        state,
        &html,
    )
}

/// `POST /console/invitations`: a new invitation; its code and link are shown once.
pub async fn create_invitation(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let (s, form) = match post_form(&state, &req, payload).await {
        Ok(sf) => sf,
        Err(resp) => return resp,
    };
    let (id, name) = (form.customer_id.trim(), form.name.trim());
    if id.is_empty() || name.is_empty() || id.len() > 200 || name.len() > 200 {
        return see_other(
            "/console/invitations?failed=customer+id+and+name+are+1+to+200+characters",
        );
    }
    let customer = actors::onboarding::Customer {
        id: id.into(),
        name: name.into(),
    };
    let ttl = std::time::Duration::from_secs(state.config.activation.invitation_ttl_secs);
    match state.onboarding.invite(customer, ttl).await {
        Ok((inv, code)) => {
            let link = format!("{}/setup?code={code}", state.config.public_base());
            let top = format!(
                "<p class=ok id=created>Invitation for <b>{}</b> created, valid until {}. Send this link to the customer's Control Hub admin (shown once): <br><code id=link>{}</code><br>Code: <code id=code>{}</code></p>",
                esc(&inv.customer.name),
                inv.expires_at,
                esc(&link),
                esc(&code)
            );
            render_invitations(&state, &s, &top).await
        }
        Err(e) => see_other(&format!(
            "/console/invitations?failed={}",
            enc(&format!("Invitation not stored: {e}"))
        )),
    }
}

/// `POST /console/pending/<session>/approve|reject`: the operator decides a pending HTTPS
/// activation (approve: with an optional customer id and name).
pub async fn decide_pending(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> HttpResponse {
    let form = match post_form(&state, &req, payload).await {
        Ok((_, form)) => form,
        Err(resp) => return resp,
    };
    let (session, decision) = path.into_inner();
    use actors::onboarding::{DecideError, Decision, PendingError};
    let decision = match decision.as_str() {
        "reject" => Decision::Reject,
        "approve" => Decision::Approve {
            customer_id: form.customer_id,
            name: form.name,
        },
        _ => return see_other("/console/invitations"),
    };
    let rejecting = matches!(decision, Decision::Reject);
    // First decider wins: the customer may be entering their invitation code right now.
    let failed = |why: &str| see_other(&format!("/console/invitations?failed={}", enc(why)));
    match state.onboarding.decide(&session, decision).await {
        Ok(org) => {
            let msg = if rejecting {
                "Activation rejected".to_string()
            } else {
                format!("Activation of {org} approved")
            };
            see_other(&format!("/console/invitations?done={}", enc(&msg)))
        }
        Err(DecideError::Pending(PendingError::Store(e))) => {
            failed(&format!("storage unavailable: {e}"))
        }
        Err(DecideError::Pending(_)) => failed("unknown or expired activation"),
        Err(DecideError::AlreadyDecided) => failed("already decided"),
        Err(DecideError::Activation(e)) => {
            failed(&activation::activate_error(&state, e).to_string())
        }
    }
}
