//! Ensemble subset selection: which rankers score a request, chosen by branch-and-bound
//! backtracking over model subsets under the request's remaining time.
//!
//! The objective is the quality estimator of [`estimate`]; the constraints are predicted cost
//! ([`cost_ms`]) ≤ budget, size ≤ `max_models`, and architecture diversity ≥ `min_diversity`.
//! [`select`] returns the same optimum as [`brute_force`] (a property test checks it on random
//! instances), visiting far fewer subsets.

/// One healthy model the selector may choose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelOption {
    /// Validation quality on the request's segment (e.g. NDCG@20).
    pub quality: f64,
    /// Predicted time to score this request's candidates, in ms.
    pub cost_ms: f64,
    /// Architecture id; diversity counts distinct ids.
    pub arch: u16,
}

/// One selection problem. `dissim[i * n + j]` = 1 − correlation of models i and j (symmetric).
#[derive(Debug, Clone, Copy)]
pub struct Problem<'a> {
    pub models: &'a [ModelOption],
    pub dissim: &'a [f64],
    /// Weight of the diversity term (≥ 0; fitted by the builder).
    pub lambda: f64,
    pub budget_ms: f64,
    /// Models of one request run concurrently on this many worker threads.
    pub workers: usize,
    pub max_models: usize,
    /// Distinct architectures / subset size must reach this (0 disables).
    pub min_diversity: f64,
    /// Search nodes before the search stops with its best so far (`exhaustive: false`).
    pub max_nodes: u64,
}

/// How a request's ensemble is chosen.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SelectionMode {
    /// Branch and bound: the best estimated quality that fits the budget ([`select`]).
    #[default]
    Optimize,
    /// A fixed ensemble: every allowed model, best quality first, as many as fit the budget and
    /// `max_models` (for experiments and capacity tests that must run a known set).
    All,
}

/// [`SelectionMode::All`]: models in quality order while the subset still fits the budget and
/// `max_models` (diversity is not asked for: the set is the caller's choice).
pub fn select_all(p: &Problem) -> Option<Selection> {
    let mut order: Vec<usize> = (0..p.models.len()).collect();
    order.sort_by(|&a, &b| {
        p.models[b]
            .quality
            .total_cmp(&p.models[a].quality)
            .then(a.cmp(&b))
    });
    let mut chosen: Vec<usize> = Vec::new();
    for m in order {
        if chosen.len() >= p.max_models {
            break;
        }
        chosen.push(m);
        if cost_ms(p, &chosen) > p.budget_ms {
            chosen.pop();
        }
    }
    if chosen.is_empty() {
        return None;
    }
    chosen.sort_unstable();
    Some(Selection {
        estimate: estimate(p, &chosen),
        cost_ms: cost_ms(p, &chosen),
        chosen,
        nodes: 0,
        exhaustive: true,
    })
}

/// The chosen subset (model indices into `Problem::models`, ascending).
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub chosen: Vec<usize>,
    pub estimate: f64,
    pub cost_ms: f64,
    /// Search nodes visited.
    pub nodes: u64,
    /// False when `max_nodes` cut the search short (the result is then the best found).
    pub exhaustive: bool,
}

/// Why a model was left out of a selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Adding it would break the time budget.
    Budget,
    /// Its circuit breaker is open (decided by the caller).
    Unhealthy,
    /// Adding it would push architecture diversity below the minimum.
    Diversity,
    /// The subset is already `max_models` large.
    Size,
    /// It fits, but the estimator says it would lower the ensemble's quality.
    Quality,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Budget => "budget",
            SkipReason::Unhealthy => "unhealthy",
            SkipReason::Diversity => "diversity",
            SkipReason::Size => "size",
            SkipReason::Quality => "quality",
        }
    }
}

