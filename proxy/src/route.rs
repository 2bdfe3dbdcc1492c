//! Routing: which kind of request this is, from the canonical request target alone (never
//! from `Host`). Pure.
//!
//! Paths are refused, not repaired: a `.` or `..` segment (raw or percent-encoded), an encoded
//! `/`, `\` or NUL, malformed percent-encoding, a fragment, a raw backslash, control characters
//! or an empty segment give 400, so the gateway and the apiserver can never disagree about
//! which resource a path names.
use std::borrow::Cow;

use crate::error::ProxyError;

#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/tunnels/clusters/{identifier}/{rest}`: `upstream_target` is `/{rest}` plus the query,
    /// the target's own tail (built only for `/tunnels/clusters/{identifier}` with no slash).
    Kubernetes { identifier: &'a str, upstream_target: Cow<'a, str> },
    /// `/rest/...`: forwarded to admin unchanged.
    Rest,
    /// `/bcsapi/v4/scheduler/mesos/{rest}`: to a mesos-driver at `/mesosdriver/v4/{rest}` plus the query.
    Mesos { upstream_target: String },
    /// `/bcsapi/v1/webconsole/{rest}?host_ip=...`: to the console proxy on `host_ip` at
    /// `/bcsapi/v1/consoleproxy/{rest}` plus the query.
    Webconsole { host_ip: Option<String>, upstream_target: String },
}

impl Route<'_> {
    /// The route's name in metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Kubernetes { .. } => "k8s",
            Route::Rest => "rest",
            Route::Mesos { .. } => "mesos",
            Route::Webconsole { .. } => "mesos_webconsole",
        }
    }
}

pub const TUNNEL_PREFIX: &str = "/tunnels/clusters/";
const MESOS_PREFIX: &str = "/bcsapi/v4/scheduler/mesos/";
const WEBCONSOLE_PREFIX: &str = "/bcsapi/v1/webconsole/";

pub fn route(target: &str) -> Result<Route<'_>, ProxyError> {
    if !target.starts_with('/') {
        return Err(ProxyError::BadRequest("the request target must be an absolute path".into()));
    }
    // Byte searches (memchr), not `str` patterns: this runs on every request.
    if memchr::memchr(b'#', target.as_bytes()).is_some() {
        return Err(ProxyError::BadRequest("a fragment in the request target".into()));
    }
    let (path, query) = match memchr::memchr(b'?', target.as_bytes()) {
        Some(at) => (&target[..at], Some(&target[at + 1..])),
        None => (target, None),
    };
    check_path(path)?;
    if let Some(query) = query {
        if !query.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ProxyError::BadRequest("control characters in the query".into()));
        }
        percent_decode_check(query.as_bytes())?;
    }
    if let Some(rest) = path.strip_prefix(TUNNEL_PREFIX) {
        let slash = memchr::memchr(b'/', rest.as_bytes());
        let identifier = &rest[..slash.unwrap_or(rest.len())];
        if identifier.is_empty() {
            return Err(ProxyError::NotFound("no cluster identifier in the path".into()));
        }
        let upstream_target = match slash {
            // `/{rest}?{query}` is where the target goes on from that slash.
            Some(at) => Cow::Borrowed(&target[TUNNEL_PREFIX.len() + at..]),
            None => Cow::Owned(match query {
                Some(q) => format!("/?{q}"),
                None => "/".to_owned(),
            }),
        };
        return Ok(Route::Kubernetes { identifier, upstream_target });
    }
    if path == "/rest" || path.starts_with("/rest/") {
        return Ok(Route::Rest);
    }
    let with_query = |path: String| match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    if let Some(rest) = path.strip_prefix(MESOS_PREFIX) {
        return Ok(Route::Mesos { upstream_target: with_query(format!("/mesosdriver/v4/{rest}")) });
    }
    if let Some(rest) = path.strip_prefix(WEBCONSOLE_PREFIX) {
        let host_ip = match query {
            Some(q) => host_ip(q)?,
            None => None,
        };
        return Ok(Route::Webconsole {
            host_ip,
            upstream_target: with_query(format!("/bcsapi/v1/consoleproxy/{rest}")),
        });
    }
    Err(ProxyError::NotFound(format!("no route for {path}")))
}

/// The query's `host_ip`, read as the console proxy (Go's `url.ParseQuery`) reads it: each
/// key decoded, so `host%5Fip=` is `host_ip=` too. More than one is refused: the gateway would
/// check one address against the allow-list and the console proxy might act on another.
fn host_ip(query: &str) -> Result<Option<String>, ProxyError> {
    // Go before 1.17 also split pairs at ';': `a=b;host_ip=X&host_ip=<allowed>` would read as
    // two host_ip there and one here. Refused rather than guessed.
    if memchr::memchr(b';', query.as_bytes()).is_some() {
        return Err(ProxyError::BadRequest("a ';' in the webconsole query".into()));
    }
    let mut found = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if *percent_decode_check(key.as_bytes())? != *b"host_ip" {
            continue;
        }
        if found.is_some() {
            return Err(ProxyError::BadRequest("more than one host_ip in the query".into()));
        }
        found = Some(String::from_utf8_lossy(&percent_decode_check(value.as_bytes())?).into_owned());
    }
    Ok(found)
}

