//! How the C allocator keeps freed memory. A training step frees and allocates the same large
//! tensors (activations, gradients, and in full fine-tuning the weights' AdamW moments, hundreds
//! of megabytes each) every step. By default glibc maps every block over 32 MiB afresh and hands
//! freed memory back to the kernel, so each step pays for page faults and the kernel zeroing the
//! pages again: 19% of a SmolLM2 full fine-tuning step on flex. Kept in the process's heap, the
//! memory is reused as it is.

/// From now on, allocate from the heap only (no separate mapping per large block) and keep
/// all freed memory for reuse. A finite threshold is not enough: once the free memory at the
/// top of the heap passes it, glibc hands back everything above `M_TOP_PAD`. At the 2 GiB
/// ceiling an `int` allows, full fine-tuning of Qwen2.5-0.5B (519 MiB per embedding-sized
/// tensor) still gave back 2 GiB at every step and faulted it in again.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread
    // exists, and a refused setting (return value 0) leaves glibc's default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        // -1 disables trimming (mallopt(3)).
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// Other C libraries keep their own defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() {}
