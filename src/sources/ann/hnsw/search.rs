//! Searching the frozen graph: greedy descent on the upper layers, an `ef`-bounded best-first
//! walk on layer 0 (filter-aware), one entry point per SIMD kernel; and exact search.

use super::*;

impl FrozenHnsw {
    /// Exact search by scanning every vector (ground truth for recall measurements).
    pub fn exact_search(&self, query: &[f32], k: usize) -> Vec<ScoredItem> {
        if query.len() != self.query_dim {
            return Vec::new();
        }
        let q = self.prepare(query);
        crate::sources::top_k(
            (0..self.n as u32).map(|i| ScoredItem {
                item: i,
                score: self.dot_k(&q, self.vector(i)),
            }),
            k,
        )
    }
}

impl AnnIndex for FrozenHnsw {
    fn len(&self) -> usize {
        self.n
    }

    #[allow(clippy::misnamed_getters)] // callers query with `query_dim`-wide vectors
    fn dim(&self) -> usize {
        self.query_dim
    }

    fn backend(&self) -> &'static str {
        "hnsw"
    }

    fn search(
        &self,
        query: &[f32],
        k: usize,
        allow: &(dyn Fn(ItemIdx) -> bool + Sync),
    ) -> Vec<ScoredItem> {
        if k == 0 || query.len() != self.query_dim || self.n == 0 {
            return Vec::new();
        }
        let q = self.prepare(query);
        let half = !self.walk16.is_empty();
        let mut out = match (self.kernel, half) {
            // SAFETY: `kernel` is only ever a kernel `Kernel::detect` found on this CPU.
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512, true) => unsafe { self.search_avx512_f16(&q, k, allow) },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512, false) => unsafe { self.search_avx512(&q, k, allow) },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2Fma, true) => unsafe { self.search_avx2_f16(&q, k, allow) },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2Fma, false) => unsafe { self.search_avx2(&q, k, allow) },
            _ => self.search_with(
                k,
                allow,
                |i| dot(&q, self.vector(i)),
                |i| kernels::prefetch(self.vector(i)),
            ),
        };
        if half && self.kernel != Kernel::Portable {
            // The walk ranked by f16 scores: re-score the beam's results in f32 (loads issued
            // together, so they overlap) and keep the best k.
            out.iter()
                .for_each(|s| kernels::prefetch(self.vector(s.item)));
            for s in out.iter_mut() {
                s.score = self.dot_k(&q, self.vector(s.item));
            }
        }
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item)));
        out.truncate(k);
        out
    }
}

/// One search entry point per SIMD kernel: the whole loop is compiled with the kernel's target
/// features, so the dot product inlines into it.
macro_rules! kernel_search {
    ($(#[$doc:meta])* $name:ident, $features:literal, $dot:path, $row:ident, $prefetch:path) => {
        $(#[$doc])*
        /// # Safety
        #[doc = concat!("The CPU must support ", $features, ".")]
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(
            &self,
            q: &[f32],
            k: usize,
            allow: &(dyn Fn(ItemIdx) -> bool + Sync),
        ) -> Vec<ScoredItem> {
            // SAFETY (closure): this function only runs where the features are present.
            self.search_with(
                k,
                allow,
                |i| unsafe { $dot(q, self.$row(i)) },
                |i| $prefetch(self.$row(i)),
            )
        }
    };
}

impl FrozenHnsw {
    kernel_search!(
        search_avx512,
        "avx512f",
        kernels::dot_avx512,
        vector,
        kernels::prefetch
    );
    kernel_search!(
        /// The f16 walk.
        search_avx512_f16,
        "avx512f",
        kernels::dot_f16_avx512,
        row16,
        kernels::prefetch_u16
    );
    kernel_search!(
        search_avx2,
        "avx2,fma",
        kernels::dot_avx2,
        vector,
        kernels::prefetch
    );
    kernel_search!(
        /// The f16 walk.
        search_avx2_f16,
        "avx2,fma,f16c",
        kernels::dot_f16_avx2,
        row16,
        kernels::prefetch_u16
    );

    /// Greedy descent through the upper layers, then an `ef`-bounded best-first search on layer 0
    /// that keeps only allowed items as results (hnswlib's filtered search). `q` is prepared
    /// (unit, padded). Neighbours are filtered by the visit marks first and their vectors
    /// prefetched, so the memory loads of one expansion overlap instead of queueing.
    #[inline(always)]
    fn search_with<S: Fn(u32) -> f32, P: Fn(u32)>(
        &self,
        k: usize,
        allow: &(dyn Fn(ItemIdx) -> bool + Sync),
        sim: S,
        prefetch: P,
    ) -> Vec<ScoredItem> {
        let mut cur = self.entry;
        let mut cur_sim = sim(cur);
        for layer in self.layers.iter().skip(1).rev() {
            loop {
                let mut moved = false;
                for &nb in layer.neighbors_of(cur) {
                    let s = sim(nb);
                    if s > cur_sim {
                        cur_sim = s;
                        cur = nb;
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        let ef = self.params.ef_search.max(k);
        let base = &self.layers[0];
        SCRATCH.with(|cell| {
            let mut guard = cell.borrow_mut();
            let Scratch {
                marks,
                generation,
                fresh,
            } = &mut *guard;
            if marks.len() != self.n {
                *marks = vec![0; self.n];
                *generation = 0;
            }
            *generation = generation.wrapping_add(1);
            if *generation == 0 {
                marks.iter_mut().for_each(|m| *m = 0);
                *generation = 1;
            }
            let g = *generation;
            let mut candidates: BinaryHeap<(OrdF32, u32)> = BinaryHeap::with_capacity(ef * 2);
            let mut results: BinaryHeap<Reverse<(OrdF32, u32)>> = BinaryHeap::with_capacity(ef + 1);
            candidates.push((OrdF32(cur_sim), cur));
            if let Some(m) = marks.get_mut(cur as usize) {
                *m = g;
            }
            if allow(cur) {
                results.push(Reverse((OrdF32(cur_sim), cur)));
            }
            let mut worst = f32::NEG_INFINITY;
            while let Some((OrdF32(s), node)) = candidates.pop() {
                if results.len() >= ef && s < worst {
                    break;
                }
                // The next expansion's adjacency list, fetched while this one is scored.
                if let Some(&(_, next)) = candidates.peek() {
                    kernels::prefetch_u32(base.neighbors_of(next));
                }
                fresh.clear();
                for &nb in base.neighbors_of(node) {
                    if let Some(m) = marks.get_mut(nb as usize) {
                        if *m != g {
                            *m = g;
                            prefetch(nb);
                            fresh.push(nb);
                        }
                    }
                }
                for &nb in fresh.iter() {
                    let s = sim(nb);
                    if results.len() < ef || s > worst {
                        candidates.push((OrdF32(s), nb));
                        if allow(nb) {
                            results.push(Reverse((OrdF32(s), nb)));
                            if results.len() > ef {
                                results.pop();
                            }
                            if results.len() >= ef {
                                if let Some(Reverse((OrdF32(w), _))) = results.peek() {
                                    worst = *w;
                                }
                            }
                        }
                    }
                }
            }
            // Unsorted, all `ef` of them: the caller re-scores, sorts and cuts to k.
            results
                .into_iter()
                .map(|Reverse((OrdF32(s), i))| ScoredItem { item: i, score: s })
                .collect()
        })
    }
}
