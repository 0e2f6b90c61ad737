//! Seeded randomness for scenario tests, so that a failure can be replayed:
//! each scenario prints its seed, and `JOBGATE_SEED=<seed>` runs it again
//! with the same choices. `JOBGATE_SCENARIO_ROUNDS=<n>` repeats each
//! scenario n times with fresh seeds (the long run; CI runs one round).

use rand::SeedableRng;
use rand::rngs::StdRng;

/// A generator for one scenario run: from `JOBGATE_SEED` if set, else a
/// fresh seed. The seed is printed with the scenario's name.
pub fn rng(scenario: &str) -> StdRng {
    let seed = std::env::var("JOBGATE_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{scenario}: seed {seed} (replay with JOBGATE_SEED={seed})");
    StdRng::seed_from_u64(seed)
}

/// How many rounds each scenario runs: `JOBGATE_SCENARIO_ROUNDS`, else 1.
/// With `JOBGATE_SEED` set, one (the replay).
pub fn rounds() -> usize {
    if std::env::var_os("JOBGATE_SEED").is_some() {
        return 1;
    }
    std::env::var("JOBGATE_SCENARIO_ROUNDS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}
