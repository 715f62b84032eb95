//! The ranker's input row: the single definition of how (user, item, candidate) signals become the
//! `INPUT_DIM` floats every ranking model consumes.
//!
//! This module owns the feature layout. The nightly builder builds its training rows with
//! [`encode_row`] and the server builds its serving rows with the same function, so training–serving
//! skew is impossible by construction. Any change to the layout must bump
//! [`INPUT_LAYOUT_VERSION`]; model specs record the version they were trained on and the loader
//! refuses a mismatch.
//!
//! Row layout (column offsets are the constants in [`col`]):
//!
//! | cols      | feature                                                                   |
//! |-----------|---------------------------------------------------------------------------|
//! | 0         | dot(u, i) of user and item embeddings (0 when either is missing)          |
//! | 1         | cosine(u, i) (0 when missing or a zero-norm vector)                       |
//! | 2..66     | elementwise product u ⊙ i, `EMB_DIM` = 64 (zeros when missing)            |
//! | 66        | category affinity: mean of user prefs over the item's categories          |
//! | 67        | max user pref over the item's categories                                  |
//! | 68        | item log popularity, ln(1 + interaction count)                            |
//! | 69        | ln(1 + trending)                                                          |
//! | 70        | freshness exp(-age_days / 30)                                             |
//! | 71        | ln(1 + age_days)                                                          |
//! | 72..76    | per-source scores (ann, cf, content, trending), each in [0, 1]            |
//! | 76..80    | per-source proposal bits (0/1)                                            |
//! | 80        | number of sources that proposed the candidate                             |
//! | 81        | merged score from the merge stage                                         |
//! | 82        | ln(1 + user history length)                                               |
//! | 83        | cold-user flag (history length == 0)                                      |
//! | 84..88    | device one-hot (unknown, mobile, desktop, tv)                             |
//! | 88        | has_session flag                                                          |
//! | 89        | promoted flag                                                             |
//! | 90..94    | per-source rank, 1 / log2(1 + rank) (0 when the source did not propose it) |
//! | 94..104   | cosine(item, j-th most recent item), j < `SEQ_LEN` (0 when absent)         |
//! | 104..114  | position present: the j-th recent item exists and both vectors are non-zero |
//! | 114       | max cosine to the recent items                                             |
//! | 115       | mean cosine to the present recent items                                    |
//! | 116       | share of the recent items sharing a category with the candidate            |
//! | 117       | ln(1 + days since the user's last interaction) (0 when unknown)            |
//! | 118       | last interaction known flag                                                |
//! | 119, 120  | ln(1 + engagement per day), decayed over a week and over four weeks        |
//!
//! Every emitted value is finite: non-finite inputs are treated as 0 so one bad signal cannot turn
//! a whole batch's scores into NaN.

use serde::{Deserialize, Serialize};

/// Dimensionality of user and item embeddings the row expects. Embeddings of any other length
/// are treated as missing (the product block has a fixed width).
pub const EMB_DIM: usize = 64;

/// Number of per-source slots (ann, cf, content, trending): one block of columns per source, so
/// a new source widens the input (and needs retrained models).
pub const N_SOURCES: usize = crate::sources::N_SOURCES;

/// Number of floats in one ranker input row.
pub const INPUT_DIM: usize = col::LOG_ENGAGEMENT + ENGAGEMENT_HALF_LIVES_DAYS.len();

/// Version of the layout above; bump on any change so stale models are rejected at load time.
/// 2: per-source ranks, the recent-item sequence block and the time since the last interaction.
/// 3: engagement over a week and over four weeks.
pub const INPUT_LAYOUT_VERSION: u32 = 3;

/// Half-lives, in days, of the item engagement inputs: popularity over a week and over a month,
/// beside the trending feature (days) and all-time popularity. Which horizon predicts best
/// differs by catalogue and by user (a new user wants what is popular this month; trending
/// favours the last days), so the rankers get them all and learn the mix.
pub const ENGAGEMENT_HALF_LIVES_DAYS: [f32; 2] = [7.0, 28.0];

