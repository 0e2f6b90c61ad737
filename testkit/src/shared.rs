//! Servers that the tests of one test binary share, started on first use:
//! one SeaweedFS (each test makes a bucket of its own) and control planes
//! (each test makes a namespace of its own). A control plane takes about
//! 5 s to start on two cores, a full one longer, and tests that run side by
//! side would each pay for their own. A test that stops, freezes or cuts off
//! a server keeps one of its own.
//!
//! Every server is started with `die_with_parent`, whose death signal
//! follows the *thread* that started the process, and libtest ends a test's
//! thread with the test. So shared servers are started from a keeper thread
//! that lives as long as the process; when the process exits they die with
//! it, and an `atexit` handler stops them first and removes their
//! directories (statics are never dropped).

use std::sync::{Mutex, Once, OnceLock, mpsc};

use crate::SeaweedFs;
use crate::k8s::{ControlPlane, Pods};

type Cleanup = Box<dyn FnOnce() + Send>;

static CLEANUPS: Mutex<Vec<Cleanup>> = Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();

extern "C" fn clean_up_at_exit() {
    let cleanups = std::mem::take(&mut *CLEANUPS.lock().unwrap_or_else(|e| e.into_inner()));
    // Newest first, like drops.
    for cleanup in cleanups.into_iter().rev() {
        cleanup();
    }
}

/// Runs `start` on a thread that never ends and leaks what it returns, so
/// that it lives (and its processes run) until the process exits.
/// `stop` runs at the exit.
pub(crate) fn keep<T: Send + Sync + 'static>(
    what: &'static str,
    start: impl FnOnce() -> T + Send + 'static,
    stop: fn(&'static T),
) -> &'static T {
    AT_EXIT.call_once(|| {
        // SAFETY: registers a plain function with no arguments; it touches
        // only a static behind a lock.
        let rc = unsafe { nix::libc::atexit(clean_up_at_exit) };
        assert_eq!(rc, 0, "atexit failed");
    });
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("shared {what}"))
        .spawn(move || {
            let kept: &'static T = Box::leak(Box::new(start()));
            let _ = tx.send(kept);
            loop {
                std::thread::park();
            }
        })
        .unwrap_or_else(|e| panic!("spawning the thread for the shared {what}: {e}"));
    // A start that panicked dropped the sender; its message is above.
    let kept = rx
        .recv()
        .unwrap_or_else(|_| panic!("the shared {what} did not start (see its panic above)"));
    CLEANUPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Box::new(move || stop(kept)));
    kept
}

/// The binary's SeaweedFS. Give each test a bucket of its own
/// ([`crate::bucket`]).
pub fn seaweed() -> &'static SeaweedFs {
    static SERVER: OnceLock<&'static SeaweedFs> = OnceLock::new();
    SERVER.get_or_init(|| {
        keep(
            "SeaweedFS",
            || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("a runtime to start SeaweedFS: {e}"))
                    .block_on(crate::seaweed())
            },
            SeaweedFs::stop,
        )
    })
}

/// `cp` with the CRD installed, once, before any test can race to.
fn with_crd(cp: ControlPlane) -> ControlPlane {
    crate::operator::install_crd(&cp);
    cp
}

fn stop_control_plane(cp: &'static ControlPlane) {
    cp.stop();
    let _ = std::fs::remove_dir_all(cp.dir.path());
}

/// The binary's control plane with nothing that reconciles (etcd and
/// kube-apiserver), with the CRD. Give each test a namespace of its own
/// ([`crate::operator::namespace`]).
pub fn control_plane() -> &'static ControlPlane {
    static CP: OnceLock<&'static ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        keep(
            "control plane",
            || with_crd(ControlPlane::start()),
            stop_control_plane,
        )
    })
}

/// The binary's full cluster with one node of kwok's held pods (see
/// [`Pods::Held`]), with the CRD. Give each test a namespace of its own
/// ([`crate::operator::namespace`]).
pub fn held_cluster() -> &'static ControlPlane {
    static CP: OnceLock<&'static ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        keep(
            "held cluster",
            || with_crd(ControlPlane::start_full_with(1, Pods::Held)),
            stop_control_plane,
        )
    })
}

/// The binary's full cluster with kwok's fast pods (run and succeed at
/// once; see [`Pods::Fast`]), with the CRD.
pub fn full_cluster() -> &'static ControlPlane {
    static CP: OnceLock<&'static ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        keep(
            "full cluster",
            || with_crd(ControlPlane::start_full()),
            stop_control_plane,
        )
    })
}