/// Estimated quality of an ensemble S of s models:
///
/// `Q(S) = mean_{i∈S} q_i + λ · mean_{i<j∈S}(1 − ρ_ij) · (1 − 1/s)`
///
/// The first term is what the members bring alone; the second is the gain from averaging
/// errors that are not perfectly correlated (for s models with mean correlation ρ the variance
/// of their mean shrinks by (1 − ρ)(1 − 1/s)). It simplifies to `Σq/s + 2λ·P/s²` with P the sum
/// of pairwise dissimilarities, the form the search updates incrementally.
pub fn estimate(p: &Problem, subset: &[usize]) -> f64 {
    let s = subset.len();
    if s == 0 {
        return f64::NEG_INFINITY;
    }
    let n = p.models.len();
    let sum_q: f64 = subset.iter().map(|&i| p.models[i].quality).sum();
    let mut pairs = 0.0;
    for (a, &i) in subset.iter().enumerate() {
        for &j in &subset[a + 1..] {
            pairs += p.dissim[i * n + j];
        }
    }
    value(sum_q, pairs, s, p.lambda)
}

#[inline]
fn value(sum_q: f64, pairs: f64, s: usize, lambda: f64) -> f64 {
    let s = s as f64;
    sum_q / s + 2.0 * lambda * pairs / (s * s)
}

/// Predicted wall time of running `subset` concurrently on `workers` threads: no less than the
/// slowest model, nor than the total work spread evenly. Adding a model never lowers it, which
/// is what lets the search prune on cost.
pub fn cost_ms(p: &Problem, subset: &[usize]) -> f64 {
    let (sum, max) = subset.iter().fold((0.0f64, 0.0f64), |(s, m), &i| {
        (s + p.models[i].cost_ms, m.max(p.models[i].cost_ms))
    });
    combine_cost(sum, max, p.workers)
}

#[inline]
fn combine_cost(sum: f64, max: f64, workers: usize) -> f64 {
    max.max(sum / workers.max(1) as f64)
}

/// Distinct architectures / size (1 for a single model).
pub fn diversity(p: &Problem, subset: &[usize]) -> f64 {
    if subset.is_empty() {
        return 1.0;
    }
    let mut archs: Vec<u16> = subset.iter().map(|&i| p.models[i].arch).collect();
    archs.sort_unstable();
    archs.dedup();
    archs.len() as f64 / subset.len() as f64
}

/// Whether `subset` (non-empty) meets every constraint.
pub fn feasible(p: &Problem, subset: &[usize]) -> bool {
    !subset.is_empty()
        && subset.len() <= p.max_models
        && cost_ms(p, subset) <= p.budget_ms
        && diversity(p, subset) + 1e-12 >= p.min_diversity
}

/// Why model `m` is not in `chosen` (which must not contain it).
pub fn skip_reason(p: &Problem, chosen: &[usize], m: usize) -> SkipReason {
    let mut with: Vec<usize> = chosen.to_vec();
    with.push(m);
    if cost_ms(p, &with) > p.budget_ms {
        SkipReason::Budget
    } else if with.len() > p.max_models {
        SkipReason::Size
    } else if diversity(p, &with) + 1e-12 < p.min_diversity {
        SkipReason::Diversity
    } else {
        SkipReason::Quality
    }
}

/// The best feasible subset by enumerating all of them: the reference [`select`] is tested
/// against. Exponential; None above 24 models.
pub fn brute_force(p: &Problem) -> Option<Selection> {
    let n = p.models.len();
    if n > 24 {
        return None; // 2^n subsets: not an instance to enumerate
    }
    let mut best: Option<Selection> = None;
    for mask in 1u32..(1u32 << n) {
        let subset: Vec<usize> = (0..n).filter(|&i| mask & (1 << i) != 0).collect();
        if !feasible(p, &subset) {
            continue;
        }
        let v = estimate(p, &subset);
        if best.as_ref().is_none_or(|b| v > b.estimate) {
            best = Some(Selection {
                cost_ms: cost_ms(p, &subset),
                chosen: subset,
                estimate: v,
                nodes: mask as u64,
                exhaustive: true,
            });
        }
    }
    best
}

/// Search state: the current subset in the search order and its running sums.
struct Search<'a> {
    p: &'a Problem<'a>,
    n: usize,
    /// Model indices by quality, best first (cheaper first on ties): good subsets come early.
    order: Vec<usize>,
    /// `to_x[x]` = Σ_{s∈S} dissim(x, s) for every model x.
    to_x: Vec<f64>,
    /// Largest pairwise dissimilarity between any two models (for the bound on new pairs).
    d_max: f64,
    stack: Vec<usize>,
    sum_q: f64,
    pairs: f64,
    sum_c: f64,
    max_c: f64,
    arch_count: Vec<u32>,
    archs: usize,
    best: Option<(Vec<usize>, f64)>,
    nodes: u64,
    cut: bool,
    // Scratch buffers reused across nodes.
    feas: Vec<usize>,
    prefix_q: Vec<f64>,
    suffix_dx: Vec<f64>,
}

