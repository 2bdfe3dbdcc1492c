//! Names of users inside bcs-api and towards Kubernetes.

/// Prefix of users created through `POST /rest/users/` (as the original did).
pub const PLAIN_PREFIX: &str = "plain:";

/// The stored name of a user created through REST: `alice` -> `plain:alice`.
pub fn plain_user_name(user_name: &str) -> String {
    format!("{PLAIN_PREFIX}{user_name}")
}

/// The name sent to Kubernetes in `Impersonate-User`: the first `:` becomes `.`
/// (`plain:alice` -> `plain.alice`), so the name is a valid RBAC subject.
pub fn kubernetes_user_name(internal: &str) -> String {
    internal.replacen(':', ".", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_colon_becomes_a_dot() {
        assert_eq!(kubernetes_user_name("plain:alice"), "plain.alice");
        assert_eq!(kubernetes_user_name("user:a:b"), "user.a:b");
        assert_eq!(kubernetes_user_name("admin"), "admin");
        assert_eq!(plain_user_name("bob"), "plain:bob");
    }
}
