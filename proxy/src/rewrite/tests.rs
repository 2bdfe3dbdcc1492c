use super::*;
use crate::http1::head::parse_request;

fn head(text: &str) -> RequestHead {
    parse_request(text.as_bytes()).unwrap().unwrap().0
}

fn ip() -> IpAddr {
    "10.1.2.3".parse().unwrap()
}

fn cluster(text: &str, impersonate: Option<&str>) -> String {
    let token = Secret::new("cluster-sa-token");
    let identity = ClusterIdentity { token: &token, impersonate };
    let h = head(text);
    String::from_utf8(to_cluster(&h, "/api/v1/pods", "10.0.0.1:6443", &identity, ip(), h.framing.into()).unwrap())
        .unwrap()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.to_ascii_lowercase().matches(&needle.to_ascii_lowercase()).count()
}

#[test]
fn the_cluster_gets_its_token_and_one_impersonation_never_the_callers_credentials() {
    let out = cluster(
        "GET /x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer user-token\r\nCookie: s=1\r\nProxy-Authorization: Basic x\r\nAccept: application/json\r\n\r\n",
        Some("plain.alice"),
    );
    assert!(out.starts_with("GET /api/v1/pods HTTP/1.1\r\nHost: 10.0.0.1:6443\r\n"), "{out}");
    assert!(!out.contains("user-token") && !out.contains("s=1") && !out.contains("Basic"), "{out}");
    assert_eq!(count(&out, "authorization: Bearer cluster-sa-token"), 1, "{out}");
    assert_eq!(count(&out, "\r\nimpersonate-user: plain.alice\r\n"), 1, "{out}");
    assert_eq!(count(&out, "impersonate-"), 1);
    assert!(out.contains("Accept: application/json\r\n"));
    assert!(out.contains("X-Forwarded-For: 10.1.2.3\r\n"));
    assert!(out.ends_with("\r\n\r\n"));
}

#[test]
fn connection_cannot_strip_what_the_gateway_adds() {
    let out = cluster(
        "GET /x HTTP/1.1\r\nHost: gw\r\nConnection: Impersonate-User, Authorization, X-Forwarded-For, Keep-Alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\n\r\n",
        Some("plain.bob"),
    );
    assert_eq!(count(&out, "impersonate-user: plain.bob"), 1, "{out}");
    assert_eq!(count(&out, "authorization: bearer cluster-sa-token"), 1, "{out}");
    assert!(out.contains("X-Forwarded-For: 10.1.2.3"), "{out}");
    assert!(!out.contains("X-Secret") && !out.contains("Keep-Alive") && !out.contains("Connection"), "{out}");
}

#[test]
fn names_of_every_length_are_dropped_when_named_and_kept_otherwise() {
    // Long names (63, 64 and 70 bytes), named in Connection or not, and kept names as long as
    // dropped ones: removal goes by the whole name, whatever its length.
    let named =
        ["X-".to_owned() + &"a".repeat(61), "X-".to_owned() + &"b".repeat(62), "X-".to_owned() + &"c".repeat(68)];
    let kept =
        ["Y-".to_owned() + &"a".repeat(61), "Y-".to_owned() + &"b".repeat(62), "Y-".to_owned() + &"c".repeat(68)];
    let mut text = format!("GET /x HTTP/1.1\r\nHost: gw\r\nConnection: {}\r\n", named.join(", "));
    for name in named.iter().chain(&kept) {
        text += &format!("{name}: 1\r\n");
    }
    text += "Upgrade-Insecure: 1\r\nTrailers: 1\r\n\r\n";
    let out = cluster(&text, None);
    for name in &named {
        assert!(!out.contains(name.as_str()), "{name} was named in Connection: {out}");
    }
    for name in &kept {
        assert!(out.contains(&format!("{name}: 1\r\n")), "{name} is not hop-by-hop: {out}");
    }
    // As long as `upgrade` + 9 and `trailer` + 1: kept.
    assert!(out.contains("Upgrade-Insecure: 1\r\nTrailers: 1\r\n"), "{out}");
}

