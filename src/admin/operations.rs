//! What an administrator can do to members, groups and sessions, and the
//! policy check. One implementation behind two front ends: the CLI (which
//! opens the store itself and prints text) and the admin JSON API (which runs
//! in the gateway and answers JSON). Both use the same canonical emails,
//! password rules and policy code as the server.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{Config, WidgetLoader, validate_group_name};
use crate::hygiene::path;
use crate::identity::{self, ChatDecision};
use crate::mail::{Mailer, Message};
use crate::members::{
    Deleted, Member, MemberStore, NewMember, Status, StoreError, TokenPurpose, clean_name, email,
    now, password,
};
use crate::policy::{self, Decision};

/// What an administrator does to a member's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    Enable,
    Approve,
    Disable,
}

/// Why an operation was refused or did not complete; each kind maps to one
/// HTTP status.
#[derive(Debug)]
pub enum Refused {
    /// The input is malformed (400).
    Invalid(String),
    /// No such member, or not in that group (404).
    NotFound(String),
    /// The member exists already, or is not in a state the change is for (409).
    Conflict(String),
    /// The store failed (500; details are logged, not shown).
    Store(String),
    /// Password hashing is full (a login flood): try again shortly (503).
    Busy,
    /// The member is stored, but the invitation mail to them was not
    /// delivered, for `reason` (502).
    NotDelivered { member: Box<Member>, reason: String },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Invalid(m) | Refused::NotFound(m) | Refused::Conflict(m) => f.write_str(m),
            Refused::Store(m) => write!(f, "member store failed: {m}"),
            Refused::Busy => f.write_str(
                "password hashing is busy (too many logins at once); try again in a few seconds",
            ),
            Refused::NotDelivered { member, reason } => write!(
                f,
                "the invitation to {} was not delivered: {reason}. {} is a member (id {}), pending until they choose a password: invite them again to send a new link, or set their password yourself",
                member.email, member.email, member.id
            ),
        }
    }
}

fn store_error(e: StoreError) -> Refused {
    match e {
        StoreError::Duplicate => Refused::Conflict("a member with this email exists".into()),
        StoreError::NotFound => Refused::NotFound("no such member".into()),
        StoreError::Stale => Refused::Conflict("the member changed meanwhile; try again".into()),
        StoreError::Backend(e) => Refused::Store(e),
    }
}

/// A member as administrators see it (never the password hash).
#[derive(Debug, Serialize)]
pub struct MemberView {
    pub id: i64,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub status: &'static str,
    pub groups: Vec<String>,
    pub has_password: bool,
    pub created_at: i64,
    pub last_login_at: Option<i64>,
}

impl From<&Member> for MemberView {
    fn from(m: &Member) -> MemberView {
        MemberView {
            id: m.id,
            email: m.email.clone(),
            first_name: m.first_name.clone(),
            last_name: m.last_name.clone(),
            status: m.status.as_str(),
            groups: m.groups.clone(),
            has_password: m.password_hash.is_some(),
            created_at: m.created_at,
            last_login_at: m.last_login_at,
        }
    }
}

/// A new member. Exactly one of `password` and `invite` must be given.
/// Inviting a member who was invited and has not chosen a password yet
/// invites them again (their first mail may never have arrived).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    pub email: String,
    #[serde(default)]
    pub first_name: String,
    #[serde(default)]
    pub last_name: String,
    #[serde(default)]
    pub password: Option<String>,
    /// Email the member a link to choose a password instead.
    #[serde(default)]
    pub invite: bool,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// What adding a member did.
#[derive(Debug)]
pub enum Added {
    New(Member),
    /// The member was invited before and had not chosen a password: they
    /// got a new invitation (any name given replaced theirs, any group was joined).
    InvitedAgain(Member),
}

#[derive(Debug, Serialize)]
pub struct PolicyReport {
    pub decision: &'static str,
    pub site: String,
    pub path: String,
    /// `sites[NAME].rules[i] (path "...")` or the site's default policy.
    pub rule: String,
    pub visitor: String,
    /// The chat widget on this page: `off`, `anonymous` or `identified`, and why.
    pub chat: String,
}