fn check_path(path: &str) -> Result<(), ProxyError> {
    if !path.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
        return Err(ProxyError::BadRequest("control characters, spaces or backslashes in the path".into()));
    }
    // A path with no escape (the usual one) is its own decoding: its segments need no decoding
    // and cannot hold a slash, backslash or NUL (checked above).
    let escaped = memchr::memchr(b'%', path.as_bytes()).is_some();
    let mut segments = path.as_bytes()[1..].split(|&b| b == b'/').peekable();
    while let Some(segment) = segments.next() {
        // A trailing slash is fine (`/api/`), an empty segment inside the path is not.
        if segment.is_empty() && segments.peek().is_some() {
            return Err(ProxyError::BadRequest("an empty segment in the path".into()));
        }
        let decoded = if escaped { percent_decode_check(segment)? } else { Cow::Borrowed(segment) };
        if matches!(&*decoded, b"." | b"..") {
            return Err(ProxyError::BadRequest("a dot segment in the path".into()));
        }
        if escaped && decoded.iter().any(|&b| b == b'/' || b == b'\\' || b == 0) {
            return Err(ProxyError::BadRequest("an encoded slash, backslash or NUL in the path".into()));
        }
    }
    Ok(())
}

/// Decodes percent-escapes once, refusing malformed ones. Borrowed when there is no escape
/// (the usual segment), so routing a plain path allocates nothing.
pub(crate) fn percent_decode_check(bytes: &[u8]) -> Result<Cow<'_, [u8]>, ProxyError> {
    if memchr::memchr(b'%', bytes).is_none() {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let value = hex
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ProxyError::BadRequest("malformed percent-encoding".into()))?;
            out.push(value);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_paths_keep_the_exact_suffix_and_query() {
        let r = route("/tunnels/clusters/bcs-k8s-1-abc/api/v1/namespaces/default/pods?watch=1&labelSelector=a%3Db")
            .unwrap();
        assert_eq!(
            r,
            Route::Kubernetes {
                identifier: "bcs-k8s-1-abc",
                upstream_target: "/api/v1/namespaces/default/pods?watch=1&labelSelector=a%3Db".into()
            }
        );
        let r = route("/tunnels/clusters/c1").unwrap();
        assert_eq!(r, Route::Kubernetes { identifier: "c1", upstream_target: "/".into() });
        let r = route("/tunnels/clusters/c1/").unwrap();
        assert_eq!(r, Route::Kubernetes { identifier: "c1", upstream_target: "/".into() });
        for (target, upstream) in
            [("/tunnels/clusters/c1?watch=1", "/?watch=1"), ("/tunnels/clusters/c1/?a=b", "/?a=b")]
        {
            assert_eq!(
                route(target).unwrap(),
                Route::Kubernetes { identifier: "c1", upstream_target: upstream.into() }
            );
        }
        assert_eq!(route("/rest/users/").unwrap(), Route::Rest);
        assert_eq!(route("/rest").unwrap(), Route::Rest);
    }

    #[test]
    fn mesos_and_webconsole_paths_are_rewritten() {
        assert_eq!(
            route("/bcsapi/v4/scheduler/mesos/namespaces/ns1/applications?kind=x").unwrap(),
            Route::Mesos { upstream_target: "/mesosdriver/v4/namespaces/ns1/applications?kind=x".into() }
        );
        assert_eq!(
            route("/bcsapi/v1/webconsole/start_exec?host_ip=10.0.0.5&container_id=abc").unwrap(),
            Route::Webconsole {
                host_ip: Some("10.0.0.5".into()),
                upstream_target: "/bcsapi/v1/consoleproxy/start_exec?host_ip=10.0.0.5&container_id=abc".into()
            }
        );
        assert_eq!(
            route("/bcsapi/v1/webconsole/ws").unwrap(),
            Route::Webconsole { host_ip: None, upstream_target: "/bcsapi/v1/consoleproxy/ws".into() }
        );
        // Keys read as Go reads them: an escaped key is the same key, and two are refused.
        for two in [
            "host%5Fip=10.0.0.9&host_ip=10.0.0.5",
            "host_ip=10.0.0.5&host_ip=10.0.0.9",
            "host_%69p=1&host_ip=2",
            "a=b;host_ip=10.0.0.9&host_ip=10.0.0.5",
        ] {
            let target = format!("/bcsapi/v1/webconsole/ws?{two}");
            assert_eq!(route(&target).unwrap_err().status(), 400, "{two}");
        }
        match route("/bcsapi/v1/webconsole/ws?host%5Fip=10.0.0.7&x=1").unwrap() {
            Route::Webconsole { host_ip, .. } => assert_eq!(host_ip.as_deref(), Some("10.0.0.7")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_paths_are_404() {
        for path in [
            "/",
            "/api/v1/pods",
            "/restx",
            "/tunnels/clusters/",
            "/tunnels/x",
            "/bcsapi/v4/x",
            "/bcsapi/v4/scheduler/k8s/x",
        ] {
            assert_eq!(route(path).unwrap_err().status(), 404, "{path}");
        }
    }

    #[test]
    fn ambiguous_paths_are_400_never_repaired() {
        for path in [
            "/tunnels/clusters/c1/api/../secrets",
            "/tunnels/clusters/c1/./api",
            "/tunnels/clusters/c1/%2e%2e/x",
            "/tunnels/clusters/c1/%2E/x",
            "/tunnels/clusters/c1/.%2e/x",
            "/tunnels/clusters/../clusters/c2/api",
            "/tunnels/clusters/c1/api%2Fv1",
            "/tunnels/clusters/c1/api%2fv1",
            "/tunnels/clusters/c1/api%5Cv1",
            "/tunnels/clusters/c1/api%00",
            "/tunnels/clusters/c1/api%zz",
            "/tunnels/clusters/c1/api%2",
            "/tunnels/clusters/c1//api",
            "/tunnels/clusters/c1/api\\v1",
            "/tunnels/clusters/c1/api#frag",
            "/tunnels/clusters/c1/api?x=%zz",
            "http://evil.example/tunnels/clusters/c1/api",
            "*",
            "/rest/../tunnels/clusters/c1/api",
        ] {
            assert_eq!(route(path).unwrap_err().status(), 400, "{path}");
        }
    }
}
