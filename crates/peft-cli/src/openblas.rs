//! OpenBLAS, when this binary links it (Burn's `openblas-system` feature, which moves ndarray's
//! matrix products into the system OpenBLAS): whether it is there, and its idle worker threads
//! tamed for a process that also runs its own thread pool.
//!
//! OpenBLAS's worker threads spin (calling `sched_yield`) for about 2^28 cycles after each
//! product before they sleep. Between products Burn's rayon threads run the element-wise work
//! on the same cores, and the spinning workers take a third of their time (a SmolLM2 LoRA step
//! on two cores: 5.9 s, against 5.1 s when the workers sleep after 2^4 cycles). OpenBLAS reads
//! that timeout only from `OPENBLAS_THREAD_TIMEOUT` while the library loads, before `main`, so
//! the process sets it and executes itself again, once; a value the user set is kept.

use std::ffi::CStr;

/// The timeout exponent (2^4 cycles, OpenBLAS's smallest): workers sleep almost at once.
const THREAD_TIMEOUT: &str = "4";
const VARIABLE: &str = "OPENBLAS_THREAD_TIMEOUT";

/// Whether OpenBLAS is linked into this process (looked up by one of its own symbols, so that
/// the answer holds however the feature reached Burn).
pub fn linked() -> bool {
    const SYMBOL: &CStr = c"openblas_get_config";
    // SAFETY: dlsym with RTLD_DEFAULT only looks a name up; the pointer is never called.
    !unsafe { libc::dlsym(libc::RTLD_DEFAULT, SYMBOL.as_ptr()) }.is_null()
}

/// Where OpenBLAS is linked and `OPENBLAS_THREAD_TIMEOUT` unset, re-executes this program with
/// it set. Returns (and the program goes on as it is) where there is nothing to do or
/// re-executing fails.
pub fn tame_worker_threads() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(VARIABLE).is_some() || !linked() {
        return;
    }
    let Ok(program) = std::env::current_exe() else {
        return;
    };
    // `exec` only returns on failure; the program then runs with OpenBLAS's default.
    let _ = std::process::Command::new(program)
        .args(std::env::args_os().skip(1))
        .env(VARIABLE, THREAD_TIMEOUT)
        .exec();
}