impl<'a> Search<'a> {
    fn cost_with(&self, x: usize) -> f64 {
        let c = self.p.models[x].cost_ms;
        combine_cost(self.sum_c + c, self.max_c.max(c), self.p.workers)
    }

    fn push(&mut self, x: usize) {
        let m = &self.p.models[x];
        self.pairs += self.to_x[x];
        self.sum_q += m.quality;
        self.sum_c += m.cost_ms;
        let a = m.arch as usize;
        if self.arch_count[a] == 0 {
            self.archs += 1;
        }
        self.arch_count[a] += 1;
        let row = &self.p.dissim[x * self.n..(x + 1) * self.n];
        for (t, d) in self.to_x.iter_mut().zip(row) {
            *t += d;
        }
        self.stack.push(x);
    }

    fn pop(&mut self, saved_max_c: f64) {
        let Some(x) = self.stack.pop() else { return };
        let m = &self.p.models[x];
        let row = &self.p.dissim[x * self.n..(x + 1) * self.n];
        for (t, d) in self.to_x.iter_mut().zip(row) {
            *t -= d;
        }
        let a = m.arch as usize;
        self.arch_count[a] -= 1;
        if self.arch_count[a] == 0 {
            self.archs -= 1;
        }
        self.sum_c -= m.cost_ms;
        self.sum_q -= m.quality;
        self.pairs -= self.to_x[x];
        self.max_c = saved_max_c;
    }

    /// Records the current subset when it is feasible and better than the best so far.
    fn consider(&mut self) {
        let s = self.stack.len();
        if s == 0 {
            return;
        }
        // Cost and size hold by construction; diversity is checked here (it is not monotone).
        if (self.archs as f64) / (s as f64) + 1e-12 < self.p.min_diversity {
            return;
        }
        let v = value(self.sum_q, self.pairs, s, self.p.lambda);
        if self.best.as_ref().is_none_or(|(_, b)| v > *b) {
            self.best = Some((self.stack.clone(), v));
        }
    }

    fn dfs(&mut self, from: usize) {
        self.nodes += 1;
        if self.nodes > self.p.max_nodes {
            self.cut = true;
            return;
        }
        self.consider();
        let s = self.stack.len();
        let room = self.p.max_models.saturating_sub(s);
        if room == 0 || from >= self.n {
            return;
        }
        // The models that could still join (each fits the budget on its own with S).
        self.feas.clear();
        for k in from..self.n {
            let x = self.order[k];
            if self.cost_with(x) <= self.p.budget_ms {
                self.feas.push(k);
            }
        }
        if self.feas.is_empty() {
            return;
        }
        let f = self.feas.len();
        // prefix_q[t] = Σ of the first t feasible qualities (they are in descending order);
        // suffix_dx[t] = max over feas[t..] of the dissimilarity to the current subset.
        self.prefix_q.clear();
        self.prefix_q.push(0.0);
        for t in 0..f {
            let q = self.p.models[self.order[self.feas[t]]].quality;
            let last = self.prefix_q[t];
            self.prefix_q.push(last + q);
        }
        self.suffix_dx.clear();
        self.suffix_dx.resize(f + 1, f64::NEG_INFINITY);
        for t in (0..f).rev() {
            let dx = self.to_x[self.order[self.feas[t]]];
            self.suffix_dx[t] = self.suffix_dx[t + 1].max(dx);
        }
        let feas = std::mem::take(&mut self.feas);
        let prefix_q = std::mem::take(&mut self.prefix_q);
        let suffix_dx = std::mem::take(&mut self.suffix_dx);
        for t in 0..f {
            // Optimistic bound over every superset whose first new model is feas[t]: the a new
            // models bring at most the a best remaining qualities, at most the largest
            // dissimilarity to S each, and at most d_max per pair among themselves.
            if let Some((_, best)) = &self.best {
                let avail = (f - t).min(room);
                let mut bound = f64::NEG_INFINITY;
                for a in 1..=avail {
                    let q_new = prefix_q[t + a] - prefix_q[t];
                    let pairs_ub = self.pairs
                        + a as f64 * suffix_dx[t].max(0.0)
                        + (a * (a - 1) / 2) as f64 * self.d_max;
                    bound = bound.max(value(self.sum_q + q_new, pairs_ub, s + a, self.p.lambda));
                }
                // Later starts only see fewer models, so their bounds are no larger: stop.
                if bound <= *best + 1e-12 {
                    break;
                }
            }
            let x = self.order[feas[t]];
            if self.cost_with(x) > self.p.budget_ms {
                continue;
            }
            let saved = self.max_c;
            self.max_c = self.max_c.max(self.p.models[x].cost_ms);
            self.push(x);
            self.dfs(feas[t] + 1);
            self.pop(saved);
            if self.cut {
                break;
            }
        }
        self.feas = feas;
        self.prefix_q = prefix_q;
        self.suffix_dx = suffix_dx;
    }
}

