//! The one place a compile spawns a process: every run of the compiler (the compile itself,
//! `-E`, the dependency pass, `--version` and the include search list of its identity) goes
//! through a [`Runner`].
//!
//! The wrapper and the daemon use [`Processes`]. Tests give a [`Job`](super::Job) a runner
//! that plays the compiler (`cache/tests.rs`), so direct and preprocessor modes are checked
//! call by call without one installed, beside the end-to-end tests that run real gcc and clang.

use std::io;
use std::process::{Command, Output};

/// Runs a fully built command to completion.
pub trait Runner: Sync {
    /// Runs `command` and waits for it, capturing stdout and stderr unless the command routes
    /// them elsewhere (as [`Command::output`] does). An `Err` means it did not run.
    fn output(&self, command: &mut Command) -> io::Result<Output>;
}

/// Real processes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Processes;

impl Runner for Processes {
    fn output(&self, command: &mut Command) -> io::Result<Output> {
        command.output()
    }
}

/// `command.run_with(runner)` at the end of a builder chain, in place of `.output()`.
pub trait RunWith {
    /// Runs this command through `runner`.
    fn run_with(&mut self, runner: &dyn Runner) -> io::Result<Output>;
}

impl RunWith for Command {
    fn run_with(&mut self, runner: &dyn Runner) -> io::Result<Output> {
        runner.output(self)
    }
}