/// The online item features (`feature-defs/item.toml`) holding those engagement rates.
pub const ENGAGEMENT_FEATURES: [&str; 2] = ["engagement_7d", "engagement_28d"];

/// How many of the user's most recent items (most recent first) the sequence block describes.
pub const SEQ_LEN: usize = 10;

/// Freshness decay time constant in days (exp(-age / FRESHNESS_TAU_DAYS)).
const FRESHNESS_TAU_DAYS: f32 = 30.0;

/// Column offsets of each feature in the row.
pub mod col {
    use super::{EMB_DIM, N_SOURCES};

    pub const DOT: usize = 0;
    pub const COSINE: usize = 1;
    /// First of `EMB_DIM` columns holding u ⊙ i.
    pub const PRODUCT: usize = 2;
    pub const CAT_AFFINITY: usize = PRODUCT + EMB_DIM;
    pub const CAT_MAX_PREF: usize = CAT_AFFINITY + 1;
    pub const LOG_POPULARITY: usize = CAT_MAX_PREF + 1;
    pub const LOG_TRENDING: usize = LOG_POPULARITY + 1;
    pub const FRESHNESS: usize = LOG_TRENDING + 1;
    pub const LOG_AGE: usize = FRESHNESS + 1;
    /// First of `N_SOURCES` per-source score columns.
    pub const SOURCE_SCORES: usize = LOG_AGE + 1;
    /// First of `N_SOURCES` per-source proposal bits.
    pub const SOURCE_MASK: usize = SOURCE_SCORES + N_SOURCES;
    pub const N_SOURCES_COL: usize = SOURCE_MASK + N_SOURCES;
    pub const MERGED_SCORE: usize = N_SOURCES_COL + 1;
    pub const LOG_HISTORY: usize = MERGED_SCORE + 1;
    pub const COLD_USER: usize = LOG_HISTORY + 1;
    /// First of 4 device one-hot columns, in [`super::DeviceKind`] order.
    pub const DEVICE: usize = COLD_USER + 1;
    pub const HAS_SESSION: usize = DEVICE + 4;
    pub const PROMOTED: usize = HAS_SESSION + 1;
    /// First of `N_SOURCES` per-source rank columns.
    pub const SOURCE_RANKS: usize = PROMOTED + 1;
    /// First of `SEQ_LEN` cosine similarities to the recent items, most recent first.
    pub const SEQ_SIM: usize = SOURCE_RANKS + N_SOURCES;
    /// First of `SEQ_LEN` position-present bits.
    pub const SEQ_MASK: usize = SEQ_SIM + super::SEQ_LEN;
    pub const SEQ_MAX_SIM: usize = SEQ_MASK + super::SEQ_LEN;
    pub const SEQ_MEAN_SIM: usize = SEQ_MAX_SIM + 1;
    pub const SEQ_CAT_SHARE: usize = SEQ_MEAN_SIM + 1;
    /// ln(1 + days since the user's last interaction): a user returning after weeks wants
    /// something else (what is new) than one in the middle of a session (what follows).
    pub const LOG_GAP_DAYS: usize = SEQ_CAT_SHARE + 1;
    pub const GAP_KNOWN: usize = LOG_GAP_DAYS + 1;
    /// First of the engagement columns, one per [`super::ENGAGEMENT_HALF_LIVES_DAYS`].
    pub const LOG_ENGAGEMENT: usize = GAP_KNOWN + 1;
}

/// Device the request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    #[default]
    Unknown,
    Mobile,
    Desktop,
    Tv,
}

impl DeviceKind {
    /// Case-insensitive parse; anything unrecognised is `Unknown` (requests come from many clients
    /// and an odd device string must never fail a request).
    pub fn parse(s: &str) -> DeviceKind {
        let s = s.trim();
        if s.eq_ignore_ascii_case("mobile") {
            DeviceKind::Mobile
        } else if s.eq_ignore_ascii_case("desktop") {
            DeviceKind::Desktop
        } else if s.eq_ignore_ascii_case("tv") {
            DeviceKind::Tv
        } else {
            DeviceKind::Unknown
        }
    }

