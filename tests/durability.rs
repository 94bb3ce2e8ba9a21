//! Durability under crashes (attack catalogue K1 and K3).
//!
//! Eight clients register 1,000 members and log in as members registered
//! earlier, while the gateway is killed with SIGKILL at random moments and
//! restarted each time on the same files. The test proves that whatever the
//! gateway acknowledged survived every crash: each acknowledged member logs in
//! with its own password, each acknowledged session cookie still opens a
//! members-only page as its own member (sessions live in SQLite; the moka cache
//! in front of them is only a cache, so a restart must not log anyone out), and
//! the SQLite file passes `PRAGMA integrity_check` and holds exactly one intact
//! row per email.
//!
//! Kill delays come from a seeded PRNG; `DURABILITY_SEED=N` replays the delays
//! (not the exact interleaving with the clients). The seed is printed with the
//! tally.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{Connection, Row};
use tokio::sync::watch;

use support::{EchoOrigin, Gateway, Setup};

const REGISTRATIONS: usize = 1_000;
const CLIENTS: usize = 8;
/// Attempts per email before its registration is given up.
const MAX_ATTEMPTS: u32 = 10;
/// Milliseconds between a restart and the next kill.
const KILL_DELAY_MS: (u64, u64) = (500, 3_000);
/// The workload takes about 25 s on two cores; a hang fails instead of stalling CI.
const WORKLOAD_LIMIT: Duration = Duration::from_secs(150);
const DATABASE: &str = "data/members.db";
const SESSION_COOKIE: &str = "__Host-membergate";
const FIRST_NAME: &str = "Durable";

fn email(member: usize) -> String {
    format!("k1-{member:04}@example.com")
}

/// Each member has its own password, so rows mixed up by a crash cannot log in.
fn password(member: usize) -> String {
    format!("durable password {member:04}")
}

fn last_name(member: usize) -> String {
    format!("No{member:04}")
}

/// xorshift64*: enough randomness for kill timing, and replayable from a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One incarnation of the gateway process: its number and a client for its ports.
#[derive(Clone)]
struct Endpoint {
    generation: u64,
    base: String,
    client: reqwest::Client,
}

impl Endpoint {
    fn of(gw: &Gateway, generation: u64) -> Endpoint {
        Endpoint {
            generation,
            base: gw.https_url(""),
            client: gw.client(),
        }
    }
}

/// A response read to its end.
struct Answer {
    status: u16,
    location: String,
    body: String,
}

impl Answer {
    fn describe(&self) -> String {
        let body: String = self.body.chars().take(300).collect();
        format!("{} {:?}", self.status, body)
    }

    /// The value of the hidden `csrf` field of the page's form.
    fn csrf(&self) -> Option<&str> {
        let marker = "name=\"csrf\" value=\"";
        let start = self.body.find(marker)? + marker.len();
        let end = self.body[start..].find('"')? + start;
        Some(&self.body[start..end])
    }
}

/// Why the gateway did not acknowledge an operation.
enum NotAcknowledged {
    /// The connection failed (the process died under the request, or before it).
    Lost(String),
    /// The gateway answered, but not with success.
    Refused(String),
}

/// Like `support::browser::Browser` (cookies, CSRF tokens, our Origin), but a
/// failed connection is an answer, not a panic: here the gateway dies on purpose.
struct Visit<'a> {
    endpoint: &'a Endpoint,
    cookies: BTreeMap<String, String>,
}

