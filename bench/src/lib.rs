//! Shared sample messages for the benchmarks.
