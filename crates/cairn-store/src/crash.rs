//! Crash points: places where a test can make the process die, to show that recovery
//! from a crash there loses nothing acknowledged.
//!
//! `crash_point!("name")` compiles to nothing unless the `failpoints` feature is on
//! (only the tests' build turns it on). With it, the `fail` crate arms points from the
//! `FAILPOINTS` environment variable at process start, e.g.
//! `FAILPOINTS="log.append.after=3*off->return"`: the fourth time the point is reached,
//! the process aborts, as a power cut or `kill -9` there would stop it (unflushed sled
//! buffers are lost with the process). Other `fail` actions work too (`sleep(100)`,
//! `pause`). Every point is listed in `docs/TESTING.md`.

/// Whether this build has crash points at all: a `FAILPOINTS` given to a build
/// without them would silently arm nothing, so the binary refuses it instead.
pub const CRASH_POINTS_BUILT: bool = cfg!(feature = "failpoints");

/// Arm the crash points named in `FAILPOINTS` for as long as the guard lives (a
/// no-op unless the `failpoints` feature is on). Called once, at process start.
pub fn arm_crash_points() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}

/// Stop the process at once, the way a crash would: no destructors, no flush.
pub fn crash(point: &str) -> ! {
    eprintln!("cairn: crash point `{point}` fired; aborting");
    std::process::abort()
}

/// A place where tests may slow the process down: `FAILPOINTS="name=return(MS)"`
/// (with a probability, `50%return(300)`) makes it evaluate to `Some` of that many
/// milliseconds, which the caller waits without blocking. `None` otherwise, and always
/// in builds without crash points (the check compiles away).
#[macro_export]
macro_rules! delay_point {
    ($name:literal) => {
        if $crate::CRASH_POINTS_BUILT {
            $crate::__fail::eval($name, |arg| {
                arg.and_then(|ms| ms.trim().parse::<u64>().ok())
                    .map(::std::time::Duration::from_millis)
            })
            .flatten()
        } else {
            None
        }
    };
}

/// A place where tests may crash the process (see the module doc).
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        $crate::__fail::fail_point!($name, |_| $crate::crash($name))
    };
}