impl Visit<'_> {
    fn new(endpoint: &Endpoint) -> Visit<'_> {
        Visit {
            endpoint,
            cookies: BTreeMap::new(),
        }
    }

    async fn send(&mut self, mut request: reqwest::RequestBuilder) -> Result<Answer, String> {
        if !self.cookies.is_empty() {
            let pairs: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            request = request.header("cookie", pairs.join("; "));
        }
        let response = request.send().await.map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        for value in headers.get_all("set-cookie") {
            let text = value.to_str().unwrap();
            let (name, value) = text.split(';').next().unwrap().split_once('=').unwrap();
            if value.is_empty() || text.to_ascii_lowercase().contains("max-age=0") {
                self.cookies.remove(name.trim());
            } else {
                self.cookies
                    .insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
        // A body cut off by the kill is a lost answer too.
        let body = response.text().await.map_err(|e| format!("{e:?}"))?;
        let location = headers
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Ok(Answer {
            status,
            location,
            body,
        })
    }

    async fn get(&mut self, path: &str) -> Result<Answer, String> {
        let url = format!("{}{path}", self.endpoint.base);
        self.send(self.endpoint.client.get(url)).await
    }

    /// Opens the form at `path`, then posts `fields` to it with the form's token.
    async fn submit(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
    ) -> Result<Answer, NotAcknowledged> {
        let page = self.get(path).await.map_err(NotAcknowledged::Lost)?;
        let Some(csrf) = page.csrf().map(str::to_owned) else {
            return Err(NotAcknowledged::Refused(format!(
                "GET {path} had no form: {}",
                page.describe()
            )));
        };
        let mut all = fields.to_vec();
        all.push(("csrf", &csrf));
        let request = self
            .endpoint
            .client
            .post(format!("{}{path}", self.endpoint.base))
            .header("origin", &self.endpoint.base)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(&all).unwrap());
        self.send(request).await.map_err(NotAcknowledged::Lost)
    }
}

/// Acknowledged means the gateway's success page (open registration, no verification).
async fn register(endpoint: &Endpoint, member: usize) -> Result<(), NotAcknowledged> {
    let (email, password, last) = (email(member), password(member), last_name(member));
    let fields = [
        ("email", email.as_str()),
        ("password", &password),
        ("first_name", FIRST_NAME),
        ("last_name", &last),
    ];
    let answer = Visit::new(endpoint)
        .submit("/_membergate/register", &fields)
        .await?;
    if answer.status == 200 && answer.body.contains("Account created") {
        Ok(())
    } else {
        Err(NotAcknowledged::Refused(answer.describe()))
    }
}

/// Acknowledged means 303 to `return_to` with a session cookie; returns the cookie.
async fn login(endpoint: &Endpoint, member: usize) -> Result<String, NotAcknowledged> {
    let (email, password) = (email(member), password(member));
    let fields = [
        ("email", email.as_str()),
        ("password", &password),
        ("return_to", "/members/"),
    ];
    let mut visit = Visit::new(endpoint);
    let answer = visit.submit("/_membergate/login", &fields).await?;
    match visit.cookies.get(SESSION_COOKIE) {
        Some(cookie) if answer.status == 303 && answer.location == "/members/" => {
            Ok(cookie.clone())
        }
        _ => Err(NotAcknowledged::Refused(answer.describe())),
    }
}

