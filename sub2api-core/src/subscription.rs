//! Subscription plans and their usage windows: the pure rules, no I/O and no clock.
//!
//! A *plan* is scoped to one group and has one or more *windows*, each with a USD limit. A request
//! billed to a subscription counts against every window of the plan; the plan's headroom is the
//! smallest headroom of its windows. Storage (`sub2api-sqlx`) keeps one [`WindowState`] per window
//! and calls these functions with the time it read from its clock, so every boundary is testable
//! to the millisecond.
//!
//! # When a window starts and resets
//!
//! There are two kinds of window, and a plan may mix them:
//!
//! - [`WindowLength::Rolling`] (the 5-hour window of a Claude-style plan, or any fixed length):
//!   the window starts at the first charge made at or after the previous window's end (or the first
//!   charge ever) and covers the half-open interval `[start, start + length)`. A charge at exactly
//!   `start + length` belongs to a new window starting at that instant. Between windows (no charge
//!   yet since the last one ended) nothing is used, so the full limit is available.
//! - [`WindowLength::Day`], [`WindowLength::Week`], [`WindowLength::Month`]: aligned to the UTC
//!   calendar: a day is `[00:00, next 00:00)` UTC, a week starts on Monday 00:00 UTC, a month on the
//!   1st at 00:00 UTC. Usage made at 23:59:59.999 counts in that day; at 00:00:00.000 the next day's
//!   window is empty. Calendar windows are the same for every subscriber, which is what operators
//!   advertise ("$20 a day") and what users can predict.
//!
//! A window is assigned by the time a charge is *settled* (when its cost is known), not when its
//! hold was taken. Only positive charges start a rolling window.
//!
//! # Holds
//!
//! In-flight requests hold headroom (`held`) like they hold wallet money, so concurrent requests can
//! never together exceed a window's limit by more than the estimation error of one settlement.
//! Held amounts do not belong to any particular window period: a window that resets keeps the holds
//! of the requests still in flight.

use serde::{Deserialize, Serialize};

use crate::money::Money;

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
pub const DAY_MS: i64 = 24 * HOUR_MS;
pub const WEEK_MS: i64 = 7 * DAY_MS;

/// How long a window lasts and where it starts. See the module docs for the exact rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WindowLength {
    /// Starts at the first charge after the previous window ended; lasts exactly `ms`.
    Rolling { ms: i64 },
    /// The UTC calendar day.
    Day,
    /// The UTC calendar week, Monday to Sunday.
    Week,
    /// The UTC calendar month.
    Month,
}

impl WindowLength {
    /// The 5-hour rolling window.
    pub const FIVE_HOURS: WindowLength = WindowLength::Rolling { ms: 5 * HOUR_MS };

    /// A short stable name: `rolling`, `day`, `week`, `month` (stored in databases).
    pub fn kind_str(self) -> &'static str {
        match self {
            WindowLength::Rolling { .. } => "rolling",
            WindowLength::Day => "day",
            WindowLength::Week => "week",
            WindowLength::Month => "month",
        }
    }

    /// The rolling length in ms, 0 for calendar windows (stored next to [`Self::kind_str`]).
    pub fn rolling_ms(self) -> i64 {
        match self {
            WindowLength::Rolling { ms } => ms,
            _ => 0,
        }
    }

    /// The inverse of ([`Self::kind_str`], [`Self::rolling_ms`]).
    pub fn from_parts(kind: &str, rolling_ms: i64) -> Option<WindowLength> {
        match kind {
            "rolling" if rolling_ms > 0 => Some(WindowLength::Rolling { ms: rolling_ms }),
            "day" => Some(WindowLength::Day),
            "week" => Some(WindowLength::Week),
            "month" => Some(WindowLength::Month),
            _ => None,
        }
    }

    /// For calendar windows, the UTC period `[start, end)` containing `at_ms`; `None` for rolling.
    pub fn calendar_period(self, at_ms: i64) -> Option<(i64, i64)> {
        let day = at_ms.div_euclid(DAY_MS);
        match self {
            WindowLength::Rolling { .. } => None,
            WindowLength::Day => Some((day * DAY_MS, (day + 1) * DAY_MS)),
            WindowLength::Week => {
                // 1970-01-01 was a Thursday: days since the Monday before it are day + 3.
                let monday = day - (day + 3).rem_euclid(7);
                Some((monday * DAY_MS, (monday + 7) * DAY_MS))
            }
            WindowLength::Month => {
                let (y, m, _) = civil_from_days(day);
                let start = days_from_civil(y, m, 1);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                let end = days_from_civil(ny, nm, 1);
                Some((start * DAY_MS, end * DAY_MS))
            }
        }
    }
}

