use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::account_provider::AccountStatus;
use crate::domain::{
    Account, AccountId, ApiKey, Credentials, Group, GroupId, KeyHash, KeyId, Principal, User,
    UserId,
};
use crate::store::{Directory, NewAccount, NewGroup, NewKey, StoreError};

#[derive(Default)]
pub(crate) struct State {
    pub(crate) groups: Vec<Group>,
    pub(crate) accounts: Vec<(Account, Credentials)>,
    pub(crate) statuses: HashMap<AccountId, AccountStatus>,
    pub(crate) users: Vec<User>,
    pub(crate) keys: HashMap<KeyHash, ApiKey>,
    /// OAuth authorizations started and not yet exchanged.
    pub(crate) pending_oauth: Vec<crate::oauth::PendingAuthorization>,
    /// What the admin and user API keeps beyond the relay's directory (`crate::api::memory`).
    pub(crate) api: crate::api::memory::ApiState,
}

/// A [`Directory`] held in memory: for tests, examples and services that configure the relay in
/// code.
#[derive(Default)]
pub struct MemoryDirectory {
    pub(crate) state: Mutex<State>,
}

impl MemoryDirectory {
    pub fn new() -> Self {
        Self::default()
    }
}

fn next_id(len: usize) -> i64 {
    len as i64 + 1
}

#[async_trait]
impl Directory for MemoryDirectory {
    async fn upsert_group(&self, g: NewGroup) -> Result<Group, StoreError> {
        let mut s = self.state.lock().unwrap();
        if let Some(existing) = s.groups.iter_mut().find(|x| x.name == g.name) {
            existing.platform = g.platform;
            existing.rate_multiplier = g.rate_multiplier;
            return Ok(existing.clone());
        }
        let group = Group {
            id: GroupId(s.groups.iter().map(|g| g.id.0).max().unwrap_or(0) + 1),
            name: g.name,
            platform: g.platform,
            rate_multiplier: g.rate_multiplier,
        };
        s.groups.push(group.clone());
        Ok(group)
    }

    async fn groups(&self) -> Result<Vec<Group>, StoreError> {
        Ok(self.state.lock().unwrap().groups.clone())
    }

