//! Answers the gateway writes itself: errors (as a Kubernetes `Status` on kubernetes routes,
//! the REST shape `{"code_name","message"}` elsewhere) and small plain answers.
//!
//! An error on a kubernetes route also carries its message in a `Warning` header: kubectl
//! prints a warning whatever the status, where its discovery step (the first request of most
//! commands) reads no error body and shows only a generic line ("the server is currently
//! unable to handle the request", "an error on the server (\"unknown\")").
use crate::error::ProxyError;

/// Which error body a route gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Kubernetes,
    Rest,
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

fn kubernetes_reason(status: u16) -> &'static str {
    match status {
        400 | 414 | 431 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        408 | 504 => "Timeout",
        413 => "RequestEntityTooLarge",
        503 => "ServiceUnavailable",
        _ => "InternalError",
    }
}

fn code_name(status: u16) -> &'static str {
    match status {
        400 | 414 | 431 => "BAD_REQUEST",
        401 => "UNAUTHORIZED",
        403 => "FORBIDDEN",
        404 => "NOT_FOUND",
        408 => "REQUEST_TIMEOUT",
        413 => "PAYLOAD_TOO_LARGE",
        502 => "BAD_GATEWAY",
        503 => "SERVICE_UNAVAILABLE",
        504 => "GATEWAY_TIMEOUT",
        _ => "INTERNAL_ERROR",
    }
}

/// A whole error response. `close` adds `Connection: close`.
pub fn error(err: &ProxyError, shape: Shape, close: bool) -> Vec<u8> {
    let status = err.status();
    let message = err.public_message();
    let body = match shape {
        Shape::Kubernetes => serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": kubernetes_reason(status),
            "code": status,
        }),
        Shape::Rest => serde_json::json!({"code_name": code_name(status), "message": message}),
    };
    let mut extra = String::new();
    if matches!(err, ProxyError::Overloaded | ProxyError::NotReady | ProxyError::NoDrivers(_)) {
        extra.push_str("Retry-After: 1\r\n");
    }
    if shape == Shape::Kubernetes {
        warning(&mut extra, &message);
    }
    if status == 401 {
        // RFC 6750 §3: which scheme to authenticate with.
        extra.push_str("WWW-Authenticate: ");
        extra.push_str(bcs_shared::secret::BEARER_CHALLENGE);
        extra.push_str("\r\n");
    }
    response(status, "application/json", &body.to_string(), close, &extra)
}

/// Longest message a `Warning` header carries (kubectl prints it on one line).
const WARNING_MAX: usize = 300;

/// `Warning: 299 - "bcs-api: <message>"` (RFC 7234 §5.5, as Kubernetes sends its own): the
/// message as a quoted string, printable ASCII only (anything else, line breaks included,
/// becomes `?`), at most [`WARNING_MAX`] characters.
fn warning(extra: &mut String, message: &str) {
    extra.push_str("Warning: 299 - \"bcs-api: ");
    for c in message.chars().take(WARNING_MAX) {
        match c {
            '"' | '\\' => {
                extra.push('\\');
                extra.push(c);
            }
            ' '..='~' => extra.push(c),
            _ => extra.push('?'),
        }
    }
    extra.push_str("\"\r\n");
}

/// The head of `answer` alone, for a HEAD request: its Content-Length stays (the length a GET
/// would get, RFC 9110 §9.3.2), its body goes, so the client does not read it as the start of
/// the next answer.
pub fn head_only(mut answer: Vec<u8>) -> Vec<u8> {
    if let Some(end) = memchr::memmem::find(&answer, b"\r\n\r\n") {
        answer.truncate(end + 4);
    }
    answer
}

/// A small complete response with a body.
pub fn response(status: u16, content_type: &str, body: &str, close: bool, extra_headers: &str) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{connection}{extra_headers}\r\n{body}",
        reason_phrase(status),
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_failure_does_not_say_how_it_failed() {
        for failure in [
            ProxyError::UpstreamConnect("127.0.0.1:3306: Connection refused (os error 111)".into()),
            ProxyError::UpstreamTls("10.0.0.1:6443: TLS: invalid peer certificate".into()),
            ProxyError::UpstreamConfig("10.0.0.1:6443: https needs cert_config.ca_file".into()),
        ] {
            let text = String::from_utf8(error(&failure, Shape::Kubernetes, false)).unwrap();
            assert!(text.starts_with("HTTP/1.1 502 "), "{text}");
            for detail in ["refused", "TLS", ":3306", ":6443", "cert_config"] {
                assert!(!text.contains(detail), "{text}");
            }
        }
    }

    #[test]
    fn kubernetes_routes_get_a_status_object() {
        let bytes = error(&ProxyError::Unauthorized("the token is not valid"), Shape::Kubernetes, false);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        let body: serde_json::Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["kind"], "Status");
        assert_eq!(body["apiVersion"], "v1");
        assert_eq!(body["reason"], "Unauthorized");
        assert_eq!(body["code"], 401);
    }

    #[test]
    fn kubernetes_routes_carry_the_message_in_a_warning_kubectl_prints() {
        let text =
            String::from_utf8(error(&ProxyError::NoCredentials("web-abc".into()), Shape::Kubernetes, false)).unwrap();
        assert!(
            text.contains("\r\nWarning: 299 - \"bcs-api: cluster web-abc has no credentials yet: its agent has not reported\"\r\n"),
            "{text}"
        );
        let rest = String::from_utf8(error(&ProxyError::NoCredentials("web-abc".into()), Shape::Rest, false)).unwrap();
        assert!(!rest.contains("Warning:"), "{rest}");
    }

    #[test]
    fn a_warning_is_one_quoted_line_of_printable_ascii() {
        let mut extra = String::new();
        warning(&mut extra, "a \"quoted\" \\ path\r\nSet-Cookie: x=1 \u{e9}t\u{e9}");
        assert_eq!(extra, "Warning: 299 - \"bcs-api: a \\\"quoted\\\" \\\\ path??Set-Cookie: x=1 ?t?\"\r\n");
        let mut long = String::new();
        warning(&mut long, &"x".repeat(1000));
        assert_eq!(long.matches('x').count(), WARNING_MAX);
        assert_eq!(long.matches("\r\n").count(), 1);
    }

    #[test]
    fn a_head_request_gets_the_head_alone() {
        let full = error(&ProxyError::NotFound("no route for /x".into()), Shape::Rest, false);
        let head = String::from_utf8(head_only(full.clone())).unwrap();
        assert!(head.ends_with("\r\n\r\n") && !head.contains("code_name"), "{head}");
        let body_len = full.len() - head.len();
        assert!(head.contains(&format!("Content-Length: {body_len}\r\n")), "{head}");
    }

    #[test]
    fn other_routes_get_the_rest_shape_and_overload_says_when_to_retry() {
        let text = String::from_utf8(error(&ProxyError::Overloaded, Shape::Rest, true)).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 "));
        assert!(text.contains("Retry-After: 1\r\n") && text.contains("Connection: close\r\n"));
        assert!(text.contains("\"code_name\":\"SERVICE_UNAVAILABLE\""));
    }
}
