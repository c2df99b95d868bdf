//! [`AdminStore`] and [`KeyQuotas`] for [`MemoryDirectory`]. Subscriptions are kept as records
//! (assign, extend, revoke, list) but only the SQL ledger bills them; the memory ledger bills
//! wallets.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;

use super::quota::{KeyQuotas, QuotaHold};
use super::store::*;
use crate::domain::{
    Account, AccountId, ApiKey, Group, GroupId, KeyHash, KeyId, KeyRules, User, UserId,
};
use crate::ledger::{Credit, EntryKind, Ledger};
use crate::memory::MemoryDirectory;
use crate::money::{Money, Multiplier};
use crate::store::StoreError;
use crate::subscription::{BillingMode, DAY_MS};

#[derive(Clone, Debug, Default)]
struct UserExt {
    password_hash: Option<String>,
    is_admin: bool,
    created_at_ms: i64,
}

#[derive(Clone, Debug, Default)]
struct KeyExt {
    hint: String,
    rules: KeyRules,
    quota_used: Money,
    created_at_ms: i64,
}

/// A plan grant of a paid order (see [`AdminStore::grant_plan_once`]).
struct PlanGrant {
    subscription: i64,
    span_ms: i64,
    taken_back: bool,
}

/// The API's part of the memory directory's state.
#[derive(Default)]
pub(crate) struct ApiState {
    users: HashMap<UserId, UserExt>,
    keys: HashMap<KeyId, KeyExt>,
    billing: HashMap<GroupId, BillingMode>,
    rates: BTreeMap<(GroupId, UserId), Multiplier>,
    sessions: HashMap<[u8; 32], (UserId, i64)>,
    settings: BTreeMap<String, String>,
    plans: Vec<PlanRecord>,
    subscriptions: Vec<SubscriptionRecord>,
    /// Plan grants already made, by key (a paid order): the subscription they went to, the span
    /// they added, and whether it was taken back.
    plan_grants: HashMap<String, PlanGrant>,
    codes: BTreeMap<String, RedeemCodeRecord>,
    orders: Vec<OrderView>,
    quota_holds: HashMap<String, (KeyId, Money)>,
}

impl ApiState {
    fn subscription_mut(&mut self, id: i64) -> Result<&mut SubscriptionRecord, StoreError> {
        self.subscriptions
            .iter_mut()
            .find(|x| x.id == id)
            .ok_or_else(|| StoreError::NotFound(format!("subscription {id}")))
    }

    /// The group as a key's owner sees it (their own multiplier) and the key's rules.
    pub(crate) fn principal_parts(&self, group: &Group, key: &ApiKey) -> (Group, KeyRules) {
        let mut g = group.clone();
        if let Some(rate) = self.rates.get(&(group.id, key.user_id)) {
            g.rate_multiplier = *rate;
        }
        (
            g,
            self.keys
                .get(&key.id)
                .map(|k| k.rules.clone())
                .unwrap_or_default(),
        )
    }
}

fn now() -> i64 {
    crate::account_provider::now_ms()
}

fn user_record(u: &User, ext: Option<&UserExt>) -> UserRecord {
    let ext = ext.cloned().unwrap_or_default();
    UserRecord {
        id: u.id,
        email: u.email.clone(),
        enabled: u.enabled,
        is_admin: ext.is_admin,
        created_at_ms: ext.created_at_ms,
        limits: u.limits.clone(),
    }
}

fn key_record(k: &ApiKey, ext: Option<&KeyExt>) -> KeyRecord {
    let ext = ext.cloned().unwrap_or_default();
    KeyRecord {
        id: k.id,
        user_id: k.user_id,
        group_id: k.group_id,
        name: k.name.clone(),
        enabled: k.enabled,
        hint: ext.hint,
        limits: k.limits.clone(),
        rules: ext.rules,
        quota_used: ext.quota_used,
        created_at_ms: ext.created_at_ms,
    }
}

