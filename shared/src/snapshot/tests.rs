use super::wire::{encode, Decoder, Message, WireError, PROTOCOL_MAJOR};
use super::*;

/// The snapshot in `fixtures/snapshot-v1.frame`. Regenerate the fixture with
/// `BCS_BLESS=1 cargo test -p bcs-shared golden` only on a deliberate change of the wire format.
fn golden() -> Snapshot {
    Snapshot {
        revision: 1_764_000_000_123,
        generated_at: 1_764_000_000,
        turn_on_rbac: true,
        users: vec![
            User { id: 1, name: "admin".into(), is_super_user: true },
            User { id: 2, name: "plain:alice".into(), is_super_user: false },
        ],
        tokens: vec![
            Token { digest: "a".repeat(64).parse().unwrap(), user_id: 1, expires_at: 2_079_000_000 },
            Token { digest: "0123456789abcdef".repeat(4).parse().unwrap(), user_id: 2, expires_at: 2_079_000_000 },
        ],
        clusters: vec![
            Cluster {
                id: "bcs-k8s-001-AbCdEfGh".into(),
                identifier: "bcs-k8s-001-abcdefgh-0123456789abcdef".into(),
                cluster_type: "k8s".into(),
                credentials: Some(Credentials {
                    addresses: vec!["https://127.0.0.1:6443".into(), "https://[::1]:6443".into()],
                    ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
                    token: Secret::new("cluster-token"),
                    version: 3,
                }),
            },
            Cluster {
                id: "plain-new".into(),
                identifier: "plain-new-0123456789abcdef".into(),
                cluster_type: "k8s".into(),
                credentials: None,
            },
        ],
        mesos: vec![MesosDrivers {
            cluster_id: "BCS-MESOS-10001".into(),
            drivers: vec![MesosDriver { scheme: "https".into(), ip: "127.0.0.1".into(), port: 8080 }],
        }],
        mesos_pending: false,
    }
}

const HELLO: &[u8] = include_bytes!("../../fixtures/hello-v1.frame");
const SNAPSHOT: &[u8] = include_bytes!("../../fixtures/snapshot-v1.frame");

fn hello() -> Message {
    Message::Hello {
        major: PROTOCOL_MAJOR,
        // The golden frame is a 1.0 hello: frames of an older minor must still decode.
        minor: 0,
        peer: "bcs-api-proxy pid 42".into(),
        revision: Some(7),
    }
}

#[test]
fn golden_frames_decode_and_encode_byte_for_byte() {
    if std::env::var_os("BCS_BLESS").is_some() {
        std::fs::write("fixtures/hello-v1.frame", encode(&hello())).unwrap();
        std::fs::write("fixtures/snapshot-v1.frame", encode(&Message::Snapshot(golden()))).unwrap();
        return;
    }
    let mut decoder = Decoder::default();
    decoder.push(HELLO).unwrap();
    decoder.push(SNAPSHOT).unwrap();
    assert_eq!(decoder.next_message().unwrap(), Some(hello()));
    assert_eq!(decoder.next_message().unwrap(), Some(Message::Snapshot(golden())));
    assert_eq!(decoder.next_message().unwrap(), None);
    assert_eq!(encode(&hello()), HELLO);
    assert_eq!(encode(&Message::Snapshot(golden())), SNAPSHOT);
    golden().validate().unwrap();
}

#[test]
fn pending_mesos_drivers_travel_only_when_set() {
    // A frame from before the field decodes as known sets (the golden frame has none); the
    // flag is written only when set, so such frames stay byte for byte what they were.
    let mut pending = golden();
    pending.mesos.clear();
    pending.mesos_pending = true;
    let frame = encode(&Message::Snapshot(pending.clone()));
    assert!(std::str::from_utf8(&frame[4..]).unwrap().contains("\"mesos_pending\":true"));
    let mut decoder = Decoder::default();
    decoder.push(&frame).unwrap();
    assert_eq!(decoder.next_message().unwrap(), Some(Message::Snapshot(pending)));
    assert!(!std::str::from_utf8(&SNAPSHOT[4..]).unwrap().contains("mesos_pending"));
}

#[test]
fn frames_split_anywhere_decode_the_same() {
    let bytes = [HELLO, SNAPSHOT].concat();
    for split in [1, 3, 4, 5, HELLO.len(), HELLO.len() + 2, bytes.len() - 1] {
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        for part in [&bytes[..split], &bytes[split..]] {
            decoder.push(part).unwrap();
            while let Some(m) = decoder.next_message().unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out.len(), 2, "split at {split}");
    }
}

