//! `hpccd login` and `hpccd logout` (also `hpcc login` and `hpcc logout`, which exec them):
//! the command line around `hpcc_daemon::login`: arguments, the password prompt, the secret
//! file, and what is printed. Passwords and secrets never come from argv (other users can read
//! it in `ps`) and are never printed; neither are tokens.

use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, IsTerminal, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use hpcc_cache::settings::Settings;
use hpcc_core::config::RemoteCompileConfig;
use hpcc_daemon::login::{self, Grant, Secret, TokenError};

const USAGE: &str = "\
usage: hpcc login [--user NAME] [--scope SCOPE] [--password-stdin]
       hpcc login --client-credentials [--client-id ID] [--client-secret-file PATH] [--scope SCOPE]
       hpcc login --status
       hpcc logout

Gets a token for [remote_compile]'s tenant from the identity provider the scheduler names,
and keeps it in $XDG_STATE_HOME/hpcc/tokens/<tenant>.json (mode 0600).
  --user NAME               the user (default: $USER); the password is asked without echo on
                            a terminal, else read from the first line of stdin
  --password-stdin          read the password from stdin even on a terminal
  --client-credentials      log in as a client (CI): the secret comes from HPCC_CLIENT_SECRET
                            or --client-secret-file, never from the command line
  --client-id ID            the client (default: the tenant's client id)
  --scope SCOPE             the OAuth2 scope (default: openid for users, none for clients;
                            '' for none)
  --status                  say whether a valid token is cached, and until when";

/// The longest password or secret read.
const MAX_SECRET: u64 = 64 << 10;

/// `println!` that ignores a closed stdout.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stdout(), $($arg)*);
    }};
}

/// The arguments as given.
#[derive(Debug, Default, PartialEq, Eq)]
struct RawArgs {
    status: bool,
    client_credentials: bool,
    password_stdin: bool,
    user: Option<String>,
    client_id: Option<String>,
    client_secret_file: Option<PathBuf>,
    scope: Option<String>,
}

/// What to do, once the arguments are checked against each other.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Status,
    Password {
        user: Option<String>,
        scope: Option<String>,
        from_stdin: bool,
    },
    ClientCredentials {
        client_id: Option<String>,
        secret_file: Option<PathBuf>,
        scope: Option<String>,
    },
}

fn parse(args: &[OsString]) -> Result<RawArgs> {
    let mut raw = RawArgs::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let bytes = arg.as_bytes();
        // `--name=value` or `--name value`.
        let (name, inline) = match bytes.iter().position(|&byte| byte == b'=') {
            Some(at) if bytes.starts_with(b"--") => (&bytes[..at], Some(&bytes[at + 1..])),
            _ => (bytes, None),
        };
        let name = std::str::from_utf8(name)
            .with_context(|| format!("login: unknown argument {arg:?}"))?;
        let mut value = |what: &str| -> Result<OsString> {
            match inline {
                Some(value) => Ok(OsStr::from_bytes(value).to_owned()),
                None => args
                    .next()
                    .cloned()
                    .with_context(|| format!("login: {name} needs {what}")),
            }
        };
        let text = |value: OsString| -> Result<String> {
            value
                .into_string()
                .map_err(|value| anyhow::anyhow!("login: {name} {value:?} is not UTF-8"))
        };
        let flag = |set: &mut bool| -> Result<()> {
            if inline.is_some() {
                bail!("login: {name} takes no value");
            }
            *set = true;
            Ok(())
        };
        match name {
            "--status" => flag(&mut raw.status)?,
            "--client-credentials" => flag(&mut raw.client_credentials)?,
            "--password-stdin" => flag(&mut raw.password_stdin)?,
            "--user" => raw.user = Some(text(value("a user name")?)?),
            "--client-id" => raw.client_id = Some(text(value("a client id")?)?),
            "--client-secret-file" => {
                raw.client_secret_file = Some(PathBuf::from(value("a file")?));
            }
            "--scope" => raw.scope = Some(text(value("a scope")?)?),
            "--password" | "--client-secret" => bail!(
                "login: {name} is not accepted: the command line is visible to other users; \
                 give the password on stdin, the secret in HPCC_CLIENT_SECRET or \
                 --client-secret-file"
            ),
            _ => bail!("login: unknown argument {arg:?}\n{USAGE}"),
        }
    }
    Ok(raw)
}

fn validate(raw: RawArgs) -> Result<Action> {
    let client_only = raw.client_id.is_some() || raw.client_secret_file.is_some();
    if raw.status {
        if raw
            != (RawArgs {
                status: true,
                ..RawArgs::default()
            })
        {
            bail!("login: --status takes no other option");
        }
        return Ok(Action::Status);
    }
    if raw.client_credentials {
        if raw.user.is_some() || raw.password_stdin {
            bail!("login: --user and --password-stdin are for users, not --client-credentials");
        }
        return Ok(Action::ClientCredentials {
            client_id: raw.client_id,
            secret_file: raw.client_secret_file,
            scope: raw.scope,
        });
    }
    if client_only {
        bail!("login: --client-id and --client-secret-file need --client-credentials");
    }
    Ok(Action::Password {
        user: raw.user,
        scope: Some(raw.scope.unwrap_or_else(|| "openid".into())),
        from_stdin: raw.password_stdin,
    })
}

