//! The gateway's shared state: the current configuration snapshot, swapped
//! atomically on reload, and the process-wide metrics.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use arc_swap::ArcSwap;

use crate::admin::metrics::Metrics;
use crate::config::{Checked, Config, ConfigError};
use crate::identity::Identifier;
use crate::identity::token::{Key, Keys};
use crate::portal::Membership;
use crate::routing::Router;
use crate::server::tls;

/// Everything built from one configuration. Requests take one snapshot when
/// they start and keep it to the end, so a reload never changes a request midway.
pub struct Runtime {
    pub config: Config,
    pub router: Router,
    /// `{prefix}id`, `{prefix}email`, `{prefix}name`, `{prefix}groups`.
    pub identity_headers: IdentityHeaders,
    /// The TLS server configuration, when an HTTPS listener is configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// SHA-256 of the admin API key; `None` turns the API off.
    pub admin_api_key: Option<[u8; 32]>,
    /// Identification token keys from the configuration (`None`: the default key).
    pub identity_keys: Option<Keys>,
}

impl Runtime {
    /// Builds from a configuration as `validate` left it, reporting its
    /// problems and those of building (certificate, key and CA files, the
    /// secret in the environment) together: `check-config`, `serve` and a
    /// reload all refuse a file with every reason at once. Dev certificates
    /// are written (if `create_dev_certificates`) only for a valid file.
    pub fn build_checked(
        checked: Checked,
        create_dev_certificates: bool,
    ) -> Result<Runtime, ConfigError> {
        let Checked {
            config,
            mut problems,
            ..
        } = checked;
        // Read by `Membership` at start, not by the runtime; checked here so
        // that `check-config` and `serve` report it with the rest. A reload
        // finds it as the process started with it.
        if let Some(Err(e)) = crate::portal::membership::secret_from_env() {
            problems.push(e);
        }
        let built = Runtime::build(config, create_dev_certificates && problems.is_empty());
        match built {
            Ok(runtime) if problems.is_empty() => Ok(runtime),
            Ok(_) => Err(ConfigError::Invalid(problems)),
            Err(more) => {
                problems.extend(more);
                Err(ConfigError::Invalid(problems))
            }
        }
    }

    /// Builds origins and TLS state; `create_dev_certificates` allows writing
    /// missing dev certificates (never done by `check-config`).
    /// Every part is built, and every part's problem reported at once
    /// (`check-config` shows them all).
    fn build(config: Config, create_dev_certificates: bool) -> Result<Runtime, Vec<String>> {
        let tls = match config.server.https_listen {
            Some(_) => tls::server_config(&config.tls, create_dev_certificates).map(Some),
            None => Ok(None),
        };
        let router = Router::build(&config);
        let identity_headers =
            IdentityHeaders::new(&config.server.identity_header_prefix).map_err(|e| vec![e]);
        let admin_api_key =
            crate::admin::api::load_key(config.admin.api_key_file.as_deref()).map_err(|e| vec![e]);
        let identity_keys = if config.identification.keys.is_empty() {
            Ok(None)
        } else {
            config
                .identification
                .keys
                .iter()
                .map(|(id, secret)| Key::new(id, secret))
                .collect::<Result<Vec<_>, _>>()
                .and_then(Keys::new)
                .map(Some)
                .map_err(|e| vec![e])
        };
        match (tls, router, identity_headers, admin_api_key, identity_keys) {
            (Ok(tls), Ok(router), Ok(identity_headers), Ok(admin_api_key), Ok(identity_keys)) => {
                Ok(Runtime {
                    config,
                    router,
                    identity_headers,
                    tls,
                    admin_api_key,
                    identity_keys,
                })
            }
            (tls, router, headers, key, keys) => {
                let problems: Vec<String> = [
                    tls.err(),
                    router.err(),
                    headers.err(),
                    key.err(),
                    keys.err(),
                ]
                .into_iter()
                .flatten()
                .flatten()
                .collect();
                Err(problems)
            }
        }
    }

    /// Keeps the running TLS session cache and ticket keys across a reload,
    /// so that returning clients still resume instead of paying for a full
    /// handshake after every SIGHUP. They hold no certificate: a renewed one
    /// applies to the next full handshake.
    fn resume_sessions_of(&mut self, running: &Runtime) {
        let (Some(new), Some(old)) = (self.tls.as_mut(), running.tls.as_ref()) else {
            return;
        };
        // Just built, so not shared yet.
        let Some(new) = Arc::get_mut(new) else {
            return;
        };
        new.session_storage = old.session_storage.clone();
        if new.ticketer.enabled() && old.ticketer.enabled() {
            new.ticketer = old.ticketer.clone();
        }
    }
}

/// The names of the identity headers sent to origins.
pub struct IdentityHeaders {
    pub id: http::HeaderName,
    pub email: http::HeaderName,
    pub name: http::HeaderName,
    pub groups: http::HeaderName,
}

impl IdentityHeaders {
    fn new(prefix: &str) -> Result<IdentityHeaders, String> {
        let name = |suffix: &str| {
            http::HeaderName::from_bytes(format!("{prefix}{suffix}").as_bytes())
                .map_err(|_| format!("{prefix}{suffix} is not a valid header name"))
        };
        Ok(IdentityHeaders {
            id: name("id")?,
            email: name("email")?,
            name: name("name")?,
            groups: name("groups")?,
        })
    }
}

pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    pub metrics: Metrics,
    pub membership: Arc<Membership>,
    pub identifier: Identifier,
    config_path: PathBuf,
    /// The port the HTTPS listener actually bound (differs from the file for port 0).
    https_port: AtomicU16,
    /// `/readyz`'s last answer.
    pub readiness: crate::admin::Readiness,
}