impl PolicyReport {
    /// The report as `membergate policy check` prints it.
    pub fn describe(&self) -> String {
        format!(
            "{}\nvisitor: {}\npath: {}\nrule: {}\nchat: {}",
            self.decision, self.visitor, self.path, self.rule, self.chat
        )
    }
}

/// The administrator's operations on one store.
pub struct Admin<'a> {
    pub store: &'a Arc<dyn MemberStore>,
    /// `members.public_url`, what the links in invitations start with.
    pub public_url: &'a str,
    /// The site that serves `public_url`'s host, which invitations name.
    pub site_name: Option<&'a str>,
    pub mailer: &'a Mailer,
}

impl Admin<'_> {
    pub async fn add_member(&self, new: AddMember) -> Result<Added, Refused> {
        let canonical = email::canonical_new(&new.email)
            .map_err(|e| Refused::Invalid(format!("{:?}: {e}", new.email)))?;
        for group in &new.groups {
            validate_group_name(group).map_err(Refused::Invalid)?;
        }
        let password_hash = match (&new.password, new.invite) {
            (Some(_), true) | (None, false) => {
                return Err(Refused::Invalid(
                    "give either a password or invite, not both or neither".into(),
                ));
            }
            (Some(password), false) => Some(hash(password).await?),
            (None, true) => None,
        };
        let status = if new.invite {
            Status::Pending
        } else {
            Status::Active
        };
        let (first_name, last_name) = (name(new.first_name)?, name(new.last_name)?);
        let at = now();
        let created = self
            .store
            .create_member(
                NewMember {
                    email: canonical.clone(),
                    first_name: first_name.clone(),
                    last_name: last_name.clone(),
                    password_hash,
                    status,
                },
                at,
            )
            .await;
        let (member, again) = match created {
            Ok(member) => (member, false),
            Err(StoreError::Duplicate) if new.invite => {
                let member = self.still_invited(&canonical).await?;
                // Names given again replace the first ones; none given keeps them.
                if !first_name.is_empty() || !last_name.is_empty() {
                    let first = if first_name.is_empty() {
                        &member.first_name
                    } else {
                        &first_name
                    };
                    let last = if last_name.is_empty() {
                        &member.last_name
                    } else {
                        &last_name
                    };
                    self.store
                        .set_name(member.id, first, last, at)
                        .await
                        .map_err(store_error)?;
                }
                (member, true)
            }
            Err(e) => return Err(store_error(e)),
        };
        for group in &new.groups {
            self.store
                .add_to_group(member.id, group, at)
                .await
                .map_err(store_error)?;
        }
        // As stored now (with its groups): a failed invitation reports it.
        let member = self.member(&member.email).await?;
        if new.invite {
            self.send_invitation(&member).await?;
        }
        Ok(if again {
            Added::InvitedAgain(member)
        } else {
            Added::New(member)
        })
    }

    /// The member at `canonical` if an invitation is all they have had
    /// (pending, no password); a conflict otherwise.
    async fn still_invited(&self, canonical: &str) -> Result<Member, Refused> {
        let member = self.member(canonical).await?;
        if member.status == Status::Pending && member.password_hash.is_none() {
            return Ok(member);
        }
        Err(Refused::Conflict(format!(
            "a member with this email exists ({}, {}): only a member who has not accepted an invitation yet is invited again",
            member.email,
            member.status.as_str()
        )))
    }

    pub async fn list_members(&self) -> Result<Vec<Member>, Refused> {
        self.store.list_members().await.map_err(store_error)
    }

    pub async fn member(&self, address: &str) -> Result<Member, Refused> {
        let canonical = canonical(address)?;
        self.store
            .member_by_email(&canonical)
            .await
            .map_err(store_error)?
            .ok_or_else(|| Refused::NotFound(format!("no member {canonical}")))
    }

    /// Disables a member (their sessions end), enables a disabled one (back
    /// to the status the disable found), or approves one waiting for
    /// approval. Each change applies only from the status it is for:
    /// approving must not undo a disable, nor enabling skip an approval or
    /// an unconfirmed address. Asking for the status a member already has
    /// changes nothing.
    pub async fn change_status(
        &self,
        address: &str,
        change: StatusChange,
    ) -> Result<Member, Refused> {
        let member = self.member(address).await?;
        let from = member.status;
        let refuse = |why: &str| Err(Refused::Conflict(format!("{} {why}", member.email)));
        let to = match (change, from) {
            (StatusChange::Disable, _) => Status::Disabled,
            (_, Status::Active) => return Ok(member),
            (StatusChange::Enable, Status::Disabled)
            | (StatusChange::Approve, Status::AwaitingApproval) => Status::Active,
            (StatusChange::Enable, Status::AwaitingApproval) => {
                return refuse("is awaiting approval: approve them instead");
            }
            (StatusChange::Approve, Status::Disabled) => {
                return refuse("is disabled: enable them instead");
            }
            (_, Status::Pending) => {
                return refuse("has not confirmed their email address yet");
            }
        };
        if to == from {
            return Ok(member);
        }
        let changed = if change == StatusChange::Enable {
            self.store.enable(member.id, now()).await
        } else {
            self.store.set_status(member.id, from, to, now()).await
        };
        changed.map_err(store_error)?;
        self.member(address).await
    }

    /// Sets a new password; the member's sessions end, and links mailed
    /// to them (reset, invitation) no longer work. Whatever changed while it
    /// was hashed: the administrator's word is the last.
    ///
    /// An invited member (pending, with no password) becomes active, as
    /// following the invitation would have made them: the administrator
    /// who invited them chose the password instead. Other statuses stay: a
    /// disabled member stays disabled, one awaiting approval still waits.
    /// Refused for a member who registered and has not confirmed their
    /// address (the password would not let them in, and would end the
    /// link that confirms it), and for a disabled invited one (enabling
    /// them first makes them invited again).
    pub async fn set_password(&self, address: &str, password: &str) -> Result<Member, Refused> {
        let member = self.member(address).await?;
        let invited = member.password_hash.is_none();
        let refuse = |why: String| Err(Refused::Conflict(format!("{} {why}", member.email)));
        match member.status {
            Status::Pending if !invited => {
                return refuse(format!(
                    "has not confirmed their email address yet, and a password would not let them in: the link mailed to them confirms it, or a new one from {}{}/reset",
                    self.public_url,
                    crate::portal::PREFIX
                ));
            }
            Status::Disabled if invited => {
                return refuse(
                    "is disabled and has not chosen a password yet: enable them first (they are invited again), then set it"
                        .into(),
                );
            }
            _ => {}
        }
        let hash = hash(password).await?;
        let at = now();
        if member.status == Status::Pending {
            // Active before the password is written, so a disable made
            // meanwhile stands (`Stale`: nothing to undo), and so does a
            // member who followed the invitation meanwhile.
            match self
                .store
                .set_status(member.id, Status::Pending, Status::Active, at)
                .await
            {
                Ok(()) | Err(StoreError::Stale) => {}
                Err(e) => return Err(store_error(e)),
            }
        }
        self.store
            .set_password(member.id, &hash, None, at)
            .await
            .map_err(store_error)?;
        self.member(address).await
    }

    pub async fn join_group(&self, address: &str, group: &str) -> Result<Member, Refused> {
        validate_group_name(group).map_err(Refused::Invalid)?;
        let member = self.member(address).await?;
        self.store
            .add_to_group(member.id, group, now())
            .await
            .map_err(store_error)?;
        self.member(address).await
    }

    /// Removes a member from a group; their sessions end.
    pub async fn leave_group(&self, address: &str, group: &str) -> Result<Member, Refused> {
        let member = self.member(address).await?;
        match self.store.remove_from_group(member.id, group, now()).await {
            Err(StoreError::NotFound) => Err(Refused::NotFound(format!(
                "{} is not in group {group:?}",
                member.email
            ))),
            other => other.map_err(store_error),
        }?;
        self.member(address).await
    }

    pub async fn list_groups(&self) -> Result<Vec<(String, i64)>, Refused> {
        self.store.list_groups().await.map_err(store_error)
    }

    /// Ends every session of a member; returns how many there were.
    pub async fn revoke_sessions(&self, address: &str) -> Result<(Member, u64), Refused> {
        let member = self.member(address).await?;
        let ended = self
            .store
            .delete_member_sessions(member.id, now())
            .await
            .map_err(store_error)?;
        Ok((member, ended))
    }

    /// Deletes a member and everything stored with them (groups, sessions,
    /// links), whatever their status: an erasure request, or a member who
    /// leaves. Returns the member as they were, and what went with them.
    pub async fn delete_member(&self, address: &str) -> Result<(Member, Deleted), Refused> {
        let member = self.member(address).await?;
        let deleted = self
            .store
            .delete_member(member.id, None, now())
            .await
            .map_err(|e| match e {
                StoreError::NotFound => Refused::NotFound(format!("no member {}", member.email)),
                other => store_error(other),
            })?;
        Ok((member, deleted))
    }

    /// Gives a member a new email address, with no link to confirm it: the
    /// administrator vouches for it. It is a change of login name, so it is
    /// made as a new password is: their sessions end, and links mailed to
    /// the old address (a reset, an invitation) no longer work. A conflict
    /// when another member has the address; asking for the address the
    /// member has changes nothing.
    pub async fn set_email(&self, address: &str, new_address: &str) -> Result<Member, Refused> {
        let member = self.member(address).await?;
        let new_email = email::canonical_new(new_address)
            .map_err(|e| Refused::Invalid(format!("{new_address:?}: {e}")))?;
        if new_email == member.email {
            return Ok(member);
        }
        match self
            .store
            .set_email(member.id, &new_email, None, now())
            .await
        {
            Err(StoreError::Duplicate) => Err(Refused::Conflict(format!(
                "{new_email} belongs to another member"
            ))),
            other => other.map_err(store_error),
        }?;
        self.member(&new_email).await
    }

    /// The access decision for `url` under `config`, for an anonymous
    /// visitor or a member, and the rule that made it.
    pub async fn policy_check(
        &self,
        config: &Config,
        url: &str,
        member: Option<&str>,
    ) -> Result<PolicyReport, Refused> {
        let member = match member {
            Some(address) => Some(self.member(address).await?),
            None => None,
        };
        policy_report(config, url, member)
    }

    /// Emails an invited member a single-use link (7 days) to choose a
    /// password, and waits for the delivery: the administrator learns if
    /// it failed.
    async fn send_invitation(&self, member: &Member) -> Result<(), Refused> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| Refused::Store(e.to_string()))?;
        let token = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw);
        self.store
            .create_token(
                TokenPurpose::Reset,
                crate::session::hash_id(token.as_bytes()),
                member.id,
                member.epoch,
                now() + 7 * 86_400,
            )
            .await
            .map_err(store_error)?;
        let link = format!(
            "{}{}/reset?token={token}",
            self.public_url,
            crate::portal::PREFIX
        );
        // Named as the portal's mails name it: after the site the link opens.
        let (subject, of_site) = match self.site_name {
            Some(name) => (format!("You are invited to {name}"), format!(" of {name}")),
            None => ("You are invited".to_owned(), String::new()),
        };
        self.mailer
            .deliver(Message {
                to: member.email.clone(),
                subject,
                body: format!("Hello,\n\nyou have been invited to become a member{of_site}. Choose your password here:\n\n{link}\n\nThe link works once and expires in 7 days.\n"),
            })
            .await
            .map_err(|reason| Refused::NotDelivered {
                member: Box::new(member.clone()),
                reason,
            })
    }
}

