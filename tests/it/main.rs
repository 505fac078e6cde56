//! Integration tests: one binary, one module per area.

mod bumphunt;
mod cli;
mod common;
mod config_errors;
mod disk;
mod evaluate;
mod fuzz_regressions;
mod grid;
mod kill;
mod parity;
mod polars;
mod properties;
mod reference;
mod remote;
mod report;
mod statistics;
mod toy;
