//! Start-up steps of the API that a server binary runs once: the admin key, seeded passwords and a
//! price table replaced over the API in an earlier run.

use std::sync::Arc;

use super::admin::PRICING_SETTING;
use super::store::{AdminStore, UserPatch};
use super::{PasswordParams, auth};
use crate::config::Config;
use crate::domain::Secret;
use crate::pricing::PriceTable;
use crate::store::StoreError;

const ADMIN_KEY_SETTING: &str = "internal.admin_key_sha256";

/// The admin key's digest and, when it was generated now, the key itself (to print once).
#[derive(Debug)]
pub struct AdminKey {
    pub sha256: [u8; 32],
    pub generated: Option<Secret>,
}

/// The admin key: the configured one (`SUB2API_ADMIN_KEY`), else the one generated on an earlier
/// first start (only its SHA-256 is stored), else a new one, stored hashed and returned to be
/// shown once.
pub async fn admin_key(
    store: &dyn AdminStore,
    configured: Option<&str>,
) -> Result<AdminKey, StoreError> {
    if let Some(k) = configured.map(str::trim).filter(|k| !k.is_empty()) {
        return Ok(AdminKey {
            sha256: auth::sha256(k.as_bytes()),
            generated: None,
        });
    }
    let stored = store
        .settings()
        .await?
        .into_iter()
        .find(|(n, _)| n == ADMIN_KEY_SETTING)
        .map(|(_, v)| v);
    if let Some(hex) = stored
        && let Ok(bytes) = hex::decode(hex.trim())
        && let Ok(sha256) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(AdminKey {
            sha256,
            generated: None,
        });
    }
    let bytes: [u8; 32] = rand::random();
    let key = Secret::new(format!("s2a_admin_{}", hex::encode(bytes)));
    let sha256 = auth::sha256(key.expose().as_bytes());
    store
        .set_setting(ADMIN_KEY_SETTING, &hex::encode(sha256))
        .await?;
    Ok(AdminKey {
        sha256,
        generated: Some(key),
    })
}

/// Gives seeded users (`[[users]] password = ...`) their password, once: a password changed
/// since (by the user or an operator) is never reset by a restart.
pub async fn seed_passwords(
    config: &Config,
    store: &dyn AdminStore,
    params: PasswordParams,
) -> Result<(), StoreError> {
    for u in config.users.iter().filter(|u| u.password.is_some()) {
        let Some(user) = store
            .user_by_email(&u.email.trim().to_ascii_lowercase())
            .await?
            .or(store.user_by_email(&u.email).await?)
        else {
            continue;
        };
        if store.password_hash(user.id).await?.is_some() {
            continue;
        }
        let password = u.password.as_deref().unwrap_or_default();
        if password.chars().count() < 8 {
            return Err(StoreError::Invalid(format!(
                "user `{}`: a password has at least 8 characters",
                u.email
            )));
        }
        let hash = auth::hash_password(password, params)
            .await
            .map_err(StoreError::Invalid)?;
        store
            .update_user(
                user.id,
                UserPatch {
                    password_hash: Some(hash),
                    ..Default::default()
                },
            )
            .await?;
    }
    Ok(())
}

/// The price table an operator put in place over the API (it outlives restarts), if any.
pub async fn stored_prices(store: &dyn AdminStore) -> Result<Option<PriceTable>, StoreError> {
    let text = store
        .settings()
        .await?
        .into_iter()
        .find(|(n, _)| n == PRICING_SETTING)
        .map(|(_, v)| v);
    match text.filter(|t| !t.trim().is_empty()) {
        Some(t) => match PriceTable::from_litellm_json(&t) {
            Ok(p) => Ok(Some(p)),
            Err(e) => {
                tracing::error!(error = %e, "the stored price table does not load; using the configured one");
                Ok(None)
            }
        },
        None => Ok(None),
    }
}

/// Everything [`super::Api`] needs from a booted relay, wired the way the `sub2api` binary does.
pub fn parts(
    relay: &crate::relay::Relay,
    store: Arc<dyn AdminStore>,
    pool: Option<Arc<dyn super::PoolControl>>,
    pricing: Option<Arc<super::LiveMeter>>,
) -> super::ApiParts {
    let mut p = super::ApiParts::for_relay(relay, store);
    p.pool = pool;
    p.pricing = pricing;
    p
}
