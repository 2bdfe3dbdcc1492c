//! Field checks of the REST API. Each failure is a 400 naming the field.

use super::error::ApiError;

/// User names: 1 to 128 of `[A-Za-z0-9._@-]`. They become Kubernetes user names
/// (`Impersonate-User: plain.<name>`), so nothing that a header or an RBAC subject would mangle.
pub fn name(field: &str, value: &str) -> Result<(), ApiError> {
    charset(
        field,
        value,
        128,
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'),
        "letters, digits, '.', '_', '@' or '-'",
    )
}

/// Cluster and project ids: 1 to `max` of `[A-Za-z0-9._-]`; cluster ids become part of the
/// proxy URL.
pub fn id(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    charset(
        field,
        value,
        max,
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'),
        "letters, digits, '.', '_' or '-'",
    )
}

fn charset(field: &str, value: &str, max: usize, ok: impl Fn(char) -> bool, allowed: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > max || !value.chars().all(ok) {
        return Err(ApiError::validation(field, format_args!("must be 1 to {max} {allowed}")));
    }
    Ok(())
}

/// `server_addresses`: `;`-separated `https://host[:port]` URLs, at least 1, at most 16.
/// Plain `http://` is refused: the cluster's token would travel unencrypted.
pub fn server_addresses(value: &str) -> Result<Vec<String>, ApiError> {
    const FIELD: &str = "server_addresses";
    let addresses: Vec<String> = value.split(';').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect();
    if addresses.is_empty() {
        return Err(ApiError::required(FIELD));
    }
    if addresses.len() > 16 {
        return Err(ApiError::validation(FIELD, "lists more than 16 addresses"));
    }
    for address in &addresses {
        // A host name has at most 253 characters (RFC 1035); with a scheme and a port, 300 is
        // room enough, and 16 of them fit every store's column.
        if address.len() > 300 {
            return Err(ApiError::validation(FIELD, "has an address longer than 300 characters"));
        }
        // Errors quote the address as `shown`: a user name and password in it would otherwise
        // reach the answer and the agent's log, whatever else is wrong with the address.
        let shown = without_userinfo(address);
        let url = url::Url::parse(address)
            .map_err(|e| ApiError::validation(FIELD, format_args!("has an invalid URL {shown:?}: {e}")))?;
        if url.scheme() != "https" || url.host_str().is_none() {
            return Err(ApiError::validation(
                FIELD,
                format_args!("has {shown:?}, which is not an https://host[:port] URL"),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ApiError::validation(FIELD, "must not carry credentials in a URL"));
        }
        if let Some(ip) = match url.host() {
            Some(url::Host::Ipv4(v4)) => Some(std::net::IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(std::net::IpAddr::V6(v6)),
            _ => None,
        } {
            if !reachable_apiserver_ip(ip) {
                return Err(ApiError::validation(
                    FIELD,
                    format_args!("has {shown:?}, whose IP is link-local, unspecified, multicast or broadcast"),
                ));
            }
        }
        // What the proxy can dial (the snapshot refuses anything else): no path, no query.
        if bcs_shared::snapshot::parse_address(address).is_none() {
            return Err(ApiError::validation(
                FIELD,
                format_args!("has {shown:?}, which is not https://host[:port] without a path"),
            ));
        }
    }
    Ok(addresses)
}

/// `address` with everything before its last `@` replaced by `***`, but for a scheme's
/// `scheme://` before it, for quoting in an error. A URL parser takes the user information to
/// end at the last `@` of the authority, and is lenient about the rest (`http:/u:pw@h` parses,
/// and a password may hold `/`, `?` or `#`), so the cut goes to the last `@` anywhere: an `@` in
/// a path hides a little too much of an address that is being refused anyway.
fn without_userinfo(address: &str) -> std::borrow::Cow<'_, str> {
    let Some(at) = address.rfind('@') else { return address.into() };
    let scheme = address[..at].find("://").map_or(0, |i| i + 3);
    format!("{}***{}", &address[..scheme], &address[at..]).into()
}

/// Whether an apiserver can be at `ip`. Link-local addresses hold cloud metadata services
/// (169.254.169.254), which no user should point the gateway at; unspecified, multicast and
/// broadcast addresses are nobody's. Loopback and private addresses are allowed: single-host
/// set-ups and private networks are where apiservers live.
fn reachable_apiserver_ip(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let link_local = match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    !link_local && !nobodys_ip(ip)
}

/// An unspecified (0.0.0.0, ::, ::ffff:0.0.0.0), multicast or broadcast address: no server's.
pub fn nobodys_ip(ip: std::net::IpAddr) -> bool {
    let ip = ip.to_canonical();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    broadcast || ip.is_unspecified() || ip.is_multicast()
}

/// `cacert_data`: one or more PEM certificates, each one a parseable X.509 certificate that
/// can serve as a trust anchor (as the proxy will use it).
pub fn ca_certificates(value: &str) -> Result<(), ApiError> {
    // Each cluster's CA travels in every snapshot to every proxy core: without a bound, a few
    // hundred clusters of megabyte bundles would push the snapshot past its frame limit, and
    // proxies would stop hearing of anything, revocations included.
    if value.len() > MAX_CA_BYTES {
        return Err(ApiError::validation("cacert_data", format!("must be at most {} KiB of PEM", MAX_CA_BYTES / 1024)));
    }
    let roots =
        bcs_shared::tls::roots_from_pem(value.as_bytes()).map_err(|e| ApiError::validation("cacert_data", e))?;
    if roots.len() > MAX_CA_CERTIFICATES {
        return Err(ApiError::validation(
            "cacert_data",
            format!("must hold at most {MAX_CA_CERTIFICATES} certificates"),
        ));
    }
    Ok(())
}

/// A cluster's CA bundle: a Kubernetes CA is one certificate of one or two KiB; a bundle during
/// a CA rotation a few.
pub const MAX_CA_BYTES: usize = 64 * 1024;
pub const MAX_CA_CERTIFICATES: usize = 16;

/// A bearer token that will be sent in an HTTP header: visible ASCII, at most 16 KiB.
pub fn bearer_token(field: &str, value: &str) -> Result<(), ApiError> {
    if value.len() > 16 * 1024 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::validation(field, "must be at most 16 KiB of visible ASCII characters"));
    }
    Ok(())
}
