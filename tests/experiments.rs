//! An A/B experiment on a real server: users assigned to arms deterministically and shown it,
//! forced arms, events attributed by `request_id` and counted exactly per arm (live, in
//! `/metrics`, and again from the durable event log), and a shadow arm that runs after the
//! answer and is counted apart from it.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::{item_ids, shared_bundle, test_config, TestServer};
use funnel::api::RankingOverride;
use funnel::config::{ArmConfig, ExperimentConfig};
use funnel::ranking::combine::Strategy;

const TOKEN: &str = "admin-token-for-tests-0001";

fn arm(name: &str, share: f64, shadow: bool, strategy: Option<Strategy>) -> ArmConfig {
    ArmConfig {
        name: name.into(),
        share,
        shadow,
        bundle_version: None,
        ranking: strategy.map(|s| RankingOverride {
            strategy: Some(s),
            ..RankingOverride::default()
        }),
        quotas: None,
        rerank: None,
    }
}

fn cfg(arms: Vec<ArmConfig>) -> funnel::config::EngineConfig {
    let mut c = test_config();
    c.auth.admin_tokens = vec![TOKEN.into()];
    c.experiment = Some(ExperimentConfig {
        name: "exp1".into(),
        salt: None,
        arms,
    });
    c
}

/// GET /admin/experiments with the token: (status, body).
async fn get_report(s: &TestServer) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(s.url("/admin/experiments"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("send");
    (r.status().as_u16(), r.json().await.expect("json"))
}

async fn report(s: &TestServer) -> Value {
    let (status, v) = get_report(s).await;
    assert_eq!(status, 200);
    v
}

fn arm_of<'a>(rep: &'a Value, name: &str) -> &'a Value {
    rep["arms"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name))
        .unwrap_or_else(|| panic!("no arm {name} in {rep}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arms_assigned_forced_and_events_counted_exactly() {
    let c = cfg(vec![
        arm("control", 0.5, false, None),
        arm("treatment", 0.5, false, Some(Strategy::RankAvg)),
    ]);
    let exp = c.experiment.clone().expect("experiment");
    let log_dir = std::path::PathBuf::from(&c.events.log_dir);
    let s = TestServer::start(shared_bundle(), c, None).await;
    let users: Vec<u64> = {
        let mut u = s.engine.bundle().user_ids.clone();
        u.sort_unstable();
        u.truncate(120);
        u
    };
    // (request_id, arm, items) of every answer.
    let mut served = Vec::new();
    for &u in &users {
        let (st, v) = s.recommend(json!({"user_id": u, "k": 10})).await;
        assert_eq!(st, 200, "{v}");
        let a = v["experiment"]["arm"].as_str().expect("arm").to_string();
        assert_eq!(v["experiment"]["name"], "exp1");
        assert_eq!(v["experiment"]["forced"], false);
        assert_eq!(
            a,
            exp.arms[funnel::engine::experiments::assign(&exp, &u.to_string())].name,
            "the documented assignment"
        );
        // The same user, again and as a string: the same arm.
        let (_, again) = s
            .recommend(json!({"user_id": u.to_string(), "k": 10}))
            .await;
        assert_eq!(again["experiment"]["arm"], a.as_str());
        served.push((
            v["request_id"].as_str().expect("id").to_string(),
            a,
            u,
            item_ids(&v),
        ));
    }
    let n_treat = served.iter().filter(|x| x.1 == "treatment").count();
    assert!(
        (30..=90).contains(&n_treat),
        "{n_treat} of 120 in treatment"
    );

    // Forced: a control user served by treatment; then the errors.
    let forced_user = served
        .iter()
        .find(|x| x.1 == "control")
        .expect("a control user")
        .2;
    let (st, v) = s
        .recommend(json!({"user_id": forced_user, "k": 10, "arm": "treatment"}))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (
            v["experiment"]["arm"].as_str(),
            v["experiment"]["forced"].as_bool()
        ),
        (Some("treatment"), Some(true))
    );
    served.push((
        v["request_id"].as_str().expect("id").to_string(),
        "treatment".into(),
        forced_user,
        item_ids(&v),
    ));
    let (st, v) = s.recommend(json!({"user_id": 1, "arm": "nope"})).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("invalid_request")),
        "{v}"
    );

    // Events: impressions of the top 3 and one click per answer, plus a second click on
    // treatment's answers; each names the request it answers.
    let mut expect: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    for (i, (rid, a, u, items)) in served.iter().enumerate() {
        let mut events = Vec::new();
        for (j, it) in items.iter().take(3).enumerate() {
            events.push(json!({"user_id": u, "item_id": it, "type": "impression", "request_id": rid, "event_id": format!("imp-{i}-{j}")}));
        }
        let clicks = if a == "treatment" { 2 } else { 1 };
        for (j, it) in items.iter().take(clicks).enumerate() {
            events.push(json!({"user_id": u, "item_id": it, "type": "click", "request_id": rid, "event_id": format!("clk-{i}-{j}")}));
        }
        let (st, r) = s.events(json!(events.clone())).await;
        assert_eq!(
            (st, r["accepted"].as_u64()),
            (202, Some(events.len() as u64)),
            "{r}"
        );
        // A retried batch counts once.
        let (_, r) = s.events(json!(events)).await;
        assert_eq!(r["accepted"], 0);
        let e = expect
            .entry(if a == "treatment" {
                "treatment"
            } else {
                "control"
            })
            .or_default();
        e.0 += 3.min(items.len() as u64);
        e.1 += clicks as u64;
    }
    let rep = report(&s).await;
    for (name, (imp, clk)) in &expect {
        let a = arm_of(&rep, name);
        assert_eq!(
            (a["impressions"].as_u64(), a["clicks"].as_u64()),
            (Some(*imp), Some(*clk)),
            "{name}: {a}"
        );
        assert_eq!(a["attributed_by_request"].as_u64(), Some(imp + clk), "{a}");
        let ctr = a["ctr"].as_f64().expect("ctr");
        let ci = a["ctr_ci95"].as_array().expect("ci");
        assert!(
            ci[0].as_f64().unwrap_or(1.0) <= ctr && ctr <= ci[1].as_f64().unwrap_or(0.0),
            "{a}"
        );
    }
    let requests: u64 = ["control", "treatment"]
        .iter()
        .map(|n| arm_of(&rep, n)["requests"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(requests, 2 * users.len() as u64 + 1);
    let metrics = reqwest::get(s.url("/metrics"))
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    let (imp, clk) = expect["treatment"];
    assert!(
        metrics.contains(&format!(
            "funnel_experiment_impressions{{experiment=\"exp1\",arm=\"treatment\"}} {imp}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "funnel_experiment_clicks{{experiment=\"exp1\",arm=\"treatment\"}} {clk}"
    )));

    // The durable log says the same (what `funnel experiments report` prints).
    s.stop().await;
    let from_log = funnel::engine::experiments::report_from_log(&log_dir, Some(&exp)).expect("log");
    for (name, (imp, clk)) in &expect {
        let a = from_log
            .iter()
            .find(|a| a.label == format!("exp1/{name}"))
            .expect("arm in log");
        assert_eq!(
            (a.impressions, a.clicks, a.recorded),
            (*imp, *clk, imp + clk),
            "{a:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_arm_runs_after_the_answer_and_is_counted_apart() {
    let mut c = cfg(vec![
        arm("control", 1.0, false, None),
        arm("shadow-borda", 1.0, true, Some(Strategy::Borda)),
    ]);
    // No admission queue to stand aside for in this sequential test.
    c.admission.enabled = false;
    let s = TestServer::start(shared_bundle(), c, None).await;
    let mut users = s.engine.bundle().user_ids.clone();
    users.sort_unstable();
    users.truncate(30);
    for &u in &users {
        let (st, v) = s.recommend(json!({"user_id": u, "k": 10})).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(
            v["experiment"]["arm"], "control",
            "a shadow arm never serves"
        );
    }
    // The served side is complete the moment the answers are; the shadow side catches up.
    let rep = report(&s).await;
    assert_eq!(arm_of(&rep, "control")["requests"], users.len() as u64);
    assert_eq!(arm_of(&rep, "shadow-borda")["requests"], 0);
    let t = std::time::Instant::now();
    let sh = loop {
        let rep = report(&s).await;
        let sh = arm_of(&rep, "shadow-borda")["shadow_stats"].clone();
        let done = sh["runs"].as_u64().unwrap_or(0)
            + sh["dropped"].as_u64().unwrap_or(0)
            + sh["failed"].as_u64().unwrap_or(0);
        if done == users.len() as u64 {
            break sh;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "shadow runs did not finish: {sh}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(sh["runs"].as_u64().unwrap_or(0) > 0, "{sh}");
    assert_eq!(sh["failed"], 0, "{sh}");
    let overlap = sh["overlap_at_k"].as_f64().expect("overlap");
    assert!((0.0..=1.0).contains(&overlap), "{sh}");
    assert!(sh["ms_p50"].as_f64().unwrap_or(0.0) > 0.0, "{sh}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiment_config_is_checked() {
    let bad = "[experiment]\nname = \"e\"\n[[experiment.arms]]\nname = \"a\"\nshare = 0.6\n[[experiment.arms]]\nname = \"b\"\nshare = 0.3\n";
    let err = funnel::config::EngineConfig::from_toml(bad).expect_err("shares");
    assert!(err.contains("sum to 1"), "{err}");
    let ok = "[experiment]\nname = \"e\"\n[[experiment.arms]]\nname = \"a\"\nshare = 0.7\n[[experiment.arms]]\nname = \"b\"\nshare = 0.3\nranking = { strategy = \"mean\", max_models = 2 }\n[[experiment.arms]]\nname = \"s\"\nshare = 0.1\nshadow = true\n";
    let c = funnel::config::EngineConfig::from_toml(ok).expect("valid");
    assert_eq!(c.experiment.expect("exp").arms.len(), 3);
    // No experiment: the route says so.
    let mut c = test_config();
    c.auth.admin_tokens = vec![TOKEN.into()];
    let s = TestServer::start(shared_bundle(), c, None).await;
    let (status, v) = get_report(&s).await;
    assert_eq!(status, 404);
    assert_eq!(v["code"], "no_experiment");
    let (_, v) = s.recommend(json!({"user_id": 1})).await;
    assert!(v.get("experiment").is_none(), "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_quotas_change_retrieval_for_its_requests_only() {
    let mut narrow = arm("trending-only", 0.5, false, None);
    narrow.quotas = Some(funnel::sources::SourceQuotas {
        ann: 0,
        cf: 0,
        content: 0,
        trending: 50,
    });
    let s = TestServer::start(
        shared_bundle(),
        cfg(vec![arm("control", 0.5, false, None), narrow]),
        None,
    )
    .await;
    let user = s
        .engine
        .bundle()
        .batch_recs
        .keys()
        .min()
        .copied()
        .expect("a user");
    let per_source = |v: &Value, src: &str| v["explain"]["per_source"][src].as_u64().unwrap_or(0);
    let (st, c) = s
        .recommend(json!({"user_id": user, "explain": true, "arm": "control"}))
        .await;
    assert_eq!(st, 200, "{c}");
    let (st, t) = s
        .recommend(json!({"user_id": user, "explain": true, "arm": "trending-only"}))
        .await;
    assert_eq!(st, 200, "{t}");
    assert!(
        per_source(&c, "ann") > 0 && per_source(&c, "cf") > 0,
        "{}",
        c["explain"]
    );
    assert_eq!(
        (
            per_source(&t, "ann"),
            per_source(&t, "cf"),
            per_source(&t, "content")
        ),
        (0, 0, 0),
        "{}",
        t["explain"]
    );
    assert!(
        per_source(&t, "trending") > 0 && per_source(&t, "trending") <= 50,
        "{}",
        t["explain"]
    );
    s.stop().await;
}
