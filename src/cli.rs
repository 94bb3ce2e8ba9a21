//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "membergate",
    version,
    about = "A self-hosted membership gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The configuration file.
    #[arg(long, short, global = true, default_value = "config/membergate.toml")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check a configuration file and print every problem found (exit code 2 if any).
    CheckConfig {
        /// The configuration file (or give it with --config).
        file: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Manage members in the [members] database of --config. Changes reach a
    /// running gateway within a second.
    Member {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Manage group memberships.
    Group {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Manage sessions.
    Session {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: SessionCommand,
    },
    /// Ask a running gateway's admin listener for /healthz (exit 0 when
    /// healthy), for container health checks.
    Health {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Write a consistent copy of the member database to FILE (owner-only),
    /// while the gateway runs. Copying the database file itself is not a
    /// backup: recent changes live in its -wal file.
    Backup {
        /// Where to write the copy; must not exist.
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Ask the access policy, with the code the gateway serves with.
    Policy {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Create a member. With --invite, email them a link to choose a password;
    /// otherwise read the password from standard input.
    Add {
        email: String,
        #[arg(long, default_value = "")]
        first_name: String,
        #[arg(long, default_value = "")]
        last_name: String,
        /// Send an invitation instead of setting a password.
        #[arg(long)]
        invite: bool,
        /// Groups to join.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// List members.
    List,
    /// Show one member.
    Show { email: String },
    /// Disable a member: their sessions end and they cannot log in.
    Disable { email: String },
    /// Enable a disabled member.
    Enable { email: String },
    /// Approve a member waiting for approval.
    Approve { email: String },
    /// Set a member's password, read from standard input; their sessions end.
    SetPassword { email: String },
    /// Delete a member with their groups, sessions and links, for good (an
    /// erasure request); the address is free to register again.
    Delete { email: String },
    /// Give a member a new email address, with no link to confirm it; their
    /// sessions end, and links mailed to the old address stop working.
    SetEmail {
        /// The member's address now.
        email: String,
        /// The address they log in with from now on.
        new_email: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Add a member to a group.
    Add { email: String, group: String },
    /// Remove a member from a group; their sessions end.
    Remove { email: String, group: String },
    /// List groups with their member counts.
    List,
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// End every session of a member.
    Revoke {
        #[arg(long)]
        member: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the access decision for a URL and the rule that made it.
    Check {
        #[arg(long)]
        url: String,
        /// Decide for this member instead of an anonymous visitor.
        #[arg(long)]
        member: Option<String>,
    },
}
