//! Faults a test can switch on while the fake runs.
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Wait this long before answering (the request is recorded at once).
    Delay(Duration),
    /// Close the connection without answering, with a TCP RST.
    Reset,
    /// Answer `status` (301, 302, 307, 308) with this `Location`.
    Redirect { status: u16, location: String },
    /// Answer upgrade requests (exec, attach, port-forward) with `status` and a Status body
    /// instead of 101; other requests are served normally.
    RefuseUpgrade { status: u16 },
    /// Answer `status` with a Kubernetes `Status` body carrying `message` (a 403 from a
    /// terminating namespace or an admission webhook, a 500 from a failing apiserver).
    Status { status: u16, message: &'static str },
    /// Present a certificate from a CA other than [`crate::apiserver::FakeApiserver::ca_pem`]
    /// on new connections.
    WrongCertificate,
}

impl Fault {
    /// The usual redirect fault: 302 to `https://evil.example/`.
    pub fn redirect_to_evil() -> Fault {
        Fault::Redirect { status: 302, location: "https://evil.example/".into() }
    }
}

/// A fault applied to requests whose path starts with `path_prefix` (all when `None`).
#[derive(Clone, Debug)]
pub struct FaultRule {
    pub fault: Fault,
    pub path_prefix: Option<String>,
}

impl FaultRule {
    pub fn matches(&self, path: &str) -> bool {
        self.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
    }
}
