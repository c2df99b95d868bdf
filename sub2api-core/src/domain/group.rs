use serde::{Deserialize, Serialize};

use super::{GroupId, Platform};
use crate::money::Multiplier;

/// A pool: the accounts that serve a set of API keys, one platform, one price multiplier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub id: GroupId,
    pub name: String,
    pub platform: Platform,
    pub rate_multiplier: Multiplier,
}
