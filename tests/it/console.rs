//! The operator console over plain HTTP: sign-in, the session cookie, CSRF, search, pages.
//! (The browser tests drive the same pages in Chromium.)
use std::time::Duration;

use serde_json::json;
use xapi_stream::devkit::devenv::ADMIN_TOKEN;
use xapi_stream::devkit::sim::SimConfig;

use crate::utils::*;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in; returns the `name=value` of the session cookie.
async fn sign_in(admin: &str) -> String {
    let r = client()
        .post(format!("{admin}/console/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    assert!(set.contains("Path=/console"), "{set}");
    set.split(';').next().unwrap().to_string()
}

async fn get(admin: &str, path: &str, cookie: &str) -> (u16, String) {
    let r = client()
        .get(format!("{admin}{path}"))
        .header("Cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string());
    let body = r.text().await.unwrap();
    (status, location.unwrap_or(body))
}

/// The CSRF token of a page's forms.
fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=csrf value=\"")
        .expect("a form with a CSRF token")
        + 17;
    html[at..].split('"').next().unwrap().to_string()
}

#[actix_web::test]
async fn the_console_signs_in_searches_and_refuses_forms_without_csrf() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let (base, admin) = (engine.base_url(), engine.admin_url());
    let tenant = activate_org(&sim, &base, 0).await;
    activate_org(&sim, &base, 1).await;

    // Without a session: the sign-in page; a wrong token: 401, no cookie.
    let (status, html) = get(&admin, "/console/", "").await;
    assert_eq!(status, 200);
    assert!(html.contains("name=token"), "{html}");
    let r = client()
        .post(format!("{admin}/console/login"))
        .form(&[("token", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    let (_, html) = get(&admin, "/console/", "xapi_console=1.forged.AAAA").await;
    assert!(html.contains("name=token"), "a forged cookie is no session");

    let cookie = sign_in(&admin).await;
    let (status, html) = get(&admin, "/console/tenants", &cookie).await;
    assert_eq!(status, 200);
    assert!(html.contains("2 tenant(s)"), "{html}");
    assert!(html.contains(&sim.org(0).name) && html.contains(&sim.org(1).name));

    // Search by tenant id, by org id, by name.
    for q in [tenant.as_str(), &sim.org(0).org_id, &sim.org(0).name] {
        let (_, html) = get(&admin, &format!("/console/?q={}", urlenc(q)), &cookie).await;
        assert!(html.contains("1 tenant(s)"), "search {q}: {html}");
    }
    let (_, html) = get(&admin, "/console/?state=error", &cookie).await;
    assert!(html.contains("0 tenant(s)"));

    // The tenant page.
    let (status, html) = get(&admin, &format!("/console/tenants/{tenant}"), &cookie).await;
    assert_eq!(status, 200);
    assert!(
        html.contains("<dd id=provisioning><span class=\"badge ok\">completed</span></dd>"),
        "{html}"
    );
    assert!(html.contains("activated"), "lifecycle history: {html}");
    assert!(html.contains("id=inventory"), "{html}");

    // A form without the CSRF token changes nothing; with it, the health check runs.
    let r = client()
        .post(format!("{admin}/console/tenants/{tenant}/health"))
        .header("Cookie", &cookie)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let token = csrf_of(&html);
    let r = client()
        .post(format!("{admin}/console/tenants/{tenant}/health"))
        .header("Cookie", &cookie)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let back = r.headers()["location"].to_str().unwrap().to_string();
    let (_, html) = get(&admin, &back, &cookie).await;
    assert!(
        html.contains("Health check: operational, tokens valid"),
        "{html}"
    );

    // An invitation from the console, and a rejected webhook's trackingId found by search.
    let r = client()
        .post(format!("{admin}/console/invitations"))
        .header("Cookie", &cookie)
        .form(&[
            ("csrf", token.as_str()),
            ("customer_id", "c-9"),
            ("name", "Nine"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("id=code>") && html.contains("/setup?code="),
        "{html}"
    );
    let r = reqwest::Client::new()
        .post(format!("{base}/tenants/{tenant}/webhook"))
        .header("X-Spark-Signature", "0".repeat(40))
        .json(&json!({"type": "status"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let id = r.json::<serde_json::Value>().await.unwrap()["trackingId"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, to) = get(&admin, &format!("/console/?q={id}"), &cookie).await;
    assert_eq!(
        (status, to.as_str()),
        (303, format!("/console/errors/{id}").as_str())
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(&admin, &to, &cookie)
                .await
                .1
                .contains("id=reason>bad_signature")
        })
        .await,
        "the error page shows the reason"
    );
    let (_, html) = get(&admin, &to, &cookie).await;
    assert!(
        html.contains(&format!("/console/tenants/{tenant}")),
        "{html}"
    );

    // Signing out ends the session cookie.
    let r = client()
        .post(format!("{admin}/console/logout"))
        .header("Cookie", &cookie)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

fn urlenc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The operator's reject and the customer's invitation code, sent at once for the same pending
/// activation: exactly one of them decides it. A rejected activation has no tenant and its
/// code is not spent; an activated one was not reported rejected to the operator.
#[actix_web::test]
async fn a_reject_racing_a_customers_code_decides_the_activation_once() {
    const N: usize = 8;
    let env = TestEnv::start(SimConfig {
        orgs: N,
        ..Default::default()
    })
    .await;
    let engine = env.engine(&[]).await;
    let (base, admin) = (engine.base_url(), engine.admin_url());
    let mut sessions = Vec::new();
    for i in 0..N {
        let session = provision_session(&base, &env.sim.activation_jwt(i)).await;
        sessions.push((session, invite(&admin, &format!("cust-{i}"), "Race").await));
    }
    let cookie = sign_in(&admin).await;
    let (_, page) = get(&admin, "/console/invitations", &cookie).await;
    let csrf = csrf_of(&page);
    let races = sessions.iter().map(|(session, code)| {
        let reject = client()
            .post(format!("{admin}/console/pending/{session}/reject"))
            .header("Cookie", &cookie)
            .form(&[("csrf", csrf.as_str())])
            .send();
        let redeem = client()
            .post(format!("{base}/setup/{session}"))
            .form(&[("code", code.as_str())])
            .send();
        async move {
            let (reject, redeem) = futures::join!(reject, redeem);
            let (reject, redeem) = (reject.unwrap(), redeem.unwrap());
            let said = reject.headers()["location"].to_str().unwrap().to_string();
            assert_eq!(redeem.status(), 303, "the setup form");
            said
        }
    });
    let said = futures::future::join_all(races).await;
    let listed = admin_get(&admin, "/admin/invitations").await;
    let tenants: Vec<String> = engine
        .registry()
        .handles()
        .iter()
        .map(|h| h.shared.org_id.clone())
        .collect();
    for (i, said) in said.iter().enumerate() {
        let org = env.sim.org(i).org_id;
        let activated = tenants.contains(&org);
        let rejected = said.contains("done=Activation+rejected");
        assert!(
            activated != rejected,
            "session {i}: activated {activated}, the operator was told {said}"
        );
        if !rejected {
            assert!(said.contains("already+decided"), "{said}");
        }
        let state = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["customer_id"] == format!("cust-{i}"))
            .map(|v| v["state"].clone());
        assert_eq!(
            state,
            Some(json!(if activated { "used" } else { "open" })),
            "session {i}'s invitation: {listed}"
        );
    }
    engine.shutdown().await;
}

/// The tenant page lists the consumers; its Grant button shows the password once (a page the
/// browser does not store), which works against Redis; its Revoke button removes the user; a
/// form without the CSRF token grants nothing.
#[actix_web::test]
async fn the_tenant_page_grants_lists_and_revokes_consumers() {
    let env = TestEnv::start(SimConfig::default()).await;
    let engine = env.engine(&[]).await;
    let admin = engine.admin_url();
    let tenant = activate_org(&env.sim, &admin, 0).await;
    let cookie = sign_in(&admin).await;
    let page = format!("/console/tenants/{tenant}");
    let (_, html) = get(&admin, &page, &cookie).await;
    assert!(
        html.contains("<table id=consumers>") && html.contains("None:"),
        "{html}"
    );
    let token = csrf_of(&html);
    let post = |form: Vec<(&'static str, String)>| {
        let (admin, cookie, tenant) = (admin.clone(), cookie.clone(), tenant.clone());
        async move {
            client()
                .post(format!("{admin}/console/tenants/{tenant}/grant-consumer"))
                .header("Cookie", &cookie)
                .form(&form)
                .send()
                .await
                .unwrap()
        }
    };
    let forged = post(vec![("csrf", "forged".into()), ("name", "bi".into())]).await;
    assert_eq!(forged.status(), 403);
    let r = post(vec![
        ("csrf", token.clone()),
        ("name", "bi".into()),
        ("commands", "on".into()),
    ])
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let shown = r.text().await.unwrap();
    let between = |html: &str, id: &str| {
        let start = html.find(&format!("<code id={id}>")).expect(id) + 10 + id.len();
        html[start..].split('<').next().unwrap().to_string()
    };
    let (user, password) = (between(&shown, "user"), between(&shown, "password"));
    assert_eq!(password.len(), 64, "{shown}");
    let org = env.sim.org(0).org_id;
    assert!(
        shown.contains(&format!("{}:{{{org}}}:commands", env.prefix)),
        "{shown}"
    );
    let mut u = url::Url::parse(&env.redis.url()).unwrap();
    u.set_username(&user).unwrap();
    u.set_password(Some(&password)).unwrap();
    let client_as = redis::Client::open(u.as_str()).unwrap();
    let _: String = redis::cmd("PING")
        .query(&mut client_as.get_connection().unwrap())
        .unwrap();
    // Listed on the tenant page, without the password.
    let (_, html) = get(&admin, &page, &cookie).await;
    assert!(html.contains(&user) && html.contains("may add"), "{html}");
    assert!(!html.contains(&password));
    // Revoked from the page.
    let r = client()
        .post(format!("{admin}/console/tenants/{tenant}/revoke-consumer"))
        .header("Cookie", &cookie)
        .form(&[("csrf", token.as_str()), ("name", "bi")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let back = r.headers()["location"].to_str().unwrap().to_string();
    let (_, html) = get(&admin, &back, &cookie).await;
    assert!(html.contains("revoked"), "{html}");
    assert!(
        client_as.get_connection().is_err(),
        "a revoked user authenticated"
    );
    engine.shutdown().await;
}

/// A queue tenant whose polls fail shows on the overview under "Queue polls failing" (its owner
/// reports it on the change, into Redis, so every replica's overview has it), and leaves it
/// once a poll succeeds again.
#[actix_web::test]
async fn the_overview_lists_a_queue_tenant_while_its_polls_fail() {
    // An empty queue answers a poll after poll_wait: short, so a good poll ends soon.
    let env = TestEnv::start(SimConfig {
        poll_wait: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let engine = env
        .engine(&[
            ("INTEGRATION__INGEST", "queue"),
            ("INGEST__POLL_RETRY_SECS", "0.2"),
        ])
        .await;
    let admin = engine.admin_url();
    let tenant = activate_org(&env.sim, &admin, 0).await;
    let cookie = sign_in(&admin).await;
    let polls_table = |html: &str| {
        let start = html.find("<table id=polls>").expect("the polls table");
        html[start..].split("</table>").next().unwrap().to_string()
    };
    env.sim.fail_next_polls(0, 1_000_000);
    let name = env.sim.org(0).name;
    assert!(
        eventually(Duration::from_secs(20), || async {
            let (_, html) = get(&admin, "/console/", &cookie).await;
            polls_table(&html).contains(&format!("/console/tenants/{tenant}"))
        })
        .await,
        "the failing queue tenant is not listed"
    );
    let (_, html) = get(&admin, "/console/", &cookie).await;
    assert!(polls_table(&html).contains(&name), "{html}");
    env.sim.fail_next_polls(0, 0);
    assert!(
        eventually(Duration::from_secs(20), || async {
            let (_, html) = get(&admin, "/console/", &cookie).await;
            polls_table(&html).contains("None.")
        })
        .await,
        "the tenant stays listed after its polls succeed again"
    );
    engine.shutdown().await;
}

#[actix_web::test]
async fn the_tenant_page_switches_the_transport_and_shows_the_switch() {
    let env = TestEnv::start(SimConfig::default()).await;
    let engine = env.engine(&[("INTEGRATION__INGEST", "webhook")]).await;
    let admin = engine.admin_url();
    let tenant = activate_org(&env.sim, &admin, 0).await;
    let cookie = sign_in(&admin).await;
    let page = format!("/console/tenants/{tenant}");
    let (_, html) = get(&admin, &page, &cookie).await;
    assert!(
        html.contains("<p id=transport>Reads webhook.</p>"),
        "{html}"
    );
    assert!(html.contains("<option value=webhook selected>"), "{html}");
    let token = csrf_of(&html);
    let post = |mode: &'static str, csrf: String| {
        let (admin, cookie, tenant) = (admin.clone(), cookie.clone(), tenant.clone());
        async move {
            client()
                .post(format!("{admin}/console/tenants/{tenant}/ingest"))
                .header("Cookie", &cookie)
                .form(&[("csrf", csrf), ("ingest", mode.to_string())])
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(post("queue", "forged".into()).await.status(), 403);
    assert_eq!(env.sim.app_state(0).queue_state, None);
    let r = post("queue", token.clone()).await;
    assert_eq!(r.status(), 303);
    let back = r.headers()["location"].to_str().unwrap().to_string();
    assert!(back.contains("done="), "{back}");
    let (_, html) = get(&admin, &back, &cookie).await;
    assert!(html.contains("Switching webhook → queue"), "{html}");
    assert!(html.contains("old transport removed after"), "{html}");
    assert_eq!(env.sim.app_state(0).queue_state.as_deref(), Some("enabled"));
    // Another target while it runs: refused, and the page says why.
    let r = post("both", token).await;
    let back = r.headers()["location"].to_str().unwrap().to_string();
    assert!(back.contains("failed="), "{back}");
    let (_, html) = get(&admin, &back, &cookie).await;
    assert!(html.contains("a switch to queue is under way"), "{html}");
    drop(engine);
    env.sim.shutdown().await;
}
