//! The identity policy for Anthropic subscription accounts (Claude Pro/Max OAuth and setup
//! tokens), as public relays apply it (PROTOCOLS.md, "Claude OAuth"):
//!
//! - `Authorization: Bearer` with `oauth-2025-04-20` in `anthropic-beta` (plus
//!   `claude-code-20250219` for clients that are not Claude Code);
//! - one stable client fingerprint per account (user-agent, `x-app`, `x-stainless-*`), whatever
//!   client is on the other side, so an account never looks like many different machines;
//! - `metadata.user_id` rewritten to the account's own device id and a session derived from the
//!   client's session (stable per conversation, never the client's identity);
//! - the Claude Code system block first in `system` for clients that are not Claude Code.

use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

use super::json::Object;
use crate::domain::Account;
use crate::error::RelayError;

pub const OAUTH_BETA: &str = "oauth-2025-04-20";
pub const CLAUDE_CODE_BETA: &str = "claude-code-20250219";
pub const SYSTEM_PROMPT: &str = "You are Claude Code, Anthropic's official CLI for Claude.";
/// The Claude Code version the fingerprint presents.
pub const CLI_VERSION: &str = "2.0.31";

/// Whether a request comes from Claude Code itself.
pub fn is_claude_code(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("claude-cli/"))
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0]);
    }
    h.finalize().into()
}

/// The headers one account always presents.
pub fn fingerprint(account: &Account) -> Vec<(&'static str, String)> {
    let d = digest(&[
        b"sub2api-fingerprint",
        &account.id.0.to_le_bytes(),
        account.name.as_bytes(),
    ]);
    let (os, arch) = [
        ("MacOS", "arm64"),
        ("MacOS", "x64"),
        ("Linux", "x64"),
        ("Linux", "arm64"),
        ("Windows", "x64"),
    ][d[0] as usize % 5];
    let node = ["v20.19.2", "v22.17.0", "v22.20.0", "v24.3.0"][d[1] as usize % 4];
    vec![
        (
            "user-agent",
            format!("claude-cli/{CLI_VERSION} (external, cli)"),
        ),
        ("x-app", "cli".into()),
        ("x-stainless-lang", "js".into()),
        ("x-stainless-package-version", "0.60.0".into()),
        ("x-stainless-os", os.into()),
        ("x-stainless-arch", arch.into()),
        ("x-stainless-runtime", "node".into()),
        ("x-stainless-runtime-version", node.into()),
        ("anthropic-dangerous-direct-browser-access", "true".into()),
    ]
}

/// Applies the fingerprint and beta flags to the upstream headers (already whitelisted).
pub fn apply_headers(out: &mut HeaderMap, client: &HeaderMap, account: &Account) {
    let from_cc = is_claude_code(client);
    out.remove("x-app");
    out.remove(http::header::USER_AGENT);
    let stainless: Vec<HeaderName> = out
        .keys()
        .filter(|k| k.as_str().starts_with("x-stainless-"))
        .cloned()
        .collect();
    for k in stainless {
        if !matches!(
            k.as_str(),
            "x-stainless-retry-count" | "x-stainless-timeout"
        ) {
            out.remove(k);
        }
    }
    for (name, value) in fingerprint(account) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            out.insert(HeaderName::from_static(name), v);
        }
    }
    let mut betas: Vec<String> = client
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|b| b.trim().to_owned())
        .filter(|b| !b.is_empty())
        .collect();
    let mut want = vec![OAUTH_BETA];
    if !from_cc {
        want.insert(0, CLAUDE_CODE_BETA);
    }
    for w in want {
        if !betas.iter().any(|b| b == w) {
            betas.push(w.to_owned());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&betas.join(",")) {
        out.insert(HeaderName::from_static("anthropic-beta"), v);
    }
}

fn uuid_from(d: [u8; 32]) -> String {
    let mut b: [u8; 16] = d[..16].try_into().expect("16 bytes");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b).hyphenated().to_string()
}

/// `user_<device>_account__session_<uuid>`: the account's own device id, and a session that is
/// stable for one client conversation on one account.
pub fn user_id(account: &Account, client_session: Option<&str>) -> String {
    let device = hex::encode(digest(&[
        b"sub2api-device",
        &account.id.0.to_le_bytes(),
        account.name.as_bytes(),
    ]));
    let session = uuid_from(digest(&[
        b"sub2api-session",
        &account.id.0.to_le_bytes(),
        client_session.unwrap_or("").as_bytes(),
    ]));
    format!("user_{device}_account__session_{session}")
}