/// Reads one line (without its line ending) of at most [`MAX_SECRET`] bytes.
fn read_line(reader: impl BufRead, what: &str) -> Result<String> {
    let mut line = String::new();
    let read = reader
        .take(MAX_SECRET + 1)
        .read_line(&mut line)
        .with_context(|| format!("reading the {what}"))?;
    if read == 0 {
        bail!("no {what} given (end of input)");
    }
    if u64::try_from(line.len()).unwrap_or(u64::MAX) > MAX_SECRET {
        bail!("the {what} is over {MAX_SECRET} bytes");
    }
    let trimmed = line.trim_end_matches('\n').trim_end_matches('\r');
    if trimmed.is_empty() {
        bail!("the {what} is empty");
    }
    Ok(trimmed.to_owned())
}

/// Turns the terminal's echo off until dropped.
struct EchoOff<Fd: AsFd> {
    fd: Fd,
    saved: rustix::termios::Termios,
}

impl<Fd: AsFd> EchoOff<Fd> {
    fn new(fd: Fd) -> io::Result<EchoOff<Fd>> {
        use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
        let saved = tcgetattr(&fd)?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        // Flush: nothing typed before the prompt is taken for the password.
        tcsetattr(&fd, OptionalActions::Flush, &quiet)?;
        Ok(EchoOff { fd, saved })
    }
}

