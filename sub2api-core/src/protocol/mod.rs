//! Vendor wire formats: request validation, sticky-session keys and upstream header policy per
//! dialect. Response usage is read by the scanners in [`crate::meter`].

pub mod anthropic;