    /// Position of this device in the one-hot block.
    pub fn index(self) -> usize {
        match self {
            DeviceKind::Unknown => 0,
            DeviceKind::Mobile => 1,
            DeviceKind::Desktop => 2,
            DeviceKind::Tv => 3,
        }
    }
}

/// Per-request user signals.
#[derive(Debug, Clone, Copy)]
pub struct UserSignals<'a> {
    pub embedding: Option<&'a [f32]>,
    /// Indexed by category idx; may be empty (no preferences known).
    pub category_prefs: &'a [f32],
    pub history_len: u32,
    pub device: DeviceKind,
    pub has_session: bool,
    /// The user's most recent items, most recent first (only the first `SEQ_LEN` are used).
    pub recent: &'a [RecentItem<'a>],
    /// Days since the user's last interaction, None when unknown.
    pub gap_days: Option<f32>,
}

/// One of the user's recent items, as the sequence block sees it. Built once per request
/// ([`RecentItem::new`] takes the embedding's norm), then compared with every candidate.
#[derive(Debug, Clone, Copy)]
pub struct RecentItem<'a> {
    pub embedding: &'a [f32],
    pub categories: &'a [u32],
    /// Euclidean norm of `embedding` (non-finite elements count as 0); 0 when unusable.
    norm: f32,
}

impl<'a> RecentItem<'a> {
    pub fn new(embedding: &'a [f32], categories: &'a [u32]) -> Self {
        let norm = if embedding.len() == EMB_DIM {
            norm(embedding)
        } else {
            0.0
        };
        RecentItem {
            embedding,
            categories,
            norm,
        }
    }
}

/// Euclidean norm with non-finite elements as 0.
fn norm(v: &[f32]) -> f32 {
    v.iter().map(|&x| fin(x) * fin(x)).sum::<f32>().sqrt()
}

/// Per-candidate item signals.
#[derive(Debug, Clone, Copy)]
pub struct ItemSignals<'a> {
    pub embedding: &'a [f32],
    pub categories: &'a [u32],
    /// ln(1 + interaction count).
    pub log_popularity: f32,
    /// Trending score, >= 0.
    pub trending: f32,
    /// now - published_at in days, clamped >= 0.
    pub age_days: f32,
    pub promoted: bool,
    /// Decayed interaction weight per day, one per [`ENGAGEMENT_HALF_LIVES_DAYS`], >= 0.
    pub engagement: [f32; ENGAGEMENT_HALF_LIVES_DAYS.len()],
}

/// What the retrieval/merge stages said about a candidate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CandidateSignals {
    /// Per source (ann, cf, content, trending), normalized to [0, 1]; 0 when absent.
    pub source_scores: [f32; N_SOURCES],
    /// Bit i set = source i proposed the candidate.
    pub source_mask: u8,
    /// 1-based position in each source's list, 0 = not proposed.
    pub source_ranks: [u32; N_SOURCES],
    pub merged_score: f32,
}

/// Human-readable name of every column, in row order (for debugging and feature reports).
pub fn feature_names() -> Vec<String> {
    let mut names = Vec::with_capacity(INPUT_DIM);
    names.push("emb_dot".to_string());
    names.push("emb_cosine".to_string());
    names.extend((0..EMB_DIM).map(|k| format!("emb_prod_{k}")));
    for n in [
        "cat_affinity",
        "cat_max_pref",
        "log_popularity",
        "log_trending",
        "freshness",
        "log_age_days",
    ] {
        names.push(n.to_string());
    }
    let sources = crate::sources::SourceId::ALL.map(|s| s.name());
    names.extend(sources.iter().map(|s| format!("src_score_{s}")));
    names.extend(sources.iter().map(|s| format!("src_bit_{s}")));
    for n in [
        "n_sources",
        "merged_score",
        "log_history_len",
        "cold_user",
        "device_unknown",
        "device_mobile",
        "device_desktop",
        "device_tv",
        "has_session",
        "promoted",
    ] {
        names.push(n.to_string());
    }
    names.extend(sources.iter().map(|s| format!("src_rank_{s}")));
    names.extend((0..SEQ_LEN).map(|j| format!("seq_sim_{j}")));
    names.extend((0..SEQ_LEN).map(|j| format!("seq_present_{j}")));
    for n in [
        "seq_max_sim",
        "seq_mean_sim",
        "seq_cat_share",
        "log_gap_days",
        "gap_known",
    ] {
        names.push(n.to_string());
    }
    names.extend(
        ENGAGEMENT_HALF_LIVES_DAYS
            .iter()
            .map(|d| format!("log_engagement_{d}d")),
    );
    names
}

