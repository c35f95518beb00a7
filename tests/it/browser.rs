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

/// An invitation for a customer (the admin API): its code and its link on the engine at `base`.
async fn invitation(admin: &str, base: &str, customer_id: &str, name: &str) -> (String, String) {
    let inv: Value = reqwest::Client::new()
        .post(format!("{admin}/admin/invitations"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"customer_id": customer_id, "name": name}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let link = inv["link"].as_str().unwrap();
    (
        inv["code"].as_str().unwrap().to_string(),
        link.replace("http://127.0.0.1:8080", base),
    )
}

/// Starts an HTTPS activation with `jwt` as Webex does (`POST /provision`): the customer's
/// setup page on the engine at `base`.
async fn setup_page(base: &str, jwt: &str) -> String {
    let provision: Value = reqwest::Client::new()
        .post(format!("{base}/provision"))
        .json(&json!({ "jwt": jwt }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = provision["redirectUrl"].as_str().unwrap();
    url.replace("http://127.0.0.1:8080", base)
}

#[actix_web::test]
async fn a_customer_activates_with_an_invitation_and_the_operator_finds_the_tenant() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let (base, admin) = (engine.base_url(), engine.admin_url());
    let mut b = Browser::start("activation_with_invitation").await;

    // The operator invites the customer (API), and Webex starts the HTTPS activation.
    let (code, link) = invitation(&admin, &base, "acme-7", "Acme Rooms").await;
    let setup = setup_page(&base, &sim.activation_jwt(0)).await;

    // The customer's admin opens the invitation link, then lands on the setup page.
    b.goto(&link).await;
    assert_eq!(b.text("#code").await, code);
    b.screenshot("invitation-link").await;
    b.goto(&setup).await;
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

/// The text of the element with `id`.
async fn text(b: &Browser, id: &str) -> String {
    b.text(&format!("#{id}")).await
}

/// The window sizes every page must fit without sideways scrolling: a laptop and a phone.
const SIZES: [(u32, u32); 2] = [(1280, 800), (390, 844)];

/// Opens `url` at every size: no horizontal overflow of the page, a screenshot each.
async fn fits(b: &mut Browser, url: &str, name: &str, wait: &str) {
    for (w, h) in SIZES {
        b.resize(w, h).await;
        b.goto(url).await;
        b.wait_for(wait, Duration::from_secs(10)).await;
        check_width(b, &format!("{name}-{w}x{h}")).await;
    }
}

/// Screenshot `name`, then asserts the page does not scroll sideways.
async fn check_width(b: &mut Browser, name: &str) {
    let shot = b.screenshot(name).await;
    let (scroll, client) = b.widths().await;
    assert!(
        scroll <= client,
        "{name}: the page is {scroll} px wide in a {client}-px window ({})",
        shot.display()
    );
}

/// Every console page, the sign-in page and the customer's setup pages fit 1280 × 800 and
/// 390 × 844 (screenshots in target/browser-artifacts/every_page_fits/), and the overview shows
/// what the test did: the tenants by state, the messages written, the webhook answers by result,
/// and the rejected webhook among the latest errors.
#[actix_web::test]
async fn every_page_fits_a_laptop_and_a_phone_and_the_overview_counts_what_was_sent() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig {
        orgs: 4,
        ..Default::default()
    })
    .await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let (base, admin) = (engine.base_url(), engine.admin_url());
    let mut tenants = Vec::new();
    for i in 0..3 {
        tenants.push(activate_org(&sim, &base, i).await);
    }
    // Traffic: unique messages, a few delivered twice, and one with a bad signature.
    let mut written = 0u64;
    let mut duplicates = 0u64;
    for i in 0..3 {
        let hook = sim.app_state(i).webhook.unwrap();
        let msgs = sim.generate(i, 10);
        for m in &msgs {
            assert_eq!(sim.post_webhook(&hook, m).await, 200);
            written += 1;
        }
        assert_eq!(sim.post_webhook(&hook, &msgs[0]).await, 200);
        duplicates += 1;
    }
    let r = reqwest::Client::new()
        .post(format!("{base}/tenants/{}/webhook", tenants[0]))
        .header("X-Spark-Signature", "0".repeat(40))
        .json(&json!({"type": "status"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let rejected = r.json::<Value>().await.unwrap()["trackingId"]
        .as_str()
        .unwrap()
        .to_string();
    // A customer's setup page (an HTTPS activation waiting for its code), and an invitation.
    let (_, link) = invitation(
        &admin,
        &base,
        "globex-12",
        "Globex Meeting Rooms International",
    )
    .await;
    let setup = setup_page(&base, &sim.activation_jwt(3)).await;

    let mut b = Browser::start("every_page_fits").await;
    fits(
        &mut b,
        &format!("{admin}/console/"),
        "sign-in",
        "name=\"token\"",
    )
    .await;
    fits(&mut b, &link, "invitation-link", "id=\"code\"").await;
    fits(&mut b, &setup, "setup-page", "name=\"code\"").await;
    b.resize(1280, 800).await;
    sign_in(&b, &admin).await;

    // The overview's figures: what /admin/tenants says, and what was sent (every replica's
    // counter flush runs once a second: polled, not slept).
    let listed = admin_get(&admin, "/admin/tenants").await;
    let listed = listed.as_array().unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            b.goto(&format!("{admin}/console/")).await;
            text(&b, "msgs-hour").await == written.to_string()
                && b.source().await.contains(&rejected)
        })
        .await,
        "the overview did not come to show {written} messages and the rejected webhook ({})",
        b.source().await
    );
    assert_eq!(text(&b, "tenants-total").await, listed.len().to_string());
    let completed = listed
        .iter()
        .filter(|t| t["provisioning_state"] == "completed")
        .count();
    assert_eq!(completed, 3);
    assert_eq!(text(&b, "tenants-completed").await, "3");
    assert_eq!(text(&b, "tokens-valid").await, "3");
    assert_eq!(text(&b, "webhooks-accepted").await, written.to_string());
    assert_eq!(text(&b, "webhooks-duplicate").await, duplicates.to_string());
    assert_eq!(text(&b, "webhooks-bad_signature").await, "1");
    assert!(
        b.source().await.contains("<svg id=\"chart\""),
        "the chart is drawn"
    );

    // Every console page at both sizes.
    fits(
        &mut b,
        &format!("{admin}/console/"),
        "overview",
        "id=\"chart\"",
    )
    .await;
    fits(
        &mut b,
        &format!("{admin}/console/tenants"),
        "tenants",
        "id=\"tenants\"",
    )
    .await;
    let page = format!("{admin}/console/tenants/{}", tenants[0]);
    fits(&mut b, &page, "tenant", "id=\"consumers\"").await;
    fits(
        &mut b,
        &format!("{admin}/console/errors/{rejected}"),
        "error",
        "id=\"reason\"",
    )
    .await;
    fits(
        &mut b,
        &format!("{admin}/console/invitations"),
        "invitations",
        "Invitations",
    )
    .await;
    // The answer of a grant (a POST: once per size).
    for (i, (w, h)) in SIZES.into_iter().enumerate() {
        b.resize(w, h).await;
        b.goto(&page).await;
        b.fill(
            "form[action$=grant-consumer] input[name=name]",
            &format!("bi-{i}"),
        )
        .await;
        b.click("form[action$=grant-consumer] button").await;
        b.wait_loaded("id=\"password\"", Duration::from_secs(10))
            .await;
        check_width(&mut b, &format!("consumer-granted-{w}x{h}")).await;
    }
    b.close().await;
    engine.shutdown().await;
    sim.shutdown().await;
}
