//! jobgate: at most N jobs at once, anywhere. A distributed counting
//! semaphore whose only coordinator is one JSON object in an S3 bucket,
//! changed only by compare-and-swap.

pub mod agent;
pub mod cli;
pub mod clock;
pub mod decide;
pub mod doctor;
pub mod error;
pub mod exit;
pub mod lease;
pub mod ledger;
pub mod operator;
#[doc(hidden)] // for `jobgate run` and the test kit
pub mod process;
pub mod semaphore;
pub mod store;
pub mod version;

pub use error::{Error, Result};
pub use ledger::Ledger;
pub use semaphore::{Config, Permit, Semaphore};