/// One window of a plan: a length and the most that may be used within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WindowSpec {
    pub length: WindowLength,
    pub limit: Money,
}

impl WindowSpec {
    pub fn five_hour(limit: Money) -> Self {
        WindowSpec {
            length: WindowLength::FIVE_HOURS,
            limit,
        }
    }
    pub fn daily(limit: Money) -> Self {
        WindowSpec {
            length: WindowLength::Day,
            limit,
        }
    }
    pub fn weekly(limit: Money) -> Self {
        WindowSpec {
            length: WindowLength::Week,
            limit,
        }
    }
    pub fn monthly(limit: Money) -> Self {
        WindowSpec {
            length: WindowLength::Month,
            limit,
        }
    }

    /// The period `[start, end)` the stored window covers, if it is still current at `now_ms`.
    pub fn current_period(&self, state: &WindowState, now_ms: i64) -> Option<(i64, i64)> {
        let start = state.start_ms?;
        let (s, e) = match self.length {
            WindowLength::Rolling { ms } => (start, start.saturating_add(ms)),
            cal => {
                let p = cal.calendar_period(now_ms)?;
                if p.0 != start {
                    return None;
                }
                p
            }
        };
        (s <= now_ms && now_ms < e).then_some((s, e))
    }

    /// What counts as used at `now_ms`: the stored usage while its window lasts, zero after.
    pub fn used_at(&self, state: &WindowState, now_ms: i64) -> Money {
        if self.current_period(state, now_ms).is_some() {
            state.used
        } else {
            Money::ZERO
        }
    }

    /// What may still be held or charged at `now_ms` (never negative).
    pub fn headroom(&self, state: &WindowState, now_ms: i64) -> Money {
        let left = self
            .limit
            .saturating_sub(self.used_at(state, now_ms))
            .saturating_sub(state.held);
        left.max(Money::ZERO)
    }

    /// When the window in force at `now_ms` ends: `None` for a rolling window that has not
    /// started (it starts with the next charge).
    pub fn resets_at(&self, state: &WindowState, now_ms: i64) -> Option<i64> {
        match self.length {
            WindowLength::Rolling { .. } => self.current_period(state, now_ms).map(|(_, e)| e),
            cal => cal.calendar_period(now_ms).map(|(_, e)| e),
        }
    }

    /// Adds a settled charge made at `now_ms`, rolling the window over first if it has ended.
    /// The charge is added in full even past the limit (the vendor's count is the truth).
    pub fn charge(&self, state: &mut WindowState, amount: Money, now_ms: i64) {
        if self.current_period(state, now_ms).is_none() {
            state.used = Money::ZERO;
            state.start_ms = match self.length {
                WindowLength::Rolling { .. } if amount.is_positive() => Some(now_ms),
                WindowLength::Rolling { .. } => None,
                cal => cal.calendar_period(now_ms).map(|(s, _)| s),
            };
        }
        if state.start_ms.is_some() {
            state.used = state.used.saturating_add(amount);
        }
    }
}

/// The stored state of one window of one subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowState {
    /// Start of the window the usage belongs to (unix ms); `None` before the first charge.
    pub start_ms: Option<i64>,
    /// Charged within that window.
    pub used: Money,
    /// Held by requests in flight.
    pub held: Money,
}

/// A plan's windows, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanWindows(pub Vec<WindowSpec>);

impl PlanWindows {
    /// The plan's headroom: the smallest headroom of its windows (unlimited for no window).
    ///
    /// # Panics
    /// If `states` and the windows differ in length.
    pub fn headroom(&self, states: &[WindowState], now_ms: i64) -> Money {
        assert_eq!(self.0.len(), states.len(), "one state per window");
        self.0
            .iter()
            .zip(states)
            .map(|(w, s)| w.headroom(s, now_ms))
            .min()
            .unwrap_or(Money::from_nanos(i64::MAX))
    }

    /// Adds `amount` to every window's held amount.
    pub fn hold(&self, states: &mut [WindowState], amount: Money) {
        for s in states.iter_mut() {
            s.held = s.held.saturating_add(amount);
        }
    }

    /// Takes `amount` off every window's held amount (never below zero).
    pub fn unhold(&self, states: &mut [WindowState], amount: Money) {
        for s in states.iter_mut() {
            s.held = s.held.saturating_sub(amount).max(Money::ZERO);
        }
    }

    /// Charges `amount` to every window at `now_ms`.
    pub fn charge(&self, states: &mut [WindowState], amount: Money, now_ms: i64) {
        assert_eq!(self.0.len(), states.len(), "one state per window");
        for (w, s) in self.0.iter().zip(states.iter_mut()) {
            w.charge(s, amount, now_ms);
        }
    }
}

