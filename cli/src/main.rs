//! `weir`: the Weir command line — argument parsing and dispatch. One file per command.

mod address;
mod bench;
mod duration;
mod exit;
mod group;
mod layout;
mod publish;
mod signal;
mod size;
mod stats;
mod subscribe;
mod topic;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weir_client::{Client, ClientError, ClientOptions, ErrorCode};

/// Weir command-line client: publish, subscribe, manage topics and groups, benchmark.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about, after_help = exit::HELP)]
struct Cli {
    /// Broker address (HOST:PORT; HOST alone means port 7070).
    #[arg(
        long,
        global = true,
        env = "WEIR_SERVER",
        default_value = "127.0.0.1:7070"
    )]
    server: String,
    /// API key presented in Hello (anonymous when absent).
    #[arg(long, global = true, env = "WEIR_TOKEN")]
    token: Option<String>,
    /// Exit when the connection to the broker is lost (or the broker restarts) instead of
    /// reconnecting. By default the client reconnects with backoff for up to 60 s, resends
    /// unconfirmed publishes and resubscribes, so `pub` and `sub` ride through a restart.
    #[arg(long, global = true)]
    no_reconnect: bool,
    /// Speak TLS to the broker (its `[tls]` is set), trusting the bundled Mozilla roots unless
    /// `--tls-ca` names a CA file. Implied by every other `--tls-*` flag and by `WEIR_TLS_CA`.
    #[arg(long, global = true)]
    tls: bool,
    /// PEM file of the CA certificates the broker's certificate must chain to (implies `--tls`).
    #[arg(long, global = true, env = "WEIR_TLS_CA", value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate, for a broker that requires one (mutual TLS); needs `--tls-key`.
    #[arg(long, global = true, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, global = true, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,
    /// The name the broker's certificate must be valid for, when it is not the host of
    /// `--server` (implies `--tls`).
    #[arg(long, global = true, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// The highest protocol version to speak: 5 (default) coalesces publishes, deliveries and
    /// acks into batch frames; 4 sends one frame per message (for an A/B with `weir bench`).
    #[arg(long, global = true, value_name = "VERSION", default_value_t = weir_client::PROTOCOL_VERSION,
          value_parser = clap::value_parser!(u16).range(i64::from(weir_client::MIN_PROTOCOL_VERSION)..=i64::from(weir_client::PROTOCOL_VERSION)))]
    protocol: u16,
    /// Most publishes coalesced into one batch frame (1: none). Default 256.
    #[arg(long, global = true, value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    batch_max_messages: u16,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish messages: one per argument, or one per stdin line when none are given. Waits for
    /// every confirm; exits 2 if any publish was refused (reasons on stderr; with `--retry`,
    /// refused after its retries), 1 on other errors. SIGTERM or Ctrl-C stops reading input,
    /// waits up to 10 s for the confirms of what was sent, prints `N of M confirmed` and the
    /// first unconfirmed line on stderr, and exits 1.
    Pub(publish::PubArgs),
    /// Subscribe and print one payload per line (lossy UTF-8), acking each. With `--group`
    /// it joins (or creates) that durable group; without, its group is ephemeral: deleted when
    /// the command ends, holding nothing afterwards. Messages a drop_oldest topic dropped are
    /// reported on stderr (`--exit-on-gap` to stop, exit 1); a subscription the broker ends (its
    /// group or topic deleted) exits 1 saying why.
    Sub(subscribe::SubArgs),
    /// Create, list, describe or delete topics.
    Topic {
        #[command(subcommand)]
        command: topic::TopicCommand,
    },
    /// List, describe or delete a topic's groups.
    Group {
        #[command(subcommand)]
        command: group::GroupCommand,
    },
    /// Measure publish and delivery throughput and latency against a running broker.
    Bench(bench::BenchArgs),
    /// Watch every topic and its groups live, like `top`: depth, bytes, publish and drain
    /// rates, parked, dropped and refused publishes, the bound refusing now; per group members,
    /// in flight, pending, credit, oldest unacked, dead letters held. Ctrl-C quits.
    Stats(stats::StatsArgs),
    /// Measure the round trip of a Ping.
    Ping,
}

