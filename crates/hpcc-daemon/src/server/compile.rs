//! One compile request: look it up through `hpcc-cache`, serve a hit, compile on the farm, or
//! lease a slot for the wrapper to compile itself.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use hpcc_core::args::{self, Classification};
use hpcc_core::digest::Digest;
use hpcc_proto::daemon::{compile_reply, CompileReply, CompileRequest};

use hpcc_cache::cache::{self, Outcome};
use hpcc_cache::caller::Caller;
use hpcc_cache::ipc::Connection;
use hpcc_cache::remote_compile::RemoteCompiler;
use hpcc_cache::stats;

use super::{lock, Daemon, Flight, Landing};
use crate::farm_service::FarmService;

impl Daemon {
    /// Serves one compile request: a hit, a shared failure, or a slot to compile in.
    pub(super) fn compile(&self, connection: &mut Connection, request: CompileRequest) -> Served {
        let caller = Caller {
            cwd: PathBuf::from(OsString::from_vec(request.cwd)),
            vars: request
                .env
                .into_iter()
                .map(|var| (OsString::from_vec(var.name), OsString::from_vec(var.value)))
                .collect(),
            umask: request.umask & 0o777,
            stderr_is_terminal: request.stderr_is_terminal,
        };
        let compiler = PathBuf::from(OsString::from_vec(request.compiler));
        let args: Vec<OsString> = request.args.into_iter().map(OsString::from_vec).collect();
        let not_served = |detail: String| {
            Served::Reply(CompileReply {
                outcome: compile_reply::Outcome::NotServed.into(),
                detail,
                ..CompileReply::default()
            })
        };
        if !caller.cwd.is_absolute() || !compiler.is_absolute() {
            return not_served("the working directory and compiler must be absolute".into());
        }
        let Some(kind) = hpcc_core::compiler::detect(&compiler) else {
            return not_served(format!("{compiler:?} is no known compiler"));
        };
        let invocation = match args::classify(kind.family, &args) {
            Classification::Compile(invocation) => invocation,
            Classification::NotCacheable(reason) => return not_served(reason.to_string()),
        };
        let on_farm = FarmJob {
            compiler: &compiler,
            invocation: &invocation,
            caller: &caller,
        };
        let farm_up = self.farm.as_ref().filter(|farm| farm.available());
        let keying = farm_up.map(FarmService::keying);
        let remote = {
            let job = self
                .new_job(&on_farm)
                .remote_compile(keying.as_ref().map(|keying| keying as &dyn RemoteCompiler));
            if self.farm.is_some() {
                match job.remote_reason() {
                    Some(reason) => {
                        tracing::debug!("compiled here: {reason}");
                        self.count(stats::names::REMOTE_INELIGIBLE, 1);
                    }
                    // Eligible, but the farm is in its cooldown after a failure.
                    None if farm_up.is_none() => self.count(stats::names::REMOTE_FALLBACK, 1),
                    None => {}
                }
            }
            job.is_remote()
        };
        if self.farm.as_ref().is_some_and(FarmService::paranoid) {
            // Nothing is looked up or stored here; the worker's cache serves repeats, and
            // what the farm does not compile the wrapper compiles without a cache.
            return if remote {
                self.compile_on_farm(connection, &on_farm, None)
            } else {
                self.lease(connection, None)
            };
        }
        // At most a few rounds: a compile that finished without storing anything (its result
        // was uncacheable) leaves the next request to compile for itself.
        for _round in 0..3 {
            let job = self
                .new_job(&on_farm)
                .remote_compile(keying.as_ref().map(|keying| keying as &dyn RemoteCompiler))
                .lookup_only(Some(cache::Warm {
                    hot: &self.hot,
                    memory: &self.memory,
                    manifests: &self.manifests,
                    remote: self
                        .remote
                        .as_ref()
                        .map(|remote| remote as &dyn cache::RemoteFallback),
                }));
            let served = match job.run() {
                Ok(served) => served,
                Err(error) => return not_served(format!("{error:#}")),
            };
            let (key, corrupt) = match served.outcome {
                Outcome::DirectHit | Outcome::PreprocessorHit => {
                    let direct = matches!(served.outcome, Outcome::DirectHit);
                    return self.hit(direct, served.printed);
                }
                Outcome::NotFound { key, corrupt } => (key, corrupt),
                Outcome::Miss { .. } => return not_served("lookup ran a compile".into()),
            };
            if corrupt {
                self.count(stats::names::CORRUPT, 1);
            }
            let Some(key) = key else {
                return if remote {
                    self.compile_on_farm(connection, &on_farm, None)
                } else {
                    self.lease(connection, None)
                };
            };
            let (flight, leader) = {
                let mut flights = lock(&self.flights);
                match flights.get(&key) {
                    Some(flight) => (Arc::clone(flight), false),
                    None => {
                        let flight = Arc::new(Flight {
                            done: Mutex::new(None),
                            landed: Condvar::new(),
                        });
                        flights.insert(key, Arc::clone(&flight));
                        (flight, true)
                    }
                }
            };
            if leader {
                return if remote {
                    self.compile_on_farm(connection, &on_farm, Some((key, flight)))
                } else {
                    self.lease(connection, Some((key, flight)))
                };
            }
            match self.wait_for(connection, &flight) {
                None => return Served::Gone,
                Some(Landing::Failed {
                    exit,
                    stdout,
                    stderr,
                }) => {
                    return Served::Reply(CompileReply {
                        outcome: compile_reply::Outcome::SharedFailure.into(),
                        exit_code: exit,
                        stdout,
                        stderr,
                        detail: String::new(),
                    })
                }
                // Look it up again: normally a hit now.
                Some(Landing::Finished) => {}
            }
        }
        self.lease(connection, None)
    }

