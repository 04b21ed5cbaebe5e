//! The store: records in memory, written behind to redb.

use crate::config::ReputationConfig;
use crate::error::ReputationError;
use crate::offence::Offence;
use crate::record::{Decaying, PeerRecord, UptimeState, decay, from_unix_ms, unix_ms};
use libp2p_identity::PeerId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The one table: `PeerId::to_bytes()` → [`FORMAT_VERSION`] byte followed by the JSON of a
/// [`PeerRecord`].
pub const PEERS_TABLE: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("peers");

/// Format version byte in front of every stored record. A record with another version is
/// skipped (and replaced at the next flush) rather than misread.
pub const FORMAT_VERSION: u8 = 1;

/// redb page cache: records are small and all live in memory anyway.
const DB_CACHE_BYTES: usize = 4 << 20;

/// Fewest tokens of a job whose timing is taken as a speed sample.
pub const MIN_TOKENS_FOR_SPEED: u64 = 8;

/// Statistics of one successful job, as measured by the client.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JobStats {
    /// From sending the request to the receipt.
    pub latency: Duration,
    /// From sending the request to the first token; `None` if no token came.
    pub ttft: Option<Duration>,
    /// Tokens received.
    pub tokens: u64,
    /// Generation speed; `None` to derive it as `tokens / (latency − ttft)` when at least
    /// [`MIN_TOKENS_FOR_SPEED`] tokens came.
    pub tokens_per_sec: Option<f64>,
}

/// A ban just imposed.
#[derive(Debug, Clone, PartialEq)]
pub struct Ban {
    pub peer: PeerId,
    /// When it ends.
    pub until: SystemTime,
    /// How long it lasts: `ban_base · 2^(ban_count − 1)`, capped at `ban_max`.
    pub duration: Duration,
    /// Bans of this peer so far, this one included.
    pub ban_count: u32,
    /// The offence that tipped the score below the threshold.
    pub offence: Offence,
}

/// Serializable summary of one peer for the API and logs. Times are unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    /// Base58 PeerId.
    pub peer: String,
    pub score: f64,
    pub successes: u64,
    pub failures: u64,
    pub posterior_mean: f64,
    pub posterior_lower: f64,
    pub latency_ewma_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub ttft_ewma_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
    pub tokens_per_sec: Option<f64>,
    /// `None` before the first heartbeat.
    pub uptime: Option<f64>,
    /// Decayed penalty points.
    pub penalty: f64,
    /// Offences with a positive weight, all time.
    pub offences: u64,
    /// Count per offence kind (snake_case names), including `busy`.
    pub offence_counts: BTreeMap<String, u64>,
    /// End of the ban in force, else `None`.
    pub banned_until_ms: Option<u64>,
    pub ban_count: u32,
    pub newcomer: bool,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub heartbeats_seen: u64,
    pub hearsay_positive: f64,
    pub hearsay_negative: f64,
}

/// Decayed counts of routed jobs, for the newcomer share.
#[derive(Debug, Clone, Copy, Default)]
struct Traffic {
    total: f64,
    newcomer: f64,
    at_ms: u64,
}

/// Per-peer reputation (see the crate docs for the model). Mutations take `&mut self`, reads
/// `&self`; wrap it in a mutex to share it. Every method takes the current time explicitly.
pub struct Reputation {
    config: ReputationConfig,
    peers: HashMap<PeerId, PeerRecord>,
    /// Peers changed since the last flush.
    dirty: HashSet<PeerId>,
    /// Keys to delete at the next flush (evicted peers, undecodable entries).
    removed: HashSet<Vec<u8>>,
    db: Option<Database>,
    traffic: Traffic,
    skipped: usize,
}

impl std::fmt::Debug for Reputation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reputation")
            .field("peers", &self.peers.len())
            .field("dirty", &self.dirty.len())
            .field("persistent", &self.db.is_some())
            .finish_non_exhaustive()
    }
}