/// Parses the command line, runs the command, and turns its outcome into an exit code (see
/// [`exit`]): 0 done, 1 error, 2 refused, 64 usage (`--help` and `--version` exit 0). Errors
/// print on stderr.
fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return exit::exit(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::DONE
            });
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir: cannot start the runtime: {e}");
            return exit::exit(exit::ERROR);
        }
    };
    let outcome = runtime.block_on(run(cli));
    // Tasks a command left behind (a Ctrl-C'd bench's load) must not hold the exit up.
    runtime.shutdown_background();
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weir: {e:#}");
            exit::exit(exit::code_of(&e))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let options = ClientOptions {
        token: cli.token.clone(),
        reconnect: if cli.no_reconnect {
            weir_client::ReconnectPolicy::disabled()
        } else {
            weir_client::ReconnectPolicy::default()
        },
        tls: cli.tls_options(),
        protocol_version: cli.protocol,
        batch_max_messages: usize::from(cli.batch_max_messages),
        ..Default::default()
    };
    let server = address::normalise(&cli.server);
    match cli.command {
        Command::Pub(args) => publish::run(connect(&server, &options).await?, args).await,
        Command::Sub(args) => subscribe::run(connect(&server, &options).await?, args).await,
        Command::Topic { command } => topic::run(connect(&server, &options).await?, command).await,
        Command::Group { command } => group::run(connect(&server, &options).await?, command).await,
        Command::Bench(args) => bench::run(&server, &options, args).await,
        Command::Stats(args) => stats::run(connect(&server, &options).await?, &server, args).await,
        Command::Ping => {
            let client = connect(&server, &options).await?;
            let rtt = client.ping().await?;
            println!("pong from {server} in {:.3} ms", rtt.as_secs_f64() * 1e3);
            Ok(ExitCode::SUCCESS)
        }
    }
}

impl Cli {
    /// The client's TLS settings from the `--tls*` flags; `None` (plaintext) when none is given.
    fn tls_options(&self) -> Option<weir_client::TlsOptions> {
        let wanted = self.tls
            || self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_server_name.is_some();
        wanted.then(|| weir_client::TlsOptions {
            ca_file: self.tls_ca.clone(),
            server_name: self.tls_server_name.clone(),
            client_cert: self.tls_cert.clone().zip(self.tls_key.clone()).map(
                |(cert_file, key_file)| weir_client::ClientCert {
                    cert_file,
                    key_file,
                },
            ),
        })
    }
}