#[test]
fn framing_is_regenerated_and_forwarded_for_appended() {
    let out = cluster(
        "POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 005\r\nX-Forwarded-For: 1.1.1.1\r\nExpect: 100-continue\r\n\r\n",
        None,
    );
    assert!(out.contains("Content-Length: 5\r\n") && !out.contains("005"), "{out}");
    assert!(out.contains("X-Forwarded-For: 1.1.1.1, 10.1.2.3\r\n"), "{out}");
    assert!(!out.to_ascii_lowercase().contains("expect"), "{out}");
    let out = cluster("POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n", None);
    assert_eq!(count(&out, "transfer-encoding: chunked"), 1);
}

#[test]
fn upgrades_keep_their_protocol_and_drop_bearer_subprotocols() {
    let out = cluster(
        "GET /x HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.c2VjcmV0, v5.channel.k8s.io\r\n\r\n",
        None,
    );
    assert!(out.contains("Connection: Upgrade\r\nUpgrade: websocket\r\n"), "{out}");
    assert!(out.contains("Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n"), "{out}");
    assert!(!out.contains("c2VjcmV0"), "{out}");
}

#[test]
fn admin_keeps_the_callers_authorization() {
    let h = head(
        "PUT /rest/clusters/c/credentials HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer t\r\nContent-Length: 2\r\n\r\n",
    );
    let out = String::from_utf8(to_admin(&h, "127.0.0.1:8090", ip(), h.framing.into()).unwrap()).unwrap();
    assert!(out.starts_with("PUT /rest/clusters/c/credentials HTTP/1.1\r\nHost: 127.0.0.1:8090\r\n"), "{out}");
    assert!(out.contains("Authorization: Bearer t\r\n") && out.contains("Content-Length: 2\r\n"), "{out}");
}

#[test]
fn responses_lose_hop_by_hop_and_cookies() {
    let (r, _) = crate::http1::head::parse_response(
        b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: 1\r\nSet-Cookie: a=b\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET",
    )
    .unwrap()
    .unwrap();
    let out = String::from_utf8(to_client(&r, BodyFraming::Chunked, false, None, 0).unwrap()).unwrap();
    assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
    let out = String::from_utf8(to_client(&r, BodyFraming::Length(3), true, None, 0).unwrap()).unwrap();
    assert!(out.contains("Content-Length: 3\r\nConnection: close\r\n"), "{out}");
}

#[test]
fn drivers_get_no_credentials_and_no_impersonation_but_the_cluster_id() {
    let h = head("GET /x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer user-token\r\nCookie: s=1\r\nImpersonate-User: x\r\nimpersonate-group: y\r\nBCS-ClusterID: BCS-MESOS-1\r\n\r\n");
    let out =
        String::from_utf8(to_driver(&h, "/mesosdriver/v4/apps", "10.0.0.5:8090", ip(), h.framing.into()).unwrap())
            .unwrap();
    assert!(out.starts_with("GET /mesosdriver/v4/apps HTTP/1.1\r\nHost: 10.0.0.5:8090\r\n"), "{out}");
    assert!(out.contains("BCS-ClusterID: BCS-MESOS-1\r\n"), "{out}");
    assert!(!out.contains("user-token") && !out.contains("s=1"), "{out}");
    assert_eq!(count(&out, "impersonate-"), 0, "{out}");
}

#[test]
fn drivers_get_no_bearer_subprotocol_either() {
    let h = head("GET /x HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.c2VjcmV0, channel.k8s.io\r\n\r\n");
    let out = String::from_utf8(to_driver(&h, "/x", "10.0.0.5:8090", ip(), h.framing.into()).unwrap()).unwrap();
    assert!(out.contains("Sec-WebSocket-Protocol: channel.k8s.io\r\n"), "{out}");
    assert!(!out.contains("c2VjcmV0"), "{out}");
}

#[test]
fn fields_pass_on_as_received_empty_values_and_spacing_included() {
    let (r, _) = crate::http1::head::parse_response(
        b"HTTP/1.1 200 OK\r\nX-Empty:\r\nX-Tab:\t v \r\nConnection: keep-alive\r\nX-Last:v\r\nContent-Length: 3\r\n\r\n",
        "GET",
    )
    .unwrap()
    .unwrap();
    let out = String::from_utf8(to_client(&r, BodyFraming::Length(3), false, None, 0).unwrap()).unwrap();
    assert_eq!(out, "HTTP/1.1 200 OK\r\nX-Empty:\r\nX-Tab:\t v\r\nX-Last:v\r\nContent-Length: 3\r\n\r\n");
    let h = head("GET /x HTTP/1.1\r\nHost: gw\r\nAccept:  */*\r\nX-None:\r\n\r\n");
    let out = cluster("GET /x HTTP/1.1\r\nHost: gw\r\nAccept:  */*\r\nX-None:\r\n\r\n", None);
    assert!(out.contains("\r\nAccept:  */*\r\nX-None:\r\n"), "{out}");
    assert_eq!(h.headers.iter().map(|f| f.line().len()).collect::<Vec<_>>(), [8, 12, 7]);
}