/// The body for a subscription account: `metadata.user_id` rewritten, the Claude Code system
/// block added for other clients, and the mapped model.
pub fn rewrite_body(
    body: &[u8],
    account: &Account,
    client_session: Option<&str>,
    from_claude_code: bool,
    upstream_model: Option<&str>,
) -> Result<Vec<u8>, RelayError> {
    let mut o = Object::parse(body)
        .map_err(|e| RelayError::invalid(format!("malformed JSON in request body: {e}")))?;
    if let Some(m) = upstream_model {
        o.set("model", &m);
    }
    let mut metadata = o
        .get_as::<serde_json::Map<String, serde_json::Value>>("metadata")
        .unwrap_or_default();
    metadata.insert(
        "user_id".into(),
        serde_json::Value::String(user_id(account, client_session)),
    );
    o.set("metadata", &metadata);
    if !from_claude_code {
        let block = serde_json::json!({"type": "text", "text": SYSTEM_PROMPT});
        let system = match o.get_as::<serde_json::Value>("system") {
            None | Some(serde_json::Value::Null) => Some(serde_json::json!([block])),
            Some(serde_json::Value::String(s)) if s.starts_with(SYSTEM_PROMPT) => None,
            Some(serde_json::Value::String(s)) => {
                Some(serde_json::json!([block, {"type": "text", "text": s}]))
            }
            Some(serde_json::Value::Array(mut blocks)) => {
                let first = blocks
                    .first()
                    .and_then(|b| b.get("text"))
                    .and_then(|t| t.as_str());
                if first.is_some_and(|t| t.starts_with(SYSTEM_PROMPT)) {
                    None
                } else {
                    blocks.insert(0, block);
                    Some(serde_json::Value::Array(blocks))
                }
            }
            Some(_) => None,
        };
        if let Some(system) = system {
            o.set("system", &system);
        }
    }
    Ok(o.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AccountId, AccountKind, Platform};

    fn account(id: i64) -> Account {
        Account {
            id: AccountId(id),
            name: format!("c{id}"),
            platform: Platform::Anthropic,
            kind: AccountKind::Oauth,
            base_url: "http://x".into(),
            priority: 1,
            concurrency: 1,
            groups: vec![],
            enabled: true,
            options: Default::default(),
        }
    }

    #[test]
    fn headers_are_the_accounts_not_the_clients() {
        let mut client = HeaderMap::new();
        client.insert("user-agent", "python-httpx/0.27".parse().unwrap());
        client.insert("x-stainless-os", "Plan9".parse().unwrap());
        client.insert(
            "anthropic-beta",
            "prompt-caching-2024-07-31".parse().unwrap(),
        );
        let mut out = client.clone();
        apply_headers(&mut out, &client, &account(1));
        assert!(
            out["user-agent"]
                .to_str()
                .unwrap()
                .starts_with("claude-cli/")
        );
        assert_ne!(out["x-stainless-os"], "Plan9");
        assert_eq!(
            out["anthropic-beta"],
            "prompt-caching-2024-07-31,claude-code-20250219,oauth-2025-04-20"
        );
        let mut again = client.clone();
        apply_headers(&mut again, &client, &account(1));
        assert_eq!(out, again, "stable per account");
        let mut cc = HeaderMap::new();
        cc.insert(
            "user-agent",
            "claude-cli/2.0.1 (external, cli)".parse().unwrap(),
        );
        cc.insert(
            "anthropic-beta",
            "claude-code-20250219,oauth-2025-04-20".parse().unwrap(),
        );
        let mut out = cc.clone();
        apply_headers(&mut out, &cc, &account(2));
        assert_eq!(
            out["anthropic-beta"],
            "claude-code-20250219,oauth-2025-04-20"
        );
    }

    #[test]
    fn body_rewrite() {
        let a = account(3);
        let body =
            br#"{"model":"m","system":"be nice","metadata":{"user_id":"client-id"},"messages":[]}"#;
        let v: serde_json::Value =
            serde_json::from_slice(&rewrite_body(body, &a, Some("s1"), false, None).unwrap())
                .unwrap();
        assert_eq!(v["system"][0]["text"], SYSTEM_PROMPT);
        assert_eq!(v["system"][1]["text"], "be nice");
        let uid = v["metadata"]["user_id"].as_str().unwrap();
        assert_eq!(uid, user_id(&a, Some("s1")));
        assert_eq!(
            crate::protocol::anthropic::session_from_user_id(uid)
                .unwrap()
                .len(),
            36
        );
        assert_ne!(user_id(&a, Some("s1")), user_id(&a, Some("s2")));
        assert_ne!(user_id(&a, Some("s1")), user_id(&account(4), Some("s1")));
        let v: serde_json::Value =
            serde_json::from_slice(&rewrite_body(body, &a, None, true, Some("x")).unwrap())
                .unwrap();
        assert_eq!(v["system"], "be nice");
        assert_eq!(v["model"], "x");
    }
}
