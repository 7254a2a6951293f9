//! Software prefetch: the crate's only `unsafe` code.
//!
//! Batches overlap the memory misses of independent subjects by asking the
//! CPU for the lines they will read before reading any of them. A plain load
//! would do it too, but a load that misses holds its place in the reorder
//! buffer until the line arrives, so a loop of loads stalls after a handful
//! of misses; a prefetch retires at once, so a whole chunk's misses are in
//! flight together (the batch rows of BENCHMARKS.md measure what it buys).
//!
//! A prefetch is a hint: it never faults, whatever the address (null,
//! dangling, unmapped), and changes no value the program can observe. The
//! functions below take raw pointers for that reason and never dereference
//! them. On targets other than x86_64 they do nothing.

/// Bytes per cache line assumed when prefetching a range.
const LINE: usize = 64;

/// Asks for the cache lines covering `bytes` bytes from `p` (at least one).
#[inline(always)]
pub(crate) fn range<T>(p: *const T, bytes: usize) {
    let p = p.cast::<u8>();
    let skew = (p as usize) % LINE;
    let mut at = p.wrapping_sub(skew);
    for _ in 0..(skew + bytes.max(1)).div_ceil(LINE) {
        line(at);
        at = at.wrapping_add(LINE);
    }
}

/// Asks for the cache line holding `p`.
#[inline(always)]
#[allow(unsafe_code)]
fn line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has (it is
    // part of the target's baseline, enabled in every x86_64 build). The
    // instruction is a hint: it never faults, even for an invalid address,
    // and reads nothing the program sees, so no pointer validity is needed.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetching_any_address_is_harmless() {
        // Valid memory, the end of an allocation, and addresses that are not
        // memory at all: none may fault, and nothing read changes.
        let v = vec![7u8; 1000];
        range(v.as_ptr(), v.len());
        range(v.as_ptr().wrapping_add(v.len()), 256);
        range(std::ptr::null::<u8>(), 128);
        range(usize::MAX as *const u8, 64);
        range(0x10 as *const u64, 1);
        assert!(v.iter().all(|&b| b == 7));
    }
}