fn new_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut s = String::with_capacity(19);
    for i in 0..16 {
        if i > 0 && i % 4 == 0 {
            s.push('-');
        }
        s.push(ALPHABET[rand::random_range(0..ALPHABET.len())] as char);
    }
    s
}

impl MemoryDirectory {
    /// Adds a payment order (the memory store has no payment flow of its own; tests and embedders
    /// that take payments elsewhere record them here).
    pub fn insert_order(&self, order: OrderView) {
        self.state.lock().unwrap().api.orders.push(order);
    }
}

#[async_trait]
impl AdminStore for MemoryDirectory {
    async fn create_user(&self, user: NewUser) -> Result<UserRecord, StoreError> {
        let mut s = self.state.lock().unwrap();
        if s.users.iter().any(|u| u.email == user.email) {
            return Err(StoreError::Conflict(format!(
                "a user with email {} exists",
                user.email
            )));
        }
        let u = User {
            id: UserId(s.users.iter().map(|u| u.id.0).max().unwrap_or(0) + 1),
            email: user.email,
            enabled: true,
            limits: user.limits,
        };
        s.users.push(u.clone());
        let ext = UserExt {
            password_hash: user.password_hash,
            is_admin: user.is_admin,
            created_at_ms: now(),
        };
        s.api.users.insert(u.id, ext.clone());
        Ok(user_record(&u, Some(&ext)))
    }

    async fn user_record(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(s.users
            .iter()
            .find(|u| u.id == id)
            .map(|u| user_record(u, s.api.users.get(&id))))
    }

    async fn user_records(&self, offset: u32, limit: u32) -> Result<Vec<UserRecord>, StoreError> {
        let s = self.state.lock().unwrap();
        let mut users: Vec<&User> = s.users.iter().collect();
        users.sort_by_key(|u| u.id);
        Ok(users
            .into_iter()
            .skip(offset as usize)
            .take(limit as usize)
            .map(|u| user_record(u, s.api.users.get(&u.id)))
            .collect())
    }

