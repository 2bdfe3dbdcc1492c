//! Every bad input of the control plane gets its status, an error body in the original's
//! shape naming the problem, and changes nothing.
mod common;

use std::time::Duration;

use bcs_testkit::forward::Forwarder;
use bcs_testkit::mysql::MysqlDatabase;
use common::{assert_error, seed_flow, Admin, Options};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_400_413_415_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let admin = Admin::start(dir.path(), &Options::default()).await;
    let a = admin.admin();

    let r = admin.call_raw(Method::POST, "/rest/users/", a, "application/json", b"{\"user_name\": ".to_vec()).await;
    assert_error(&r, 400, "BAD_JSON", "malformed JSON");
    let r = admin.call_raw(Method::POST, "/rest/users/", a, "application/json", b"[1, 2]".to_vec()).await;
    assert_error(&r, 400, "BAD_JSON", "JSON object");
    let r = admin
        .call_raw(Method::POST, "/rest/users/", a, "application/json", b"{\"user_name\": \"x\"} trailing".to_vec())
        .await;
    assert_error(&r, 400, "BAD_JSON", "malformed JSON");
    let r = admin.call(Method::POST, "/rest/users/", a, Some(json!({}))).await;
    assert_error(&r, 400, "VALIDATION_ERROR", "field 'user_name' is required");
    let r = admin.call(Method::POST, "/rest/users/", a, Some(json!({"user_name": "   "}))).await;
    assert_error(&r, 400, "VALIDATION_ERROR", "field 'user_name' is required");
    let r = admin.call(Method::POST, "/rest/users/", a, Some(json!({"user_name": 42}))).await;
    assert_error(&r, 400, "VALIDATION_ERROR", "field 'user_name' has the wrong type");
    let r = admin.call(Method::POST, "/rest/users/", a, Some(json!({"user_name": "bob smith"}))).await;
    assert_error(&r, 400, "VALIDATION_ERROR", "field 'user_name' must be");
    let r = admin.call(Method::POST, "/rest/users/", a, Some(json!({"user_name": "x".repeat(129)}))).await;
    assert_error(&r, 400, "VALIDATION_ERROR", "field 'user_name'");
    let r = admin.call(Method::POST, "/rest/users/", a, None).await;
    assert_error(&r, 400, "VALIDATION_ERROR", "body is required");
    let r = admin.call_raw(Method::POST, "/rest/users/", a, "text/plain", b"{\"user_name\": \"bob\"}".to_vec()).await;
    assert_error(&r, 415, "UNSUPPORTED_MEDIA_TYPE", "text/plain");
    let huge = format!("{{\"user_name\": \"{}\"}}", "a".repeat(1024 * 1024 + 10));
    let r = admin.call_raw(Method::POST, "/rest/users/", a, "application/json", huge.into_bytes()).await;
    assert_error(&r, 413, "PAYLOAD_TOO_LARGE", "1048576");
    let r = admin
        .call(
            Method::POST,
            "/rest/clusters/bcs",
            a,
            Some(json!({"id": "k8s-1", "project_id": "p", "cluster_type": "swarm"})),
        )
        .await;
    assert_error(&r, 400, "CLUSTER_TYPE_INVALID", "swarm");
    let r = admin.call(Method::POST, "/rest/clusters/bcs", a, Some(json!({"id": "k8s/../1", "project_id": "p"}))).await;
    assert_error(&r, 400, "VALIDATION_ERROR", "field 'id'");
    let r = admin.call(Method::GET, "/rest/clusters/bcs/query_by_id/?cluster_id=x", a, None).await;
    assert_error(&r, 400, "VALIDATION_ERROR", "field 'project_id' is required");
    let r = admin.call(Method::POST, "/rest/users/abc/tokens", a, None).await;
    assert_error(&r, 400, "USER_ID_INVALID", "abc");
    let r = admin.call(Method::POST, "/rest/users/1/tokens", a, Some(json!({"expires_in": 0}))).await;
    assert_error(&r, 400, "VALIDATION_ERROR", "field 'expires_in'");
    // A misspelt field is named as unknown, with what was expected, not as a wrong type.
    let r = admin.call(Method::POST, "/rest/users/1/tokens", a, Some(json!({"expire_in": 60}))).await;
    assert_error(&r, 400, "VALIDATION_ERROR", "field 'expire_in' is not known here: expected `expires_in`");
    let r = admin.call(Method::POST, "/rest/users/1/tokens", a, Some(json!({"a, b": 60}))).await;
    assert_error(&r, 400, "VALIDATION_ERROR", "field 'a, b' is not known here: expected `expires_in`");
    // A token sent without its scheme is told so, not called anonymous.
    let bare = reqwest::Client::new()
        .get(format!("{}/rest/clusters", admin.base))
        .header("Authorization", admin.admin_token.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 401);
    let body: serde_json::Value = bare.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("must be 'Bearer <token>'"), "{body}");
    assert!(!body.to_string().contains(&admin.admin_token), "{body}");

    // None of it left a trace.
    let users = admin.call(Method::GET, "/rest/users/bob", a, None).await;
    assert_error(&users, 404, "USER_NOT_FOUND", "bob");
    let clusters = admin.call(Method::GET, "/rest/clusters", a, None).await;
    assert_eq!(clusters, (200, json!([])));
    let tokens = admin.call(Method::GET, "/rest/users/1/tokens", a, None).await;
    assert_eq!(tokens.1.as_array().unwrap().len(), 1, "only the bootstrap token: {}", tokens.1);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_methods_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let admin = Admin::start(dir.path(), &Options::default()).await;
    let a = admin.admin();
    assert_error(&admin.call(Method::GET, "/rest/nothing", a, None).await, 404, "NOT_FOUND", "/rest/nothing");
    assert_error(&admin.call(Method::GET, "/", None, None).await, 404, "NOT_FOUND", "GET /");
    assert_error(&admin.call(Method::PATCH, "/rest/users", a, None).await, 405, "METHOD_NOT_ALLOWED", "PATCH");
    assert_error(&admin.call(Method::GET, "/rest/users/nobody", a, None).await, 404, "USER_NOT_FOUND", "nobody");
    assert_error(&admin.call(Method::POST, "/rest/users/999/tokens", a, None).await, 404, "USER_NOT_FOUND", "999");
    assert_error(&admin.call(Method::DELETE, "/rest/users/1/tokens/999", a, None).await, 404, "TOKEN_NOT_FOUND", "999");
    for path in [
        "/rest/clusters/nope",
        "/rest/clusters/nope/register_tokens",
        "/rest/clusters/nope/credentials",
        "/rest/clusters/nope/client_credentials",
    ] {
        assert_error(&admin.call(Method::GET, path, a, None).await, 404, "CLUSTER_NOT_FOUND", "cluster nope not found");
    }
    let report = json!({"register_token": "x", "server_addresses": "https://1.2.3.4", "cacert_data": common::CLUSTER_CA, "user_token": "t"});
    assert_error(
        &admin.call(Method::PUT, "/rest/clusters/nope/credentials", None, Some(report)).await,
        404,
        "CLUSTER_NOT_FOUND",
        "nope",
    );
    assert_error(
        &admin.call(Method::GET, "/rest/clusters/bcs/query_by_cluster_id/?cluster_id=ghost", a, None).await,
        404,
        "CLUSTER_NOT_FOUND",
        "ghost",
    );
    // What axum's extractors refuse (a segment that is not UTF-8 once decoded, a query key
    // given twice) has the API's error body too.
    assert_error(&admin.call(Method::GET, "/rest/clusters/%FF", a, None).await, 400, "BAD_REQUEST", "");
    assert_error(
        &admin.call(Method::GET, "/rest/clusters/nope/agent.yaml?image=a&image=b", a, None).await,
        400,
        "BAD_REQUEST",
        "image",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn authentication_and_authorisation() {
    let dir = tempfile::tempdir().unwrap();
    let admin = Admin::start(dir.path(), &Options::default()).await;
    let seeded = seed_flow(&admin, "erin", "sa-erin").await;
    let user = Some(seeded.user_token.as_str());

    // No, unknown, malformed tokens.
    assert_error(&admin.call(Method::GET, "/rest/clusters", None, None).await, 401, "UNAUTHORIZED", "anonymous");
    assert_error(
        &admin.call(Method::GET, "/rest/clusters", Some("not-a-real-token"), None).await,
        401,
        "UNAUTHORIZED",
        "not valid",
    );
    assert_error(
        &admin.call(Method::GET, "/rest/clusters/bcs/query_by_cluster_id/?cluster_id=K8S-001", None, None).await,
        401,
        "UNAUTHORIZED",
        "anonymous",
    );

    // An expired token. Expiry is kept in whole seconds, so a 1-s token made late in a second
    // could expire before its first use (seen once under load): 2 s, and 3.1 s of waiting.
    let short = admin
        .call(
            Method::POST,
            &format!("/rest/users/{}/tokens", seeded.user_id),
            admin.admin(),
            Some(json!({"expires_in": 2})),
        )
        .await;
    assert_eq!(short.0, 200, "{}", short.1);
    let short = short.1["Value"].as_str().unwrap().to_owned();
    assert_eq!(admin.call(Method::GET, "/rest/clusters", Some(&short), None).await.0, 200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    // The very answer an unknown token gets: an old leaked token is not confirmed as once valid.
    let expired = admin.call(Method::GET, "/rest/clusters", Some(&short), None).await;
    assert_error(&expired, 401, "UNAUTHORIZED", "unknown, revoked or expired");
    assert_eq!(expired, admin.call(Method::GET, "/rest/clusters", Some("never-a-token"), None).await);

    // Super-user routes.
    assert_error(
        &admin.call(Method::POST, "/rest/users/", user, Some(json!({"user_name": "mallory"}))).await,
        403,
        "FORBIDDEN",
        "super users",
    );
    assert_error(&admin.call(Method::GET, "/rest/users/erin", user, None).await, 403, "FORBIDDEN", "super users");
    assert_error(
        &admin.call(Method::POST, &format!("/rest/users/{}/tokens", seeded.user_id), user, None).await,
        403,
        "FORBIDDEN",
        "super users",
    );
    assert_error(
        &admin.call(Method::GET, &format!("/rest/clusters/{}/credentials", seeded.cluster_id), user, None).await,
        403,
        "FORBIDDEN",
        "super users",
    );
    assert_error(&admin.call(Method::GET, "/rest/users/1/tokens", user, None).await, 403, "FORBIDDEN", "itself");
    // The same answer for an id that does not exist: which ids do is not told.
    assert_error(&admin.call(Method::GET, "/rest/users/999999/tokens", user, None).await, 403, "FORBIDDEN", "itself");
    assert_error(
        &admin.call(Method::DELETE, "/rest/users/999999/tokens/1", user, None).await,
        403,
        "FORBIDDEN",
        "itself",
    );

    // Another normal user may not touch erin's cluster's register token or delete it.
    let frank = admin.call(Method::POST, "/rest/users/", admin.admin(), Some(json!({"user_name": "frank"}))).await.1
        ["ID"]
        .as_i64()
        .unwrap();
    let frank = admin.call(Method::POST, &format!("/rest/users/{frank}/tokens"), admin.admin(), None).await.1["Value"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/rest/clusters/{}/register_tokens", seeded.cluster_id);
    assert_error(&admin.call(Method::GET, &path, Some(&frank), None).await, 403, "FORBIDDEN", "creator");
    assert_error(
        &admin.call(Method::POST, &format!("{path}/rotate"), Some(&frank), None).await,
        403,
        "FORBIDDEN",
        "creator",
    );
    assert_error(
        &admin.call(Method::DELETE, &format!("/rest/clusters/{}", seeded.cluster_id), Some(&frank), None).await,
        403,
        "FORBIDDEN",
        "creator",
    );
    // ...but the super user may, and the token is unchanged by the refused rotate.
    let read = admin.call(Method::GET, &path, admin.admin(), None).await;
    assert_eq!(read.1[0]["token"], seeded.register_token.as_str());

    // HTTP Basic with the token as password is accepted, as the original did.
    let basic = reqwest::Client::new()
        .get(format!("{}/rest/users/erin", admin.base))
        .basic_auth("admin", Some(&admin.admin_token))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicts_are_409_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let admin = Admin::start(dir.path(), &Options::default()).await;
    let seeded = seed_flow(&admin, "gina", "sa-gina").await;
    let a = admin.admin();

    assert_error(
        &admin.call(Method::POST, "/rest/users/", a, Some(json!({"user_name": "gina"}))).await,
        409,
        "USER_ALREADY_EXISTS",
        "gina",
    );
    let dup =
        admin.call(Method::POST, "/rest/clusters/bcs", a, Some(json!({"id": "K8S-001", "project_id": "demo"}))).await;
    assert_error(&dup, 409, "CLUSTER_ALREADY_EXISTS", "already registered");
    // Source cluster ids are case-sensitive (on both engines): another case is another cluster.
    let other = json!({"id": "k8s-001", "project_id": "demo"});
    let other_case = admin.call(Method::POST, "/rest/clusters/bcs", a, Some(other)).await;
    assert_eq!(other_case.0, 200, "{}", other_case.1);
    assert_eq!(admin.call(Method::POST, "/rest/clusters/", a, Some(json!({"id": "one"}))).await.0, 200);
    assert_error(
        &admin.call(Method::POST, "/rest/clusters/", a, Some(json!({"id": "one"}))).await,
        409,
        "CLUSTER_ALREADY_EXISTS",
        "plain-one",
    );
    let path = format!("/rest/clusters/{}/register_tokens", seeded.cluster_id);
    assert_error(&admin.call(Method::POST, &path, a, None).await, 409, "RTOKEN_ALREADY_EXISTS", "already has");

    // Still one gina, three clusters, the same register token.
    assert_eq!(admin.call(Method::GET, "/rest/users/gina", a, None).await.1["ID"], seeded.user_id);
    assert_eq!(admin.call(Method::GET, "/rest/clusters", a, None).await.1.as_array().unwrap().len(), 3);
    assert_eq!(admin.call(Method::GET, &path, a, None).await.1[0]["token"], seeded.register_token.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_credential_reports_are_refused_and_keep_the_stored_ones() {
    let dir = tempfile::tempdir().unwrap();
    let admin = Admin::start(dir.path(), &Options::default()).await;
    let seeded = seed_flow(&admin, "hana", "sa-hana").await;
    let path = format!("/rest/clusters/{}/credentials", seeded.cluster_id);
    let report = |token: &str, addresses: &str, ca: &str, sa: &str| json!({"register_token": token, "server_addresses": addresses, "cacert_data": ca, "user_token": sa});
    let ca = common::CLUSTER_CA;
    let rt = seeded.register_token.as_str();
    // A second cluster of the same user, with its own register token.
    let other = admin
        .call(
            Method::POST,
            "/rest/clusters/bcs",
            Some(&seeded.user_token),
            Some(json!({"id": "other", "project_id": "demo"})),
        )
        .await;
    let other_id = other.1["id"].as_str().unwrap().to_owned();
    let other_rt = admin
        .call(Method::POST, &format!("/rest/clusters/{other_id}/register_tokens"), Some(&seeded.user_token), None)
        .await;
    let other_rt = other_rt.1[0]["token"].as_str().unwrap().to_owned();
    let garbage_der = "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n";

    // Sixteen addresses with 4 200-character hosts: more than MySQL's TEXT column holds.
    let long_hosts = vec![format!("https://{}.example:6443", "a".repeat(4_200)); 16].join(";");
    // A bundle that would swell every snapshot: the same CA 600 times (a megabyte), or 17 times.
    let (huge_ca, many_ca) = (ca.repeat(600), ca.repeat(17));
    let cases = [
        (report(rt, "https://10.0.0.1:6443", &huge_ca, "new"), 400, "VALIDATION_ERROR", "at most 64 KiB"),
        (report(rt, "https://10.0.0.1:6443", &many_ca, "new"), 400, "VALIDATION_ERROR", "at most 16 certificates"),
        (report(rt, &long_hosts, ca, "new"), 400, "VALIDATION_ERROR", "longer than 300 characters"),
        (report(&other_rt, "https://10.0.0.1:6443", ca, "new"), 403, "FORBIDDEN", "belongs to another cluster"),
        (report(rt, "http://10.0.0.1:6443", ca, "new"), 400, "VALIDATION_ERROR", "not an https://host[:port] URL"),
        (report(rt, "https://10.0.0.1:6443;http://10.0.0.2:6443", ca, "new"), 400, "VALIDATION_ERROR", "https://"),
        (report(rt, " ; ", ca, "new"), 400, "VALIDATION_ERROR", "field 'server_addresses' is required"),
        (report(rt, "https://10.0.0.1:6443", garbage_der, "new"), 400, "VALIDATION_ERROR", "invalid certificate"),
        (report("wrong", "https://10.0.0.1:6443", ca, "new"), 401, "UNAUTHORIZED", "register token"),
        (report("", "https://10.0.0.1:6443", ca, "new"), 400, "VALIDATION_ERROR", "field 'register_token' is required"),
        (report(rt, "", ca, "new"), 400, "VALIDATION_ERROR", "field 'server_addresses' is required"),
        (report(rt, "ftp://10.0.0.1", ca, "new"), 400, "VALIDATION_ERROR", "field 'server_addresses'"),
        (report(rt, "not a url", ca, "new"), 400, "VALIDATION_ERROR", "field 'server_addresses'"),
        (report(rt, "https://u:p@10.0.0.1", ca, "new"), 400, "VALIDATION_ERROR", "credentials"),
        (report(rt, "https://10.0.0.1:6443/k8s", ca, "new"), 400, "VALIDATION_ERROR", "without a path"),
        (report(rt, "https://10.0.0.1:6443?x=1", ca, "new"), 400, "VALIDATION_ERROR", "without a path"),
        (report(rt, "https://169.254.169.254", ca, "new"), 400, "VALIDATION_ERROR", "link-local"),
        (report(rt, "https://[fe80::1]:6443", ca, "new"), 400, "VALIDATION_ERROR", "link-local"),
        (report(rt, "https://[::ffff:169.254.1.1]:6443", ca, "new"), 400, "VALIDATION_ERROR", "link-local"),
        (report(rt, "https://0.0.0.0:6443", ca, "new"), 400, "VALIDATION_ERROR", "unspecified"),
        (report(rt, "https://224.0.0.1:6443", ca, "new"), 400, "VALIDATION_ERROR", "multicast"),
        (report(rt, "https://10.0.0.1:6443", "not pem", "new"), 400, "VALIDATION_ERROR", "field 'cacert_data'"),
        (report(rt, "https://10.0.0.1:6443", ca, ""), 400, "VALIDATION_ERROR", "field 'user_token' is required"),
        (report(rt, "https://10.0.0.1:6443", ca, "two words"), 400, "VALIDATION_ERROR", "field 'user_token'"),
    ];
    for (body, status, code, needle) in cases {
        let r = admin.call(Method::PUT, &path, None, Some(body.clone())).await;
        assert_error(&r, status, code, needle);
    }
    // A refused report is not echoed: no register token or cluster token in error bodies.
    let r = admin
        .call(
            Method::PUT,
            &path,
            None,
            Some(report("wrong-secret-value", "https://10.0.0.1:6443", ca, "sa-secret-value")),
        )
        .await;
    assert!(!r.1.to_string().contains("secret-value"), "{}", r.1);
    // Nor a password in an address, whatever else is wrong with it (the agent logs refusals).
    for (address, needle) in [
        ("http://kube:pw-secret-value@10.0.0.1:6443", "not an https://host[:port] URL"),
        ("https://kube:pw-secret-value@10.0.0.1:99999", "invalid URL"),
        ("https://kube:pw-secret-value@[fe80::1]:6443", "credentials"),
        ("ftp://kube:pw-secret-value@10.0.0.1/x", "not an https://host[:port] URL"),
        ("kube:pw-secret-value@10.0.0.1:6443", "field 'server_addresses'"),
        ("https://10.0.0.1:6443;http://a:pw@b@pw-secret-value@10.0.0.2", "not an https://host[:port] URL"),
        ("http:/kube:pw-secret-value@10.0.0.1:6443", "not an https://host[:port] URL"),
        ("https://kube:pw/secret-value@10.0.0.1:99999", "field 'server_addresses'"),
        ("https://kube:pw-secret-value?x@10.0.0.1:99999", "field 'server_addresses'"),
    ] {
        let r = admin.call(Method::PUT, &path, None, Some(report(rt, address, ca, "new"))).await;
        assert_error(&r, 400, "VALIDATION_ERROR", needle);
        let body = r.1.to_string();
        assert!(!body.contains("pw-secret-value") && !body.contains("pw/secret"), "{address}: {body}");
    }

    let stored = admin.call(Method::GET, &path, admin.admin(), None).await;
    assert_eq!(stored.1["UserToken"], "sa-hana");
    assert_eq!(stored.1["Version"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn store_down_is_503_and_nothing_is_half_written() {
    let db = MysqlDatabase::fresh("bcs_down");
    let forwarder = Forwarder::start(db.server_address()).await;
    let dir = tempfile::tempdir().unwrap();
    let options = Options { dsn: db.go_dsn_via("127.0.0.1", forwarder.port()), ..Options::default() };
    let admin = Admin::start(dir.path(), &options).await;
    let a = admin.admin();
    assert_eq!(admin.call(Method::POST, "/rest/users/", a, Some(json!({"user_name": "before"}))).await.0, 200);

    forwarder.cut();
    let r = admin.call(Method::POST, "/rest/users/", a, Some(json!({"user_name": "during"}))).await;
    assert_error(&r, 503, "STORE_UNAVAILABLE", "unavailable");
    let health = admin.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(health.0, 503, "{}", health.1);
    assert_eq!(health.1["healthy"], false);

    forwarder.restore();
    let mut recovered = false;
    for _ in 0..50 {
        if admin.call(Method::GET, "/healthz", None, None).await.0 == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "healthz back to 200 once the store is back");
    assert_error(&admin.call(Method::GET, "/rest/users/during", a, None).await, 404, "USER_NOT_FOUND", "during");
    assert_eq!(admin.call(Method::GET, "/rest/users/before", a, None).await.0, 200);
    assert_eq!(admin.call(Method::POST, "/rest/users/", a, Some(json!({"user_name": "during"}))).await.0, 200);
    assert!(admin.process.wait_stderr(&["store unavailable"], Duration::from_secs(5)), "{}", admin.process.stderr());
}

/// Reads from `stream` until it closes (true) or `within` passes (false); returns what came.
async fn until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> (bool, String) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (true, String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (false, String::from_utf8_lossy(&got).into_owned()),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_clients_of_the_rest_port_are_cut_and_never_hold_up_the_shutdown() {
    // The admin port answers requests the proxy forwards without a token (`/rest/...`): a
    // client that sends half a head, or trickles a body, must not hold a connection for good,
    // nor keep the process from exiting on SIGTERM.
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut admin = Admin::start(dir.path(), &Options::default()).await;
    let port = admin.base.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", port));
    let started = std::time::Instant::now();
    let mut half_head = connect().await.unwrap();
    half_head.write_all(b"GET /rest/users HTTP/1.1\r\nHost: a").await.unwrap();
    let mut trickle = connect().await.unwrap();
    trickle
        .write_all(b"PUT /rest/clusters/x/credentials HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        .await
        .unwrap();
    let (closed, answer) = until_closed(&mut trickle, Duration::from_secs(45)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("REQUEST_TIMEOUT") && answer.contains("did not arrive within 30 s"), "{answer}");
    println!("the trickled body was answered 408 after {:?} (closed: {closed})", started.elapsed());
    let (closed, answer) = until_closed(&mut half_head, Duration::from_secs(40)).await;
    assert!(closed, "a half head held its connection past the head timeout: {answer:?}");
    println!("the half head was cut after {:?}", started.elapsed());

    // SIGTERM with a client holding half a head and one between requests: out within the
    // drain time (10 s), not never.
    let mut held = connect().await.unwrap();
    held.write_all(b"GET /rest/use").await.unwrap();
    let mut idle = connect().await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let stopping = std::time::Instant::now();
    let pid = admin.process.pid().unwrap();
    std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    let code = admin.process.wait_exit(Duration::from_secs(20));
    println!("exited {code:?} {:?} after SIGTERM", stopping.elapsed());
    assert_eq!(code, Some(0), "{}", admin.process.stderr());
    drop((held, idle));
}
