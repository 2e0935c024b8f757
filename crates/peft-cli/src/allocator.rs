//! How the C allocator keeps freed memory. A training step frees and allocates the same large
//! tensors (activations, gradients, and in full fine-tuning the weights' AdamW moments, hundreds
//! of megabytes each) every step. By default glibc maps every block over 32 MiB afresh and hands
//! freed memory back to the kernel, so each step pays for page faults and the kernel zeroing the
//! pages again: 19% of a SmolLM2 full fine-tuning step on flex. Kept in the process's heap, the
//! memory is reused as it is.

/// From now on, allocate from the heap only (no separate mapping per large block) and keep
/// freed memory for reuse, up to 2 GiB beyond what is in use.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread
    // exists, and a refused setting (return value 0) leaves glibc's default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// Other C libraries keep their own defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() {}
