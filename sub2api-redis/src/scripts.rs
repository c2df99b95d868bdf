//! The Lua scripts. Every decision that more than one node could race on is one script, so it is
//! atomic on the Redis server, and every script reads the clock with `TIME` (server time), so
//! nodes whose clocks disagree still agree on when a lease expires.
//!
//! Key layout (all under the configured prefix `P`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `P:lease:acct:<id>` | sorted set | an account's concurrency leases; member = `<node>:<seq>`, score = expiry (ms); expired members are ignored by every count and swept by heartbeats |
//! | `P:lease:key:<id>`, `P:lease:user:<id>`, `P:lease:<scope>` | sorted set | the same for API keys, users and any other scope |
//! | `P:sticky:<session>` | string | the account id a session is bound to; `PX` = sticky TTL, renewed on use |
//! | `P:acct` | hash | `l:<id>` -> when the account was last leased (µs); `b:<id>` -> cooling down until (ms), or `-1` when disabled |
//! | `P:status` | hash | account id -> the full status as JSON (for caches that resync) |
//! | `P:rpm:<key id>`, `P:rpm:user:<user id>` | hash | `w` = minute window, `c` = requests in it (per key, per user) |
//! | `P:refresh:<id>` | string | the single-flight token refresh lock (`NX PX`) |
//!
//! Channels: `P:ev:released` (lease scopes that went from full to not full, space separated),
//! `P:ev:status` (`<id>` when cleared, `<id> <json>` when set), `P:ev:keys` (hex key hashes, or `*`).

use std::sync::LazyLock;

use redis::Script;

/// The server clock in ms, shared by every script.
const NOW: &str = r"
local __t = redis.call('TIME')
local now = tonumber(__t[1]) * 1000 + math.floor(tonumber(__t[2]) / 1000)
local now_us = tonumber(__t[1]) * 1000000 + tonumber(__t[2])
";

/// Adds `member` to the lease set `k` until `now + ttl`. (Every `redis.call` costs a few µs of
/// the server's single thread, so the hot path makes as few as it can: expired members are left
/// for the heartbeat to sweep, counts skip them anyway.)
const ADD_LEASE: &str = r"
local function add_lease(k, member, ttl)
  local exp = now + ttl
  redis.call('ZADD', k, exp, member)
  return exp
end
local function live(k)
  return redis.call('ZCOUNT', k, '(' .. now, '+inf')
