//! The admin commands (`membergate member|group|session|policy ...`): they
//! open the configured member store directly and use the same code as the
//! server (canonical emails, password hashing, the access policy). A running
//! gateway follows the store's change log, so changes reach it within a second.

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use crate::cli::{Command, GroupCommand, MemberCommand, PolicyCommand, SessionCommand};
use crate::config::{Config, validate_group_name};
use crate::hygiene::path;
use crate::mail::{Message, Outbox};
use crate::members::sqlite::SqliteStore;
use crate::members::{Member, MemberStore, NewMember, Status, TokenPurpose, email, now, password};
use crate::policy::{self, Decision};

/// Runs an admin command; problems are printed and give exit code 1 (2 for a bad config).
pub fn run(command: Command) -> ExitCode {
    let (config_path, work) = match command {
        Command::Member { config, command } => (config.config, Work::Member(command)),
        Command::Group { config, command } => (config.config, Work::Group(command)),
        Command::Session { config, command } => (config.config, Work::Session(command)),
        Command::Policy { config, command } => (config.config, Work::Policy(command)),
        Command::Serve { .. } | Command::CheckConfig { .. } => return ExitCode::FAILURE,
    };
    let config = match Config::load(&config_path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{}: invalid configuration\n{e}", config_path.display());
            return ExitCode::from(2);
        }
    };
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
    match runtime.block_on(execute(&config, work)) {
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

enum Work {
    Member(MemberCommand),
    Group(GroupCommand),
    Session(SessionCommand),
    Policy(PolicyCommand),
}

async fn execute(config: &Config, work: Work) -> Result<String, String> {
    let store: Arc<dyn MemberStore> = Arc::new(
        SqliteStore::open(&config.members.database)
            .await
            .map_err(|e| e.to_string())?,
    );
    let at = now();
    match work {
        Work::Member(MemberCommand::Add {
            email,
            first_name,
            last_name,
            invite,
            groups,
        }) => {
            let canonical = email::canonical(&email).map_err(|e| format!("{email:?}: {e}"))?;
            for group in &groups {
                validate_group_name(group)?;
            }
            let password_hash = if invite {
                None
            } else {
                Some(hash_from_stdin()?)
            };
            let status = if invite {
                Status::Pending
            } else {
                Status::Active
            };
            let new = NewMember {
                email: canonical,
                first_name,
                last_name,
                password_hash,
                status,
            };
            let member = store
                .create_member(new, at)
                .await
                .map_err(|e| e.to_string())?;
            for group in &groups {
                store
                    .add_to_group(member.id, group, at)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            if invite {
                send_invitation(config, &store, &member).await?;
                return Ok(format!("invited {} (member {})", member.email, member.id));
            }
            Ok(format!("added {} (member {})", member.email, member.id))
        }
        Work::Member(MemberCommand::List) => {
            let members = store.list_members().await.map_err(|e| e.to_string())?;
            Ok(members.iter().map(describe).collect::<Vec<_>>().join("\n"))
        }
        Work::Member(MemberCommand::Show { email }) => Ok(describe(&find(&store, &email).await?)),
        Work::Member(MemberCommand::Disable { email }) => {
            set_status(&store, &email, Status::Disabled, at).await
        }
        Work::Member(MemberCommand::Enable { email })
        | Work::Member(MemberCommand::Approve { email }) => {
            set_status(&store, &email, Status::Active, at).await
        }
        Work::Member(MemberCommand::SetPassword { email }) => {
            let member = find(&store, &email).await?;
            let hash = hash_from_stdin()?;
            store
                .set_password(member.id, &hash, at)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "password set for {}; their sessions have ended",
                member.email
            ))
        }
        Work::Group(GroupCommand::Add { email, group }) => {
            validate_group_name(&group)?;
            let member = find(&store, &email).await?;
            store
                .add_to_group(member.id, &group, at)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!("{} joined {group}", member.email))
        }
        Work::Group(GroupCommand::Remove { email, group }) => {
            let member = find(&store, &email).await?;
            store
                .remove_from_group(member.id, &group, at)
                .await
                .map_err(|e| format!("{} is not in {group:?} ({e})", member.email))?;
            Ok(format!(
                "{} left {group}; their sessions have ended",
                member.email
            ))
        }
        Work::Group(GroupCommand::List) => {
            let groups = store.list_groups().await.map_err(|e| e.to_string())?;
            Ok(groups
                .iter()
                .map(|(g, n)| format!("{g}\t{n}"))
                .collect::<Vec<_>>()
                .join("\n"))
        }
        Work::Session(SessionCommand::Revoke { member }) => {
            let member = find(&store, &member).await?;
            let n = store
                .delete_member_sessions(member.id, at)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!("ended {n} session(s) of {}", member.email))
        }
        Work::Policy(PolicyCommand::Check { url, member }) => {
            policy_check(config, &store, &url, member).await
        }
    }
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

