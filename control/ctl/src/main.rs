//! `wsedgectl`: the wsedge control process (`wsedgectl daemon`) and its CLI.
//!
//! The CLI sends one request over a Unix socket with the wire protocol of
//! `wsedge_command::wire`: to the daemon's socket by default (`[control] daemon_socket`), or
//! straight to the dataplane's with `--dataplane PATH` (no daemon needed; live edits and
//! `reload` are the daemon's and are refused there). Human tables by default, `--json` for
//! scripts. Exit codes: 0 ok, 1 the request failed, 2 usage error or invalid configuration,
//! 3 the daemon or dataplane cannot be reached.

#![forbid(unsafe_code)]

mod daemon;
mod edit;
mod etcd;
mod fleet_cli;
mod render;
mod state;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use wsedge_command::duration::parse_duration;
use wsedge_command::wire::{Client, ErrorKind, Request, Response, WireError};
use wsedge_command::{Config, ConnectionId};

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNREACHABLE: u8 = 3;

const DEFAULT_CONFIG: &str = "/etc/wsedge/wsedge.toml";
const DEFAULT_SOCKET: &str = "/run/wsedge/control.sock";
/// The least an upgrade request waits for its answer.
const UPGRADE_WAIT: Duration = Duration::from_secs(120);

/// Control the wsedge WebSocket proxy: inspect it, change its configuration live, drain it.
///
/// Commands talk to the control process (`wsedgectl daemon`), which owns the desired
/// configuration and pushes it to the dataplane. Exit codes: 0 ok, 1 the request failed,
/// 2 usage error or invalid configuration, 3 cannot reach the daemon or the dataplane.
#[derive(Debug, Parser)]
#[command(name = "wsedgectl", version, about, long_about)]
struct Cli {
    /// Configuration file: the daemon's desired configuration; for other commands, where to
    /// find the sockets (`[control]`).
    #[arg(short, long, global = true, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The daemon's socket (default: `[control] daemon_socket` of --config, else
    /// /run/wsedge/control.sock).
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "dataplane")]
    socket: Option<PathBuf>,
    /// Talk straight to the dataplane's control socket (no daemon needed). Changes made this
    /// way are not persisted, and a running daemon pushes its own configuration back.
    #[arg(long, global = true, value_name = "PATH")]
    dataplane: Option<PathBuf>,
    /// Print the response as JSON (the wire protocol's response body).
    #[arg(long, global = true)]
    json: bool,
    /// How long to wait for an answer.
    #[arg(long, global = true, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    wait: Duration,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the control process: load --config (or the persisted state), push it to the
    /// dataplane and keep it there, serve the CLI. SIGHUP reloads the file.
    Daemon,
    /// Dataplane pid, uptime, workers and the configuration version each runs.
    Status,
    /// Counters per worker and in total: live, accepted, upgraded, rejected by reason, bytes.
    Stats,
    /// Live connections: id, client, route, origin, age, bytes each way (oldest first).
    Connections {
        /// Only connections of this route.
        #[arg(long, value_name = "ROUTE")]
        route: Option<String>,
        /// At most this many.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u32,
    },
    /// Close one connection (its ID from `connections`).
    Kill {
        /// Connection id as `connections` prints it: WORKER-SLOT-GENERATION, e.g. `1-42-7`.
        id: ConnectionId,
    },
    /// Origins of the routes with their health (no subcommand: state, why, last check,
    /// ejections, from the dataplane); list, add, remove (live; persisted by the daemon).
    Origins {
        #[command(subcommand)]
        action: Option<OriginsCmd>,
    },
    /// Routes in force.
    Routes {
        #[command(subcommand)]
        action: RoutesCmd,
    },
    /// Limits and timers: get, set (live; persisted by the daemon).
    Limits {
        #[command(subcommand)]
        action: LimitsCmd,
    },
    /// Validate FILE and make it the desired configuration (pushed to the dataplane).
    Apply {
        /// A wsedge configuration file (TOML).
        file: PathBuf,
    },
    /// The configuration: show.
    Config {
        #[command(subcommand)]
        action: ConfigCmd,
    },
    /// Re-read the daemon's configuration file (as SIGHUP does), dropping live edits.
    Reload,
    /// TLS certificates in force: names, issuer, expiry; `certs reload` reads their files
    /// again (as SIGHUP of the dataplane does) without dropping a connection.
    Certs {
        #[command(subcommand)]
        action: Option<CertsCmd>,
    },
    /// Publish a message on CHANNEL of every `broadcast` route (all workers). The message is
    /// MESSAGE, or the bytes of --file, or standard input; text if it is UTF-8, else binary.
    Publish {
        /// Channel name (1 to 128 characters of A-Z a-z 0-9 . _ : -).
        channel: String,
        /// The message text.
        #[arg(conflicts_with = "file")]
        message: Option<String>,
        /// Send the bytes of this file (`-` = standard input).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// How many clients are subscribed to CHANNEL (all broadcast routes, all workers).
    Presence {
        /// Channel name.
        channel: String,
    },
    /// Network lists (`[[list]]`, used by firewall rules): show, add, remove (live; persisted
    /// by the daemon; new connections see the change, live ones are not touched).
    Lists {
        #[command(subcommand)]
        action: ListsCmd,
    },
    /// JavaScript functions (`function = "js"` routes): list, deploy new code live.
    Functions {
        #[command(subcommand)]
        action: FunctionsCmd,
    },
    /// The fleet configuration in etcd: status of every host, show, apply (see `[fleet]` in
    /// docs/operations.md). Talks to etcd directly, no daemon needed.
    Fleet {
        #[command(subcommand)]
        action: fleet_cli::FleetCmd,
        #[command(flatten)]
        target: fleet_cli::Target,
    },
    /// Binary upgrade without dropping connections: start BINARY (default: the path the
    /// dataplane was started from) as the next generation with the same listening sockets;
    /// once it serves, the old one stops accepting and closes its connections over
    /// `dataplane.upgrade_drain_window`. A binary that fails leaves the old one serving.
    Upgrade {
        /// The new wsedge binary.
        binary: Option<PathBuf>,
    },
    /// Stop accepting on this host and wait until live connections end or the timeout passes
    /// (then they are closed). To take a host out of rotation; stop it with SIGTERM after.
    Drain {
        /// Close what is left after this long.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        /// Also close every live connection gracefully at a random moment within this window
        /// (Close 1001 on `frames` routes), so clients reconnect elsewhere spread out.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        over: Option<Duration>,
        /// Return at once instead of waiting for connections to end.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Debug, Subcommand)]
enum OriginsCmd {
    /// Every pool's origins with their health, as the dataplane sees them (the default).
    Show,
    /// Every route's origins, as configured.
    List,
    /// Add ADDR (IP:port) to ROUTE's origins.
    Add { route: String, addr: String },
    /// Remove ADDR from ROUTE's origins (live connections to it stay up).
    Remove { route: String, addr: String },
}

#[derive(Debug, Subcommand)]
enum ListsCmd {
    /// Every list (or NAME) with its entries and their expiry; expired entries are hidden.
    Show { name: Option<String> },
    /// Add CIDR (`203.0.113.0/24` or one address) to list NAME, created if absent. The same
    /// network again replaces its entry (a new expiry).
    Add {
        name: String,
        cidr: String,
        /// The entry expires after this long (e.g. `1h`).
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, conflicts_with = "until")]
        for_: Option<Duration>,
        /// The entry expires at this time (unix seconds).
        #[arg(long, value_name = "UNIX")]
        until: Option<u64>,
    },
    /// Remove CIDR from list NAME.
    Remove { name: String, cidr: String },
}

