//! Small protocol helpers shared by the gateways and the mock providers: form encoding, the
//! "sorted `k=v&...`" string Alipay and EasyPay sign, constant-time comparison.

use std::collections::BTreeMap;

/// Decodes `application/x-www-form-urlencoded` (or a query string) into ordered pairs.
pub fn form_decode(s: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(s).into_owned().collect()
}

/// Encodes pairs as `application/x-www-form-urlencoded`.
pub fn form_encode<'a, I>(pairs: I) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// `k=v&...` over the non-empty parameters except `exclude`, sorted by key, values as they are
/// (decoded, not re-encoded): what Alipay and EasyPay sign.
pub fn sign_content(params: &[(String, String)], exclude: &[&str]) -> String {
    let mut sorted: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in params {
        if v.is_empty() || exclude.contains(&k.as_str()) {
            continue;
        }
        sorted.insert(k, v);
    }
    let mut out = String::new();
    for (k, v) in sorted {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// The value of a parameter.
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Compares without leaking where the inputs differ (lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    diff == 0
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// 32 random hex characters.
pub fn nonce() -> String {
    let b: [u8; 16] = rand::random();
    hex::encode_upper(b)
}

/// Maps a reqwest failure to a transport error without leaking URLs with secrets.
pub fn transport(e: reqwest::Error) -> super::PaymentError {
    super::PaymentError::Transport(e.without_url().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_content_sorts_and_skips() {
        let p = vec![
            ("b".to_owned(), "2".to_owned()),
            ("sign".to_owned(), "x".to_owned()),
            ("a".to_owned(), "1 +&".to_owned()),
            ("c".to_owned(), String::new()),
        ];
        assert_eq!(sign_content(&p, &["sign"]), "a=1 +&&b=2");
        assert_eq!(
            form_decode(form_encode([("a", "1 +&"), ("b", "é")]).as_bytes()),
            vec![("a".into(), "1 +&".into()), ("b".into(), "é".into())]
        );
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"a", b"ab"));
    }
}