#[test]
fn a_bodiless_answer_keeps_its_length_only_when_it_is_a_number() {
    for (length, kept) in [("Content-Length: 42\r\n", true), ("Content-Length:\r\n", false)] {
        let text = format!("HTTP/1.1 200 OK\r\n{length}\r\n");
        let (r, _) = crate::http1::head::parse_response(text.as_bytes(), "HEAD").unwrap().unwrap();
        let out = String::from_utf8(to_client(&r, BodyFraming::None, false, None, 0).unwrap()).unwrap();
        assert_eq!(out.contains(length), kept, "{out}");
        assert_eq!(out.to_ascii_lowercase().matches("content-length").count(), usize::from(kept), "{out}");
    }
    // A 304 keeps it; a 204 and a 101 never carry one (RFC 9110 8.6), whatever the upstream sent.
    for (status, kept) in [("304 Not Modified", true), ("204 No Content", false), ("101 Switching Protocols", false)] {
        let text = format!("HTTP/1.1 {status}\r\nContent-Length: 7\r\n\r\n");
        let (r, _) = crate::http1::head::parse_response(text.as_bytes(), "GET").unwrap().unwrap();
        let out = String::from_utf8(to_client(&r, BodyFraming::None, false, None, 0).unwrap()).unwrap();
        assert_eq!(out.contains("Content-Length: 7"), kept, "{out}");
    }
}

#[test]
fn connection_names_fields_as_the_head_parser_reads_it() {
    // Tokens are text, trimmed as parse_request trims them; a value that is not UTF-8 names none.
    let out =
        cluster("GET /x HTTP/1.1\r\nHost: gw\r\nConnection: X-A\u{a0}, keep-alive\r\nX-A: 1\r\nX-B: 2\r\n\r\n", None);
    assert!(!out.contains("X-A: 1") && out.contains("X-B: 2\r\n"), "{out}");
    let raw = b"GET /x HTTP/1.1\r\nHost: gw\r\nConnection: X-A, \xff\r\nX-A: 1\r\n\r\n";
    let h = parse_request(raw).unwrap().unwrap().0;
    let identity = ClusterIdentity { token: &Secret::new("t"), impersonate: None };
    let out = to_cluster(&h, "/x", "10.0.0.1:6443", &identity, ip(), h.framing.into()).unwrap();
    assert!(out.windows(8).any(|w| w == b"X-A: 1\r\n"), "{}", String::from_utf8_lossy(&out));
}

#[test]
fn a_connection_header_naming_many_fields_is_refused() {
    let names: Vec<String> = (0..17).map(|i| format!("x-{i}")).collect();
    let h = head(&format!("GET /x HTTP/1.1\r\nHost: gw\r\nConnection: {}\r\n\r\n", names.join(", ")));
    let error = to_driver(&h, "/x", "10.0.0.5:8090", ip(), h.framing.into()).unwrap_err();
    assert!(matches!(&error, ProxyError::BadRequest(m) if m.contains("more than 16")), "{error:?}");
    let h = head(&format!("GET /x HTTP/1.1\r\nHost: gw\r\nConnection: {}\r\n\r\n", names[..16].join(", ")));
    assert!(to_driver(&h, "/x", "10.0.0.5:8090", ip(), h.framing.into()).is_ok());
}

#[test]
fn any_token_method_is_written_and_nothing_that_could_break_the_line() {
    // FOO1 is a token the parser accepts: the upstream answers it (405), not the gateway (500).
    let out = cluster("FOO1 /api HTTP/1.1\r\nHost: g\r\n\r\n", None);
    assert!(out.starts_with("FOO1 /api/v1/pods HTTP/1.1\r\n"), "{out}");
    for method in ["M-SEARCH", "X_Y.Z~1"] {
        assert!(start(method, "/api", 0).is_ok(), "{method}");
    }
    for method in ["", "G ET", "GE\tT", "GET\r\n"] {
        assert!(start(method, "/api", 0).is_err(), "{method:?}");
    }
}