impl<Fd: AsFd> Drop for EchoOff<Fd> {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            &self.fd,
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

fn read_password(user: &str, tenant: &str, from_stdin: bool) -> Result<Secret> {
    let stdin = io::stdin();
    if from_stdin || !stdin.is_terminal() {
        return read_line(stdin.lock(), "password").map(Secret::new);
    }
    eprint!("password of {user} for tenant {tenant}: ");
    let _ = io::stderr().flush();
    let echo_off = EchoOff::new(stdin.as_fd()).context("turning off the terminal's echo")?;
    let password = read_line(stdin.lock(), "password");
    drop(echo_off);
    eprintln!();
    password.map(Secret::new)
}

fn read_client_secret(file: Option<&Path>) -> Result<Secret> {
    if let Some(path) = file {
        let opened = std::fs::File::open(path)
            .with_context(|| format!("opening client secret file {}", path.display()))?;
        return read_line(io::BufReader::new(opened), "client secret")
            .with_context(|| format!("reading client secret file {}", path.display()))
            .map(Secret::new);
    }
    match std::env::var("HPCC_CLIENT_SECRET") {
        Ok(secret) if !secret.is_empty() => Ok(Secret::new(secret)),
        Ok(_) => bail!("HPCC_CLIENT_SECRET is empty"),
        Err(std::env::VarError::NotUnicode(_)) => bail!("HPCC_CLIENT_SECRET is not UTF-8"),
        Err(std::env::VarError::NotPresent) => {
            bail!("no client secret: set HPCC_CLIENT_SECRET or pass --client-secret-file PATH")
        }
    }
}

fn remote_compile(settings: &Settings) -> Result<RemoteCompileConfig> {
    settings.config.remote_compile.clone().with_context(|| {
        format!(
            "no [remote_compile] in {} nor HPCC_REMOTE_COMPILE: logging in needs its tenant_id \
             and scheduler",
            settings.config_path.display()
        )
    })
}

fn status(config: &RemoteCompileConfig) -> Result<ExitCode> {
    let dir = login::tokens_dir()?;
    let tenant = &config.tenant_id;
    match login::read_token_in(&dir, tenant) {
        Ok(token) if token.is_valid_at(login::unix_now()) => {
            say!(
                "logged in to tenant {tenant} (token valid until {}, in {})",
                login::rfc3339(token.expires_at),
                login::token_path(&dir, tenant)?.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(token) => {
            say!(
                "tenant {tenant}: the token expired at {}{}; run `hpcc login`",
                login::rfc3339(token.expires_at),
                if token.refresh_token.is_some() {
                    " (a refresh token is kept)"
                } else {
                    ""
                }
            );
            Ok(ExitCode::FAILURE)
        }
        Err(TokenError::Missing { .. }) => {
            say!("not logged in to tenant {tenant}; run `hpcc login`");
            Ok(ExitCode::FAILURE)
        }
        Err(error) => Err(error.into()),
    }
}

fn run_login(args: &[OsString]) -> Result<ExitCode> {
    let action = validate(parse(args)?)?;
    let settings = Settings::load()?;
    let config = remote_compile(&settings)?;
    login::check_tenant(&config.tenant_id)
        .context("remote_compile.tenant_id cannot name a token file")?;
    let grant = match action {
        Action::Status => return status(&config),
        Action::Password {
            user,
            scope,
            from_stdin,
        } => {
            let username = match user {
                Some(user) => user,
                None => std::env::var("USER")
                    .ok()
                    .filter(|user| !user.is_empty())
                    .context("no user: pass --user NAME (USER is not set)")?,
            };
            let password = read_password(&username, &config.tenant_id, from_stdin)?;
            Grant::Password {
                username,
                password,
                scope,
            }
        }
        Action::ClientCredentials {
            client_id,
            secret_file,
            scope,
        } => Grant::ClientCredentials {
            client_id,
            client_secret: read_client_secret(secret_file.as_deref())?,
            scope,
        },
    };
    let dir = login::tokens_dir()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (token, _path) = runtime.block_on(login::login(&config, &grant, &dir))?;
    say!(
        "logged in to tenant {} (token valid until {})",
        config.tenant_id,
        login::rfc3339(token.expires_at)
    );
    Ok(ExitCode::SUCCESS)
}

fn run_logout(args: &[OsString]) -> Result<()> {
    if let Some(extra) = args.first() {
        bail!("logout: unexpected argument {extra:?}");
    }
    let config = remote_compile(&Settings::load()?)?;
    if login::remove_token_in(&login::tokens_dir()?, &config.tenant_id)? {
        say!("logged out of tenant {}", config.tenant_id);
    } else {
        say!("no token was cached for tenant {}", config.tenant_id);
    }
    Ok(())
}

/// `login [options]`: exit 0 when logged in (or, with `--status`, when a valid token is
/// cached), 1 otherwise, 2 for bad arguments.
pub fn login(args: &[OsString]) -> ExitCode {
    if args
        .iter()
        .any(|arg| arg == "--help" || arg == "-h" || arg == "help")
    {
        say!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match run_login(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("hpcc login: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `logout`: removes the cached token of the configured tenant.
pub fn logout(args: &[OsString]) -> ExitCode {
    match run_logout(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hpcc logout: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str], expected: Result<Action, &str>) {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        match (parse(&args).and_then(validate), expected) {
            (Ok(action), Ok(expected)) => assert_eq!(action, expected, "{args:?}"),
            (Err(error), Err(needle)) => {
                let message = format!("{error:#}");
                assert!(message.contains(needle), "{args:?}: {message}");
            }
            (got, expected) => panic!("{args:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn arguments() {
        let password = |user: Option<&str>, scope: Option<&str>, from_stdin| Action::Password {
            user: user.map(str::to_owned),
            scope: scope.map(str::to_owned),
            from_stdin,
        };
        check(&[], Ok(password(None, Some("openid"), false)));
        check(
            &["--user", "alice"],
            Ok(password(Some("alice"), Some("openid"), false)),
        );
        check(
            &["--user=bob", "--scope=", "--password-stdin"],
            Ok(password(Some("bob"), Some(""), true)),
        );
        check(&["--status"], Ok(Action::Status));
        check(&["--status", "--user", "x"], Err("--status takes no other"));
        check(
            &["--client-credentials"],
            Ok(Action::ClientCredentials {
                client_id: None,
                secret_file: None,
                scope: None,
            }),
        );
        check(
            &[
                "--client-credentials",
                "--client-id",
                "ci",
                "--client-secret-file=/run/secret",
                "--scope",
                "build",
            ],
            Ok(Action::ClientCredentials {
                client_id: Some("ci".into()),
                secret_file: Some("/run/secret".into()),
                scope: Some("build".into()),
            }),
        );
        check(&["--client-id", "ci"], Err("need --client-credentials"));
        check(
            &["--client-credentials", "--user", "a"],
            Err("are for users"),
        );
        check(&["--user"], Err("--user needs a user name"));
        check(&["--password", "hunter2"], Err("visible to other users"));
        check(&["--client-secret=s"], Err("visible to other users"));
        check(&["--status=yes"], Err("takes no value"));
        check(&["--frobnicate"], Err("unknown argument"));
    }

    #[test]
    fn secrets_are_one_line() {
        let read = |input: &str| read_line(input.as_bytes(), "password");
        assert_eq!(read("pw\n").expect("line"), "pw");
        assert_eq!(read("pw\r\nrest\n").expect("crlf"), "pw");
        assert_eq!(read("no newline").expect("eof"), "no newline");
        assert!(format!("{:#}", read("").expect_err("empty")).contains("no password"));
        assert!(format!("{:#}", read("\n").expect_err("blank")).contains("empty"));
        let long = "x".repeat(70_000);
        assert!(format!("{:#}", read(&long).expect_err("long")).contains("over"));
    }
}
