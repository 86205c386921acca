//! `Authorization: Bearer <key>` as OpenAI clients send it, read the same way by router and server.

/// The key of an `Authorization` header value: the scheme `Bearer` in any letter case, then the
/// key (surrounding spaces ignored); `None` for any other scheme or an empty key.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, key) = header.trim().split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case_and_nothing_else_is() {
        assert_eq!(bearer_token("Bearer sk-1"), Some("sk-1"));
        assert_eq!(bearer_token("bearer sk-1"), Some("sk-1"));
        assert_eq!(bearer_token("BEARER   sk-1  "), Some("sk-1"));
        assert_eq!(bearer_token("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("sk-1"), None);
    }
}
