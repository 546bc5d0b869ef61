//! Large buffers.

/// Buffers of at least this many bytes are asked for as transparent huge pages.
const HUGE_PAGE_MIN_BYTES: usize = 4 << 20;

/// An empty vector with room for `len` values, for buffers of many megabytes (distance and
/// kernel matrices); the caller writes the values. On Linux, a buffer of 4 MiB or more is
/// advised to the kernel as transparent huge pages (`madvise(MADV_HUGEPAGE)`, what numpy does for
/// its large arrays): 2 MiB pages instead of 4 KiB ones cut its page faults 512-fold.
pub(crate) fn advised_vec<T>(len: usize) -> Vec<T> {
    let v: Vec<T> = Vec::with_capacity(len);
    let bytes = len * std::mem::size_of::<T>();
    #[cfg(target_os = "linux")]
    if bytes >= HUGE_PAGE_MIN_BYTES {
        let start = v.as_ptr() as usize;
        let aligned = start.next_multiple_of(4096);
        let end = start + bytes;
        // SAFETY: [aligned, end) lies inside the allocation just made; MADV_HUGEPAGE only
        // advises the kernel on how to back it, and a refusal (e.g. THP disabled) is harmless.
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                end - aligned,
                libc::MADV_HUGEPAGE,
            );
        }
    }
    v
}