/// Connects, naming the server in the error.
async fn connect(server: &str, options: &ClientOptions) -> anyhow::Result<Client> {
    Client::connect_with(server, options.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {server}: {e}"))
}

/// The error of a delete: when the broker refused it because subscribers are attached
/// (`InUse`), says how to delete anyway (exit 2, refused); any other error as it is.
fn with_force_hint(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Broker {
            code: ErrorCode::InUse,
            message,
        } => exit::Coded {
            code: exit::REFUSED,
            message: format!("refused (InUse): {message}; pass --force to delete anyway"),
        }
        .into(),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tls_flags_make_the_client_tls_options() {
        let plain = Cli::parse_from(["weir", "ping"]);
        assert_eq!(plain.tls_options(), None);
        let system = Cli::parse_from(["weir", "--tls", "ping"]);
        assert_eq!(
            system.tls_options(),
            Some(weir_client::TlsOptions::default())
        );
        let mutual = Cli::parse_from([
            "weir",
            "ping",
            "--tls-ca",
            "ca.pem",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-server-name",
            "broker.internal",
        ]);
        let tls = mutual.tls_options().expect("--tls-ca implies --tls");
        assert_eq!(tls.ca_file.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert_eq!(tls.server_name.as_deref(), Some("broker.internal"));
        let cert = tls.client_cert.expect("client certificate");
        assert_eq!(cert.key_file, std::path::Path::new("k.pem"));
        assert!(Cli::try_parse_from(["weir", "ping", "--tls-cert", "c.pem"]).is_err());
    }

    #[test]
    fn parses_the_documented_shapes() {
        let cli = Cli::parse_from([
            "weir",
            "--server",
            "127.0.0.1:9000",
            "pub",
            "orders",
            "a",
            "b",
        ]);
        assert_eq!(cli.server, "127.0.0.1:9000");
        assert!(
            matches!(cli.command, Command::Pub(ref a) if a.topic == "orders" && a.messages.len() == 2)
        );
        let cli = Cli::parse_from(["weir", "pub", "orders", "--retry", "a"]);
        assert!(matches!(cli.command, Command::Pub(ref a) if a.retry && a.messages == ["a"]));
        let cli = Cli::parse_from(["weir", "topic", "info", "orders", "--json"]);
        assert!(matches!(
            cli.command,
            Command::Topic {
                command: topic::TopicCommand::Info { ref name, json: true }
            } if name == "orders"
        ));
        let cli = Cli::parse_from(["weir", "sub", "orders", "--group", "g", "--count", "3"]);
        assert!(
            matches!(cli.command, Command::Sub(ref a) if a.credit == 100 && a.count == Some(3))
        );
        let cli = Cli::parse_from([
            "weir",
            "topic",
            "create",
            "t",
            "--max-messages",
            "10",
            "--overflow",
            "reject",
            "--fsync",
            "interval:5",
        ]);
        assert!(matches!(cli.command, Command::Topic { .. }));
        let cli = Cli::parse_from([
            "weir",
            "bench",
            "--pubs",
            "2",
            "--subs",
            "2",
            "--group-mode",
            "fanout",
            "--json",
        ]);
        assert!(matches!(cli.command, Command::Bench(ref b) if b.pubs == 2 && b.json));
    }

    #[test]
    fn parses_the_delete_and_group_commands() {
        let cli = Cli::parse_from(["weir", "topic", "delete", "orders", "--force"]);
        assert!(matches!(
            cli.command,
            Command::Topic {
                command: topic::TopicCommand::Delete { ref name, force: true }
            } if name == "orders"
        ));
        let cli = Cli::parse_from(["weir", "topic", "delete", "orders"]);
        assert!(matches!(
            cli.command,
            Command::Topic {
                command: topic::TopicCommand::Delete { force: false, .. }
            }
        ));
        let cli = Cli::parse_from(["weir", "group", "list", "orders", "--json"]);
        assert!(matches!(
            cli.command,
            Command::Group {
                command: group::GroupCommand::List { ref topic, json: true }
            } if topic == "orders"
        ));
        let cli = Cli::parse_from(["weir", "group", "info", "orders", "billing"]);
        assert!(matches!(
            cli.command,
            Command::Group {
                command: group::GroupCommand::Info { ref topic, ref group, json: false }
            } if topic == "orders" && group == "billing"
        ));
        let cli = Cli::parse_from(["weir", "group", "delete", "orders", "billing", "--force"]);
        assert!(matches!(
            cli.command,
            Command::Group {
                command: group::GroupCommand::Delete { ref group, force: true, .. }
            } if group == "billing"
        ));
        assert!(Cli::try_parse_from(["weir", "group", "info", "orders"]).is_err());
    }

    #[test]
    fn parses_stats() {
        let cli = Cli::parse_from(["weir", "stats", "--once", "--json", "--interval", "0.2"]);
        assert!(matches!(
            cli.command,
            Command::Stats(ref s)
                if s.once && s.json && s.interval.as_millis() == 200 && s.topic.is_none()
        ));
        let cli = Cli::parse_from(["weir", "stats", "--topic", "orders"]);
        assert!(matches!(
            cli.command,
            Command::Stats(ref s)
                if !s.once && s.interval.as_secs() == 1 && s.topic.as_deref() == Some("orders")
        ));
        assert!(
            Cli::try_parse_from(["weir", "stats", "--json"]).is_err(),
            "--json needs --once"
        );
    }

    #[test]
    fn a_delete_refused_for_subscribers_names_force() {
        let in_use = ClientError::Broker {
            code: ErrorCode::InUse,
            message: "group billing has 2 members".into(),
        };
        let refused = with_force_hint(in_use);
        assert_eq!(
            refused.to_string(),
            "refused (InUse): group billing has 2 members; pass --force to delete anyway"
        );
        assert_eq!(exit::code_of(&refused), exit::REFUSED);
        let unknown = ClientError::Broker {
            code: ErrorCode::UnknownGroup,
            message: "no group billing".into(),
        };
        assert_eq!(
            with_force_hint(unknown).to_string(),
            "broker error UnknownGroup: no group billing"
        );
    }
}
