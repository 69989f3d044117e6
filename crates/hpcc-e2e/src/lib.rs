//! Nothing but the end-to-end tests in `tests/it`: this crate exists so that they may depend
//! on the scheduler, the worker and the daemon together, which no production crate does.