#[test]
fn oversize_frames_are_refused_before_their_payload_arrives() {
    let mut decoder = Decoder::with_limit(1024);
    let err = decoder.push(&2048u32.to_be_bytes()).unwrap_err();
    assert_eq!(err, WireError::Oversize { len: 2048, max: 1024 });
    let mut decoder = Decoder::default();
    assert!(matches!(decoder.push(&u32::MAX.to_be_bytes()), Err(WireError::Oversize { .. })));
}

#[test]
fn malformed_payloads_are_errors() {
    let mut decoder = Decoder::default();
    decoder.push(&[0, 0, 0, 3, b'{', b'x', b'}']).unwrap();
    assert!(matches!(decoder.next_message(), Err(WireError::Malformed(_))));
    let mut decoder = Decoder::default();
    let body = br#"{"type":"launch_missiles"}"#;
    decoder.push(&(body.len() as u32).to_be_bytes()).unwrap();
    decoder.push(body).unwrap();
    assert!(matches!(decoder.next_message(), Err(WireError::Malformed(_))));
    // A byte that is not UTF-8, inside a string: refused, and the next frame still decodes.
    let mut decoder = Decoder::default();
    let body = b"{\"type\":\"refused\",\"reason\":\"\xff\"}";
    decoder.push(&(body.len() as u32).to_be_bytes()).unwrap();
    decoder.push(body).unwrap();
    decoder.push(&encode(&Message::Ack { revision: 3 })).unwrap();
    let Err(WireError::Malformed(why)) = decoder.next_message() else { panic!("taken") };
    assert!(why.contains("not UTF-8"), "{why}");
    assert_eq!(decoder.next_message(), Ok(Some(Message::Ack { revision: 3 })));
}

fn decode_one(body: &str) -> Result<Option<Message>, WireError> {
    let mut decoder = Decoder::default();
    decoder.push(&(body.len() as u32).to_be_bytes()).unwrap();
    decoder.push(body.as_bytes()).unwrap();
    decoder.next_message()
}