    async fn group_by_name(&self, name: &str) -> Result<Option<Group>, StoreError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .groups
            .iter()
            .find(|g| g.name == name)
            .cloned())
    }

    async fn upsert_account(&self, a: NewAccount) -> Result<Account, StoreError> {
        let mut s = self.state.lock().unwrap();
        let mut groups = Vec::new();
        for name in &a.groups {
            let g = s.groups.iter().find(|g| &g.name == name).ok_or_else(|| {
                StoreError::Invalid(format!("account `{}`: unknown group `{name}`", a.name))
            })?;
            groups.push(g.id);
        }
        let id = match s.accounts.iter().position(|(x, _)| x.name == a.name) {
            Some(i) => s.accounts[i].0.id,
            None => AccountId(s.accounts.iter().map(|(a, _)| a.id.0).max().unwrap_or(0) + 1),
        };
        let account = Account {
            id,
            name: a.name,
            platform: a.platform,
            kind: a.kind,
            base_url: a.base_url,
            priority: a.priority,
            concurrency: a.concurrency,
            groups,
            enabled: true,
            options: a.options,
        };
        match s.accounts.iter_mut().find(|(x, _)| x.id == id) {
            Some(slot) => *slot = (account.clone(), a.credentials),
            None => s.accounts.push((account.clone(), a.credentials)),
        }
        Ok(account)
    }

    async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .accounts
            .iter()
            .map(|(a, _)| a.clone())
            .collect())
    }

    async fn account_credentials(&self, id: AccountId) -> Result<Credentials, StoreError> {
        let s = self.state.lock().unwrap();
        s.accounts
            .iter()
            .find(|(a, _)| a.id == id)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| StoreError::NotFound(format!("account {id}")))
    }

    async fn set_account_status(
        &self,
        id: AccountId,
        status: &AccountStatus,
    ) -> Result<(), StoreError> {
        self.state
            .lock()
            .unwrap()
            .statuses
            .insert(id, status.clone());
        Ok(())
    }

    async fn update_account_credentials(
        &self,
        id: AccountId,
        credentials: &Credentials,
    ) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        let slot = s
            .accounts
            .iter_mut()
            .find(|(a, _)| a.id == id)
            .ok_or_else(|| StoreError::NotFound(format!("account {id}")))?;
        slot.1 = credentials.clone();
        Ok(())
    }

    async fn save_pending_authorization(
        &self,
        pending: &crate::oauth::PendingAuthorization,
    ) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        s.pending_oauth.retain(|p| p.state != pending.state);
        s.pending_oauth.push(pending.clone());
        Ok(())
    }

    async fn take_pending_authorization(
        &self,
        state: Option<&str>,
    ) -> Result<Option<crate::oauth::PendingAuthorization>, StoreError> {
        let mut s = self.state.lock().unwrap();
        let i = match state {
            Some(st) => s.pending_oauth.iter().position(|p| p.state == st),
            None => s
                .pending_oauth
                .iter()
                .enumerate()
                .max_by_key(|(_, p)| p.created_at_ms)
                .map(|(i, _)| i),
        };
        Ok(i.map(|i| s.pending_oauth.remove(i)))
    }

    async fn account_statuses(&self) -> Result<Vec<(AccountId, AccountStatus)>, StoreError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .statuses
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect())
    }

    async fn ensure_user(&self, email: &str) -> Result<(User, bool), StoreError> {
        let mut s = self.state.lock().unwrap();
        if let Some(u) = s.users.iter().find(|u| u.email == email) {
            return Ok((u.clone(), false));
        }
        let user = User {
            id: UserId(next_id(s.users.len())),
            email: email.to_owned(),
            enabled: true,
            limits: Default::default(),
        };
        s.users.push(user.clone());
        Ok((user, true))
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .users
            .iter()
            .find(|u| u.email == email)
            .cloned())
    }

    async fn users(&self) -> Result<Vec<User>, StoreError> {
        Ok(self.state.lock().unwrap().users.clone())
    }

    async fn set_user_limits(
        &self,
        user: UserId,
        limits: &crate::domain::Limits,
    ) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        let u = s
            .users
            .iter_mut()
            .find(|u| u.id == user)
            .ok_or_else(|| StoreError::NotFound(format!("user {user}")))?;
        u.limits = limits.clone();
        Ok(())
    }

    async fn ensure_key(&self, k: NewKey) -> Result<ApiKey, StoreError> {
        let mut s = self.state.lock().unwrap();
        let hash = KeyHash::of(k.key.expose());
        if let Some(existing) = s.keys.get(&hash) {
            return Ok(existing.clone());
        }
        let key = ApiKey {
            id: KeyId(next_id(s.keys.len())),
            user_id: k.user_id,
            group_id: k.group_id,
            name: k.name,
            enabled: true,
            limits: k.limits,
        };
        s.keys.insert(hash, key.clone());
        Ok(key)
    }

    async fn keys_of(&self, user: UserId) -> Result<Vec<ApiKey>, StoreError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .keys
            .values()
            .filter(|k| k.user_id == user)
            .cloned()
            .collect())
    }

    async fn set_key_enabled(&self, id: KeyId, enabled: bool) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        let k = s
            .keys
            .values_mut()
            .find(|k| k.id == id)
            .ok_or_else(|| StoreError::NotFound(format!("key {id}")))?;
        k.enabled = enabled;
        Ok(())
    }

    async fn principal(&self, key: &KeyHash) -> Result<Option<Principal>, StoreError> {
        let s = self.state.lock().unwrap();
        let Some(k) = s.keys.get(key).filter(|k| k.enabled) else {
            return Ok(None);
        };
        let Some(user) = s.users.iter().find(|u| u.id == k.user_id && u.enabled) else {
            return Ok(None);
        };
        let Some(group) = s.groups.iter().find(|g| g.id == k.group_id) else {
            return Ok(None);
        };
        let (group, rules) = s.api.principal_parts(group, k);
        Ok(Some(Principal {
            user: k.user_id,
            key: k.id,
            group: Arc::new(group),
            limits: k.limits.clone(),
            user_limits: user.limits.clone(),
            rules,
        }))
    }

    fn key_quotas(self: Arc<Self>) -> Option<Arc<dyn crate::api::quota::KeyQuotas>> {
        Some(self)
    }
}