/// How a group bills its keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillingMode {
    /// Only the wallet (the default).
    #[default]
    Wallet,
    /// Only an active subscription; without one, requests are refused.
    Subscription,
    /// The subscription's headroom first, then the wallet.
    Both,
}

impl BillingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BillingMode::Wallet => "wallet",
            BillingMode::Subscription => "subscription",
            BillingMode::Both => "both",
        }
    }

    pub fn uses_subscription(self) -> bool {
        !matches!(self, BillingMode::Wallet)
    }

    pub fn uses_wallet(self) -> bool {
        !matches!(self, BillingMode::Subscription)
    }
}

impl std::str::FromStr for BillingMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "wallet" => Ok(BillingMode::Wallet),
            "subscription" => Ok(BillingMode::Subscription),
            "both" => Ok(BillingMode::Both),
            other => Err(format!(
                "unknown billing mode `{other}` (wallet, subscription, both)"
            )),
        }
    }
}

/// How an amount is split between a subscription and the wallet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub subscription: Money,
    pub wallet: Money,
}

/// Splits a hold: the subscription's headroom first, then the wallet if the mode allows it.
/// Returns `None` when the amount cannot be covered (the wallet part is checked by the caller
/// against the available balance).
pub fn split_hold(mode: BillingMode, headroom: Option<Money>, amount: Money) -> Option<Split> {
    let headroom = headroom.unwrap_or(Money::ZERO).max(Money::ZERO);
    match mode {
        BillingMode::Wallet => Some(Split {
            subscription: Money::ZERO,
            wallet: amount,
        }),
        BillingMode::Subscription => (headroom >= amount).then_some(Split {
            subscription: amount,
            wallet: Money::ZERO,
        }),
        BillingMode::Both => {
            let sub = headroom.min(amount).max(Money::ZERO);
            Some(Split {
                subscription: sub,
                wallet: amount.saturating_sub(sub),
            })
        }
    }
}