/// A members-only page opened with `cookie` must reach the origin as `member`.
async fn check_session(endpoint: &Endpoint, member: usize, cookie: &str) -> Result<(), String> {
    let mut visit = Visit::new(endpoint);
    visit.cookies.insert(SESSION_COOKIE.into(), cookie.into());
    let answer = visit.get("/members/durable").await?;
    if answer.status != 200 {
        return Err(format!(
            "session of {} after the crashes: {}",
            email(member),
            answer.describe()
        ));
    }
    let echo: serde_json::Value = serde_json::from_str(&answer.body).map_err(|e| e.to_string())?;
    let seen = echo["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|pair| pair[0] == "x-member-email")
        .and_then(|pair| pair[1].as_str());
    if seen != Some(email(member).as_str()) {
        return Err(format!(
            "session of {} reached the origin as {seen:?}",
            email(member)
        ));
    }
    Ok(())
}

/// What the clients and the killer share.
#[derive(Default)]
struct Run {
    next_registration: AtomicUsize,
    /// How many generations have been sent SIGKILL: generation g is dead once this exceeds g.
    killed: AtomicU64,
    acknowledged_members: Mutex<Vec<usize>>,
    acknowledged_sessions: Mutex<Vec<(usize, String)>>,
    registration_attempts: AtomicUsize,
    registrations_lost: AtomicUsize,
    registrations_abandoned: AtomicUsize,
    login_attempts: AtomicUsize,
    logins_lost: AtomicUsize,
    /// Anything that must not happen: a refused operation, a connection
    /// failing with no kill to explain it, a panic or error in a log.
    problems: Mutex<Vec<String>>,
    /// Warnings from the gateway logs (reported, not failed).
    warnings: Mutex<Vec<String>>,
}

impl Run {
    fn problem(&self, text: String) {
        self.problems.lock().unwrap().push(text);
    }

    /// Counts a lost request, or records it as a problem if no kill explains it.
    fn lost(&self, endpoint: &Endpoint, what: &str, error: &str, counter: &AtomicUsize) {
        if self.killed.load(Ordering::SeqCst) > endpoint.generation {
            counter.fetch_add(1, Ordering::SeqCst);
        } else {
            self.problem(format!(
                "{what} failed in generation {} with no kill: {error}",
                endpoint.generation
            ));
        }
    }

    /// Keeps the log lines of a dying (or final) gateway that matter.
    fn scan_log(&self, generation: u64, log: &str) {
        for line in log.lines() {
            if line.contains("panicked") || line.contains("\"level\":\"ERROR\"") {
                self.problem(format!("generation {generation} log: {line}"));
            } else if line.contains("\"level\":\"WARN\"") {
                self.warnings
                    .lock()
                    .unwrap()
                    .push(format!("generation {generation}: {line}"));
            }
        }
    }
}

/// Waits until a gateway newer than `endpoint` is published (or the killer is gone).
async fn wait_for_restart(endpoints: &mut watch::Receiver<Endpoint>, endpoint: &Endpoint) {
    while endpoints.borrow().generation <= endpoint.generation {
        if endpoints.changed().await.is_err() {
            return;
        }
    }
}

/// One client: takes emails off the shared queue, registers each (retrying
/// lost attempts on the next gateway), and about every other time logs in as
/// a member whose registration was acknowledged.
async fn client(run: Arc<Run>, mut endpoints: watch::Receiver<Endpoint>, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut retries: VecDeque<(usize, u32)> = VecDeque::new();
    loop {
        let next = retries.pop_front().or_else(|| {
            let member = run.next_registration.fetch_add(1, Ordering::SeqCst);
            (member < REGISTRATIONS).then_some((member, 0))
        });
        let Some((member, attempts)) = next else {
            break;
        };
        let endpoint = endpoints.borrow_and_update().clone();
        run.registration_attempts.fetch_add(1, Ordering::SeqCst);
        match register(&endpoint, member).await {
            Ok(()) => run.acknowledged_members.lock().unwrap().push(member),
            Err(NotAcknowledged::Lost(error)) => {
                run.lost(&endpoint, "registration", &error, &run.registrations_lost);
                if attempts + 1 < MAX_ATTEMPTS {
                    retries.push_back((member, attempts + 1));
                } else {
                    run.registrations_abandoned.fetch_add(1, Ordering::SeqCst);
                }
                wait_for_restart(&mut endpoints, &endpoint).await;
            }
            Err(NotAcknowledged::Refused(why)) => {
                run.problem(format!("registration of {}: {why}", email(member)));
            }
        }
        if rng.below(2) == 1 {
            continue;
        }
        let earlier = {
            let acknowledged = run.acknowledged_members.lock().unwrap();
            (!acknowledged.is_empty()).then(|| acknowledged[rng.below(acknowledged.len())])
        };
        let Some(earlier) = earlier else { continue };
        let endpoint = endpoints.borrow_and_update().clone();
        run.login_attempts.fetch_add(1, Ordering::SeqCst);
        match login(&endpoint, earlier).await {
            Ok(cookie) => run
                .acknowledged_sessions
                .lock()
                .unwrap()
                .push((earlier, cookie)),
            Err(NotAcknowledged::Lost(error)) => {
                run.lost(&endpoint, "login", &error, &run.logins_lost);
                wait_for_restart(&mut endpoints, &endpoint).await;
            }
            // An acknowledged member that cannot log in is the bug this test hunts.
            Err(NotAcknowledged::Refused(why)) => {
                run.problem(format!(
                    "login of acknowledged member {}: {why}",
                    email(earlier)
                ));
            }
        }
    }
}

/// Kills the gateway after a random delay, restarts it and publishes the new
/// ports, until the clients are done; then kills it once more, so the checks
/// always run on a gateway that came back from a crash. Returns it and the
/// number of kills.
async fn killer(
    mut gw: Gateway,
    run: Arc<Run>,
    publish: watch::Sender<Endpoint>,
    clients_done: Arc<AtomicBool>,
    mut rng: Rng,
) -> (Gateway, u64) {
    let mut generation = 0;
    loop {
        let deadline =
            Instant::now() + Duration::from_millis(rng.between(KILL_DELAY_MS.0, KILL_DELAY_MS.1));
        while Instant::now() < deadline && !clients_done.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let last = clients_done.load(Ordering::SeqCst);
        // The log file is rewritten at each start: read it while it is still there.
        run.scan_log(generation, &gw.log());
        // Counted before the signal, so a client that sees its connection fail sees the kill.
        run.killed.store(generation + 1, Ordering::SeqCst);
        gw = gw.kill_and_restart().await;
        generation += 1;
        publish.send_replace(Endpoint::of(&gw, generation));
        if last {
            return (gw, generation);
        }
    }
}

/// Runs `check` on every item, `CLIENTS` at a time; returns the failures.
async fn check_all<T, F, Fut>(items: Vec<T>, check: F) -> Vec<String>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let queue = Arc::new(Mutex::new(items));
    let check = Arc::new(check);
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (queue, check) = (queue.clone(), check.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            loop {
                let item = queue.lock().unwrap().pop();
                let Some(item) = item else { break };
                if let Err(failure) = check(item).await {
                    failures.push(failure);
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    failures
}

fn assert_none(what: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} {what}, for example:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_members_and_sessions_survive_sigkill_at_random_moments() {
    let started = Instant::now();
    let seed = std::env::var("DURABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let origin = EchoOrigin::start().await;
    let setup = Setup::new()
        .route("/", &origin.url())
        .rule("/members", "members", &[])
        .members(&format!("database = {DATABASE:?}"))
        .members("registration = \"open\"\nrequire_verification = false")
        // Every request comes from 127.0.0.1, and lost attempts are retried.
        .members(
            "max_attempts_per_ip = 1000000\nmax_attempts_per_account = 1000000\n\
             max_attempts_per_account_per_ip = 1000000",
        );
    let gw = Gateway::start(setup).await;

    let run = Arc::new(Run::default());
    let (publish, endpoints) = watch::channel(Endpoint::of(&gw, 0));
    let clients_done = Arc::new(AtomicBool::new(false));
    let killer = tokio::spawn(killer(
        gw,
        run.clone(),
        publish,
        clients_done.clone(),
        Rng::new(seed),
    ));
    let clients: Vec<_> = (0..CLIENTS as u64)
        .map(|i| {
            tokio::spawn(client(
                run.clone(),
                endpoints.clone(),
                seed.wrapping_add(i + 1),
            ))
        })
        .collect();
    drop(endpoints);
    tokio::time::timeout(WORKLOAD_LIMIT, async {
        for client in clients {
            client.await.unwrap();
        }
    })
    .await
    .expect("the clients did not finish in time");
    clients_done.store(true, Ordering::SeqCst);
    let (gw, kills) = killer.await.unwrap();
    let workload_time = started.elapsed();

    let endpoint = Endpoint::of(&gw, kills);
    let members = run.acknowledged_members.lock().unwrap().clone();
    let sessions = run.acknowledged_sessions.lock().unwrap().clone();

    // K3: sessions are records in SQLite, so a restart (even a crash) keeps
    // them; the cache only holds copies. Every acknowledged login still works.
    let session_endpoint = endpoint.clone();
    let lost_sessions = check_all(
        sessions.clone(),
        move |(member, cookie): (usize, String)| {
            let endpoint = session_endpoint.clone();
            async move { check_session(&endpoint, member, &cookie).await }
        },
    )
    .await;

    // K1: every acknowledged member can log in with its own password.
    let login_endpoint = endpoint.clone();
    let failed_logins = check_all(members.clone(), move |member: usize| {
        let endpoint = login_endpoint.clone();
        async move {
            match login(&endpoint, member).await {
                Ok(_) => Ok(()),
                Err(NotAcknowledged::Lost(e) | NotAcknowledged::Refused(e)) => {
                    Err(format!("{}: {e}", email(member)))
                }
            }
        }
    })
    .await;

    // K1: no record is corrupt. SQLite's own checks first (WAL mode lets us
    // read while the gateway runs), then every row against what was sent.
    let path = gw.dir.path().join(DATABASE);
    let mut db = support::store_connection(&path).await;
    let integrity = support::integrity_check(&mut db).await;
    let dangling = sqlx::query("PRAGMA foreign_key_check")
        .fetch_all(&mut db)
        .await
        .unwrap();
    let rows =
        sqlx::query("SELECT email, first_name, last_name, password_hash, status FROM members")
            .fetch_all(&mut db)
            .await
            .unwrap();
    db.close().await.unwrap();
    let mut rows_per_email: HashMap<String, usize> = HashMap::new();
    let mut corrupt = Vec::new();
    for row in &rows {
        let email: String = row.get("email");
        let first: String = row.get("first_name");
        let last: String = row.get("last_name");
        let hash: Option<String> = row.get("password_hash");
        let status: String = row.get("status");
        let member = email
            .strip_prefix("k1-")
            .and_then(|rest| rest.strip_suffix("@example.com"))
            .and_then(|n| n.parse::<usize>().ok());
        let intact = member.is_some_and(|m| last == last_name(m))
            && first == FIRST_NAME
            && status == "active"
            && hash.as_deref().is_some_and(|h| h.starts_with("$argon2id$"));
        if !intact {
            let hash: Option<String> = hash.map(|h| h.chars().take(12).collect());
            corrupt.push(format!("{email:?}: {first:?} {last:?} {status:?} {hash:?}"));
        }
        *rows_per_email.entry(email).or_default() += 1;
    }
    let duplicated: Vec<String> = rows_per_email
        .iter()
        .filter(|(_, n)| **n != 1)
        .map(|(email, n)| format!("{email}: {n} rows"))
        .collect();
    let missing: Vec<String> = members
        .iter()
        .map(|m| email(*m))
        .filter(|e| !rows_per_email.contains_key(e))
        .collect();
    run.scan_log(kills, &gw.log());
    // With registrations still retried, each duplicate notice in the outbox is
    // a lost attempt that had committed before the kill: the kill fell between
    // the commit and the answer, the window this test is about.
    let committed_but_lost = std::fs::read_dir(gw.dir.path().join("data/outbox"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .count()
        })
        .unwrap_or(0);

    let problems = run.problems.lock().unwrap().clone();
    let warnings = run.warnings.lock().unwrap().clone();
    let count = |c: &AtomicUsize| c.load(Ordering::SeqCst);
    let (registrations_lost, logins_lost) =
        (count(&run.registrations_lost), count(&run.logins_lost));
    println!(
        "K1 durability, seed {seed}:\n\
         \x20 registrations acknowledged: {}/{REGISTRATIONS} ({} attempts, {registrations_lost} lost, {committed_but_lost} of them committed anyway, {} given up)\n\
         \x20 logins acknowledged: {} ({} attempts, {logins_lost} lost)\n\
         \x20 kills: {kills}; requests lost to kills: {}\n\
         \x20 after the last crash: {} of {} sessions open /members, {} of {} members log in, \
         {} member rows, integrity_check {integrity:?}\n\
         \x20 gateway log warnings: {}; time: {:.1} s (workload {:.1} s)",
        members.len(),
        count(&run.registration_attempts),
        count(&run.registrations_abandoned),
        sessions.len(),
        count(&run.login_attempts),
        registrations_lost + logins_lost,
        sessions.len() - lost_sessions.len(),
        sessions.len(),
        members.len() - failed_logins.len(),
        members.len(),
        rows.len(),
        warnings.len(),
        started.elapsed().as_secs_f64(),
        workload_time.as_secs_f64(),
    );
    for warning in warnings.iter().take(5) {
        println!("  {warning}");
    }

    assert_eq!(integrity, ["ok"], "integrity_check of {}", path.display());
    assert!(
        dangling.is_empty(),
        "{} rows break a foreign key",
        dangling.len()
    );
    assert_none("corrupt member rows", &corrupt);
    assert_none("emails with more than one row", &duplicated);
    assert_none("acknowledged members missing from the store", &missing);
    assert_none("acknowledged members cannot log in", &failed_logins);
    assert_none("acknowledged sessions lost", &lost_sessions);
    assert_none("problems during the run", &problems);
    // The kills must have landed mid-request for the test to prove anything
    // (a minimum number of kills would depend on how fast the machine hashes).
    assert!(
        registrations_lost + logins_lost > 0,
        "{kills} kills, none of them during a request"
    );
    assert!(
        members.len() > REGISTRATIONS * 9 / 10,
        "only {} of {REGISTRATIONS} registrations acknowledged",
        members.len()
    );
}
