//! The admin commands (`membergate member|group|session|policy ...`): they
//! open the configured member store directly and run the same operations as
//! the admin API (see `operations`). A running gateway follows the store's
//! change log, so changes made here reach it within a second.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use super::operations::{AddMember, Added, Admin, Refused, StatusChange, policy_report};
use crate::cli::{Command, GroupCommand, MemberCommand, PolicyCommand, SessionCommand};
use crate::config::{Config, ConfigError, MemberStoreConfig};
use crate::mail::Mailer;
use crate::members::sqlite::SqliteStore;
use crate::members::{Member, MemberStore, Status};

/// Runs an admin command; problems are printed and give exit code 1 (2 for a bad config).
pub fn run(command: Command) -> ExitCode {
    let (config_path, work) = match command {
        Command::Member { config, command } => (config.config, Work::Member(command)),
        Command::Group { config, command } => (config.config, Work::Group(command)),
        Command::Session { config, command } => (config.config, Work::Session(command)),
        Command::Backup { file, config } => (config.config, Work::Backup(file)),
        // The policy is the sites': it needs the whole file.
        Command::Policy { config, command } => {
            return match Config::load(&config.config) {
                Ok(whole) => run_to_end(policy(&whole, command)),
                Err(e) => invalid(&config.config, e),
            };
        }
        Command::Serve { .. } | Command::CheckConfig { .. } | Command::Health { .. } => {
            return ExitCode::FAILURE;
        }
    };
    // The rest needs only the member store and mail, and works whatever
    // the rest of the file says.
    match Config::load_member_store(&config_path) {
        Ok(config) => run_to_end(execute(&config, work)),
        Err(e) => invalid(&config_path, e),
    }
}

fn invalid(path: &Path, e: ConfigError) -> ExitCode {
    eprintln!("{}: invalid configuration\n{e}", path.display());
    ExitCode::from(2)
}