/// Maps non-finite values to 0 so the row is always finite.
#[inline]
fn fin(v: f32) -> f32 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

#[inline]
fn flag(b: bool) -> f32 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Writes one ranker input row for (user, item, candidate) into `out`.
///
/// `out` must have length [`INPUT_DIM`]; a mis-sized buffer is a caller bug, handled without
/// panicking by writing the overlapping prefix and zeroing any extra space. Embeddings whose length
/// is not [`EMB_DIM`] are treated as missing.
pub fn encode_row(
    user: &UserSignals,
    item: &ItemSignals,
    cand: &CandidateSignals,
    out: &mut [f32],
) {
    if out.len() == INPUT_DIM {
        encode_exact(user, item, cand, out);
    } else {
        let mut row = [0.0f32; INPUT_DIM];
        encode_exact(user, item, cand, &mut row);
        let n = out.len().min(INPUT_DIM);
        out[..n].copy_from_slice(&row[..n]);
        out[n..].fill(0.0);
    }
}

/// Appends one encoded row to a row-major batch buffer (`rows.len()` grows by [`INPUT_DIM`]).
pub fn push_row(
    rows: &mut Vec<f32>,
    user: &UserSignals,
    item: &ItemSignals,
    cand: &CandidateSignals,
) {
    let start = rows.len();
    rows.resize(start + INPUT_DIM, 0.0);
    encode_exact(user, item, cand, &mut rows[start..]);
}

/// `out.len() == INPUT_DIM` is guaranteed by the callers above.
fn encode_exact(user: &UserSignals, item: &ItemSignals, cand: &CandidateSignals, out: &mut [f32]) {
    out.fill(0.0);

    // Embedding block: only when both sides have the expected width.
    if let Some(u) = user.embedding {
        let i = item.embedding;
        if u.len() == EMB_DIM && i.len() == EMB_DIM {
            let (mut dot, mut nu, mut ni) = (0.0f32, 0.0f32, 0.0f32);
            for k in 0..EMB_DIM {
                let (a, b) = (fin(u[k]), fin(i[k]));
                let p = fin(a * b);
                out[col::PRODUCT + k] = p;
                dot += p;
                nu += a * a;
                ni += b * b;
            }
            out[col::DOT] = fin(dot);
            let denom = (nu.sqrt() * ni.sqrt()).max(f32::MIN_POSITIVE);
            out[col::COSINE] = if nu > 0.0 && ni > 0.0 {
                fin(dot / denom).clamp(-1.0, 1.0)
            } else {
                0.0
            };
        }
    }

    // Category affinity: a category the user has no pref for counts as pref 0.
    if !item.categories.is_empty() {
        let mut sum = 0.0f32;
        let mut max = f32::NEG_INFINITY;
        for &c in item.categories {
            let p = user
                .category_prefs
                .get(c as usize)
                .copied()
                .map(fin)
                .unwrap_or(0.0);
            sum += p;
            max = max.max(p);
        }
        out[col::CAT_AFFINITY] = fin(sum / item.categories.len() as f32);
        out[col::CAT_MAX_PREF] = fin(max);
    }

    out[col::LOG_POPULARITY] = fin(item.log_popularity).max(0.0);
    out[col::LOG_TRENDING] = fin(item.trending).max(0.0).ln_1p();
    let age = fin(item.age_days).max(0.0);
    out[col::FRESHNESS] = (-age / FRESHNESS_TAU_DAYS).exp();
    out[col::LOG_AGE] = fin(age.ln_1p());

    for s in 0..N_SOURCES {
        out[col::SOURCE_SCORES + s] = fin(cand.source_scores[s]).clamp(0.0, 1.0);
        out[col::SOURCE_MASK + s] = flag(cand.source_mask & (1 << s) != 0);
    }
    // Only the defined source bits count; stray high bits are ignored.
    out[col::N_SOURCES_COL] = (cand.source_mask & 0x0F).count_ones() as f32;
    out[col::MERGED_SCORE] = fin(cand.merged_score);

    out[col::LOG_HISTORY] = (user.history_len as f32).ln_1p();
    out[col::COLD_USER] = flag(user.history_len == 0);
    out[col::DEVICE + user.device.index()] = 1.0;
    out[col::HAS_SESSION] = flag(user.has_session);
    out[col::PROMOTED] = flag(item.promoted);

    for s in 0..N_SOURCES {
        let r = cand.source_ranks[s];
        if r > 0 {
            out[col::SOURCE_RANKS + s] = 1.0 / (1.0 + r as f32).log2();
        }
    }
    encode_sequence(user.recent, item, out);
    if let Some(g) = user.gap_days {
        out[col::LOG_GAP_DAYS] = fin(g).max(0.0).ln_1p();
        out[col::GAP_KNOWN] = 1.0;
    }
    for (k, &e) in item.engagement.iter().enumerate() {
        out[col::LOG_ENGAGEMENT + k] = fin(e).max(0.0).ln_1p();
    }
}