end
-- ms until the soonest live lease of `k` expires (-1: none)
local function next_expiry(k)
  local r = redis.call('ZRANGEBYSCORE', k, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if r[2] then return tonumber(r[2]) - now end
  return -1
end
";

fn script(body: &str) -> Script {
    Script::new(&format!("{NOW}{ADD_LEASE}{body}"))
}

/// Select an account and lease one of its slots.
///
/// KEYS: 1 sticky key, 2 account hash (`P:acct`), 2+i lease set of candidate i.
/// ARGV: 1 mode (`0` sticky first, `1` sticky only, `2` general), 2 the sticky account (mode 1),
/// 3 `1` when the request has a session, 4 lease TTL ms, 5 sticky TTL ms, 6 lease member,
/// then per candidate: id, capacity, priority (in the caller's random order, which breaks ties).
///
/// Replies: `{1, id, sticky, expiry}` leased; `{2, id, wake_ms}` the sticky account is busy;
/// `{3, wake_ms}` every candidate is busy; `{0, retry_ms}` no candidate is schedulable;
/// `{4}` the sticky account is no candidate (any more). `wake_ms` is when the soonest lease
/// among the busy ones expires by itself (-1: never), so waiters need no polling.
pub static SELECT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local mode = ARGV[1]
local has_session = ARGV[3] == '1'
local ttl = tonumber(ARGV[4])
local sticky_ttl = tonumber(ARGV[5])
local member = ARGV[6]
local n = #KEYS - 2
local ids, caps, prios = {}, {}, {}
for i = 1, n do
  local b = 7 + (i - 1) * 3
  ids[i] = ARGV[b]
  caps[i] = tonumber(ARGV[b + 1])
  prios[i] = tonumber(ARGV[b + 2])
end
local function blocked(v)
  if not v then return nil end
  local u = tonumber(v)
  if u == -1 or u > now then return u end
  return nil
end
local function acquire(i, sticky, bind)
  local exp = add_lease(KEYS[2 + i], member, ttl)
  redis.call('HSET', KEYS[2], 'l:' .. ids[i], now_us)
  if bind then redis.call('SET', KEYS[1], ids[i], 'PX', sticky_ttl) end
  return {1, tonumber(ids[i]), sticky, exp}
end
-- The sticky account alone: one field read, one count.
local function sticky_try(sid, bind)
  for i = 1, n do
    if ids[i] == sid then
      if blocked(redis.call('HGET', KEYS[2], 'b:' .. sid)) then return nil end
      local k = KEYS[2 + i]
      if live(k) < caps[i] then return acquire(i, 1, bind) end
      return {2, tonumber(sid), next_expiry(k)}
    end
  end
  return nil
end
if mode == '1' then
  return sticky_try(ARGV[2], has_session) or {4}
end
if mode == '0' and has_session then
  -- Read the binding and renew its TTL in one call.
  local sid = redis.call('GETEX', KEYS[1], 'PX', sticky_ttl)
  if sid then
    local r = sticky_try(sid, false)
    if r then return r end
  end
end
local bstate, lru = {}, {}
local c = 1
while c <= n do
  local e = math.min(c + 499, n)
  local fields = {}
  for i = c, e do
    fields[#fields + 1] = 'b:' .. ids[i]
    fields[#fields + 1] = 'l:' .. ids[i]
  end
  local v = redis.call('HMGET', KEYS[2], unpack(fields))
  for i = c, e do
    local j = (i - c) * 2
    bstate[i] = v[j + 1]
    lru[i] = v[j + 2]
  end
  c = e + 1
end
local best, bp, br, bl
local any_ready = false
local soonest_block, soonest_free
for i = 1, n do
  local u = blocked(bstate[i])
  if u then
    if u ~= -1 and (not soonest_block or u < soonest_block) then soonest_block = u end
  else
    any_ready = true
    local k = KEYS[2 + i]
    local used = live(k)
    if used < caps[i] then
      local r = math.floor(used * 1000000 / caps[i])
      local l = tonumber(lru[i]) or 0
      if not best or prios[i] < bp or (prios[i] == bp and (r < br or (r == br and l < bl))) then
        best, bp, br, bl = i, prios[i], r, l
      end
    else
      local w = next_expiry(k)
      if w >= 0 and (not soonest_free or w < soonest_free) then soonest_free = w end
    end
  end
end
if best then return acquire(best, 0, has_session) end
if not any_ready then
  if soonest_block then return {0, soonest_block - now} end
  return {0, -1}
end
return {3, soonest_free or -1}
",
    )
});

/// Take a lease on one scope if it has room.
///
/// KEYS: 1 lease set. ARGV: 1 capacity, 2 member, 3 TTL ms.
/// Replies `{1, expiry}` or `{0, wake_ms}`.
pub static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local k = KEYS[1]
if live(k) < tonumber(ARGV[1]) then return {1, add_lease(k, ARGV[2], tonumber(ARGV[3]))} end
return {0, next_expiry(k)}
",
    )
});

/// Admit a request against the limits of several scopes at once (its API key and its user):
/// every per-minute counter, then a concurrency lease in every scope. All or nothing: a request
/// over one scope's RPM is counted against none, and a request that finds one scope full takes
/// no lease anywhere, so a waiter never holds one scope's slot while it waits for another's.
///
/// KEYS: per scope i, `2i-1` its rpm hash and `2i` its lease set. ARGV: 1 `1` to count this
/// request against the RPMs (first try only), 2 member, 3 TTL ms, then per scope: rpm limit
/// (0 none), capacity (0 none).
/// Replies `{-1, retry_ms, i}` over scope i's RPM; `{1, expiry}` leased in every scope with a
/// capacity; `{0, wake_ms, i}` scope i has no free slot; `{2}` admitted without a lease (no
/// capacity anywhere).
pub static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local n = #KEYS / 2
local member, ttl = ARGV[2], tonumber(ARGV[3])
local rpm, cap = {}, {}
for i = 1, n do
  rpm[i] = tonumber(ARGV[2 + 2 * i])
  cap[i] = tonumber(ARGV[3 + 2 * i])