#[test]
fn every_message_kind_round_trips_and_the_type_comes_first() {
    let kinds = [
        hello(),
        Message::Refused { reason: "major 2 is not spoken here".into() },
        Message::Snapshot(golden()),
        Message::Ack { revision: 7 },
    ];
    for message in kinds {
        let body = String::from_utf8(encode(&message)[4..].to_vec()).unwrap();
        assert!(body.starts_with("{\"type\":"), "{body}");
        assert_eq!(decode_one(&body), Ok(Some(message)));
    }
    let Err(WireError::Malformed(why)) = decode_one(r#"{"revision":7,"type":"ack"}"#) else { panic!("taken") };
    assert!(why.contains("first field must be \"type\""), "{why}");
    let Err(WireError::Malformed(why)) = decode_one(r#"{"type":"ack"}"#) else { panic!("taken") };
    assert!(why.contains("missing field `revision`"), "{why}");
    let Err(WireError::Malformed(why)) = decode_one(r#"["ack", 7]"#) else { panic!("taken") };
    assert!(why.contains("first field is \"type\""), "{why}");
}

#[test]
fn a_frame_with_a_malformed_digest_is_refused_at_decode() {
    let good = String::from_utf8(encode(&Message::Snapshot(golden()))[4..].to_vec()).unwrap();
    for bad in ["A".repeat(64), "a".repeat(63), "a".repeat(65), format!("{}g", "a".repeat(63))] {
        let Err(WireError::Malformed(why)) = decode_one(&good.replace(&"a".repeat(64), &bad)) else {
            panic!("{bad} was taken")
        };
        assert!(why.contains("not 64 lower-case hex digits"), "{why}");
    }
}

#[test]
fn user_tokens_travel_only_as_digests() {
    let frame = String::from_utf8(encode(&Message::Snapshot(golden()))[4..].to_vec()).unwrap();
    assert!(frame.contains("\"digest\""));
    assert!(!frame.contains("\"value\""));
    // The cluster token must travel (the proxy sends it upstream), but Debug never shows it.
    assert!(frame.contains("cluster-token"));
    assert!(!format!("{:?}", golden()).contains("cluster-token"));
}

#[test]
fn invalid_snapshots_are_refused() {
    let mut s = golden();
    s.tokens[1].user_id = 99;
    assert_eq!(s.validate(), Err(Invalid::UnknownUser(99)));
    let mut s = golden();
    s.tokens[1].digest = s.tokens[0].digest;
    assert_eq!(s.validate(), Err(Invalid::DuplicateToken("aaaaaaaa".into())));
    let mut s = golden();
    s.users[1].name = "system:masters".into();
    assert!(matches!(s.validate(), Err(Invalid::BadUserName(_))));
    let mut s = golden();
    s.users[1].name = "plain:a\r\nX-Evil: 1".into();
    assert!(matches!(s.validate(), Err(Invalid::BadUserName(_))));
    let mut s = golden();
    s.clusters[1].identifier = s.clusters[0].identifier.clone();
    assert!(matches!(s.validate(), Err(Invalid::BadIdentifier(_))));
    let mut s = golden();
    s.clusters[1].identifier = "..".into();
    assert!(matches!(s.validate(), Err(Invalid::BadIdentifier(_))));
    let mut s = golden();
    s.clusters[0].credentials.as_mut().unwrap().addresses[0] = "https://evil/path".into();
    assert!(matches!(s.validate(), Err(Invalid::BadAddress(..))));
    let mut s = golden();
    s.clusters[0].credentials.as_mut().unwrap().token = Secret::new("a\nb");
    assert!(matches!(s.validate(), Err(Invalid::BadClusterToken(_))));
    let mut s = golden();
    s.mesos.push(s.mesos[0].clone());
    assert!(matches!(s.validate(), Err(Invalid::BadMesosCluster(_))));
    let mut s = golden();
    s.mesos[0].drivers[0].ip = "driver.example".into();
    assert!(matches!(s.validate(), Err(Invalid::BadAddress(..))));
    let mut s = golden();
    s.mesos[0].drivers[0].scheme = "ftp".into();
    assert!(matches!(s.validate(), Err(Invalid::BadAddress(..))));
}

#[test]
fn addresses_parse() {
    let a = parse_address("https://10.0.0.1:6443").unwrap();
    assert_eq!((a.tls, a.host.as_str(), a.port), (true, "10.0.0.1", 6443));
    assert_eq!(a.authority(), "10.0.0.1:6443");
    let a = parse_address("http://[::1]/").unwrap();
    assert_eq!((a.tls, a.port, a.authority()), (false, 80, "[::1]:80".to_owned()));
    assert_eq!(parse_address("https://kubernetes").unwrap().port, 443);
    // The hand-written authority agrees with formatting, at every port width.
    for port in [0, 1, 9, 10, 99, 100, 443, 999, 1000, 6443, 9999, 10000, 65535] {
        let v4 = Address { tls: true, host: "10.0.0.1".into(), port };
        assert_eq!(v4.authority(), format!("10.0.0.1:{port}"));
        let v6 = Address { tls: true, host: "fd00::1".into(), port };
        assert_eq!(v6.authority(), format!("[fd00::1]:{port}"));
    }
    for bad in
        ["ftp://x", "https://", "https://h:0", "https://h:99999", "https://u@h", "https://h/p", "https://h?q", "h:1"]
    {
        assert!(parse_address(bad).is_none(), "{bad}");
    }
}

#[test]
fn tokens_decode_in_any_valid_json_form_and_a_bad_one_is_named() {
    let message = Message::Snapshot(golden());
    let body = String::from_utf8(encode(&message)[4..].to_vec()).unwrap();
    let spaced = body.replace(r#"","user_id":"#, r#"", "user_id" : "#);
    assert_eq!(decode_one(&spaced), Ok(Some(message.clone())));
    let persisted = serde_json::to_string(&golden()).unwrap().replace(r#","expires_at":"#, r#", "expires_at":"#);
    assert_eq!(serde_json::from_str::<Snapshot>(&persisted).unwrap(), golden());
    let Err(WireError::Malformed(why)) = decode_one(&body.replace(r#","expires_at":"#, r#","expires_at":"x"#)) else {
        panic!("taken")
    };
    assert!(why.contains("expected i64"), "{why}");
}

#[test]
fn only_the_same_user_or_root_is_a_trusted_peer() {
    use super::wire::peer_trusted;
    assert!(peer_trusted(1000, 1000));
    assert!(peer_trusted(0, 1000), "root");
    assert!(!peer_trusted(65534, 1000));
    assert!(!peer_trusted(1000, 0), "root trusts only root");
}
