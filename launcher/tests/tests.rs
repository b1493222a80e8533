//! Integration tests for the clipfleet binary.