end
if ARGV[1] == '1' then
  local window = math.floor(now / 60000)
  local counts = {}
  for i = 1, n do
    if rpm[i] > 0 then
      local cur = redis.call('HMGET', KEYS[2 * i - 1], 'w', 'c')
      local c = 0
      if tonumber(cur[1]) == window then c = tonumber(cur[2]) or 0 end
      if c >= rpm[i] then return {-1, (window + 1) * 60000 - now, i} end
      counts[i] = c
    end
  end
  for i = 1, n do
    if counts[i] then
      redis.call('HSET', KEYS[2 * i - 1], 'w', window, 'c', counts[i] + 1)
      redis.call('PEXPIRE', KEYS[2 * i - 1], 120000)
    end
  end
end
local any = false
for i = 1, n do
  if cap[i] > 0 then
    any = true
    local k = KEYS[2 * i]
    if live(k) >= cap[i] then return {0, next_expiry(k), i} end
  end
end
if not any then return {2} end
local exp = 0
for i = 1, n do
  if cap[i] > 0 then exp = add_lease(KEYS[2 * i], member, ttl) end
end
return {1, exp}
",
    )
});

/// Release leases, in a batch. A scope whose set was full before the release is announced on
/// the release channel, so waiters on every node try again; a scope that had room wakes nobody.
///
/// KEYS: the lease sets. ARGV: 1 channel, then per key: member, capacity, scope name (`''`: do
/// not announce).
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local freed = {}
for i = 1, #KEYS do
  local b = 2 + (i - 1) * 3
  if redis.call('ZREM', KEYS[i], ARGV[b]) == 1 and ARGV[b + 2] ~= '' then
    if live(KEYS[i]) + 1 >= tonumber(ARGV[b + 1]) then freed[#freed + 1] = ARGV[b + 2] end
  end
end
if #freed > 0 then redis.call('PUBLISH', ARGV[1], table.concat(freed, ' ')) end
return #freed
",
    )
});

/// Heartbeat: push the expiry of held leases to `now + ttl`. A lease that is missing (Redis
/// restarted, or this node was cut off for longer than the TTL) is added back: the request it
/// stands for is still upstream, so counting it again is the truth. Expired members (of nodes
/// that died) are swept from every set touched.
///
/// KEYS: the lease sets. ARGV: 1 TTL ms, then one member per key.
pub static RENEW: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local ttl = tonumber(ARGV[1])
local swept = {}
for i = 1, #KEYS do
  local k = KEYS[i]
  if not swept[k] then
    redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
    swept[k] = true
  end
  redis.call('ZADD', k, now + ttl, ARGV[i + 1])
end
return #KEYS
",
    )
});

/// Live leases of one scope.
///
/// KEYS: 1 lease set. Reply: the count.
pub static COUNT: LazyLock<Script> = LazyLock::new(|| script("return live(KEYS[1])"));

/// Account status writes.
///
/// KEYS: 1 account hash (`P:acct`), 2 status hash. ARGV: 1 channel, 2 op (`set`, `clear`, `clear_stale`),
/// 3 account id, 4 blocked-until (`set`: ms or -1), 5 status JSON (`set`).
/// `clear_stale` only clears a cooldown that has ended, so it never undoes a newer 429 another
/// node just reported. Reply: 1 when something changed.
pub static STATUS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local op, id = ARGV[2], ARGV[3]
local b = 'b:' .. id
if op == 'set' then
  redis.call('HSET', KEYS[1], b, ARGV[4])
  redis.call('HSET', KEYS[2], id, ARGV[5])
  redis.call('PUBLISH', ARGV[1], id .. ' ' .. ARGV[5])
  return 1
end
if op == 'clear_stale' then
  local u = tonumber(redis.call('HGET', KEYS[1], b))
  if not u or u == -1 or u > now then return 0 end
end
redis.call('HDEL', KEYS[1], b)
redis.call('HDEL', KEYS[2], id)
redis.call('PUBLISH', ARGV[1], id)
return 1
",
    )
});

/// Release the refresh lock if this node still holds it, and announce it.
///
/// KEYS: 1 lock. ARGV: 1 token, 2 channel, 3 scope name.
pub static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
",
    )
});
