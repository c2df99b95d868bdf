use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::domain::UsageRecord;
use crate::store::{StoreError, UsageLog, UsageQuery};

/// A [`UsageLog`] that keeps the most recent records in memory (bounded, oldest dropped first).
pub struct MemoryUsageLog {
    records: Mutex<VecDeque<UsageRecord>>,
    capacity: usize,
}

impl Default for MemoryUsageLog {
    fn default() -> Self {
        MemoryUsageLog::with_capacity(100_000)
    }
}

impl MemoryUsageLog {
    pub fn with_capacity(capacity: usize) -> Self {
        MemoryUsageLog {
            records: Mutex::new(VecDeque::with_capacity(super::preallocated(capacity))),
            capacity,
        }
    }

    pub fn all(&self) -> Vec<UsageRecord> {
        self.records.lock().unwrap().iter().cloned().collect()
    }
}

#[async_trait]
impl UsageLog for MemoryUsageLog {
    async fn record(&self, record: UsageRecord) {
        let mut r = self.records.lock().unwrap();
        if r.len() == self.capacity {
            r.pop_front();
        }
        r.push_back(record);
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn query(&self, q: &UsageQuery) -> Result<Vec<UsageRecord>, StoreError> {
        let r = self.records.lock().unwrap();
        let limit = if q.limit == 0 { 100 } else { q.limit as usize };
        Ok(r.iter()
            .rev()
            .filter(|u| q.user_id.is_none_or(|x| u.user_id == x))
            .filter(|u| q.key_id.is_none_or(|x| u.key_id == x))
            .filter(|u| q.account_id.is_none_or(|x| u.account_id == Some(x)))
            .filter(|u| q.model.as_ref().is_none_or(|m| &u.model == m))
            .filter(|u| q.from_ms.is_none_or(|t| u.created_at >= t))
            .filter(|u| q.to_ms.is_none_or(|t| u.created_at < t))
            .skip(q.offset as usize)
            .take(limit)
            .cloned()
            .collect())
    }
}