fn encode(rec: &PeerRecord) -> Result<Vec<u8>, ReputationError> {
    let mut out = vec![FORMAT_VERSION];
    serde_json::to_writer(&mut out, rec).map_err(|e| ReputationError::Corrupt(e.to_string()))?;
    Ok(out)
}

fn decode(bytes: &[u8], cfg: &ReputationConfig) -> Result<PeerRecord, ReputationError> {
    match bytes.split_first() {
        None => Err(ReputationError::Corrupt("empty value".into())),
        Some((&FORMAT_VERSION, body)) => {
            let mut rec: PeerRecord =
                serde_json::from_slice(body).map_err(|e| ReputationError::Corrupt(format!("bad record: {e}")))?;
            rec.sanitize(cfg);
            Ok(rec)
        }
        Some((v, _)) => Err(ReputationError::Corrupt(format!("unknown format version {v}"))),
    }
}

impl Reputation {
    /// A store that lives only in memory (tests, simulations, nodes without a data dir).
    pub fn in_memory(config: ReputationConfig) -> Self {
        Self {
            config: config.sanitized(),
            peers: HashMap::new(),
            dirty: HashSet::new(),
            removed: HashSet::new(),
            db: None,
            traffic: Traffic::default(),
            skipped: 0,
        }
    }