impl Gateway {
    pub fn new(
        runtime: Runtime,
        config_path: &Path,
        membership: Membership,
    ) -> Result<Gateway, String> {
        let mut metrics = Metrics::new();
        metrics.register_membership(&membership);
        let identifier = Identifier::new(
            &membership.identity_secret,
            runtime.config.members.session_cache_capacity,
        )?;
        metrics.register_identification(&identifier);
        Ok(Gateway {
            runtime: ArcSwap::from_pointee(runtime),
            metrics,
            identifier,
            membership: Arc::new(membership),
            config_path: config_path.to_owned(),
            https_port: AtomicU16::new(0),
            readiness: crate::admin::Readiness::default(),
        })
    }

    pub fn set_https_port(&self, port: u16) {
        self.https_port.store(port, Ordering::Relaxed);
    }

    /// The port HTTPS redirects point at: configured, else the bound port.
    pub fn https_redirect_port(&self, runtime: &Runtime) -> Option<u16> {
        let configured = runtime.config.server.https_redirect_port;
        let bound = Some(self.https_port.load(Ordering::Relaxed)).filter(|p| *p != 0);
        configured
            .or(bound)
            .or(runtime.config.server.https_listen.map(|a| a.port()))
    }

    /// The current configuration snapshot.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Re-reads the configuration file and swaps it in; on any error the running
    /// configuration stays as it was. Settings the process built its sockets,
    /// threads, store, sessions and mailer from take effect only on restart
    /// (see `keep_restart_settings`).
    pub fn reload(&self) -> Result<(), String> {
        let current = self.runtime();
        let result = Config::check(&self.config_path)
            .and_then(|mut checked| {
                let changed = keep_restart_settings(&mut checked.config, &current.config);
                // The file was checked with its own listen addresses; what
                // runs now is the file with the running ones. Not when a
                // section was left out: its defaults are not the file's.
                let running = &checked.config;
                let listener_problems = if checked.all_sections_read {
                    crate::config::listener_problems(&running.server, &running.tls)
                } else {
                    Vec::new()
                };
                for (key, problem) in listener_problems {
                    let problem = format!("{key}: {problem}");
                    if !checked.problems.contains(&problem) {
                        checked.problems.push(format!(
                            "with the listen addresses running until a restart: {problem}"
                        ));
                    }
                }
                let built = Runtime::build_checked(checked, true);
                if built.is_ok() && !changed.is_empty() {
                    tracing::warn!(
                        settings = changed.join(", "),
                        "these settings changed in the file; they apply after a restart"
                    );
                }
                let mut built = built?;
                built.resume_sessions_of(&current);
                Ok(built)
            })
            .map_err(|e| e.to_string());
        self.metrics.reload(result.is_ok());
        self.runtime.store(Arc::new(result?));
        Ok(())
    }
}

/// Puts back into a reloaded configuration the settings the running process
/// was built from: the listen addresses and worker count (the sockets and
/// threads stay as they are), and what the store, the sessions, the portal's
/// limits and the mailer were made with at start. Everything that reads the
/// configuration per request must agree with them until a restart: a session
/// cookie under a new `cookie_name`, say, would no longer be withheld from
/// origins while the sessions still accept it. Returns the
/// keys that the file had changed.
fn keep_restart_settings(config: &mut Config, running: &Config) -> Vec<&'static str> {
    fn keep<T: PartialEq + Clone>(
        changed: &mut Vec<&'static str>,
        key: &'static str,
        new: &mut T,
        old: &T,
    ) {
        if new != old {
            changed.push(key);
            new.clone_from(old);
        }
    }
    let mut changed = Vec::new();
    let c = &mut changed;
    let (new, old) = (&mut config.server, &running.server);
    keep(
        c,
        "server.https_listen",
        &mut new.https_listen,
        &old.https_listen,
    );
    keep(
        c,
        "server.http_listen",
        &mut new.http_listen,
        &old.http_listen,
    );
    keep(c, "server.workers", &mut new.workers, &old.workers);
    keep(
        c,
        "admin.listen",
        &mut config.admin.listen,
        &running.admin.listen,
    );
    let (new, old) = (&mut config.members, &running.members);
    keep(c, "members.database", &mut new.database, &old.database);
    keep(
        c,
        "members.secret_file",
        &mut new.secret_file,
        &old.secret_file,
    );
    keep(
        c,
        "members.cookie_name",
        &mut new.cookie_name,
        &old.cookie_name,
    );
    keep(
        c,
        "members.cookie_secure",
        &mut new.cookie_secure,
        &old.cookie_secure,
    );
    keep(
        c,
        "members.session_lifetime",
        &mut new.session_lifetime,
        &old.session_lifetime,
    );
    keep(
        c,
        "members.session_idle",
        &mut new.session_idle,
        &old.session_idle,
    );
    keep(
        c,
        "members.session_cache_capacity",
        &mut new.session_cache_capacity,
        &old.session_cache_capacity,
    );
    keep(
        c,
        "members.max_attempts_per_ip",
        &mut new.max_attempts_per_ip,
        &old.max_attempts_per_ip,
    );
    keep(
        c,
        "members.max_attempts_per_account",
        &mut new.max_attempts_per_account,
        &old.max_attempts_per_account,
    );
    keep(
        c,
        "members.max_attempts_per_account_per_ip",
        &mut new.max_attempts_per_account_per_ip,
        &old.max_attempts_per_account_per_ip,
    );
    keep(c, "mail", &mut config.mail, &running.mail);
    // The log's subscriber is installed once, at start.
    keep(c, "log.level", &mut config.log.level, &running.log.level);
    keep(c, "log.format", &mut config.log.format, &running.log.format);
    changed
}
