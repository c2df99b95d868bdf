use serde::{Deserialize, Serialize};

use super::{AccountId, GroupId, Secret};

/// The vendor an account (and a group) speaks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Anthropic,
    Openai,
    Gemini,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Anthropic => "anthropic",
            Platform::Openai => "openai",
            Platform::Gemini => "gemini",
        }
    }

    pub fn default_base_url(self) -> &'static str {
        match self {
            Platform::Anthropic => "https://api.anthropic.com",
            Platform::Openai => "https://api.openai.com",
            Platform::Gemini => "https://generativelanguage.googleapis.com",
        }
    }
}

impl std::str::FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "anthropic" | "claude" => Ok(Platform::Anthropic),
            "openai" => Ok(Platform::Openai),
            "gemini" => Ok(Platform::Gemini),
            other => Err(format!("unknown platform `{other}` (anthropic, openai, gemini)")),
        }
    }
}

/// How an account authenticates upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// A vendor API key.
    Apikey,
    /// A subscription signed in through OAuth (refreshable access token).
    Oauth,
    /// A long-lived Claude setup token.
    SetupToken,
}

/// An upstream account as the scheduler sees it: everything but its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub platform: Platform,
    pub kind: AccountKind,
    /// Where requests for this account go (the vendor's API, or any compatible server).
    pub base_url: String,
    /// Lower is preferred.
    pub priority: i32,
    /// Requests this account may have upstream at once.
    pub concurrency: u32,
    pub groups: Vec<GroupId>,
    pub enabled: bool,
}

/// What is sent upstream to authenticate as an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    ApiKey(Secret),
    Bearer(Secret),
}
