//! Spawning the server's tasks, counted: `fawkes_tasks` is how many are alive, so a task that
//! never ends (a leak no other gauge shows) is seen in a soak. actix's tasks live on each
//! worker's `LocalSet`, which tokio's runtime metrics do not count.

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;

/// Spawns `fut` on the current thread's actix runtime, counted while it lives (until it ends
/// or is aborted).
pub fn spawn<F>(fut: F) -> actix_rt::task::JoinHandle<F::Output>
where
    F: Future + 'static,
{
    let alive = Alive::new();
    actix_rt::spawn(async move {
        let _alive = alive;
        fut.await
    })
}

/// One live task in `fawkes_tasks`, until dropped.
struct Alive;

impl Alive {
    fn new() -> Alive {
        crate::metrics::ENGINE.tasks.fetch_add(1, Relaxed);
        Alive
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        crate::metrics::ENGINE.tasks.fetch_sub(1, Relaxed);
    }
}