/// The best feasible subset by branch and bound, or None when no single model fits.
pub fn select(p: &Problem) -> Option<Selection> {
    let n = p.models.len();
    if n == 0 || p.max_models == 0 || p.dissim.len() != n * n {
        return None;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        let (ma, mb) = (&p.models[a], &p.models[b]);
        mb.quality
            .total_cmp(&ma.quality)
            .then(ma.cost_ms.total_cmp(&mb.cost_ms))
            .then(a.cmp(&b))
    });
    let d_max = p
        .dissim
        .iter()
        .enumerate()
        .filter(|(k, _)| k / n != k % n)
        .map(|(_, &d)| d)
        .fold(0.0f64, f64::max);
    let n_arch = p
        .models
        .iter()
        .map(|m| m.arch as usize + 1)
        .max()
        .unwrap_or(1);
    let mut s = Search {
        p,
        n,
        order,
        to_x: vec![0.0; n],
        d_max,
        stack: Vec::with_capacity(p.max_models.min(n)),
        sum_q: 0.0,
        pairs: 0.0,
        sum_c: 0.0,
        max_c: 0.0,
        arch_count: vec![0; n_arch],
        archs: 0,
        best: None,
        nodes: 0,
        cut: false,
        feas: Vec::with_capacity(n),
        prefix_q: Vec::with_capacity(n + 1),
        suffix_dx: Vec::with_capacity(n + 1),
    };
    s.best = greedy(&mut s);
    s.dfs(0);
    let nodes = s.nodes;
    let cut = s.cut;
    s.best.map(|(mut chosen, v)| {
        chosen.sort_unstable();
        Selection {
            cost_ms: cost_ms(p, &chosen),
            chosen,
            estimate: v,
            nodes,
            exhaustive: !cut,
        }
    })
}

/// A good first incumbent: grow the subset by the model that raises the estimate most while the
/// constraints hold. A strong incumbent makes the bound prune from the first node.
fn greedy(s: &mut Search) -> Option<(Vec<usize>, f64)> {
    let mut best: Option<(Vec<usize>, f64)> = None;
    let mut in_set = vec![false; s.n];
    let mut saved = Vec::new();
    while s.stack.len() < s.p.max_models {
        let size = s.stack.len() + 1;
        let mut pick: Option<(usize, f64)> = None;
        for (x, &taken) in in_set.iter().enumerate() {
            if taken || s.cost_with(x) > s.p.budget_ms {
                continue;
            }
            let m = &s.p.models[x];
            let v = value(s.sum_q + m.quality, s.pairs + s.to_x[x], size, s.p.lambda);
            if pick.is_none_or(|(_, pv)| v > pv) {
                pick = Some((x, v));
            }
        }
        let Some((x, _)) = pick else { break };
        saved.push(s.max_c);
        s.max_c = s.max_c.max(s.p.models[x].cost_ms);
        s.push(x);
        in_set[x] = true;
        let (archs, size) = (s.archs as f64, s.stack.len() as f64);
        let v = value(s.sum_q, s.pairs, s.stack.len(), s.p.lambda);
        if archs / size + 1e-12 >= s.p.min_diversity && best.as_ref().is_none_or(|(_, b)| v > *b) {
            best = Some((s.stack.clone(), v));
        }
    }
    while let Some(m) = saved.pop() {
        s.pop(m);
    }
    best
}

#[cfg(test)]
mod tests;