    async fn user_login(
        &self,
        email: &str,
    ) -> Result<Option<(UserRecord, Option<String>)>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(s.users.iter().find(|u| u.email == email).map(|u| {
            let ext = s.api.users.get(&u.id);
            (
                user_record(u, ext),
                ext.and_then(|e| e.password_hash.clone()),
            )
        }))
    }

    async fn password_hash(&self, id: UserId) -> Result<Option<String>, StoreError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .api
            .users
            .get(&id)
            .and_then(|e| e.password_hash.clone()))
    }

    async fn update_user(&self, id: UserId, patch: UserPatch) -> Result<UserRecord, StoreError> {
        let mut s = self.state.lock().unwrap();
        let u = s
            .users
            .iter_mut()
            .find(|u| u.id == id)
            .ok_or_else(|| StoreError::NotFound(format!("user {id}")))?;
        if let Some(e) = patch.enabled {
            u.enabled = e;
        }
        if let Some(l) = patch.limits {
            u.limits = l;
        }
        let u = u.clone();
        let ext = s.api.users.entry(id).or_default();
        if let Some(a) = patch.is_admin {
            ext.is_admin = a;
        }
        if let Some(h) = patch.password_hash {
            ext.password_hash = Some(h);
        }
        let ext = ext.clone();
        Ok(user_record(&u, Some(&ext)))
    }

    async fn create_key(&self, key: NewKeyRecord) -> Result<KeyRecord, StoreError> {
        let mut s = self.state.lock().unwrap();
        let hash = KeyHash::of(key.key.expose());
        if s.keys.contains_key(&hash) {
            return Err(StoreError::Conflict("this key exists".into()));
        }
        if !s.users.iter().any(|u| u.id == key.user_id) {
            return Err(StoreError::NotFound(format!("user {}", key.user_id)));
        }
        if !s.groups.iter().any(|g| g.id == key.group_id) {
            return Err(StoreError::NotFound(format!("group {}", key.group_id)));
        }
        let id = KeyId(s.keys.values().map(|k| k.id.0).max().unwrap_or(0) + 1);
        let k = ApiKey {
            id,
            user_id: key.user_id,
            group_id: key.group_id,
            name: key.name,
            enabled: true,
            limits: key.limits,
        };
        let ext = KeyExt {
            hint: key_hint(key.key.expose()),
            rules: key.rules,
            quota_used: Money::ZERO,
            created_at_ms: now(),
        };
        s.keys.insert(hash, k.clone());
        s.api.keys.insert(id, ext.clone());
        Ok(key_record(&k, Some(&ext)))
    }

    async fn key_record(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(s.keys
            .values()
            .find(|k| k.id == id)
            .map(|k| key_record(k, s.api.keys.get(&id))))
    }

    async fn key_records(&self, user: Option<UserId>) -> Result<Vec<KeyRecord>, StoreError> {
        let s = self.state.lock().unwrap();
        let mut keys: Vec<KeyRecord> = s
            .keys
            .values()
            .filter(|k| user.is_none_or(|u| k.user_id == u))
            .map(|k| key_record(k, s.api.keys.get(&k.id)))
            .collect();
        keys.sort_by_key(|k| k.id);
        Ok(keys)
    }

    async fn update_key(&self, id: KeyId, patch: KeyPatch) -> Result<KeyRecord, StoreError> {
        let mut s = self.state.lock().unwrap();
        let k = s
            .keys
            .values_mut()
            .find(|k| k.id == id)
            .ok_or_else(|| StoreError::NotFound(format!("key {id}")))?;
        if let Some(n) = patch.name {
            k.name = n;
        }
        if let Some(e) = patch.enabled {
            k.enabled = e;
        }
        if let Some(l) = patch.limits {
            k.limits = l;
        }
        let k = k.clone();
        let ext = s.api.keys.entry(id).or_default();
        if let Some(q) = patch.quota {
            ext.rules.quota = q;
        }
        if let Some(e) = patch.expires_at_ms {
            ext.rules.expires_at_ms = e;
        }
        if let Some(a) = patch.ip_allowlist {
            ext.rules.ip_allowlist = a;
        }
        let ext = ext.clone();
        Ok(key_record(&k, Some(&ext)))
    }

    async fn group_record(&self, id: GroupId) -> Result<Option<GroupRecord>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(s.groups
            .iter()
            .find(|g| g.id == id)
            .map(|g| group_record(&s.api, g)))
    }

    async fn group_records(&self) -> Result<Vec<GroupRecord>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(s.groups.iter().map(|g| group_record(&s.api, g)).collect())
    }

    async fn update_group(
        &self,
        id: GroupId,
        patch: GroupPatch,
    ) -> Result<GroupRecord, StoreError> {
        let mut s = self.state.lock().unwrap();
        let g = s
            .groups
            .iter_mut()
            .find(|g| g.id == id)
            .ok_or_else(|| StoreError::NotFound(format!("group {id}")))?;
        if let Some(p) = patch.platform {
            g.platform = p;
        }
        if let Some(m) = patch.rate_multiplier {
            g.rate_multiplier = m;
        }
        let g = g.clone();
        if let Some(b) = patch.billing_mode {
            s.api.billing.insert(id, b);
        }
        Ok(group_record(&s.api, &g))
    }

    async fn delete_group(&self, id: GroupId) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        if s.keys.values().any(|k| k.group_id == id) {
            return Err(StoreError::Conflict("keys use this group".into()));
        }
        if s.api.plans.iter().any(|p| p.group_id == id) {
            return Err(StoreError::Conflict("plans bill this group".into()));
        }
        let before = s.groups.len();
        s.groups.retain(|g| g.id != id);
        if s.groups.len() == before {
            return Err(StoreError::NotFound(format!("group {id}")));
        }
        for (a, _) in s.accounts.iter_mut() {
            a.groups.retain(|g| *g != id);
        }
        s.api.billing.remove(&id);
        s.api.rates.retain(|(g, _), _| *g != id);
        Ok(())
    }

    async fn set_user_rate(
        &self,
        group: GroupId,
        user: UserId,
        rate: Option<Multiplier>,
    ) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        match rate {
            Some(r) => s.api.rates.insert((group, user), r),
            None => s.api.rates.remove(&(group, user)),
        };
        Ok(())
    }

    async fn update_account(
        &self,
        id: AccountId,
        patch: AccountPatch,
    ) -> Result<Account, StoreError> {
        let mut s = self.state.lock().unwrap();
        let groups = match &patch.groups {
            Some(names) => Some(
                names
                    .iter()
                    .map(|n| {
                        s.groups
                            .iter()
                            .find(|g| &g.name == n)
                            .map(|g| g.id)
                            .ok_or_else(|| StoreError::NotFound(format!("group `{n}`")))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let (a, c) = s
            .accounts
            .iter_mut()
            .find(|(a, _)| a.id == id)
            .ok_or_else(|| StoreError::NotFound(format!("account {id}")))?;
        if let Some(u) = patch.base_url {
            a.base_url = u;
        }
        if let Some(p) = patch.priority {
            a.priority = p;
        }
        if let Some(n) = patch.concurrency {
            a.concurrency = n;
        }
        if let Some(g) = groups {
            a.groups = g;
        }
        if let Some(o) = patch.options {
            a.options = o;
        }
        if let Some(cr) = patch.credentials {
            *c = cr;
        }
        Ok(a.clone())
    }

    async fn delete_account(&self, id: AccountId) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        let before = s.accounts.len();
        s.accounts.retain(|(a, _)| a.id != id);
        if s.accounts.len() == before {
            return Err(StoreError::NotFound(format!("account {id}")));
        }
        s.statuses.remove(&id);
        Ok(())
    }

    async fn set_account_enabled(&self, id: AccountId, enabled: bool) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        let (a, _) = s
            .accounts
            .iter_mut()
            .find(|(a, _)| a.id == id)
            .ok_or_else(|| StoreError::NotFound(format!("account {id}")))?;
        a.enabled = enabled;
        Ok(())
    }

    async fn create_session(
        &self,
        token_hash: [u8; 32],
        user: UserId,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        s.api.sessions.retain(|_, (_, exp)| *exp > now_ms);
        s.api.sessions.insert(token_hash, (user, expires_at_ms));
        Ok(())
    }

    async fn session_user(
        &self,
        token_hash: [u8; 32],
        now_ms: i64,
    ) -> Result<Option<UserId>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(s.api
            .sessions
            .get(&token_hash)
            .filter(|(_, exp)| *exp > now_ms)
            .map(|(u, _)| *u))
    }

    async fn delete_session(&self, token_hash: [u8; 32]) -> Result<(), StoreError> {
        self.state.lock().unwrap().api.sessions.remove(&token_hash);
        Ok(())
    }

    async fn delete_sessions_of(&self, user: UserId) -> Result<(), StoreError> {
        self.state
            .lock()
            .unwrap()
            .api
            .sessions
            .retain(|_, (u, _)| *u != user);
        Ok(())
    }

    async fn settings(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .api
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.state
            .lock()
            .unwrap()
            .api
            .settings
            .insert(name.to_owned(), value.to_owned());
        Ok(())
    }

    async fn upsert_plan(&self, plan: NewPlanRecord) -> Result<PlanRecord, StoreError> {
        let mut s = self.state.lock().unwrap();
        if !s.groups.iter().any(|g| g.id == plan.group_id) {
            return Err(StoreError::NotFound(format!("group {}", plan.group_id)));
        }
        if let Some(p) = s.api.plans.iter_mut().find(|p| p.name == plan.name) {
            p.group_id = plan.group_id;
            p.duration_days = plan.duration_days;
            p.windows = plan.windows;
            p.price_minor = plan.price_minor;
            p.currency = plan.currency;
            return Ok(p.clone());
        }
        let p = PlanRecord {
            id: s.api.plans.iter().map(|p| p.id).max().unwrap_or(0) + 1,
            name: plan.name,
            group_id: plan.group_id,
            duration_days: plan.duration_days,
            windows: plan.windows,
            enabled: true,
            price_minor: plan.price_minor,
            currency: plan.currency,
        };
        s.api.plans.push(p.clone());
        Ok(p)
    }

    async fn plan_records(&self) -> Result<Vec<PlanRecord>, StoreError> {
        Ok(self.state.lock().unwrap().api.plans.clone())
    }

    async fn assign_subscription(
        &self,
        user: UserId,
        plan: i64,
        starts_at_ms: i64,
        expires_at_ms: i64,
    ) -> Result<SubscriptionRecord, StoreError> {
        let mut s = self.state.lock().unwrap();
        let p = s
            .api
            .plans
            .iter()
            .find(|p| p.id == plan)
            .ok_or_else(|| StoreError::NotFound(format!("plan {plan}")))?;
        let sub = SubscriptionRecord {
            id: s.api.subscriptions.iter().map(|x| x.id).max().unwrap_or(0) + 1,
            user_id: user,
            plan_id: plan,
            group_id: p.group_id,
            starts_at_ms,
            expires_at_ms,
            revoked: false,
        };
        s.api.subscriptions.push(sub.clone());
        Ok(sub)
    }

    async fn grant_plan_once(
        &self,
        user: UserId,
        plan: i64,
        days: i64,
        grant_key: &str,
    ) -> Result<SubscriptionRecord, StoreError> {
        let now = now();
        let mut s = self.state.lock().unwrap();
        if let Some(id) = s.api.plan_grants.get(grant_key).map(|g| g.subscription) {
            return s.api.subscription_mut(id).cloned();
        }
        let group_id = s
            .api
            .plans
            .iter()
            .find(|p| p.id == plan)
            .map(|p| p.group_id)
            .ok_or_else(|| StoreError::NotFound(format!("plan {plan}")))?;
        let span = days.saturating_mul(DAY_MS);
        let current = s
            .api
            .subscriptions
            .iter_mut()
            .filter(|x| {
                x.user_id == user && x.plan_id == plan && !x.revoked && x.expires_at_ms > now
            })
            .max_by_key(|x| (x.expires_at_ms, x.id));
        let sub = match current {
            Some(x) => {
                x.expires_at_ms = x.expires_at_ms.saturating_add(span);
                x.clone()
            }
            None => {
                let sub = SubscriptionRecord {
                    id: s.api.subscriptions.iter().map(|x| x.id).max().unwrap_or(0) + 1,
                    user_id: user,
                    plan_id: plan,
                    group_id,
                    starts_at_ms: now,
                    expires_at_ms: now.saturating_add(span),
                    revoked: false,
                };
                s.api.subscriptions.push(sub.clone());
                sub
            }
        };
        s.api.plan_grants.insert(
            grant_key.to_owned(),
            PlanGrant {
                subscription: sub.id,
                span_ms: span,
                taken_back: false,
            },
        );
        Ok(sub)
    }

    async fn take_back_plan_grant(
        &self,
        grant_key: &str,
        _fallback_days: i64,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        let now = now();
        let mut s = self.state.lock().unwrap();
        let Some(g) = s
            .api
            .plan_grants
            .get_mut(grant_key)
            .filter(|g| !g.taken_back)
        else {
            return Ok(None);
        };
        g.taken_back = true;
        let (id, span) = (g.subscription, g.span_ms);
        let sub = s.api.subscription_mut(id)?;
        sub.expires_at_ms = taken_back_expiry(sub.expires_at_ms, span, now);
        Ok(Some(sub.clone()))
    }

    async fn subscription_record(&self, id: i64) -> Result<Option<SubscriptionRecord>, StoreError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .api
            .subscriptions
            .iter()
            .find(|x| x.id == id)
            .cloned())
    }

    async fn subscription_records(
        &self,
        user: Option<UserId>,
    ) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(s.api
            .subscriptions
            .iter()
            .filter(|x| user.is_none_or(|u| x.user_id == u))
            .cloned()
            .collect())
    }

    async fn set_subscription_expiry(
        &self,
        id: i64,
        expires_at_ms: i64,
    ) -> Result<SubscriptionRecord, StoreError> {
        let mut s = self.state.lock().unwrap();
        let sub = s.api.subscription_mut(id)?;
        sub.expires_at_ms = expires_at_ms;
        Ok(sub.clone())
    }

    async fn revoke_subscription(&self, id: i64) -> Result<SubscriptionRecord, StoreError> {
        let mut s = self.state.lock().unwrap();
        let sub = s.api.subscription_mut(id)?;
        sub.revoked = true;
        Ok(sub.clone())
    }

    async fn generate_codes(&self, batch: CodeBatch) -> Result<Vec<RedeemCodeRecord>, StoreError> {
        let mut s = self.state.lock().unwrap();
        if let CodeValue::Plan { plan_id, .. } = &batch.value
            && !s.api.plans.iter().any(|p| p.id == *plan_id)
        {
            return Err(StoreError::NotFound(format!("plan {plan_id}")));
        }
        let batch_id = format!("rb-{:016x}", rand::random::<u64>());
        let now = now();
        let mut out = Vec::new();
        while out.len() < batch.count as usize {
            let code = new_code();
            if s.api.codes.contains_key(&code) {
                continue;
            }
            let rec = RedeemCodeRecord {
                code: code.clone(),
                batch_id: batch_id.clone(),
                value: batch.value.clone(),
                status: CodeStatus::Unused,
                created_at_ms: now,
                expires_at_ms: batch.expires_at_ms,
                used_by: None,
                used_at_ms: None,
            };
            s.api.codes.insert(code, rec.clone());
            out.push(rec);
        }
        Ok(out)
    }

    async fn code_records(
        &self,
        batch_id: Option<&str>,
    ) -> Result<Vec<RedeemCodeRecord>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(s.api
            .codes
            .values()
            .filter(|c| batch_id.is_none_or(|b| c.batch_id == b))
            .cloned()
            .collect())
    }

    async fn expire_code(
        &self,
        code: &str,
        now_ms: i64,
    ) -> Result<Option<RedeemCodeRecord>, StoreError> {
        let mut s = self.state.lock().unwrap();
        let Some(c) = s.api.codes.get_mut(&code.trim().to_ascii_uppercase()) else {
            return Ok(None);
        };
        if c.status == CodeStatus::Unused && c.expires_at_ms.is_none_or(|e| e > now_ms) {
            c.expires_at_ms = Some(now_ms);
        }
        Ok(Some(c.clone()))
    }

    async fn redeem(
        &self,
        code: &str,
        user: UserId,
        ledger: &dyn Ledger,
    ) -> Result<RedeemOutcome, RedeemFailure> {
        let code = code.trim().to_ascii_uppercase();
        let now = now();
        let value = {
            let mut s = self.state.lock().unwrap();
            let c = s.api.codes.get_mut(&code).ok_or(RedeemFailure::NotFound)?;
            match c.status {
                CodeStatus::Used => return Err(RedeemFailure::AlreadyUsed),
                CodeStatus::Disabled => return Err(RedeemFailure::Disabled),
                CodeStatus::Unused if c.expires_at_ms.is_some_and(|e| e <= now) => {
                    return Err(RedeemFailure::Expired);
                }
                CodeStatus::Unused => {}
            }
            c.status = CodeStatus::Used;
            c.used_by = Some(user);
            c.used_at_ms = Some(now);
            c.value.clone()
        };
        match value {
            CodeValue::Balance { amount } => {
                let out = ledger
                    .credit(Credit {
                        user_id: user,
                        amount,
                        idempotency_key: format!("redeem:{code}"),
                        kind: EntryKind::Credit,
                        memo: "redeem code".into(),
                    })
                    .await;
                match out {
                    Ok(o) => Ok(RedeemOutcome::Balance {
                        amount,
                        balance: o.balance,
                    }),
                    Err(e) => {
                        // Give the code back: nothing was credited.
                        if let Some(c) = self.state.lock().unwrap().api.codes.get_mut(&code) {
                            c.status = CodeStatus::Unused;
                            c.used_by = None;
                            c.used_at_ms = None;
                        }
                        Err(RedeemFailure::Store(StoreError::Unavailable(e.to_string())))
                    }
                }
            }
            CodeValue::Plan { plan_id, days } => {
                let mut s = self.state.lock().unwrap();
                let group_id = s
                    .api
                    .plans
                    .iter()
                    .find(|p| p.id == plan_id)
                    .map(|p| p.group_id)
                    .ok_or_else(|| StoreError::NotFound(format!("plan {plan_id}")))?;
                let span = days.saturating_mul(DAY_MS);
                let current = s
                    .api
                    .subscriptions
                    .iter_mut()
                    .filter(|x| {
                        x.user_id == user
                            && x.plan_id == plan_id
                            && !x.revoked
                            && x.expires_at_ms > now
                    })
                    .max_by_key(|x| x.expires_at_ms);
                let sub = match current {
                    Some(x) => {
                        x.expires_at_ms = x.expires_at_ms.saturating_add(span);
                        x.clone()
                    }
                    None => {
                        let sub = SubscriptionRecord {
                            id: s.api.subscriptions.iter().map(|x| x.id).max().unwrap_or(0) + 1,
                            user_id: user,
                            plan_id,
                            group_id,
                            starts_at_ms: now,
                            expires_at_ms: now.saturating_add(span),
                            revoked: false,
                        };
                        s.api.subscriptions.push(sub.clone());
                        sub
                    }
                };
                Ok(RedeemOutcome::Plan { subscription: sub })
            }
        }
    }

    async fn order_views(&self, user: Option<UserId>) -> Result<Vec<OrderView>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(s.api
            .orders
            .iter()
            .filter(|o| user.is_none_or(|u| o.user_id == u))
            .cloned()
            .collect())
    }
}