/// Splits a settled charge. Unlike a hold it always succeeds: with `Subscription` mode the whole
/// charge goes to the subscription (its windows may go past their limits by the estimation
/// error); with `Both` the headroom is used first and the rest comes from the wallet. `headroom`
/// is `None` when there is no subscription to charge, and then the wallet pays.
pub fn split_charge(mode: BillingMode, headroom: Option<Money>, amount: Money) -> Split {
    match (mode, headroom) {
        (BillingMode::Wallet, _) | (_, None) => Split {
            subscription: Money::ZERO,
            wallet: amount,
        },
        (BillingMode::Subscription, Some(_)) => Split {
            subscription: amount,
            wallet: Money::ZERO,
        },
        (BillingMode::Both, Some(h)) => {
            let sub = h.max(Money::ZERO).min(amount).max(Money::ZERO);
            Split {
                subscription: sub,
                wallet: amount.saturating_sub(sub),
            }
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(year, month, day)` of a count of days since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Unix ms of a UTC date and time, for tests and seeds.
pub fn utc_ms(y: i64, m: u32, d: u32, hh: i64, mm: i64, ss: i64) -> i64 {
    days_from_civil(y, m, d) * DAY_MS + hh * HOUR_MS + mm * MINUTE_MS + ss * 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(n: i64) -> Money {
        Money::usd(n)
    }

    #[test]
    fn civil_dates_roundtrip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for z in [-1_000_000, -1, 0, 59, 365, 11_016, 19_000, 2_000_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        // 2024 is a leap year.
        assert_eq!(
            civil_from_days(days_from_civil(2024, 2, 28) + 1),
            (2024, 2, 29)
        );
    }

    #[test]
    fn daily_window_resets_exactly_at_utc_midnight() {
        let w = WindowSpec::daily(usd(10));
        let mut s = WindowState::default();
        let last_ms = utc_ms(2025, 3, 14, 23, 59, 59) + 999;
        w.charge(&mut s, usd(7), last_ms);
        assert_eq!(s.start_ms, Some(utc_ms(2025, 3, 14, 0, 0, 0)));
        assert_eq!(w.headroom(&s, last_ms), usd(3));
        assert_eq!(w.resets_at(&s, last_ms), Some(utc_ms(2025, 3, 15, 0, 0, 0)));
        let midnight = utc_ms(2025, 3, 15, 0, 0, 0);
        assert_eq!(w.headroom(&s, midnight), usd(10));
        w.charge(&mut s, usd(1), midnight);
        assert_eq!((s.start_ms, s.used), (Some(midnight), usd(1)));
    }

    #[test]
    fn weeks_start_on_monday_and_months_on_the_first() {
        // 2025-03-10 is a Monday.
        let (s, e) = WindowLength::Week
            .calendar_period(utc_ms(2025, 3, 16, 23, 59, 59))
            .unwrap();
        assert_eq!(
            (s, e),
            (utc_ms(2025, 3, 10, 0, 0, 0), utc_ms(2025, 3, 17, 0, 0, 0))
        );
        let (s, _) = WindowLength::Week
            .calendar_period(utc_ms(2025, 3, 17, 0, 0, 0))
            .unwrap();
        assert_eq!(s, utc_ms(2025, 3, 17, 0, 0, 0));
        let (s, e) = WindowLength::Month
            .calendar_period(utc_ms(2024, 2, 29, 12, 0, 0))
            .unwrap();
        assert_eq!(
            (s, e),
            (utc_ms(2024, 2, 1, 0, 0, 0), utc_ms(2024, 3, 1, 0, 0, 0))
        );
        let (s, e) = WindowLength::Month
            .calendar_period(utc_ms(2024, 12, 31, 23, 59, 59))
            .unwrap();
        assert_eq!(
            (s, e),
            (utc_ms(2024, 12, 1, 0, 0, 0), utc_ms(2025, 1, 1, 0, 0, 0))
        );
    }

    #[test]
    fn five_hour_window_rolls_from_first_use() {
        let w = WindowSpec::five_hour(usd(5));
        let mut s = WindowState::default();
        let t0 = utc_ms(2025, 1, 1, 10, 17, 3);
        assert_eq!(w.headroom(&s, t0), usd(5));
        assert_eq!(w.resets_at(&s, t0), None);
        w.charge(&mut s, usd(2), t0);
        assert_eq!(w.resets_at(&s, t0), Some(t0 + 5 * HOUR_MS));
        let just_before = t0 + 5 * HOUR_MS - 1;
        assert_eq!(w.headroom(&s, just_before), usd(3));
        w.charge(&mut s, usd(3), just_before);
        assert_eq!(w.headroom(&s, just_before), Money::ZERO);
        let end = t0 + 5 * HOUR_MS;
        assert_eq!(w.headroom(&s, end), usd(5));
        // The next window starts at the first charge after the end, not at the end.
        let later = end + 42 * MINUTE_MS;
        w.charge(&mut s, usd(1), later);
        assert_eq!((s.start_ms, s.used), (Some(later), usd(1)));
        assert_eq!(w.resets_at(&s, later), Some(later + 5 * HOUR_MS));
        // A zero charge does not start a window.
        let mut fresh = WindowState::default();
        w.charge(&mut fresh, Money::ZERO, later);
        assert_eq!(fresh.start_ms, None);
    }

    #[test]
    fn holds_survive_a_reset_and_limit_headroom() {
        let plan = PlanWindows(vec![
            WindowSpec::five_hour(usd(5)),
            WindowSpec::daily(usd(8)),
        ]);
        let mut st = vec![WindowState::default(); 2];
        let t = utc_ms(2025, 1, 1, 20, 0, 0);
        plan.charge(&mut st, usd(4), t);
        assert_eq!(plan.headroom(&st, t), usd(1));
        plan.hold(&mut st, usd(1));
        assert_eq!(plan.headroom(&st, t), Money::ZERO);
        // After 5h the rolling window is empty, and a new day has begun too; the hold remains.
        let t2 = t + 5 * HOUR_MS;
        assert_eq!(plan.headroom(&st, t2), usd(4));
        plan.unhold(&mut st, usd(1));
        assert_eq!(plan.headroom(&st, t2), usd(5));
    }

    #[test]
    fn splits() {
        use BillingMode::*;
        assert_eq!(
            split_hold(Wallet, Some(usd(9)), usd(2)),
            Some(Split {
                subscription: Money::ZERO,
                wallet: usd(2)
            })
        );
        assert_eq!(split_hold(Subscription, Some(usd(1)), usd(2)), None);
        assert_eq!(split_hold(Subscription, None, usd(2)), None);
        assert_eq!(
            split_hold(Both, Some(usd(1)), usd(3)),
            Some(Split {
                subscription: usd(1),
                wallet: usd(2)
            })
        );
        assert_eq!(
            split_charge(Subscription, Some(Money::ZERO), usd(3)),
            Split {
                subscription: usd(3),
                wallet: Money::ZERO
            }
        );
        assert_eq!(
            split_charge(Both, Some(usd(1)), usd(3)),
            Split {
                subscription: usd(1),
                wallet: usd(2)
            }
        );
        assert_eq!(
            split_charge(Both, None, usd(3)),
            Split {
                subscription: Money::ZERO,
                wallet: usd(3)
            }
        );
    }
}