/// The sequence block: how the candidate relates to each of the user's last `SEQ_LEN` items.
fn encode_sequence(recent: &[RecentItem], item: &ItemSignals, out: &mut [f32]) {
    let recent = &recent[..recent.len().min(SEQ_LEN)];
    if recent.is_empty() {
        return;
    }
    let ni = if item.embedding.len() == EMB_DIM {
        norm(item.embedding)
    } else {
        0.0
    };
    let (mut max, mut sum, mut present, mut shared) = (f32::NEG_INFINITY, 0.0f32, 0u32, 0u32);
    for (j, r) in recent.iter().enumerate() {
        if r.categories.iter().any(|c| item.categories.contains(c)) {
            shared += 1;
        }
        let nr = r.norm;
        if ni <= 0.0 || nr.is_nan() || nr <= 0.0 {
            continue;
        }
        let dot: f32 = r
            .embedding
            .iter()
            .zip(item.embedding)
            .map(|(&a, &b)| fin(a) * fin(b))
            .sum();
        let cos = fin(dot / (ni * nr)).clamp(-1.0, 1.0);
        out[col::SEQ_SIM + j] = cos;
        out[col::SEQ_MASK + j] = 1.0;
        max = max.max(cos);
        sum += cos;
        present += 1;
    }
    if present > 0 {
        out[col::SEQ_MAX_SIM] = max;
        out[col::SEQ_MEAN_SIM] = sum / present as f32;
    }
    out[col::SEQ_CAT_SHARE] = shared as f32 / recent.len() as f32;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The engagement rate that encodes as exactly 1: e − 1.
    fn e1m() -> f32 {
        std::f32::consts::E - 1.0
    }

    fn emb(seed: f32) -> Vec<f32> {
        (0..EMB_DIM)
            .map(|k| ((k as f32 + seed) * 0.37).sin())
            .collect()
    }

    #[test]
    fn layout_is_consistent() {
        assert_eq!(INPUT_DIM, 121);
        assert_eq!(feature_names().len(), INPUT_DIM);
        assert_eq!(col::LOG_ENGAGEMENT, INPUT_DIM - 2);
        assert_eq!(feature_names()[INPUT_DIM - 1], "log_engagement_28d");
        for (d, name) in ENGAGEMENT_HALF_LIVES_DAYS.iter().zip(ENGAGEMENT_FEATURES) {
            assert_eq!(name, format!("engagement_{d}d"));
        }
    }

    #[test]
    fn device_parse() {
        assert_eq!(DeviceKind::parse("MOBILE"), DeviceKind::Mobile);
        assert_eq!(DeviceKind::parse(" Desktop "), DeviceKind::Desktop);
        assert_eq!(DeviceKind::parse("tV"), DeviceKind::Tv);
        assert_eq!(DeviceKind::parse("fridge"), DeviceKind::Unknown);
        assert_eq!(DeviceKind::parse(""), DeviceKind::Unknown);
    }

    #[test]
    fn known_values() {
        let u = emb(1.0);
        let i = emb(2.0);
        let prefs = [0.2f32, 0.8, 0.5];
        let cats = [1u32, 2, 7];
        let user = UserSignals {
            embedding: Some(&u),
            category_prefs: &prefs,
            history_len: 0,
            device: DeviceKind::Tv,
            has_session: true,
            recent: &[],
            gap_days: None,
        };
        let item = ItemSignals {
            embedding: &i,
            categories: &cats,
            log_popularity: 2.5,
            trending: 3.0,
            age_days: 30.0,
            promoted: true,
            engagement: [e1m(), -2.0],
        };
        let cand = CandidateSignals {
            source_scores: [0.9, 0.0, 0.4, 0.0],
            source_mask: 0b0101,
            source_ranks: [1, 0, 3, 0],
            merged_score: 0.7,
        };
        let mut row = vec![0.0; INPUT_DIM];
        encode_row(&user, &item, &cand, &mut row);

        let dot: f32 = u.iter().zip(&i).map(|(a, b)| a * b).sum();
        let nu: f32 = u.iter().map(|a| a * a).sum::<f32>().sqrt();
        let ni: f32 = i.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((row[col::DOT] - dot).abs() < 1e-4);
        assert!((row[col::COSINE] - dot / (nu * ni)).abs() < 1e-4);
        assert!((row[col::PRODUCT + 5] - u[5] * i[5]).abs() < 1e-6);
        // Category 7 has no pref: counts as 0.
        assert!((row[col::CAT_AFFINITY] - (0.8 + 0.5) / 3.0).abs() < 1e-6);
        assert!((row[col::CAT_MAX_PREF] - 0.8).abs() < 1e-6);
        assert_eq!(row[col::LOG_POPULARITY], 2.5);
        assert!((row[col::LOG_TRENDING] - 4.0f32.ln()).abs() < 1e-6);
        assert!((row[col::FRESHNESS] - (-1.0f32).exp()).abs() < 1e-6);
        assert!((row[col::LOG_AGE] - 31.0f32.ln()).abs() < 1e-5);
        assert_eq!(row[col::SOURCE_SCORES], 0.9);
        assert_eq!(row[col::SOURCE_SCORES + 2], 0.4);
        assert_eq!(
            &row[col::SOURCE_MASK..col::SOURCE_MASK + 4],
            &[1.0, 0.0, 1.0, 0.0]
        );
        assert_eq!(row[col::N_SOURCES_COL], 2.0);
        assert_eq!(row[col::MERGED_SCORE], 0.7);
        assert_eq!(row[col::LOG_HISTORY], 0.0);
        assert_eq!(row[col::COLD_USER], 1.0);
        assert_eq!(&row[col::DEVICE..col::DEVICE + 4], &[0.0, 0.0, 0.0, 1.0]);
        assert_eq!(row[col::HAS_SESSION], 1.0);
        assert_eq!(row[col::PROMOTED], 1.0);
        assert_eq!(row[col::SOURCE_RANKS], 1.0);
        assert_eq!(row[col::SOURCE_RANKS + 1], 0.0);
        assert_eq!(row[col::SOURCE_RANKS + 2], 0.5);
        // No recent items: the sequence block is empty.
        assert!(row[col::SEQ_SIM..col::LOG_ENGAGEMENT]
            .iter()
            .all(|&v| v == 0.0));
        assert!((row[col::LOG_ENGAGEMENT] - 1.0).abs() < 1e-6);
        // A negative rate is read as none.
        assert_eq!(row[col::LOG_ENGAGEMENT + 1], 0.0);
    }

    #[test]
    fn sequence_block_describes_the_recent_items_in_order() {
        let i = emb(2.0);
        let zero = vec![0.0; EMB_DIM];
        let neg: Vec<f32> = i.iter().map(|v| -v).collect();
        let recent = [
            RecentItem::new(&i, &[4]),
            RecentItem::new(&zero, &[1]),
            RecentItem::new(&neg, &[9]),
        ];
        let user = UserSignals {
            embedding: None,
            category_prefs: &[],
            history_len: 3,
            device: DeviceKind::Unknown,
            has_session: false,
            recent: &recent,
            gap_days: Some(2.0),
        };
        let item = ItemSignals {
            embedding: &i,
            categories: &[1, 4],
            log_popularity: 0.0,
            trending: 0.0,
            age_days: 0.0,
            promoted: false,
            engagement: [0.0; 2],
        };
        let mut row = vec![0.0; INPUT_DIM];
        encode_row(&user, &item, &CandidateSignals::default(), &mut row);
        assert!((row[col::SEQ_SIM] - 1.0).abs() < 1e-5);
        assert_eq!(row[col::SEQ_SIM + 1], 0.0);
        assert!((row[col::SEQ_SIM + 2] + 1.0).abs() < 1e-5);
        assert_eq!(
            &row[col::SEQ_MASK..col::SEQ_MASK + 4],
            &[1.0, 0.0, 1.0, 0.0]
        );
        assert!((row[col::SEQ_MAX_SIM] - 1.0).abs() < 1e-5);
        assert!(row[col::SEQ_MEAN_SIM].abs() < 1e-5);
        assert!((row[col::SEQ_CAT_SHARE] - 2.0 / 3.0).abs() < 1e-6);
        assert!((row[col::LOG_GAP_DAYS] - 3.0f32.ln()).abs() < 1e-6);
        assert_eq!(row[col::GAP_KNOWN], 1.0);
    }

    #[test]
    fn missing_embedding_zeroes_block_and_push_row_matches() {
        let i = emb(2.0);
        let user = UserSignals {
            embedding: None,
            category_prefs: &[],
            history_len: 12,
            device: DeviceKind::Mobile,
            has_session: false,
            recent: &[],
            gap_days: None,
        };
        let item = ItemSignals {
            embedding: &i,
            categories: &[],
            log_popularity: 1.0,
            trending: 0.0,
            age_days: 0.0,
            promoted: false,
            engagement: [0.0; 2],
        };
        let cand = CandidateSignals::default();
        let mut row = vec![0.0; INPUT_DIM];
        encode_row(&user, &item, &cand, &mut row);
        assert!(row[..col::CAT_AFFINITY].iter().all(|&v| v == 0.0));
        assert_eq!(row[col::FRESHNESS], 1.0);
        assert!((row[col::LOG_HISTORY] - 13.0f32.ln()).abs() < 1e-6);
        assert_eq!(row[col::COLD_USER], 0.0);

        let mut batch = vec![];
        push_row(&mut batch, &user, &item, &cand);
        push_row(&mut batch, &user, &item, &cand);
        assert_eq!(batch.len(), 2 * INPUT_DIM);
        assert_eq!(&batch[INPUT_DIM..], &row[..]);
    }

    fn any_f32() -> impl Strategy<Value = f32> {
        prop_oneof![
            8 => -1e6f32..1e6f32,
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
        ]
    }

    proptest! {
        #[test]
        fn never_panics_and_always_finite(
            u in prop::option::of(prop::collection::vec(any_f32(), 0..80)),
            i in prop::collection::vec(any_f32(), 0..80),
            prefs in prop::collection::vec(any_f32(), 0..20),
            cats in prop::collection::vec(any::<u32>(), 0..6),
            hist in any::<u32>(),
            dev in 0usize..4,
            pop in any_f32(), trend in any_f32(), age in any_f32(),
            engagement in prop::array::uniform2(any_f32()),
            scores in prop::array::uniform4(any_f32()),
            ranks in prop::array::uniform4(prop_oneof![Just(0u32), any::<u32>()]),
            recent in prop::collection::vec(
                (prop::collection::vec(any_f32(), 0..70), prop::collection::vec(0u32..8, 0..3)),
                0..14,
            ),
            mask in any::<u8>(),
            gap in any_f32(),
            merged in any_f32(),
            flags in any::<(bool, bool)>(),
            out_len in prop_oneof![8 => Just(INPUT_DIM), 1 => 0usize..200],
        ) {
            let device = [DeviceKind::Unknown, DeviceKind::Mobile, DeviceKind::Desktop, DeviceKind::Tv][dev];
            let recent: Vec<RecentItem> = recent.iter().map(|(e, c)| RecentItem::new(e, c)).collect();
            let user = UserSignals { embedding: u.as_deref(), category_prefs: &prefs, history_len: hist, device, has_session: flags.0, recent: &recent, gap_days: Some(gap).filter(|_| flags.0) };
            let item = ItemSignals { embedding: &i, categories: &cats, log_popularity: pop, trending: trend, age_days: age, promoted: flags.1, engagement };
            let cand = CandidateSignals { source_scores: scores, source_mask: mask, source_ranks: ranks, merged_score: merged };
            let mut out = vec![f32::NAN; out_len];
            encode_row(&user, &item, &cand, &mut out);
            prop_assert!(out.iter().all(|v| v.is_finite()));

            let mut full = vec![0.0; INPUT_DIM];
            encode_row(&user, &item, &cand, &mut full);
            let n = out_len.min(INPUT_DIM);
            prop_assert_eq!(&out[..n], &full[..n]);
            // Mismatched embedding widths are treated as missing.
            let valid = u.as_ref().is_some_and(|u| u.len() == EMB_DIM) && i.len() == EMB_DIM;
            if !valid {
                prop_assert!(full[..col::CAT_AFFINITY].iter().all(|&v| v == 0.0));
            }
            prop_assert!((-1.0..=1.0).contains(&full[col::COSINE]));
            prop_assert_eq!(full[col::DEVICE..col::DEVICE + 4].iter().sum::<f32>(), 1.0);
            prop_assert_eq!(full[col::N_SOURCES_COL], (mask & 0x0F).count_ones() as f32);
            for s in 0..N_SOURCES {
                let r = full[col::SOURCE_RANKS + s];
                // Not proposed → exactly 0; proposed → in (0, 1], best rank 1.
                prop_assert_eq!(r == 0.0, ranks[s] == 0);
                prop_assert!((0.0..=1.0).contains(&r));
            }
            for j in 0..SEQ_LEN {
                let (sim, present) = (full[col::SEQ_SIM + j], full[col::SEQ_MASK + j]);
                prop_assert!((-1.0..=1.0).contains(&sim));
                prop_assert!(present == 0.0 || present == 1.0);
                // A position with no recent item (or an unusable vector) carries nothing.
                if present == 0.0 { prop_assert_eq!(sim, 0.0); }
                if j >= recent.len() { prop_assert_eq!(present, 0.0); }
            }
            prop_assert!((0.0..=1.0).contains(&full[col::SEQ_CAT_SHARE]));
            prop_assert!(full[col::LOG_GAP_DAYS] >= 0.0);
            prop_assert_eq!(full[col::GAP_KNOWN], f32::from(flags.0));
            for (k, &e) in engagement.iter().enumerate() {
                let v = full[col::LOG_ENGAGEMENT + k];
                // Negative or non-finite engagement → exactly 0, else ln(1 + e) (monotone).
                let want = if e.is_finite() && e > 0.0 { e.ln_1p() } else { 0.0 };
                prop_assert_eq!(v, want);
            }
        }
    }
}
