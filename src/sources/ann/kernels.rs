//! Distance kernels for the ANN search loop: the dot product in AVX-512, AVX2+FMA or portable code,
//! chosen once per index by runtime CPU detection, and a cache prefetch hint.
//!
//! Why here and not in `dot`: the portable `dot` compiles for the x86-64 baseline (SSE2, no FMA),
//! which leaves most of a modern core idle; the search loop is the one place where that matters
//! (thousands of 64-wide products per query), and release binaries must still run on any x86-64.

/// Which dot-product kernel this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Avx512,
    Avx2Fma,
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU supports; `FUNNEL_ANN_KERNEL=portable|avx2` caps it (for
    /// measuring the kernels against each other).
    pub fn detect() -> Kernel {
        let cap = std::env::var("FUNNEL_ANN_KERNEL").unwrap_or_default();
        if !matches!(cap.as_str(), "" | "portable" | "avx2") {
            tracing::warn!(value = %cap, "FUNNEL_ANN_KERNEL must be portable or avx2; ignored");
        }
        for k in [Kernel::Avx512, Kernel::Avx2Fma] {
            let capped = cap == "portable" || (cap == "avx2" && k == Kernel::Avx512);
            if !capped && k.supported() {
                return k;
            }
        }
        Kernel::Portable
    }

    /// Whether this CPU runs the kernel. The AVX-512 search also asks for AVX2, FMA and F16C:
    /// the compiler may use them wherever AVX-512F is enabled.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            match self {
                Kernel::Avx512 => avx2 && std::arch::is_x86_feature_detected!("avx512f"),
                Kernel::Avx2Fma => avx2,
                Kernel::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Kernel::Portable
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2Fma => "avx2+fma",
            Kernel::Portable => "portable",
        }
    }
}

/// Hints the CPU to pull `v` (one stored vector) into L1 before it is read.
#[inline(always)]
pub fn prefetch(v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // 16 floats per 64-byte line.
        let mut i = 0;
        while i < v.len() {
            // SAFETY: prefetch is a hint; the address is inside `v`, and it never faults anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().add(i) as *const i8) };
            i += 16;
        }
        // A row need not start on a line: its tail may sit on one more.
        if let Some(last) = v.last() {
            // SAFETY: as above.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(last as *const f32 as *const i8) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// [`prefetch`] for an adjacency list.
#[inline(always)]
pub fn prefetch_u32(v: &[u32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut i = 0;
        while i < v.len() {
            // SAFETY: a hint inside `v`; prefetches never fault.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().add(i) as *const i8) };
            i += 16;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// [`prefetch`] for a row of f16 bits (32 per line).
#[inline(always)]
pub fn prefetch_u16(v: &[u16]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut i = 0;
        while i < v.len() {
            // SAFETY: a hint inside `v`; prefetches never fault.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().add(i) as *const i8) };
            i += 32;
        }
        if let Some(last) = v.last() {
            // SAFETY: as above.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(last as *const u16 as *const i8) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// Dot product of an f32 query with an f16 row (bits), converting 16 lanes at a time.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub unsafe fn dot_f16_avx512(q: &[f32], x: &[u16]) -> f32 {
    use std::arch::x86_64::*;
    let n = q.len().min(x.len());
    let (pq, px) = (q.as_ptr(), x.as_ptr());
    let mut acc0 = _mm512_setzero_ps();
    let mut acc1 = _mm512_setzero_ps();
    let mut i = 0;
    while i + 32 <= n {
        let a = _mm512_cvtph_ps(_mm256_loadu_si256(px.add(i) as *const __m256i));
        let b = _mm512_cvtph_ps(_mm256_loadu_si256(px.add(i + 16) as *const __m256i));
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pq.add(i)), a, acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(pq.add(i + 16)), b, acc1);
        i += 32;
    }
    if i + 16 <= n {
        let a = _mm512_cvtph_ps(_mm256_loadu_si256(px.add(i) as *const __m256i));
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pq.add(i)), a, acc0);
        i += 16;
    }
    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    while i < n {
        s += *pq.add(i) * half::f16::from_bits(*px.add(i)).to_f32();
        i += 1;
    }
    s
}

/// Dot product of an f32 query with an f16 row (bits), 8 lanes at a time.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub unsafe fn dot_f16_avx2(q: &[f32], x: &[u16]) -> f32 {
    use std::arch::x86_64::*;
    let n = q.len().min(x.len());
    let (pq, px) = (q.as_ptr(), x.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        let a = _mm256_cvtph_ps(_mm_loadu_si128(px.add(i) as *const __m128i));
        let b = _mm256_cvtph_ps(_mm_loadu_si128(px.add(i + 8) as *const __m128i));
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i)), a, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i + 8)), b, acc1);
        i += 16;
    }
    let mut s = hsum256(_mm256_add_ps(acc0, acc1));
    while i < n {
        s += *pq.add(i) * half::f16::from_bits(*px.add(i)).to_f32();
        i += 1;
    }
    s
}

/// Dot product with AVX-512F (16 lanes, two FMA chains).
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm512_setzero_ps();
    let mut acc1 = _mm512_setzero_ps();
    let mut i = 0;
    while i + 32 <= n {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm512_fmadd_ps(
            _mm512_loadu_ps(pa.add(i + 16)),
            _mm512_loadu_ps(pb.add(i + 16)),
            acc1,
        );
        i += 32;
    }
    if i + 16 <= n {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
        i += 16;
    }
    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    while i < n {
        s += *pa.add(i) * *pb.add(i);
        i += 1;
    }
    s
}

/// The sum of a 256-bit register's eight lanes.
///
/// # Safety
/// The CPU must support AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
unsafe fn hsum256(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    _mm_cvtss_f32(_mm_add_ss(x, _mm_shuffle_ps::<0b01>(x, x)))
}

/// Dot product with AVX2 and FMA (8 lanes, two FMA chains).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 8)),
            _mm256_loadu_ps(pb.add(i + 8)),
            acc1,
        );
        i += 16;
    }
    if i + 8 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        i += 8;
    }
    let mut s = hsum256(_mm256_add_ps(acc0, acc1));
    while i < n {
        s += *pa.add(i) * *pb.add(i);
        i += 1;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_agree_with_the_portable_dot() {
        for n in [0, 1, 7, 15, 16, 17, 31, 64, 65, 80, 129] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want = super::super::dot(&a, &b);
            #[cfg(target_arch = "x86_64")]
            {
                if Kernel::Avx512.supported() {
                    let got = unsafe { dot_avx512(&a, &b) };
                    assert!((got - want).abs() < 1e-4, "avx512 n={n}: {got} vs {want}");
                }
                if Kernel::Avx2Fma.supported() {
                    let got = unsafe { dot_avx2(&a, &b) };
                    assert!((got - want).abs() < 1e-4, "avx2 n={n}: {got} vs {want}");
                }
                let bh: Vec<u16> = b
                    .iter()
                    .map(|&x| half::f16::from_f32(x).to_bits())
                    .collect();
                let tol = 2e-3 * (n as f32).max(1.0).sqrt();
                if Kernel::Avx512.supported() {
                    let got = unsafe { dot_f16_avx512(&a, &bh) };
                    assert!(
                        (got - want).abs() < tol,
                        "f16 avx512 n={n}: {got} vs {want}"
                    );
                }
                if Kernel::Avx2Fma.supported() {
                    let got = unsafe { dot_f16_avx2(&a, &bh) };
                    assert!((got - want).abs() < tol, "f16 avx2 n={n}: {got} vs {want}");
                }
            }
        }
        let _ = Kernel::detect().name();
    }
}