    /// Opens (creating it and its directory if needed) the redb file at `path`, e.g.
    /// `<data-dir>/reputation.redb`, and loads every record. Undecodable records are logged,
    /// skipped and deleted at the next flush. Fails if the file cannot be opened (held by another
    /// process, not a redb file, unreadable).
    pub fn open(path: &Path, config: ReputationConfig) -> Result<Self, ReputationError> {
        let open_err = |source: redb::Error| ReputationError::Open { path: path.to_path_buf(), source };
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| open_err(redb::Error::Io(e)))?;
        }
        let db = redb::Builder::new().set_cache_size(DB_CACHE_BYTES).create(path).map_err(|e| open_err(e.into()))?;
        {
            let txn = db.begin_write()?;
            txn.open_table(PEERS_TABLE)?;
            txn.commit()?;
        }
        let mut me = Self::in_memory(config);
        {
            let read = db.begin_read()?;
            let table = read.open_table(PEERS_TABLE)?;
            for item in table.iter()? {
                let (k, v) = match item {
                    Ok(kv) => kv,
                    Err(e) => {
                        tracing::warn!(error = %e, "reputation: stopped reading records");
                        me.skipped += 1;
                        break;
                    }
                };
                let key = k.value();
                let peer = match PeerId::from_bytes(key) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "reputation: skipping a record with a bad key");
                        me.skipped += 1;
                        me.removed.insert(key.to_vec());
                        continue;
                    }
                };
                match decode(v.value(), &me.config) {
                    Ok(rec) => {
                        me.peers.insert(peer, rec);
                    }
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "reputation: skipping a corrupt record");
                        me.skipped += 1;
                        me.removed.insert(key.to_vec());
                    }
                }
            }
        }
        me.db = Some(db);
        if me.peers.len() > me.config.max_peers {
            let target = me.config.max_peers;
            me.evict_to(target, 0, None);
        }
        tracing::debug!(peers = me.peers.len(), skipped = me.skipped, "reputation: loaded");
        Ok(me)
    }

    /// Writes the changed records (and deletes evicted ones) in one write transaction. Returns
    /// how many records were written. On error nothing is forgotten; the next flush retries.
    /// A no-op for an in-memory store.
    pub fn flush(&mut self) -> Result<usize, ReputationError> {
        let Some(db) = &self.db else {
            self.dirty.clear();
            self.removed.clear();
            return Ok(0);
        };
        if self.dirty.is_empty() && self.removed.is_empty() {
            return Ok(0);
        }
        let mut written = 0;
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(PEERS_TABLE)?;
            for key in &self.removed {
                table.remove(key.as_slice())?;
            }
            for peer in &self.dirty {
                let Some(rec) = self.peers.get(peer) else {
                    continue;
                };
                let bytes = match encode(rec) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "reputation: cannot encode a record");
                        continue;
                    }
                };
                table.insert(peer.to_bytes().as_slice(), bytes.as_slice())?;
                written += 1;
            }
        }
        txn.commit()?;
        self.dirty.clear();
        self.removed.clear();
        Ok(written)
    }

    /// Records changed since the last flush.
    pub fn dirty_count(&self) -> usize {
        self.dirty.len() + self.removed.len()
    }

    /// Records skipped as undecodable when the file was opened.
    pub fn skipped_on_open(&self) -> usize {
        self.skipped
    }

    /// The configuration in force (after [`ReputationConfig::sanitized`]).
    pub fn config(&self) -> &ReputationConfig {
        &self.config
    }

    /// Peers known.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The raw record of `peer`.
    pub fn record(&self, peer: &PeerId) -> Option<&PeerRecord> {
        self.peers.get(peer)
    }

    /// Makes sure `peer` has a record (evicting others if full), touches `last_seen` and marks
    /// it dirty.
    fn entry(&mut self, peer: PeerId, now_ms: u64) -> &mut PeerRecord {
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.config.max_peers {
            let batch = (self.config.max_peers / 100).max(1);
            let target = self.config.max_peers.saturating_sub(batch);
            self.evict_to(target, now_ms, Some(peer));
        }
        self.dirty.insert(peer);
        let rec = self.peers.entry(peer).or_insert_with(|| PeerRecord::new(now_ms));
        rec.touch(now_ms);
        rec
    }

    /// Evicts peers until `target` remain: least recently seen first, within tiers evicted in
    /// this order: peers we only heard heartbeats or hearsay about (no own job, no offence), then
    /// peers with own history, and peers under a ban last. So a flood of fresh PeerIds cannot
    /// wash away what was learnt by serving work, nor a ban.
    fn evict_to(&mut self, target: usize, now_ms: u64, keep: Option<PeerId>) {
        if self.peers.len() <= target {
            return;
        }
        let tier = |r: &PeerRecord| {
            if r.banned_at(now_ms) {
                2u8
            } else if r.successes == 0 && r.failures == 0 && r.offence_counts.is_empty() {
                0
            } else {
                1
            }
        };
        let mut order: Vec<(u8, u64, PeerId)> =
            self.peers.iter().filter(|(p, _)| Some(**p) != keep).map(|(p, r)| (tier(r), r.last_seen_ms, *p)).collect();
        order.sort_unstable_by_key(|a| (a.0, a.1));
        let n = self.peers.len() - target;
        for (_, _, peer) in order.into_iter().take(n) {
            self.peers.remove(&peer);
            self.dirty.remove(&peer);
            self.removed.insert(peer.to_bytes());
            tracing::debug!(%peer, "reputation: evicted");
        }
    }

    /// A job by `peer` succeeded (receipt verified). Counts a success in the posterior and
    /// updates latency, TTFT and tokens/s.
    pub fn record_success(&mut self, peer: PeerId, stats: JobStats, now: SystemTime) {
        let now_ms = unix_ms(now);
        let alpha = self.config.ewma_alpha;
        let cfg = self.config.clone();
        let rec = self.entry(peer, now_ms);
        rec.add_evidence(true, &cfg);
        rec.latency.push(stats.latency, alpha);
        if let Some(ttft) = stats.ttft {
            rec.ttft.push(ttft, alpha);
        }
        rec.tokens_total = rec.tokens_total.saturating_add(stats.tokens);
        let tps = stats.tokens_per_sec.or_else(|| {
            // A short answer's timing is mostly latency: it says nothing of speed.
            let gen_time = stats.latency.saturating_sub(stats.ttft.unwrap_or_default()).as_secs_f64();
            (stats.tokens >= MIN_TOKENS_FOR_SPEED && gen_time > 0.0).then(|| stats.tokens as f64 / gen_time)
        });
        if let Some(tps) = tps.filter(|v| v.is_finite() && *v >= 0.0) {
            rec.tokens_per_sec = Some(match rec.tokens_per_sec {
                Some(old) => (1.0 - alpha) * old + alpha * tps,
                None => tps,
            });
        }
    }

    /// A job by `peer` failed because of `offence`: a failure in the posterior (except for
    /// [`Offence::Busy`]) plus the offence's penalty. Returns the ban this imposed, if any.
    pub fn record_failure(&mut self, peer: PeerId, offence: Offence, now: SystemTime) -> Option<Ban> {
        self.offend(peer, offence, now, true)
    }

    /// `peer` misbehaved outside a job (a bad heartbeat, a garbage frame on another protocol):
    /// the offence's penalty only. Returns the ban this imposed, if any.
    pub fn penalize(&mut self, peer: PeerId, offence: Offence, now: SystemTime) -> Option<Ban> {
        self.offend(peer, offence, now, false)
    }

    /// Ban rule: only a *new* offence with a positive weight can ban, when it leaves the score
    /// strictly below `ban_threshold`. At that moment the penalty is reset to the value that puts
    /// the score exactly at the threshold (the ban is the punishment for the excess), and while a
    /// ban is in force offences are counted but add no penalty. So when the ban ends the score
    /// is at or above the threshold (penalties decayed meanwhile), and the peer is banned again
    /// only for a new offence, with a doubled duration.
    fn offend(&mut self, peer: PeerId, offence: Offence, now: SystemTime, job: bool) -> Option<Ban> {
        let now_ms = unix_ms(now);
        let cfg = self.config.clone();
        let weight = cfg.weights.get(offence);
        let rec = self.entry(peer, now_ms);
        let count = rec.offence_counts.entry(offence).or_insert(0);
        *count = count.saturating_add(1);
        if job && offence.is_job_failure() {
            rec.add_evidence(false, &cfg);
        }
        if weight <= 0.0 {
            return None;
        }
        rec.offences = rec.offences.saturating_add(1);
        if rec.banned_at(now_ms) {
            return None;
        }
        rec.penalty.add(weight, now_ms, cfg.penalty_half_life);
        let score = rec.score(&cfg, now_ms);
        if score >= cfg.ban_threshold {
            return None;
        }
        let factor = 1u32.checked_shl(rec.ban_count.min(31)).unwrap_or(u32::MAX);
        let duration = cfg.ban_base.checked_mul(factor).unwrap_or(cfg.ban_max).min(cfg.ban_max);
        let until_ms = now_ms.saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        rec.banned_until_ms = Some(until_ms);
        rec.ban_count = rec.ban_count.saturating_add(1);
        let quality = rec.quality(&cfg, now_ms);
        rec.penalty = Decaying { value: (quality - cfg.ban_threshold).max(0.0), at_ms: now_ms };
        tracing::info!(
            %peer,
            %offence,
            score,
            ban_count = rec.ban_count,
            secs = duration.as_secs(),
            "reputation: peer banned"
        );
        Some(Ban { peer, until: from_unix_ms(until_ms), duration, ban_count: rec.ban_count, offence })
    }

    /// A heartbeat of `peer` was received (already validated: signed by `peer`). Counts toward
    /// uptime at most once per half heartbeat period, so duplicates (gossip and DHT) and spam do
    /// not inflate it.
    pub fn heartbeat(&mut self, peer: PeerId, now: SystemTime) {
        let now_ms = unix_ms(now);
        let cfg = self.config.clone();
        let min_gap = u64::try_from(cfg.heartbeat_period.as_millis() / 2).unwrap_or(u64::MAX);
        let rec = self.entry(peer, now_ms);
        if let Some(last) = rec.last_heartbeat_ms
            && now_ms.saturating_sub(last) < min_gap
        {
            return;
        }
        rec.last_heartbeat_ms = Some(now_ms);
        rec.heartbeats_seen = rec.heartbeats_seen.saturating_add(1);
        let mut u = match rec.uptime {
            Some(u) => u.advanced(now_ms, &cfg),
            None => UptimeState { seen: 0.0, expected: 1.0, at_ms: now_ms },
        };
        u.seen += 1.0;
        rec.uptime = Some(u);
    }

    /// `from` says `about` served it well (`positive`) or badly. Counts, as a fraction
    /// `hearsay_weight` of an own observation, only if `from` is in good standing here (not
    /// banned, not a newcomer, score ≥ `hearsay_min_score`), `about` is already known (hearsay
    /// never creates records) and the source's own cap (`hearsay_per_source`), the total cap
    /// (`hearsay_max_total`) and the source list (`hearsay_max_sources`) leave room. Returns
    /// whether it counted. Does not touch `last_seen`.
    pub fn record_hearsay(&mut self, about: PeerId, from: PeerId, positive: bool, now: SystemTime) -> bool {
        if about == from {
            return false;
        }
        let now_ms = unix_ms(now);
        let cfg = &self.config;
        let Some(src) = self.peers.get(&from) else {
            return false;
        };
        if src.banned_at(now_ms) || src.is_newcomer(cfg) || src.score(cfg, now_ms) < cfg.hearsay_min_score {
            return false;
        }
        let Some(rec) = self.peers.get_mut(&about) else {
            return false;
        };
        let key = from.to_base58();
        let used = rec.hearsay.sources.get(&key).copied();
        if used.is_none() && rec.hearsay.sources.len() >= cfg.hearsay_max_sources {
            return false;
        }
        let used = used.unwrap_or(0.0);
        let room = (cfg.hearsay_per_source - used).min(cfg.hearsay_max_total - rec.hearsay.total());
        let w = cfg.hearsay_weight.min(room);
        if w < 1e-6 {
            return false;
        }
        if positive {
            rec.hearsay.positive += w;
        } else {
            rec.hearsay.negative += w;
        }
        rec.hearsay.sources.insert(key, used + w);
        self.dirty.insert(about);
        true
    }

    /// The score of `peer`: see the crate docs. An unknown peer gets the newcomer score of the
    /// prior (0.21 with the defaults). In (−∞, 1].
    pub fn score(&self, peer: PeerId, now: SystemTime) -> f64 {
        let now_ms = unix_ms(now);
        match self.peers.get(&peer) {
            Some(r) => r.score(&self.config, now_ms),
            None => PeerRecord::default().score(&self.config, now_ms),
        }
    }

    /// When the ban on `peer` ends, if one is in force.
    pub fn is_banned(&self, peer: PeerId, now: SystemTime) -> Option<SystemTime> {
        let now_ms = unix_ms(now);
        self.peers.get(&peer).and_then(|r| r.banned_until_ms).filter(|u| *u > now_ms).map(from_unix_ms)
    }

    /// Every ban in force, soonest end first (to fill the block list at start).
    pub fn banned(&self, now: SystemTime) -> Vec<(PeerId, SystemTime)> {
        let now_ms = unix_ms(now);
        let mut v: Vec<(PeerId, u64)> =
            self.peers.iter().filter_map(|(p, r)| r.banned_until_ms.filter(|u| *u > now_ms).map(|u| (*p, u))).collect();
        v.sort_unstable_by_key(|(_, u)| *u);
        v.into_iter().map(|(p, u)| (p, from_unix_ms(u))).collect()
    }

    /// The soonest end of a ban in force (to schedule unblocking).
    pub fn next_ban_expiry(&self, now: SystemTime) -> Option<SystemTime> {
        let now_ms = unix_ms(now);
        self.peers.values().filter_map(|r| r.banned_until_ms.filter(|u| *u > now_ms)).min().map(from_unix_ms)
    }

    /// Whether `peer` has fewer than `newcomer_jobs` own successful jobs (unknown peers are).
    pub fn is_newcomer(&self, peer: PeerId) -> bool {
        self.peers.get(&peer).is_none_or(|r| r.is_newcomer(&self.config))
    }

    /// The configured cap on the share of jobs all newcomers together may get.
    pub fn newcomer_share(&self) -> f64 {
        self.config.newcomer_share
    }

    fn traffic_at(&self, now_ms: u64) -> (f64, f64) {
        let hl = self.config.newcomer_share_half_life;
        let t = self.traffic;
        (decay(t.total, t.at_ms, now_ms, hl), decay(t.newcomer, t.at_ms, now_ms, hl))
    }

    /// The client routed a job to `peer` (call once per job, with the provider finally used).
    /// Feeds the newcomer share; not persisted.
    pub fn note_routed(&mut self, peer: PeerId, now: SystemTime) {
        let now_ms = unix_ms(now).max(self.traffic.at_ms);
        let (total, newcomer) = self.traffic_at(now_ms);
        let is_new = self.is_newcomer(peer);
        self.traffic =
            Traffic { total: total + 1.0, newcomer: newcomer + if is_new { 1.0 } else { 0.0 }, at_ms: now_ms };
    }

    /// Share of recently routed jobs (decayed with `newcomer_share_half_life`) that went to
    /// newcomers; 0 before any.
    pub fn routed_newcomer_share(&self, now: SystemTime) -> f64 {
        let (total, newcomer) = self.traffic_at(unix_ms(now));
        if total > 0.0 { newcomer / total } else { 0.0 }
    }

    /// Whether the next job may go to a newcomer without the newcomers' share exceeding
    /// `newcomer_share`: `newcomer < share · (total + 1)` over the decayed counts (so the very
    /// first job may). Apply it only when an established candidate exists: with none, a client
    /// must use newcomers.
    pub fn newcomer_quota_available(&self, now: SystemTime) -> bool {
        let (total, newcomer) = self.traffic_at(unix_ms(now));
        newcomer < self.config.newcomer_share * (total + 1.0)
    }

    fn view(&self, peer: PeerId, r: &PeerRecord, now_ms: u64) -> PeerView {
        let cfg = &self.config;
        PeerView {
            peer: peer.to_base58(),
            score: r.score(cfg, now_ms),
            successes: r.successes,
            failures: r.failures,
            posterior_mean: r.posterior_mean(cfg),
            posterior_lower: r.posterior_lower(cfg),
            latency_ewma_ms: r.latency.ewma_ms,
            latency_p95_ms: r.latency.p95_ms(),
            ttft_ewma_ms: r.ttft.ewma_ms,
            ttft_p95_ms: r.ttft.p95_ms(),
            tokens_per_sec: r.tokens_per_sec,
            uptime: r.uptime(cfg, now_ms),
            penalty: r.penalty_at(cfg, now_ms),
            offences: r.offences,
            offence_counts: r.offence_counts.iter().map(|(o, n)| (o.as_str().to_string(), *n)).collect(),
            banned_until_ms: r.banned_until_ms.filter(|u| *u > now_ms),
            ban_count: r.ban_count,
            newcomer: r.is_newcomer(cfg),
            first_seen_ms: r.first_seen_ms,
            last_seen_ms: r.last_seen_ms,
            heartbeats_seen: r.heartbeats_seen,
            hearsay_positive: r.hearsay.positive,
            hearsay_negative: r.hearsay.negative,
        }
    }

    /// Summary of `peer`, if known.
    pub fn snapshot(&self, peer: PeerId, now: SystemTime) -> Option<PeerView> {
        let now_ms = unix_ms(now);
        self.peers.get(&peer).map(|r| self.view(peer, r, now_ms))
    }

    /// Summaries of every known peer, best score first.
    pub fn all(&self, now: SystemTime) -> Vec<PeerView> {
        let now_ms = unix_ms(now);
        let mut v: Vec<PeerView> = self.peers.iter().map(|(p, r)| self.view(*p, r, now_ms)).collect();
        v.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.peer.cmp(&b.peer)));
        v
    }
}

impl Drop for Reputation {
    fn drop(&mut self) {
        if self.db.is_some()
            && self.dirty_count() > 0
            && let Err(e) = self.flush()
        {
            tracing::warn!(error = %e, "reputation: flush on drop failed");
        }
    }
}
