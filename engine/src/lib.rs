//! siplb: a SIP load balancer. The engine is filled in by the balancer issue.

pub use siplb_parser as parser;
