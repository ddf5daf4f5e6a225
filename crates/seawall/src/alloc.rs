//! The global allocator, and the hook that hands a worker's freed memory back to the system.
//!
//! mimalloc keeps pages freed by a thread until that thread allocates again; a worker whose
//! connections all went idle (and released their buffers, see `server::io`) would otherwise sit
//! on that memory. Each worker calls [`release_freed_memory`] from its once-a-second housekeeping.
#![allow(unsafe_code)]

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns the calling thread's free pages to the system, including those whose return mimalloc
/// would otherwise delay (`force`): once a second, that costs little and settles idle memory.
pub fn release_freed_memory() {
    // SAFETY: mi_collect has no preconditions; it only works on the calling thread's heap.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