fn group_record(api: &ApiState, g: &Group) -> GroupRecord {
    GroupRecord {
        group: g.clone(),
        billing_mode: api.billing.get(&g.id).copied().unwrap_or_default(),
        user_rates: api
            .rates
            .iter()
            .filter(|((gid, _), _)| *gid == g.id)
            .map(|((_, user_id), rate)| UserRate {
                user_id: *user_id,
                rate_multiplier: *rate,
            })
            .collect(),
    }
}

#[async_trait]
impl KeyQuotas for MemoryDirectory {
    async fn hold_quota(
        &self,
        key: KeyId,
        request_id: &str,
        amount: Money,
        quota: Money,
    ) -> Result<QuotaHold, StoreError> {
        let mut s = self.state.lock().unwrap();
        let used = s.api.keys.get(&key).map_or(Money::ZERO, |k| k.quota_used);
        let held = s
            .api
            .quota_holds
            .values()
            .filter(|(k, _)| *k == key)
            .fold(Money::ZERO, |a, (_, m)| a.saturating_add(*m));
        let remaining = quota
            .saturating_sub(used)
            .saturating_sub(held)
            .max(Money::ZERO);
        if amount > remaining {
            return Ok(QuotaHold::Exhausted { remaining });
        }
        s.api
            .quota_holds
            .insert(request_id.to_owned(), (key, amount));
        Ok(QuotaHold::Held)
    }

    async fn settle_quota(&self, request_id: &str, charged: Money) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        if let Some((key, _)) = s.api.quota_holds.remove(request_id) {
            let k = s.api.keys.entry(key).or_default();
            k.quota_used = k.quota_used.saturating_add(charged);
        }
        Ok(())
    }

    async fn release_quota(&self, request_id: &str) -> Result<(), StoreError> {
        self.state
            .lock()
            .unwrap()
            .api
            .quota_holds
            .remove(request_id);
        Ok(())
    }
}
