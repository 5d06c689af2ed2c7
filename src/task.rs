//! Spawning the server's tasks, counted: `fawkes_tasks` is how many are alive, so a task that
//! never ends (a leak no other gauge shows) is seen in a soak. actix's tasks live on each
//! worker's `LocalSet`, which tokio's runtime metrics do not count.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

/// Spawns `fut` on the current thread's actix runtime, counted while it lives (until it ends
/// or is aborted).
pub fn spawn<F>(fut: F) -> actix_rt::task::JoinHandle<F::Output>
where
    F: Future + 'static,
{
    actix_rt::spawn(counted(fut))
}

/// `fut`, counted in `fawkes_tasks` from now until it is dropped.
fn counted<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    Counted {
        fut,
        _alive: Alive::new(),
    }
}

pin_project_lite::pin_project! {
    /// A future counted while it lives. A struct, not an `async` block around the future: the
    /// block would hold it twice over (as the value it captured and as the one it awaits), and
    /// a connection's task would take that much more memory.
    struct Counted<F> {
        #[pin]
        fut: F,
        _alive: Alive,
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().fut.poll(cx)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The count adds nothing to the task but the guard (zero-sized): no copy of the future.
    #[test]
    fn a_counted_future_is_the_size_of_the_future() {
        let fut = async {
            let buf = [0u8; 1024];
            std::future::ready(()).await;
            buf.len()
        };
        let size = std::mem::size_of_val(&fut);
        assert_eq!(std::mem::size_of_val(&counted(fut)), size);
    }
}