fn canonical(address: &str) -> Result<String, Refused> {
    email::canonical(address).map_err(|e| Refused::Invalid(format!("{address:?}: {e}")))
}

/// Checks and hashes a password off the async threads (the admin API runs in the gateway).
async fn hash(password: &str) -> Result<String, Refused> {
    password::acceptable(password).map_err(|e| Refused::Invalid(e.to_owned()))?;
    let password = password.to_owned();
    password::off_thread(move || password::hash(&password))
        .await
        .map_err(|not_done| match not_done {
            password::NotDone::Busy => Refused::Busy,
            password::NotDone::Failed => Refused::Store("password hashing failed".into()),
        })?
        .map_err(Refused::Store)
}

fn name(text: String) -> Result<String, Refused> {
    clean_name(&text).map_err(|e| Refused::Invalid(e.to_owned()))
}

/// The access decision for `url` under `config`, for an anonymous visitor or
/// `member`, and the rule that made it. It reads no store, so `policy check`
/// without a member works before the gateway's first start.
pub fn policy_report(
    config: &Config,
    url: &str,
    member: Option<Member>,
) -> Result<PolicyReport, Refused> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| Refused::Invalid(format!("{url:?} is not a URL")))?;
    let host = uri
        .host()
        .ok_or_else(|| Refused::Invalid(format!("{url:?} has no host")))?
        .to_ascii_lowercase();
    let host = host.trim_end_matches('.');
    let site = crate::config::site_for_host(&config.sites, |s| &s.hosts, host)
        .ok_or_else(|| Refused::NotFound(format!("no site serves {host}")))?;
    let path = path::normalise(uri.path())
        .map_err(|e| Refused::Invalid(format!("the gateway refuses this path (400): {e}")))?;
    let visitor = match &member {
        Some(m) if m.status == Status::Active => policy::Visitor::Member { groups: &m.groups },
        _ => policy::Visitor::Anonymous,
    };
    // As the gateway decides: a directory origin's `/dir/` is also its
    // `/dir/index.html`, `/page.html.gz` its `/page.html`, and the stricter
    // decision holds.
    let lower = path.decoded.to_ascii_lowercase();
    let route = site
        .routes
        .iter()
        .filter(|r| crate::routing::prefix_matches(&r.path.to_ascii_lowercase(), &lower))
        .max_by_key(|r| r.path.len());
    let dir_origin = route.is_some_and(|r| matches!(r.upstream, crate::config::Upstream::Dir(_)));
    let alias = crate::routing::served_as(dir_origin, &path.decoded);
    let alias = alias.as_deref();
    let (decision, rule) = policy::decide_page(&site.rules, &path.decoded, alias, visitor);
    let groups = match visitor {
        policy::Visitor::Member { groups } => Some(groups),
        policy::Visitor::Anonymous => None,
    };
    let chat = match &site.chat {
        None => "off (the site has no chat widget)".to_owned(),
        Some(chat) => {
            let (shown, chat_rule) =
                identity::decide_page(chat, &path.decoded, alias, uri.query(), groups);
            let page_loads = chat.loader == WidgetLoader::Page;
            let shown = match shown {
                ChatDecision::Off => "off",
                // The page loads the widget; with nothing to identify,
                // nothing is added.
                ChatDecision::Anonymous if page_loads => "anonymous, nothing added (loader = page)",
                ChatDecision::Anonymous => "anonymous",
                ChatDecision::Identified if page_loads => {
                    "identified, settings only (loader = page)"
                }
                ChatDecision::Identified => "identified",
            };
            match chat_rule {
                Some(i) => format!(
                    "{shown} (sites[{}].chat.rules[{i}], path {:?})",
                    site.name, chat.rules[i].path
                ),
                None => format!("{shown} (site {:?} chat default)", site.name),
            }
        }
    };
    let teaser = rule.and_then(|i| site.rules.rules[i].teaser.as_ref());
    let rule = match rule {
        Some(i) => format!(
            "sites[{}].rules[{i}] (path {:?})",
            site.name, site.rules.rules[i].path
        ),
        None => format!("site {:?} default policy", site.name),
    };
    let visitor = match member {
        Some(m) if m.status != Status::Active => {
            format!("{} ({}: cannot log in)", m.email, m.status.as_str())
        }
        Some(m) => format!("{} (groups: {})", m.email, m.groups.join(",")),
        None => "anonymous".to_owned(),
    };
    Ok(PolicyReport {
        decision: match decision {
            Decision::Allow => "allow",
            Decision::Login if teaser.is_some() => {
                "login required; the rule's teaser page is shown meanwhile (200)"
            }
            Decision::Login => "login required",
            Decision::Forbidden => "forbidden",
        },
        site: site.name.clone(),
        path: path.decoded,
        rule,
        visitor,
        chat,
    })
}
