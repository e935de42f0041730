//! The console in headless Chromium (Debian's `chromium` and `chromium-driver`): sign in,
//! see the connectors with a stalled one marked, find a sent message by patient identifier
//! and open its tree, replay a dead letter as an operator and see it leave, pause and resume
//! a connector, reprocess a message, and
//! as a viewer get no replay button and a refusal from the API. With
//! `MFOUNDRY_SCREENSHOTS=<directory>` each page is saved as a PNG.

use super::webdriver::Browser;
use super::*;
use common::peer::{Answer, peer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_and_viewers_use_the_console_in_a_real_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    // `lab` refuses each message the first time (a dead letter), then takes it; `slow`
    // never answers (stalled).
    let lab = peer(|_, count| {
        if count == 1 {
            Answer::Ack("AR")
        } else {
            Answer::Ack("AA")
        }
    })
    .await;
    let hung = peer(|_, _| Answer::Hang).await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let (path, tokens) = tokens_file(scratch.path());
    let yaml = format!(
        "connectors:\n  - name: lab\n    type: mllp\n    host: 127.0.0.1\n    port: {}\n  - name: slow\n    type: mllp\n    host: 127.0.0.1\n    port: {}\n    ack_timeout: 25s\n",
        lab.addr.port(),
        hung.addr.port()
    );
    let app = common::start_with_yaml(Some(&yaml), &[("ADMIN_TOKENS_FILE", &path)]).await;
    let base = app.admin_url();
    let mut mllp = common::connect(&app).await;
    common::write(&mut mllp, &common::framed(&common::adt("CONSOLE-1", "2.5"))).await;
    assert_eq!(
        common::field(&common::expect_ack(&mut mllp).await, "MSA", 1),
        "AA"
    );

    // Sign in as an operator: the overview lists the connectors, the hung one as stalled.
    browser.open(&format!("{base}/ui/")).await;
    browser.type_into("#token", &tokens[&Role::Operator]).await;
    browser.click("#signin").await;
    browser.wait("#connectors").await;
    browser
        .wait_for_text("#who", "operator-desk (operator)")
        .await;
    browser
        .wait_for_text("tr[data-connector=slow] [data-state]", "stalled")
        .await;
    browser.wait_for_text("tr[data-connector=lab]", "lab").await;
    browser
        .wait_for_text("tr[data-connector=lab] [data-state]", "failing")
        .await;
    browser
        .wait_for_text("tr[data-connector=lab] td.last-error", "AR")
        .await;
    let first = browser.text("#connectors tbody tr").await;
    assert!(
        first.starts_with("slow"),
        "the stalled connector comes first: {first}"
    );
    assert!(
        !browser.text("#overview").await.contains("null"),
        "nothing empty shown as text"
    );
    browser.screenshot("overview").await;

    // The message list; a search by patient identifier (never put in the URL) finds the
    // message, another identifier finds nothing; then the message's tree with PID-5 named
    // and decoded.
    browser.click("a[data-page=messages]").await;
    browser.wait_for_text("#message-list", "CONSOLE-1").await;
    browser.type_into("#search-patient_id", "99999").await;
    browser.click("#search").await;
    browser
        .wait_for_text("#results", "No message matches.")
        .await;
    browser.type_into("#search-patient_id", "12345").await;
    browser.click("#search").await;
    browser.wait_for_text("#message-list", "CONSOLE-1").await;
    let url = browser
        .run_async("arguments[arguments.length - 1](location.href);")
        .await;
    assert!(!url.to_string().contains("12345"), "{url}");
    browser.screenshot("messages").await;
    browser.click("#message-list tbody a").await;
    browser.wait("#tree").await;
    browser.wait_for_text("#tree", "PID-5 Patient Name").await;
    browser.wait_for_text("#tree", "DOE").await;
    browser.wait_for_text("#raw", "PID|1||12345").await;
    browser.wait_for_text("#ack", "MSA|AA|CONSOLE-1").await;
    browser
        .wait_for_text("#connector-states", "DEAD_LETTERED")
        .await;
    browser.screenshot("message").await;

    // The dead letter at `lab`, replayed: it leaves the queue and the peer takes it.
    browser.open(&format!("{base}/ui/#/dlq/lab")).await;
    browser
        .click("section[data-connector=lab] button[data-action=replay]")
        .await;
    browser.wait_for_text("#dlq", "No dead letters.").await;
    common::eventually("the replay delivered", || {
        lab.received()
            .iter()
            .filter(|control| *control == "CONSOLE-1")
            .count()
            == 2
    })
    .await;

    // Pause and resume from the overview.
    browser.click("a[data-page=overview]").await;
    browser
        .click("tr[data-connector=lab] button[data-action=pause]")
        .await;
    browser
        .wait_for_text("tr[data-connector=lab] [data-state]", "paused")
        .await;
    assert!(app.worker("lab").is_paused());
    browser
        .click("tr[data-connector=lab] button[data-action=resume]")
        .await;
    browser
        .wait("tr[data-connector=lab] button[data-action=pause]")
        .await;
    assert!(!app.worker("lab").is_paused());

    // Reprocess the message to `lab` from its page: delivered once more.
    browser.open(&format!("{base}/ui/#/messages")).await;
    browser.click("#message-list tbody a").await;
    browser.wait("#reprocess-to option[value=lab]").await;
    browser.click("#reprocess-button").await;
    browser.accept_dialog().await;
    browser
        .wait_for_text("#reprocess-outcome", "Queued for lab")
        .await;
    common::eventually("the reprocessed copy delivered", || {
        lab.received()
            .iter()
            .filter(|control| *control == "CONSOLE-1")
            .count()
            == 3
    })
    .await;

    // Another dead letter, seen by a viewer: listed, without a replay button; the API
    // refuses the replay anyway.
    common::write(&mut mllp, &common::framed(&common::adt("CONSOLE-2", "2.5"))).await;
    assert_eq!(
        common::field(&common::expect_ack(&mut mllp).await, "MSA", 1),
        "AA"
    );
    common::eventually("dead-lettered", || {
        app.worker("lab")
            .stats()
            .dead_lettered
            .load(std::sync::atomic::Ordering::SeqCst)
            == 2
    })
    .await;
    browser.click("#signout").await;
    browser.type_into("#token", &tokens[&Role::Viewer]).await;
    browser.click("#signin").await;
    browser.wait_for_text("#who", "viewer-desk (viewer)").await;
    browser.open(&format!("{base}/ui/#/dlq/lab")).await;
    browser
        .wait("section[data-connector=lab] tr[data-seq]")
        .await;
    assert!(
        !browser.exists("button[data-action=replay]").await,
        "no replay button for a viewer"
    );
    assert!(!browser.exists("button[data-action=purge-all]").await);
    browser.screenshot("dead-letters-viewer").await;
    let status = browser
        .run_async(
            "const done = arguments[arguments.length - 1];
             fetch('/ui/session').then((r) => r.json())
               .then((s) => fetch('/ui/api/v1/dlq/lab/replay', {method: 'POST',
                   headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf},
                   body: JSON.stringify({all: true})}))
               .then((r) => done(r.status)).catch((e) => done(String(e)));",
        )
        .await;
    assert_eq!(status, 403, "the API refuses a viewer's replay");

    // An admin purges it, after confirming.
    browser.click("#signout").await;
    browser.type_into("#token", &tokens[&Role::Admin]).await;
    browser.click("#signin").await;
    browser.wait_for_text("#who", "admin-desk (admin)").await;
    browser.open(&format!("{base}/ui/#/dlq/lab")).await;
    browser
        .click("section[data-connector=lab] button[data-action=purge-all]")
        .await;
    browser.accept_dialog().await;
    browser.wait_for_text("#dlq", "No dead letters.").await;

    // The audit trail, newest first: the purge on top; the chain checks out.
    browser.click("a[data-page=audit]").await;
    browser.wait_for_text("#audit tbody tr", "dlq.purge").await;
    browser.wait_for_text("#audit", "console.login").await;
    browser.click("#audit-verify").await;
    browser.wait_for_text("#audit-verdict", "Intact").await;
    browser.screenshot("audit").await;
    browser.quit().await;
    // The delivery in hand at `slow` ends with its ACK timeout.
    assert!(app.shutdown(Duration::from_secs(40)).await);
}