async fn find(store: &Arc<dyn MemberStore>, address: &str) -> Result<Member, String> {
    let canonical = email::canonical(address).map_err(|e| format!("{address:?}: {e}"))?;
    store
        .member_by_email(&canonical)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no member {canonical}"))
}

async fn set_status(
    store: &Arc<dyn MemberStore>,
    address: &str,
    status: Status,
    at: i64,
) -> Result<String, String> {
    let member = find(store, address).await?;
    store
        .set_status(member.id, status, at)
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!("{} is {}", member.email, status.as_str()))
}

fn hash_from_stdin() -> Result<String, String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("reading the password: {e}"))?;
    let password = input.trim_end_matches(['\n', '\r']);
    password::acceptable(password).map_err(str::to_owned)?;
    password::hash(password)
}

async fn send_invitation(
    config: &Config,
    store: &Arc<dyn MemberStore>,
    member: &Member,
) -> Result<(), String> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| e.to_string())?;
    let token = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw);
    let hash = crate::session::hash_id(token.as_bytes());
    store
        .create_token(
            TokenPurpose::Reset,
            hash,
            member.id,
            member.epoch,
            now() + 7 * 86_400,
        )
        .await
        .map_err(|e| e.to_string())?;
    let link = format!(
        "{}{}/reset?token={token}",
        config.members.public_url,
        crate::portal::PREFIX
    );
    Outbox::new(&config.members.outbox_dir)
        .send(Message {
            to: member.email.clone(),
            subject: "You are invited".into(),
            body: format!("Hello,\n\nyou have been invited to become a member. Choose your password here:\n\n{link}\n\nThe link works once and expires in 7 days.\n"),
        })
        .await;
    Ok(())
}

async fn policy_check(
    config: &Config,
    store: &Arc<dyn MemberStore>,
    url: &str,
    member: Option<String>,
) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("{url:?} has no host"))?
        .to_ascii_lowercase();
    let host = host.trim_end_matches('.');
    let site = config
        .sites
        .iter()
        .find(|s| s.hosts.iter().any(|p| p.matches(host)))
        .ok_or_else(|| format!("no site serves {host}"))?;
    let path = path::normalise(uri.path())
        .map_err(|e| format!("the gateway refuses this path (400): {e}"))?;
    let member = match member {
        Some(address) => Some(find(store, &address).await?),
        None => None,
    };
    let visitor = match &member {
        Some(m) => policy::Visitor::Member { groups: &m.groups },
        None => policy::Visitor::Anonymous,
    };
    let (decision, rule) = policy::decide(&site.rules, &path.decoded, visitor);
    let decision = match decision {
        Decision::Allow => "allow",
        Decision::Login => "login required",
        Decision::Forbidden => "forbidden",
    };
    let rule = match rule {
        Some(i) => format!(
            "sites[{}].rules[{i}] (path {:?})",
            site.name, site.rules.rules[i].prefix
        ),
        None => format!("site {:?} default policy", site.name),
    };
    let who = member.map_or("anonymous".to_owned(), |m| {
        format!("{} (groups: {})", m.email, m.groups.join(","))
    });
    Ok(format!(
        "{decision}\nvisitor: {who}\npath: {}\nrule: {rule}",
        path.decoded
    ))
}