    /// Counts a hit and answers it: the outputs are written, `printed` is for the wrapper.
    pub(super) fn hit(&self, direct: bool, printed: cache::Printed) -> Served {
        let (name, outcome) = if direct {
            (stats::names::DIRECT_HIT, compile_reply::Outcome::DirectHit)
        } else {
            (
                stats::names::PREPROCESSOR_HIT,
                compile_reply::Outcome::PreprocessorHit,
            )
        };
        self.count(name, 1);
        Served::Reply(CompileReply {
            outcome: outcome.into(),
            exit_code: 0,
            stdout: printed.stdout,
            stderr: printed.stderr,
            detail: String::new(),
        })
    }

    /// A job for `on_farm`'s invocation against this daemon's cache.
    pub(super) fn new_job<'a>(&'a self, on_farm: &FarmJob<'a>) -> cache::Job<'a> {
        cache::Job::new(
            on_farm.compiler,
            on_farm.invocation,
            &self.settings.config,
            &self.settings.cache_dir,
            &self.store,
            on_farm.caller,
        )
    }

    /// Compiles a miss on the farm and stores it here (unless paranoid); if the farm fails,
    /// the wrapper is told to compile (`COMPILE_HERE`), so the build never fails because of
    /// the farm.
    pub(super) fn compile_on_farm(
        &self,
        connection: &mut Connection,
        on_farm: &FarmJob<'_>,
        flight: Option<(Digest, Arc<Flight>)>,
    ) -> Served {
        let Some(farm) = &self.farm else {
            return self.lease(connection, flight);
        };
        let served = {
            let remote = farm.for_connection(connection);
            let job = self.new_job(on_farm).remote_compile(Some(&remote));
            job.run()
        };
        let key = flight.as_ref().map(|(key, _)| *key);
        match served {
            Ok(cache::Served {
                outcome:
                    Outcome::Miss {
                        exit,
                        not_stored,
                        corrupt,
                    },
                printed,
            }) => {
                self.count(stats::names::MISS, 1);
                self.count(stats::names::REMOTE_COMPILED, 1);
                if corrupt {
                    self.count(stats::names::CORRUPT, 1);
                }
                if let Some(reason) = &not_stored {
                    self.count(
                        &format!("{}.{}", stats::names::UNCACHEABLE, reason.as_str()),
                        1,
                    );
                }
                if exit != 0 {
                    self.land(
                        flight,
                        Landing::Failed {
                            exit,
                            stdout: printed.stdout.clone(),
                            stderr: printed.stderr.clone(),
                        },
                    );
                } else {
                    self.land(flight, Landing::Finished);
                    if let (None, Some(key)) = (&not_stored, key) {
                        self.preload(&key);
                    }
                }
                Served::Reply(CompileReply {
                    outcome: compile_reply::Outcome::RemoteCompiled.into(),
                    exit_code: exit,
                    stdout: printed.stdout,
                    stderr: printed.stderr,
                    detail: String::new(),
                })
            }
            // Stored by someone else meanwhile.
            Ok(cache::Served {
                outcome: outcome @ (Outcome::DirectHit | Outcome::PreprocessorHit),
                printed,
            }) => {
                self.land(flight, Landing::Finished);
                self.hit(matches!(outcome, Outcome::DirectHit), printed)
            }
            Ok(cache::Served {
                outcome: Outcome::NotFound { .. },
                ..
            }) => self.lease(connection, flight),
            Err(error) => {
                tracing::warn!("remote compile failed, compiling locally: {error:#}");
                self.count(stats::names::REMOTE_FALLBACK, 1);
                self.lease(connection, flight)
            }
        }
    }
}

/// The invocation a farm compile is for.
pub(super) struct FarmJob<'a> {
    pub(super) compiler: &'a std::path::Path,
    pub(super) invocation: &'a hpcc_core::args::CompileInvocation,
    pub(super) caller: &'a Caller,
}

/// What one compile request came to.
pub(super) enum Served {
    /// A reply that ends the request.
    Reply(CompileReply),
    /// `COMPILE_HERE` was sent; the connection holds a slot (and maybe leads a flight) until
    /// the wrapper finishes.
    Leased(Option<(Digest, Arc<Flight>)>),
    /// The wrapper went away.
    Gone,
}
