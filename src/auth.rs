//! Request signatures.
