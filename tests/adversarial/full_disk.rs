//! Catalogue K1, second half: the member store's disk fills up. Registrations
//! that cannot be stored are refused (never acknowledged), the gateway keeps
//! serving, and once space is back it takes registrations again; every
//! acknowledged member survives, and the SQLite file stays intact.
//!
//! The store lives on a 4 MiB tmpfs mounted for the test, so it needs root
//! (as CI has). Without root it fails, saying so, unless
//! `MEMBERGATE_SKIP_ROOT_TESTS` is set: a test that passes without running
//! would hide a broken full-disk path.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sqlx::Connection;

use crate::support::browser::Browser;
use crate::support::{self, EchoOrigin, Gateway, Setup};

const PASSWORD: &str = "correct horse battery";

/// A small tmpfs, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4M", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes zeros until the disk is full, then gives back `spare` bytes.
    fn fill_leaving(&self, spare: usize) -> PathBuf {
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 16 * 1024];
        let mut written = 0;
        while file.write_all(&block).is_ok() {
            written += block.len();
        }
        drop(file);
        let keep = written.saturating_sub(spare) as u64;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .unwrap()
            .set_len(keep)
            .unwrap();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Registers `email`; true only for the gateway's success answer.
async fn register(gw: &Gateway, email: &str) -> bool {
    let mut b = Browser::new(gw);
    let page = b.register(email, PASSWORD, "Full", "Disk").await;
    page.status == 200 && page.body.contains("Account created")
}

async fn logs_in(gw: &Gateway, email: &str) -> bool {
    Browser::new(gw).login(email, PASSWORD).await.status == 303
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k1_a_full_disk_refuses_registrations_and_loses_none() {
    let Some(disk) = SmallDisk::mount() else {
        assert!(
            std::env::var_os("MEMBERGATE_SKIP_ROOT_TESTS").is_some(),
            "k1 full disk: mounting a tmpfs needs root; run the tests as root, \
             or set MEMBERGATE_SKIP_ROOT_TESTS=1 to skip this one"
        );
        eprintln!("k1 full disk: skipped (MEMBERGATE_SKIP_ROOT_TESTS)");
        return;
    };
    let database = disk.path().join("members.db");
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url()).members(&format!(
        "database = {:?}\nrequire_verification = false\n\
         max_attempts_per_ip = 100000\nmax_attempts_per_account = 100000\n\
         max_attempts_per_account_per_ip = 100000",
        database.display().to_string()
    )))
    .await;
    let mut acknowledged = Vec::new();
    assert!(register(&gw, "first@example.com").await);
    acknowledged.push("first@example.com".to_owned());

    let filler = disk.fill_leaving(48 * 1024);
    let mut refused = 0;
    for i in 0..300 {
        let email = format!("full-{i:03}@example.com");
        if register(&gw, &email).await {
            acknowledged.push(email);
        } else {
            refused += 1;
            if refused == 5 {
                break;
            }
        }
    }
    println!(
        "full disk: {} registrations acknowledged, {refused} refused",
        acknowledged.len()
    );
    assert_eq!(refused, 5, "the disk never filled up");
    // The proxy still serves (a login, which writes a session, may not).
    let page = gw
        .client()
        .get(gw.https_url("/still-up"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);

    // Space comes back: registrations work again, without a restart.
    std::fs::remove_file(filler).unwrap();
    assert!(register(&gw, "after@example.com").await, "{}", gw.log());
    acknowledged.push("after@example.com".to_owned());
    assert!(logs_in(&gw, "first@example.com").await, "{}", gw.log());

    let gw = gw.restart().await;
    for email in &acknowledged {
        assert!(
            logs_in(&gw, email).await,
            "{email} was acknowledged but is gone"
        );
    }
    let mut db = support::store_connection(&database).await;
    assert_eq!(support::integrity_check(&mut db).await, ["ok"]);
    db.close().await.unwrap();
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
    drop(gw);
}
