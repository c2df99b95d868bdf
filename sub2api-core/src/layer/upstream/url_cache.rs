//! Upstream URLs parsed once per thread.
//!
//! An account's requests go to the same few URLs (its base URL, an endpoint path, a model in the
//! path for Gemini), and parsing one (host, IDNA, path) measured about 2% of the relay's CPU per
//! request under load. Each thread keeps the URLs it has parsed; a relay whose URLs keep changing
//! (thousands of models or accounts) just parses again after a clear.

use std::cell::RefCell;
use std::collections::HashMap;

use reqwest::Url;

/// URLs kept per thread before the cache starts over.
const MAX_URLS: usize = 1024;

thread_local! {
    static URLS: RefCell<HashMap<String, Url>> = RefCell::new(HashMap::new());
}

/// `url` parsed, from this thread's cache when it was parsed here before. `None` when it does not
/// parse: the caller hands the string to reqwest, which reports the error as it always does.
pub(crate) fn parsed(url: &str) -> Option<Url> {
    URLS.with_borrow_mut(|urls| {
        if let Some(u) = urls.get(url) {
            return Some(u.clone());
        }
        let u = Url::parse(url).ok()?;
        if urls.len() >= MAX_URLS {
            urls.clear();
        }
        urls.insert(url.to_owned(), u.clone());
        Some(u)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_url_is_the_url_parsed_afresh() {
        for s in [
            "http://127.0.0.1:9100/v1/messages?beta=true",
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            "https://gateway.example.com/anthropic/v1/messages",
            "https://Example.COM/a/../b/%7e?x=1#frag",
        ] {
            let first = parsed(s).unwrap();
            let again = parsed(s).unwrap();
            assert_eq!(first, Url::parse(s).unwrap());
            assert_eq!(again, first);
        }
        assert!(parsed("not a url").is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        for i in 0..MAX_URLS + 10 {
            parsed(&format!("http://127.0.0.1:1/m/{i}")).unwrap();
        }
        assert!(URLS.with_borrow(|u| u.len()) <= MAX_URLS);
        assert_eq!(parsed("http://127.0.0.1:1/m/3").unwrap().path(), "/m/3");
    }
}
