//! Training: the optimiser and the loop that anneals and steps a model.

pub mod disk_refine;
mod optimizer;
mod refine;
mod train;

pub use optimizer::Optimizer;
pub use refine::SortedEvents;
pub use train::{EpochRecord, FactorUpdate, TrainOutcome, Trainer};
