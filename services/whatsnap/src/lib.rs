//! `whatsnap`: one binary for every role. `whatsnap serve` runs the services (all of them, or
//! the `--target`s given); the other subcommands are the operator CLI, which talks gRPC to a
//! running server. The wiring lives here, in a library, so that the end-to-end tests build the
//! very same program; `main.rs` only calls [`main`].

mod cli;
mod demo;
#[cfg(feature = "failpoints")]
mod failpoints;
mod operations;
mod serve;
mod tls;
mod tokens;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "whatsnap",
    version,
    about = "Connects WhatsApp, SMS/iMessage and Twilio accounts to GoHighLevel",
    long_about = "Connects WhatsApp, SMS/iMessage and Twilio accounts to GoHighLevel.\n\n\
        `whatsnap serve` runs the services: with no --nats-url/--database-url everything lives in \
        one SQLite file under --data-dir; with both, events go to NATS JetStream and read models \
        to PostgreSQL. The other commands talk to a running server over gRPC (--server)."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the services (all of them by default).
    Serve(Box<serve::ServeArgs>),
    /// Messaging accounts: list, add, remove.
    #[command(subcommand)]
    Accounts(cli::AccountsCommand),
    /// Contacts: show one by phone number, tag it by hand, see where its replies would go.
    #[command(subcommand)]
    Contacts(cli::ContactsCommand),
    /// The event log: follow it as it grows.
    #[command(subcommand)]
    Events(cli::EventsCommand),
    /// Messages: record one received by an account (for operators and demos, until the
    /// provider connectors deliver them).
    #[command(subcommand)]
    Messages(cli::MessagesCommand),
    /// Assignment: rules, users' availability, why a contact is owned by whom, and what new
    /// rules would have decided.
    #[command(subcommand)]
    Assignment(cli::AssignmentCommand),
    /// GHL: connect a location (Private Integration Token or OAuth install), see what waits.
    #[command(subcommand)]
    Ghl(cli::GhlCommand),
    /// Every event that touched a contact, in order, with the reason for each decision.
    Trace(cli::TraceArgs),
    /// Empty a read model so that its service replays the whole log into it on its next start
    /// (stop that service first).
    Rebuild(serve::RebuildArgs),
    /// Events a projection set aside after failing on them: list, retry, skip.
    ///
    /// When a projection (a service's read model or its reactions) fails on an event again and
    /// again, whatsnap parks the event: the projection moves on without it, so one bad event
    /// never stops the others, and the event waits here for an operator. Fix the cause (often
    /// with a new release), then `retry` it, or `skip` it if it should never be applied.
    /// `whatsnap status` lists what is parked.
    #[command(subcommand)]
    Parked(cli::ParkedCommand),
    /// What needs an operator's attention: the parked events, with how to retry or skip each.
    Status(cli::StatusArgs),
    /// API tokens: create, list, revoke. Every command sends `authorization: Bearer <token>`
    /// from --token (WHATSNAP_TOKEN), else from --token-file (default
    /// whatsnap-data/admin-token, where a fresh embedded `whatsnap serve` writes the first
    /// admin token).
    #[command(subcommand)]
    Tokens(cli::TokensCommand),
    /// The keys that seal what whatsnap stores: make a secret key, and derive from it the
    /// personal data key that the gateway, contacts and assignment targets are given instead.
    #[command(subcommand)]
    Keys(cli::KeysCommand),
}

/// Parses the command line and runs the command; what `whatsnap` does.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // One line a cause, no backtrace: this is for operators.
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve::run(*args)),
        Command::Accounts(command) => runtime.block_on(cli::accounts(command)),
        Command::Contacts(command) => runtime.block_on(cli::contacts(command)),
        Command::Events(command) => runtime.block_on(cli::events(command)),
        Command::Messages(command) => runtime.block_on(cli::messages(command)),
        Command::Ghl(command) => runtime.block_on(cli::ghl(command)),
        Command::Assignment(command) => runtime.block_on(cli::assignment(command)),
        Command::Trace(args) => runtime.block_on(cli::trace(args)),
        Command::Rebuild(args) => runtime.block_on(serve::rebuild(args)),
        Command::Parked(command) => runtime.block_on(cli::parked(command)),
        Command::Status(args) => runtime.block_on(cli::overall_status(args)),
        Command::Tokens(command) => runtime.block_on(cli::tokens(command)),
        Command::Keys(command) => cli::keys(command),
    }
}