/// Runs a command to its end and prints what it did, or why it failed.
fn run_to_end(command: impl Future<Output = Result<String, String>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(output) => {
            if !output.is_empty() {
                println!("{output}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("membergate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A command on the member store.
enum Work {
    Member(MemberCommand),
    Group(GroupCommand),
    Session(SessionCommand),
    Backup(std::path::PathBuf),
}

async fn policy(config: &Config, command: PolicyCommand) -> Result<String, String> {
    let PolicyCommand::Check { url, member } = command;
    // An anonymous visitor's decision needs no member store: it works
    // before the first start, and beside `check-config` in CI.
    let Some(member) = member else {
        let report = policy_report(config, &url, None).map_err(|e| e.to_string())?;
        return Ok(report.describe());
    };
    let store: Arc<dyn MemberStore> = open_store(&config.members.database, false).await?;
    let mailer = Mailer::new(&config.mail)?;
    let admin = Admin {
        store: &store,
        public_url: &config.members.public_url,
        site_name: config.public_site_name(),
        mailer: &mailer,
    };
    let report = admin
        .policy_check(config, &url, Some(&member))
        .await
        .map_err(|e| e.to_string())?;
    Ok(report.describe())
}

/// Opens the member database. A relative `members.database` is read from
/// the working directory: a command run elsewhere would work on a new,
/// empty store of its own and report success. Only adding a member (the
/// first one, before the gateway's first start) may create the store
/// (`creates`), and it says where.
async fn open_store(database: &Path, creates: bool) -> Result<Arc<SqliteStore>, String> {
    let absolute = std::path::absolute(database).unwrap_or_else(|_| database.to_owned());
    if !database.exists() {
        if !creates {
            return Err(format!(
                "there is no member database at {} (members.database, read from the working directory when relative): run the command where the gateway runs, or with its --config",
                absolute.display()
            ));
        }
        eprintln!(
            "membergate: creating a new member database at {}",
            absolute.display()
        );
    }
    let store = SqliteStore::open(database)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(store))
}

async fn execute(config: &MemberStoreConfig, work: Work) -> Result<String, String> {
    let database = &config.database;
    let creates = matches!(work, Work::Member(MemberCommand::Add { .. }));
    let sqlite = open_store(database, creates).await?;
    let store: Arc<dyn MemberStore> = sqlite.clone();
    let mailer = Mailer::new(&config.mail)?;
    let admin = Admin {
        store: &store,
        public_url: &config.public_url,
        site_name: config.site_name.as_deref(),
        mailer: &mailer,
    };
    let done = match work {
        Work::Backup(file) => {
            sqlite.back_up_to(&file).await.map_err(|e| e.to_string())?;
            let absolute = std::path::absolute(database).unwrap_or_else(|_| database.clone());
            format!(
                "wrote a copy of {} to {}",
                absolute.display(),
                file.display()
            )
        }
        Work::Member(MemberCommand::Add {
            email,
            first_name,
            last_name,
            invite,
            groups,
        }) => {
            let password = if invite {
                None
            } else {
                Some(password_from_stdin()?)
            };
            let new = AddMember {
                email,
                first_name,
                last_name,
                password,
                invite,
                groups,
            };
            match admin.add_member(new).await {
                Ok(Added::New(member)) if invite => {
                    format!("invited {} (member {})", member.email, member.id)
                }
                Ok(Added::New(member)) => format!("added {} (member {})", member.email, member.id),
                Ok(Added::InvitedAgain(member)) => format!(
                    "invited {} again (member {}): a new link is on its way; an earlier one works until it expires",
                    member.email, member.id
                ),
                Err(e @ Refused::NotDelivered { .. }) => {
                    let Refused::NotDelivered { member, .. } = &e else {
                        return Err(e.to_string());
                    };
                    return Err(format!(
                        "{e}\n  to send a new invitation: membergate member add {email} --invite\n  to set their password: membergate member set-password {email}",
                        email = member.email
                    ));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Work::Member(MemberCommand::List) => admin
            .list_members()
            .await
            .map(|members| members.iter().map(describe).collect::<Vec<_>>().join("\n"))
            .map_err(|e| e.to_string())?,
        Work::Member(MemberCommand::Show { email }) => admin
            .member(&email)
            .await
            .map(|m| describe(&m))
            .map_err(|e| e.to_string())?,
        Work::Member(MemberCommand::Disable { email }) => {
            status(&admin, &email, StatusChange::Disable).await?
        }
        Work::Member(MemberCommand::Enable { email }) => {
            status(&admin, &email, StatusChange::Enable).await?
        }
        Work::Member(MemberCommand::Approve { email }) => {
            status(&admin, &email, StatusChange::Approve).await?
        }
        Work::Member(MemberCommand::Delete { email }) => {
            let (member, deleted) = admin
                .delete_member(&email)
                .await
                .map_err(|e| e.to_string())?;
            let groups = if member.groups.is_empty() {
                "no groups".to_owned()
            } else {
                format!("groups {}", member.groups.join(","))
            };
            format!(
                "deleted {} (member {}, {}, {groups}): {} session(s) ended, {} unused link(s) voided; the address is free to register again",
                member.email,
                member.id,
                member.status.as_str(),
                deleted.sessions,
                deleted.links
            )
        }
        Work::Member(MemberCommand::SetPassword { email }) => {
            let password = password_from_stdin()?;
            let member = admin
                .set_password(&email, &password)
                .await
                .map_err(|e| e.to_string())?;
            let email = &member.email;
            let now = match member.status {
                Status::Active => format!("{email} is active and can log in with it"),
                Status::AwaitingApproval => format!(
                    "{email} is still awaiting approval: membergate member approve {email} lets them in"
                ),
                Status::Disabled => {
                    format!("{email} stays disabled: membergate member enable {email} lets them in")
                }
                Status::Pending => format!("{email} is pending"),
            };
            format!("password set for {email}; their sessions have ended; {now}")
        }
        Work::Member(MemberCommand::SetEmail { email, new_email }) => {
            set_email(&admin, &email, &new_email).await?
        }
        Work::Group(GroupCommand::Add { email, group }) => {
            let member = admin
                .join_group(&email, &group)
                .await
                .map_err(|e| e.to_string())?;
            format!("{} joined {group}", member.email)
        }
        Work::Group(GroupCommand::Remove { email, group }) => {
            let member = admin
                .leave_group(&email, &group)
                .await
                .map_err(|e| e.to_string())?;
            format!("{} left {group}; their sessions have ended", member.email)
        }
        Work::Group(GroupCommand::List) => admin
            .list_groups()
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .map(|(g, n)| format!("{g}\t{n}"))
            .collect::<Vec<_>>()
            .join("\n"),
        Work::Session(SessionCommand::Revoke { member }) => {
            let (member, ended) = admin
                .revoke_sessions(&member)
                .await
                .map_err(|e| e.to_string())?;
            format!("ended {ended} session(s) of {}", member.email)
        }
    };
    Ok(done)
}

fn describe(m: &Member) -> String {
    format!(
        "{}\t{}\t{}\tgroups={}\tname={:?}",
        m.id,
        m.email,
        m.status.as_str(),
        m.groups.join(","),
        m.display_name()
    )
}

async fn set_email(admin: &Admin<'_>, address: &str, new_address: &str) -> Result<String, String> {
    let before = admin.member(address).await.map_err(|e| e.to_string())?;
    let member = admin
        .set_email(address, new_address)
        .await
        .map_err(|e| e.to_string())?;
    let email = &member.email;
    if *email == before.email {
        return Ok(format!("{email} is their address already; nothing changed"));
    }
    let mut done = format!(
        "{} is now {email}; their sessions have ended, and links mailed to the old address no longer work",
        before.email
    );
    // The invitation went to the old address and died with it.
    if member.status == Status::Pending && member.password_hash.is_none() {
        done.push_str(&format!(
            "\n  to send them a new invitation: membergate member add {email} --invite"
        ));
    }
    Ok(done)
}

async fn status(admin: &Admin<'_>, address: &str, change: StatusChange) -> Result<String, String> {
    let member = admin
        .change_status(address, change)
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!("{} is {}", member.email, member.status.as_str()))
}

/// The password, read from standard input so it stays out of shell history:
/// at a terminal, asked for twice without echo; from a pipe, all of it but
/// one line end.
fn password_from_stdin() -> Result<String, String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        let ask = |prompt| {
            rpassword::prompt_password(prompt).map_err(|e| format!("reading the password: {e}"))
        };
        let password = ask("Password: ")?;
        if ask("Password again: ")? != password {
            return Err("the two passwords differ".into());
        }
        return Ok(password);
    }
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("reading the password: {e}"))?;
    // One line end, as `echo` and a here-string add; any other is the
    // password's, and nobody could type it at the login page.
    let password = input.strip_suffix('\n').unwrap_or(&input);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.contains(['\n', '\r']) {
        return Err(
            "the password on standard input has a line break inside: pipe it once, on one line (a pipe is not asked twice)"
                .into(),
        );
    }
    Ok(password.to_owned())
}
