//! Tested as a person would use it: headless Chromium completes an HTTPS activation with an
//! invitation on the customer's setup page, then signs in to the operator console and finds the
//! tenant; and finds a rejected webhook's trackingId. Screenshots: target/browser-artifacts/.
use std::time::Duration;

use serde_json::{Value, json};
use xapi_stream::devkit::devenv::ADMIN_TOKEN;
use xapi_stream::devkit::sim::SimConfig;

use crate::utils::browser::Browser;
use crate::utils::*;

/// Signs in to the console at `admin` with the admin token, as an operator would.
async fn sign_in(b: &Browser, admin: &str) {
    b.goto(&format!("{admin}/console/")).await;
    b.fill("input[name=token]", ADMIN_TOKEN).await;
    b.click("button[type=submit]").await;
    b.wait_for("id=\"tenants-total\"", Duration::from_secs(10))
        .await;
}

#[actix_web::test]
async fn a_customer_activates_with_an_invitation_and_the_operator_finds_the_tenant() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let (base, admin) = (engine.base_url(), engine.admin_url());
    let mut b = Browser::start("activation_with_invitation").await;

    // The operator invites the customer (API), and Webex starts the HTTPS activation.
    let inv: Value = reqwest::Client::new()
        .post(format!("{admin}/admin/invitations"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"customer_id": "acme-7", "name": "Acme Rooms"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let code = inv["code"].as_str().unwrap().to_string();
    let link = inv["link"]
        .as_str()
        .unwrap()
        .replace("http://127.0.0.1:8080", &base);
    let provision: Value = reqwest::Client::new()
        .post(format!("{base}/provision"))
        .json(&json!({ "jwt": sim.activation_jwt(0) }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = provision["redirectUrl"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();

    // The customer's admin opens the invitation link, then lands on the setup page.
    b.goto(&link).await;
    assert_eq!(b.text("#code").await, code);
    b.screenshot("invitation-link").await;
    b.goto(&format!("{base}/setup/{session}")).await;
    let page = b.source().await;
    assert!(!page.to_lowercase().contains("admin token"), "{page}");
    assert_eq!(b.text("#org").await, sim.org(0).name);
    assert_eq!(
        b.value("input[name=code]").await,
        code,
        "the link's code is prefilled"
    );
    b.screenshot("setup-page").await;
    b.click("button[type=submit]").await;
    b.wait_for("<dd id=\"state\">completed</dd>", Duration::from_secs(30))
        .await;
    b.screenshot("setup-completed").await;
    assert_eq!(
        sim.app_state(0).customer,
        Some(json!({"id": "acme-7", "name": "Acme Rooms"}))
    );

    // The operator finds the tenant in the console by its organization id.
    sign_in(&b, &admin).await;
    b.fill("nav input[name=q]", &sim.org(0).org_id).await;
    b.click("nav button").await;
    b.wait_for("1 tenant(s)", Duration::from_secs(10)).await;
    b.screenshot("console-search").await;
    b.click("#tenants a").await;
    b.wait_for("id=\"provisioning\"", Duration::from_secs(10))
        .await;
    assert_eq!(b.text("#provisioning").await, "completed");
    assert!(b.source().await.contains("Acme Rooms (acme-7)"));
    b.screenshot("console-tenant").await;
    b.close().await;
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn the_operator_finds_a_rejected_webhooks_tracking_id_in_the_console() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let (base, admin) = (engine.base_url(), engine.admin_url());
    let tenant = activate_org(&sim, &base, 0).await;
    let r = reqwest::Client::new()
        .post(format!("{base}/tenants/{tenant}/webhook"))
        .header("X-Spark-Signature", "0".repeat(40))
        .json(&json!({"type": "status"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let id = r.json::<Value>().await.unwrap()["trackingId"]
        .as_str()
        .unwrap()
        .to_string();

    let mut b = Browser::start("tracking_id_search").await;
    sign_in(&b, &admin).await;
    b.fill("nav input[name=q]", &id).await;
    b.click("nav button").await;
    b.wait_for("id=\"reason\">bad_signature", Duration::from_secs(10))
        .await;
    assert_eq!(b.text("#tenant").await, tenant);
    assert!(b.text("#description").await.contains("signature"));
    b.screenshot("error-by-tracking-id").await;
    b.click("#tenant").await;
    b.wait_for("id=\"provisioning\"", Duration::from_secs(10))
        .await;
    b.screenshot("error-tenant").await;
    b.close().await;
    engine.shutdown().await;
    sim.shutdown().await;
}
