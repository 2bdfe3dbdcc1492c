//! The proxy's one error type. [`crate::respond`] is the one place it becomes a status code.
//! Messages name the problem and never contain a token.

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    #[error("the request line is longer than 8 KiB")]
    UriTooLong,
    #[error("the request head is larger than 64 KiB or has more than 100 fields")]
    HeadersTooLarge,
    #[error("the request head did not arrive in time")]
    HeaderTimeout,
    #[error("the request body stopped arriving (nothing for {0} s)")]
    BodyTimeout(u64),
    #[error("the request body is larger than {} MiB", .0 >> 20)]
    BodyTooLarge(u64),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("the gateway has no configuration yet (no snapshot from bcs-api)")]
    NotReady,
    #[error("cluster {0} has no credentials yet: its agent has not reported")]
    NoCredentials(String),
    #[error("the gateway is overloaded, retry later")]
    Overloaded,
    #[error("no live mesos-driver for cluster {0}")]
    NoDrivers(String),
    #[error("cannot reach the upstream: {0}")]
    UpstreamConnect(String),
    #[error("cannot reach the upstream: {0}")]
    ConnectTimeout(String),
    /// The address is a host name the name servers did not resolve (in time).
    #[error("cannot reach the upstream: {0}")]
    NameLookup(String),
    /// TCP connected, the TLS handshake did not finish in time.
    #[error("cannot reach the upstream: {0}")]
    HandshakeTimeout(String),
    /// TCP connected, the TLS handshake failed (a certificate the cluster's CA does not sign,
    /// a protocol the upstream does not speak).
    #[error("cannot reach the upstream: {0}")]
    UpstreamTls(String),
    /// The gateway cannot speak to this upstream as configured (a cluster CA that does not
    /// parse, an `https://` mesos-driver without `cert_config.ca_file`).
    #[error("cannot reach the upstream: {0}")]
    UpstreamConfig(String),
    #[error("the upstream answered badly: {0}")]
    BadUpstream(String),
    #[error("the upstream answered with a redirect, which the gateway does not follow or relay")]
    UpstreamRedirect,
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    /// Logged as nginx logs it (499); nothing is written, the client has gone.
    #[error("the client closed the connection before the upstream answered")]
    ClientGone,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::BadRequest(_) => 400,
            ProxyError::UriTooLong => 414,
            ProxyError::HeadersTooLarge => 431,
            ProxyError::HeaderTimeout | ProxyError::BodyTimeout(_) => 408,
            ProxyError::BodyTooLarge(_) => 413,
            ProxyError::NotFound(_) => 404,
            ProxyError::Unauthorized(_) => 401,
            ProxyError::Forbidden(_) => 403,
            ProxyError::NotReady | ProxyError::NoCredentials(_) | ProxyError::Overloaded | ProxyError::NoDrivers(_) => {
                503
            }
            ProxyError::UpstreamConnect(_)
            | ProxyError::ConnectTimeout(_)
            | ProxyError::NameLookup(_)
            | ProxyError::HandshakeTimeout(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::UpstreamConfig(_)
            | ProxyError::BadUpstream(_)
            | ProxyError::UpstreamRedirect => 502,
            ProxyError::UpstreamTimeout => 504,
            ProxyError::ClientGone => 499,
            ProxyError::Internal(_) => 500,
        }
    }

    /// What the client is told. A connect failure's or a bad answer's detail (refused, timed
    /// out, which TLS error, what was malformed) stays in the log: a caller who registers a
    /// cluster at an address of their choosing must not learn from it what answers on the
    /// gateway's network.
    pub fn public_message(&self) -> std::borrow::Cow<'_, str> {
        match self {
            ProxyError::UpstreamConnect(_)
            | ProxyError::ConnectTimeout(_)
            | ProxyError::NameLookup(_)
            | ProxyError::HandshakeTimeout(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::UpstreamConfig(_) => "cannot reach the upstream (the gateway's log says why)".into(),
            ProxyError::BadUpstream(_) => "the upstream answered badly (the gateway's log says how)".into(),
            other => other.to_string().into(),
        }
    }

    /// What went wrong, as the `reason` label of `bcs_api_gateway_errors_total` names it: a
    /// request the gateway answered itself, not its upstream.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::UriTooLong => "uri_too_long",
            ProxyError::HeadersTooLarge => "headers_too_large",
            ProxyError::HeaderTimeout => "header_timeout",
            ProxyError::BodyTimeout(_) => "body_timeout",
            ProxyError::BodyTooLarge(_) => "body_too_large",
            ProxyError::NotFound(_) => "not_found",
            ProxyError::Unauthorized(_) => "unauthorized",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::NotReady => "not_ready",
            ProxyError::NoCredentials(_) => "no_credentials",
            ProxyError::Overloaded => "overloaded",
            ProxyError::NoDrivers(_) => "no_drivers",
            ProxyError::UpstreamConnect(_) => "upstream_connect",
            ProxyError::ConnectTimeout(_) => "upstream_connect_timeout",
            ProxyError::NameLookup(_) => "upstream_name_lookup",
            ProxyError::HandshakeTimeout(_) => "upstream_tls_timeout",
            ProxyError::UpstreamTls(_) => "upstream_tls",
            ProxyError::UpstreamConfig(_) => "upstream_config",
            ProxyError::BadUpstream(_) => "bad_upstream",
            ProxyError::UpstreamRedirect => "upstream_redirect",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::ClientGone => "client_gone",
            ProxyError::Internal(_) => "internal",
        }
    }

    /// After these the client connection cannot be trusted to be in sync: answer and close.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::UriTooLong
                | ProxyError::HeadersTooLarge
                | ProxyError::HeaderTimeout
                | ProxyError::BodyTimeout(_)
                | ProxyError::BodyTooLarge(_)
                | ProxyError::Overloaded
                | ProxyError::Internal(_)
                | ProxyError::ClientGone
        )
    }
}