#[derive(Debug, Subcommand)]
enum CertsCmd {
    /// Each certificate: id, names, issuer, expiry (the default).
    List,
    /// Read the certificate, key and CA files again and serve them to new handshakes on
    /// every worker; live connections keep theirs. A broken file is refused, naming it, and
    /// the certificates in force keep serving.
    Reload,
}

#[derive(Debug, Subcommand)]
enum FunctionsCmd {
    /// Each function: version, live sockets, invocations, errors, CPU time, memory.
    List,
    /// Serve route NAME's function from FILE (an ES module; its sibling imports are read
    /// from its directory by the dataplane): new connections get the new code, live ones
    /// finish on theirs. A module that does not compile is refused with its file and line,
    /// and the old one keeps serving. Persisted by the daemon (the route's `script`).
    Deploy { name: String, file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum RoutesCmd {
    /// Routes: name, host, path prefix, relay, origins.
    List,
}

#[derive(Debug, Subcommand)]
enum LimitsCmd {
    /// The `[limits]` defaults, or one route's limits with --route.
    Get {
        #[arg(long, value_name = "ROUTE")]
        route: Option<String>,
    },
    /// Set KEY to VALUE in `[limits]`, or in one route with --route (e.g. `idle_timeout 5m`).
    Set {
        key: String,
        value: String,
        #[arg(long, value_name = "ROUTE")]
        route: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// The desired configuration (TOML), its hash and the version the dataplane runs it as.
    Show,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WSEDGECTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    if let Cmd::Daemon = cli.command {
        return match daemon::run(&cli.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(daemon::DaemonError::Config(msg)) => {
                eprintln!("wsedgectl daemon: invalid configuration: {msg}");
                ExitCode::from(EXIT_USAGE)
            }
            Err(e) => {
                eprintln!("wsedgectl daemon: {e}");
                ExitCode::from(EXIT_FAILED)
            }
        };
    }
    if let Cmd::Fleet { action, target } = &cli.command {
        return match fleet_cli::run(&cli.config, target, action, cli.json) {
            Ok(()) => ExitCode::SUCCESS,
            Err((code, message)) => {
                eprintln!("wsedgectl: {message}");
                ExitCode::from(code)
            }
        };
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsedgectl: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// A failed command: what to print and the exit code.
#[derive(Debug)]
struct Fail {
    code: u8,
    message: String,
}

impl Fail {
    fn new(code: u8, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: message.into(),
        }
    }
}

/// The socket to talk to, and whether it is the dataplane's.
fn target(cli: &Cli) -> (PathBuf, bool) {
    if let Some(p) = &cli.dataplane {
        return (p.clone(), true);
    }
    if let Some(p) = &cli.socket {
        return (p.clone(), false);
    }
    // The file may be absent or unreadable for this user: fall back to the default.
    let from_config = Config::load(&cli.config)
        .ok()
        .map(|c| c.control.daemon_socket);
    (
        from_config.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
        false,
    )
}

struct Session {
    client: Client,
    path: PathBuf,
}

impl Session {
    fn open(path: &Path, wait: Duration) -> Result<Session, Fail> {
        let client = Client::connect(path, wait).map_err(|e| {
            Fail::new(
                EXIT_UNREACHABLE,
                format!("cannot connect to {}: {e}", path.display()),
            )
        })?;
        Ok(Session {
            client,
            path: path.to_owned(),
        })
    }

    /// Sends `request`; an error response becomes a [`Fail`] with its exit code.
    fn call(&mut self, request: &Request) -> Result<Response, Fail> {
        match self.client.call(request) {
            Ok(Response::Error { kind, message }) => Err(Fail::new(
                match kind {
                    ErrorKind::InvalidConfig => EXIT_USAGE,
                    ErrorKind::Unavailable => EXIT_UNREACHABLE,
                    _ => EXIT_FAILED,
                },
                format!("{}: {message}", kind.as_str()),
            )),
            Ok(response) => Ok(response),
            Err(e @ (WireError::Io(_) | WireError::Closed | WireError::Truncated { .. })) => Err(
                Fail::new(EXIT_UNREACHABLE, format!("{}: {e}", self.path.display())),
            ),
            Err(e) => Err(Fail::new(
                EXIT_FAILED,
                format!("{}: {e}", self.path.display()),
            )),
        }
    }
}

fn print_json(response: &Response) -> Result<(), Fail> {
    let text = serde_json::to_string_pretty(response)
        .map_err(|e| Fail::new(EXIT_FAILED, format!("cannot encode JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

fn unexpected(response: &Response) -> Fail {
    Fail::new(EXIT_FAILED, format!("unexpected response: {response:?}"))
}

fn run(cli: &Cli) -> Result<(), Fail> {
    let (path, direct) = target(cli);
    let request = match &cli.command {
        Cmd::Daemon | Cmd::Fleet { .. } => return Ok(()),
        Cmd::Status => Request::Status,
        Cmd::Stats => Request::Stats,
        Cmd::Connections { route, limit } => Request::Connections {
            route: route.clone(),
            limit: Some(*limit),
        },
        Cmd::Kill { id } => Request::Kill { id: *id },
        Cmd::Origins { action } => match action {
            None | Some(OriginsCmd::Show) => Request::OriginsHealth,
            Some(OriginsCmd::List) => Request::RoutesList,
            Some(OriginsCmd::Add { route, addr }) => Request::OriginAdd {
                route: route.clone(),
                addr: addr.clone(),
            },
            Some(OriginsCmd::Remove { route, addr }) => Request::OriginRemove {
                route: route.clone(),
                addr: addr.clone(),
            },
        },
        Cmd::Routes {
            action: RoutesCmd::List,
        } => Request::RoutesList,
        Cmd::Limits { action } => match action {
            LimitsCmd::Get { route } => Request::LimitsGet {
                route: route.clone(),
            },
            LimitsCmd::Set { key, value, route } => Request::LimitsSet {
                key: key.clone(),
                value: value.clone(),
                route: route.clone(),
            },
        },
        Cmd::Apply { file } => {
            // Validated here first: a broken file never leaves this machine's shell, and the
            // error names the file, line and field.
            let source = std::fs::canonicalize(file).unwrap_or_else(|_| file.clone());
            let source = source.display().to_string();
            let text = std::fs::read_to_string(file).map_err(|e| {
                Fail::new(EXIT_USAGE, format!("{}: cannot read: {e}", file.display()))
            })?;
            Config::from_toml(&text, &source)
                .map_err(|e| Fail::new(EXIT_USAGE, format!("invalid configuration: {e}")))?;
            Request::ApplyConfig {
                toml: text,
                source: Some(source),
            }
        }
        Cmd::Config {
            action: ConfigCmd::Show,
        } => Request::ConfigShow,
        Cmd::Reload => Request::Reload,
        Cmd::Certs { action } => match action {
            None | Some(CertsCmd::List) => Request::Certs,
            Some(CertsCmd::Reload) => Request::CertsReload,
        },
        Cmd::Upgrade { binary } => Request::Upgrade {
            // The dataplane may run elsewhere in the file system's view: an absolute path.
            binary: binary
                .as_ref()
                .map(|b| std::path::absolute(b).unwrap_or_else(|_| b.clone()))
                .map(|b| b.display().to_string()),
        },
        Cmd::Drain { timeout, over, .. } => Request::Drain {
            timeout_ms: Some(millis(*timeout)),
            over_ms: over.map(millis),
        },
        Cmd::Publish {
            channel,
            message,
            file,
        } => {
            check_channel(channel)?;
            let message = match (message, file) {
                (Some(text), _) => text.clone().into_bytes(),
                (None, Some(path)) if path.as_os_str() != "-" => {
                    std::fs::read(path).map_err(|e| {
                        Fail::new(EXIT_USAGE, format!("{}: cannot read: {e}", path.display()))
                    })?
                }
                (None, _) => {
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).map_err(|e| {
                        Fail::new(EXIT_USAGE, format!("cannot read standard input: {e}"))
                    })?;
                    bytes
                }
            };
            if message.len() > wsedge_command::wire::MAX_PUBLISH {
                return Err(Fail::new(
                    EXIT_USAGE,
                    format!(
                        "a message of {} bytes exceeds the maximum of {}",
                        message.len(),
                        wsedge_command::wire::MAX_PUBLISH
                    ),
                ));
            }
            Request::Publish {
                channel: channel.clone(),
                message,
            }
        }
        Cmd::Presence { channel } => {
            check_channel(channel)?;
            Request::Presence {
                channel: channel.clone(),
            }
        }
        Cmd::Functions { action } => match action {
            FunctionsCmd::List => Request::FunctionsList,
            FunctionsCmd::Deploy { name, file } => {
                let path = std::fs::canonicalize(file).map_err(|e| {
                    Fail::new(EXIT_USAGE, format!("{}: cannot read: {e}", file.display()))
                })?;
                Request::FunctionDeploy {
                    route: name.clone(),
                    script: path.display().to_string(),
                }
            }
        },
        Cmd::Lists { action } => match action {
            ListsCmd::Show { name } => Request::ListsShow { name: name.clone() },
            ListsCmd::Add {
                name,
                cidr,
                for_,
                until,
            } => Request::ListAdd {
                name: name.clone(),
                cidr: cidr.clone(),
                expires: match (for_, until) {
                    (Some(d), _) => Some(
                        wsedge_command::wire::unix_now()
                            .saturating_add(d.as_secs_f64().ceil() as u64),
                    ),
                    (None, until) => *until,
                },
            },
            ListsCmd::Remove { name, cidr } => Request::ListRemove {
                name: name.clone(),
                cidr: cidr.clone(),
            },
        },
    };
    // An upgrade waits for the new binary to be ready (dataplane.upgrade_ready_timeout).
    let wait = match cli.command {
        Cmd::Upgrade { .. } => cli.wait.max(UPGRADE_WAIT),
        _ => cli.wait,
    };
    let mut session = Session::open(&path, wait)?;
    let response = session.call(&request)?;
    if let Cmd::Drain {
        timeout,
        no_wait,
        over,
    } = &cli.command
    {
        if cli.json || *no_wait {
            return if cli.json {
                print_json(&response)
            } else {
                Ok(())
            };
        }
        return wait_drained(&path, cli.wait, *timeout, *over, &response);
    }
    if cli.json {
        return print_json(&response);
    }
    let text = match (&cli.command, &response) {
        (_, Response::Status(s)) => render::status(s),
        (_, Response::Stats(s)) => render::stats(s),
        (_, Response::Connections { connections }) => render::connections(connections),
        (_, Response::Killed { id }) => format!("connection {id} closed\n"),
        (
            Cmd::Origins {
                action: Some(OriginsCmd::List),
            },
            Response::Routes { routes },
        ) => render::origins(routes),
        (_, Response::Origins { pools }) => render::origin_health(pools),
        (_, Response::Routes { routes }) => render::routes(routes),
        (_, Response::Limits(view)) => render::limits(view),
        (_, Response::Applied(a)) => {
            let mut out = render::applied(a);
            if direct {
                out.push_str("note: sent straight to the dataplane; not persisted, and a running daemon pushes its own configuration back\n");
            }
            out
        }
        (_, Response::Published { channel, delivered }) => {
            format!("published on {channel}: delivered to {delivered} subscribers\n")
        }
        (
            _,
            Response::Presence {
                channel,
                subscribers,
                hosts,
            },
        ) => {
            let mut out = format!("{channel}: {subscribers} subscribers\n");
            for h in hosts {
                out.push_str(&format!("  {}: {}\n", h.host, h.subscribers));
            }
            out
        }
        (_, Response::Lists { lists }) => render::lists(lists, wsedge_command::wire::unix_now()),
        (_, Response::Config(c)) => render::config(c),
        (_, Response::Certs { certificates }) => {
            render::certs(certificates, wsedge_command::wire::unix_now())
        }
        (
            _,
            Response::CertsReloaded {
                certificates,
                workers_confirmed,
            },
        ) => format!(
            "certificates reloaded: {} serving on {workers_confirmed} workers\n{}",
            certificates.len(),
            render::certs(certificates, wsedge_command::wire::unix_now())
        ),
        (_, Response::Functions { functions }) => render::functions(functions),
        (_, Response::Upgraded(u)) => render::upgraded(u),
        (_, other) => return Err(unexpected(other)),
    };
    print!("{text}");
    if let Response::Status(s) = &response
        && s.dataplane.is_none()
    {
        // For health checks: the daemon answered, the dataplane did not.
        return Err(Fail::new(
            EXIT_UNREACHABLE,
            "the dataplane is not reachable",
        ));
    }
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A usage error unless `channel` is a channel name.
fn check_channel(channel: &str) -> Result<(), Fail> {
    wsedge_command::wire::check_channel(channel).map_err(|m| Fail::new(EXIT_USAGE, m))
}

/// After a drain request: polls the status until no connection is left or the timeout (plus
/// a grace for the forced closes) has passed.
fn wait_drained(
    path: &Path,
    wait: Duration,
    timeout: Duration,
    over: Option<Duration>,
    first: &Response,
) -> Result<(), Fail> {
    let Response::Draining { workers, live } = first else {
        return Err(unexpected(first));
    };
    match over {
        Some(over) => println!(
            "draining: {workers} workers stopped accepting; closing {live} live connections spread over {}",
            wsedge_command::duration::format_duration(over)
        ),
        None => println!(
            "draining: {workers} workers stopped accepting; {live} live connections; closing what is left after {}",
            wsedge_command::duration::format_duration(timeout)
        ),
    }
    let start = Instant::now();
    let deadline = start + timeout + Duration::from_secs(5);
    let mut last = *live;
    loop {
        if last == 0 {
            println!(
                "drained: no live connections (after {})",
                render::duration_ms(u64::try_from(start.elapsed().as_millis()).unwrap_or(0))
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Fail::new(
                EXIT_FAILED,
                format!("{last} connections still live after the drain timeout"),
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
        let mut session = Session::open(path, wait)?;
        let live = match session.call(&Request::Status)? {
            Response::Status(s) => s
                .dataplane
                .map(|d| d.workers.iter().map(|w| w.live).sum::<u64>()),
            other => return Err(unexpected(&other)),
        };
        match live {
            Some(n) => {
                if n != last {
                    println!("draining: {n} live connections");
                }
                last = n;
            }
            None => {
                return Err(Fail::new(
                    EXIT_UNREACHABLE,
                    "the dataplane stopped answering",
                ));
            }
        }
    }
}
