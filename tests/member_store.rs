//! The member-store conformance suite: what every [`MemberStore`] must do,
//! written once and run against each implementation (today the embedded
//! SQLite store on a real file; a shared store adds one `conformance!` line).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::sync::Arc;

use membergate::members::sqlite::SqliteStore;
use membergate::members::{
    Deleted, EmailChange, MemberStore, NewMember, SessionRecord, Status, StoreError, Taken,
    TokenPurpose,
};

type Store = Arc<dyn MemberStore>;

fn new_member(email: &str) -> NewMember {
    NewMember {
        email: email.to_owned(),
        first_name: "Ada".into(),
        last_name: "Lovelace".into(),
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
        status: Status::Active,
    }
}

fn session(byte: u8, member_id: i64, epoch: i64, expires_at: i64) -> SessionRecord {
    SessionRecord {
        id_hash: [byte; 32],
        member_id,
        epoch,
        grants: 0,
        created_at: 1_000,
        expires_at,
        last_seen_at: 1_000,
        replaced: false,
    }
}

async fn members_are_unique_and_found_by_email_and_id(store: Store) {
    store.ping().await.unwrap();
    let ada = store
        .create_member(new_member("ada@example.com"), 1_000)
        .await
        .unwrap();
    assert_eq!(ada.email, "ada@example.com");
    assert_eq!((ada.status, ada.created_at), (Status::Active, 1_000));
    assert!(ada.groups.is_empty() && ada.last_login_at.is_none());
    assert!(matches!(
        store
            .create_member(new_member("ada@example.com"), 1_001)
            .await,
        Err(StoreError::Duplicate)
    ));
    let by_email = store
        .member_by_email("ada@example.com")
        .await
        .unwrap()
        .unwrap();
    let by_id = store.member_by_id(ada.id).await.unwrap().unwrap();
    assert_eq!(by_email, ada);
    assert_eq!(by_id, ada);
    assert!(
        store
            .member_by_email("eve@example.com")
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.member_by_id(ada.id + 1000).await.unwrap().is_none());
    store
        .create_member(new_member("bob@example.com"), 1_002)
        .await
        .unwrap();
    let all: Vec<String> = store
        .list_members()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.email)
        .collect();
    assert_eq!(all.len(), 2);
    assert!(all.contains(&"bob@example.com".to_owned()));
}

async fn concurrent_registrations_of_one_email_make_one_member(store: Store) {
    let attempts = (0..16).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .create_member(new_member("race@example.com"), 1_000 + i)
                .await
        })
    });
    let mut created = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => created += 1,
            Err(StoreError::Duplicate) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(store.list_members().await.unwrap().len(), 1);
}

async fn credential_changes_bump_the_epoch_and_others_do_not(store: Store) {
    let m = store
        .create_member(new_member("ada@example.com"), 1_000)
        .await
        .unwrap();
    let epoch = |store: Store| async move {
        store
            .member_by_email("ada@example.com")
            .await
            .unwrap()
            .unwrap()
            .epoch
    };
    let start = epoch(store.clone()).await;
    let first = m.password_hash.clone().unwrap();
    assert!(
        store
            .rehash_password(m.id, &first, "$argon2id$new")
            .await
            .unwrap()
    );
    // An upgrade computed from a hash that is no longer stored (the password
    // changed meanwhile) changes nothing.
    assert!(
        !store
            .rehash_password(m.id, &first, "$argon2id$stale")
            .await
            .unwrap()
    );
    store.set_name(m.id, "Ada", "King", 1_001).await.unwrap();
    store.record_login(m.id, 1_002).await.unwrap();
    store.add_to_group(m.id, "vip", 1_003).await.unwrap();
    // From a status it no longer has: refused, nothing changes.
    assert!(matches!(
        store
            .set_status(m.id, Status::Pending, Status::Active, 1_004)
            .await,
        Err(StoreError::Stale)
    ));
    assert_eq!(epoch(store.clone()).await, start, "no credential changed");
    let now = store.member_by_id(m.id).await.unwrap().unwrap();
    assert_eq!(now.password_hash.as_deref(), Some("$argon2id$new"));
    assert_eq!(
        (now.last_name.as_str(), now.last_login_at),
        ("King", Some(1_002))
    );

    store
        .set_password(m.id, "$argon2id$other", None, 1_005)
        .await
        .unwrap();
    let after_password = epoch(store.clone()).await;
    assert!(after_password > start);
    store
        .set_status(m.id, Status::Active, Status::Disabled, 1_006)
        .await
        .unwrap();
    let after_disable = epoch(store.clone()).await;
    assert!(after_disable > after_password);
    store.remove_from_group(m.id, "vip", 1_007).await.unwrap();
    assert!(epoch(store.clone()).await > after_disable);
}

async fn only_a_new_group_bumps_the_grants(store: Store) {
    let m = store
        .create_member(new_member("ada@example.com"), 1_000)
        .await
        .unwrap();
    let grants =
        |store: Store| async move { store.member_by_id(m.id).await.unwrap().unwrap().grants };
    assert_eq!(grants(store.clone()).await, 0);
    store.add_to_group(m.id, "vip", 1_001).await.unwrap();
    assert_eq!(grants(store.clone()).await, 1);
    // Already in it: nothing gained.
    store.add_to_group(m.id, "vip", 1_002).await.unwrap();
    store.set_name(m.id, "Ada", "King", 1_003).await.unwrap();
    assert_eq!(grants(store.clone()).await, 1);
    store.add_to_group(m.id, "staff", 1_004).await.unwrap();
    assert_eq!(grants(store.clone()).await, 2);
}

async fn a_session_is_replaced_once_by_its_successor(store: Store) {
    let m = store
        .create_member(new_member("ada@example.com"), 1_000)
        .await
        .unwrap();
    store
        .create_session(session(1, m.id, m.epoch, 50_000))
        .await
        .unwrap();
    let successor = SessionRecord {
        grants: 1,
        ..session(2, m.id, m.epoch, 50_000)
    };
    assert!(
        store
            .replace_session([1; 32], successor.clone(), 1_060)
            .await
            .unwrap()
    );
    let old = store.session([1; 32]).await.unwrap().unwrap();
    assert!(old.replaced);
    assert_eq!(old.expires_at, 1_060, "the old id expires within a minute");
    assert_eq!(store.session([2; 32]).await.unwrap(), Some(successor));
    // A second renewal of the same old id loses, and stores nothing.
    let rival = session(3, m.id, m.epoch, 50_000);
    assert!(!store.replace_session([1; 32], rival, 1_060).await.unwrap());
    assert!(store.session([3; 32]).await.unwrap().is_none());
    // So does one of an id that is gone.
    let late = session(4, m.id, m.epoch, 50_000);
    assert!(!store.replace_session([9; 32], late, 1_060).await.unwrap());
    assert!(store.session([4; 32]).await.unwrap().is_none());
    // The replaced record is swept once it expires; its successor stays.
    assert_eq!(store.delete_expired(1_060).await.unwrap(), 1);
    assert!(store.session([1; 32]).await.unwrap().is_none());
    assert!(store.session([2; 32]).await.unwrap().is_some());
}

/// A registration never confirmed goes a week after it was made, once no
/// link of its is live; an invited member (no password yet), a confirmed
/// one and a registration with a live link stay.
async fn registrations_never_confirmed_are_swept(store: Store) {
    let week = membergate::members::UNCONFIRMED_KEPT_FOR;
    let pending = |email: &str| NewMember {
        status: Status::Pending,
        ..new_member(email)
    };
    let stale = store
        .create_member(pending("stale@example.com"), 1_000)
        .await
        .unwrap();
    store.add_to_group(stale.id, "vip", 1_000).await.unwrap();
    let invited = NewMember {
        password_hash: None,
        ..pending("invited@example.com")
    };
    store.create_member(invited, 1_000).await.unwrap();
    store
        .create_member(new_member("active@example.com"), 1_000)
        .await
        .unwrap();
    let asked_again = store
        .create_member(pending("again@example.com"), 1_000)
        .await
        .unwrap();
    let later = 1_000 + week;
    store
        .create_token(
            TokenPurpose::Reset,
            [7; 32],
            asked_again.id,
            asked_again.epoch,
            later + 3_600,
        )
        .await
        .unwrap();
    let young = store
        .create_member(pending("young@example.com"), later - 1)
        .await
        .unwrap();

    store.delete_expired(later - 1).await.unwrap();
    assert!(
        store.member_by_id(stale.id).await.unwrap().is_some(),
        "swept before its week"
    );
    store.delete_expired(later).await.unwrap();
    assert!(store.member_by_id(stale.id).await.unwrap().is_none());
    for kept in [
        "invited@example.com",
        "active@example.com",
        "again@example.com",
    ] {
        assert!(
            store.member_by_email(kept).await.unwrap().is_some(),
            "{kept}"
        );
    }
    assert!(store.member_by_id(young.id).await.unwrap().is_some());
    // The address is free again.
    store
        .create_member(pending("stale@example.com"), later)
        .await
        .unwrap();
}

async fn groups_are_data_with_counts(store: Store) {
    let a = store
        .create_member(new_member("a@example.com"), 1)
        .await
        .unwrap();
    let b = store
        .create_member(new_member("b@example.com"), 1)
        .await
        .unwrap();
    store.add_to_group(a.id, "vip", 2).await.unwrap();
    store.add_to_group(a.id, "vip", 3).await.unwrap();
    store.add_to_group(a.id, "staff", 3).await.unwrap();
    store.add_to_group(b.id, "vip", 4).await.unwrap();
    let mut groups = store.member_by_id(a.id).await.unwrap().unwrap().groups;
    groups.sort();
    assert_eq!(groups, ["staff", "vip"]);
    let mut listed = store.list_groups().await.unwrap();
    listed.sort();
    assert_eq!(listed, [("staff".into(), 1), ("vip".into(), 2)]);
    assert!(matches!(
        store.add_to_group(a.id + 1000, "vip", 5).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.remove_from_group(b.id, "staff", 5).await,
        Err(StoreError::NotFound)
    ));
    store.remove_from_group(b.id, "vip", 6).await.unwrap();
    assert!(
        store
            .member_by_id(b.id)
            .await
            .unwrap()
            .unwrap()
            .groups
            .is_empty()
    );
}

/// D5 with a login in flight: a session for a member read before a password
/// change or a disable committed is not stored, and nor is a renewal.
async fn a_session_is_stored_only_for_the_member_as_it_is_now(store: Store) {
    let m = store
        .create_member(new_member("ada@example.com"), 1_000)
        .await
        .unwrap();
    store
        .set_password(m.id, "another hash", Some(m.epoch), 1_001)
        .await
        .unwrap();
    let stale = store.create_session(session(1, m.id, m.epoch, 5_000)).await;
    assert!(matches!(stale, Err(StoreError::Stale)), "{stale:?}");
    assert!(store.session([1; 32]).await.unwrap().is_none());
    let now = store.member_by_id(m.id).await.unwrap().unwrap();
    store
        .create_session(session(2, m.id, now.epoch, 5_000))
        .await
        .unwrap();
    store
        .set_status(m.id, Status::Active, Status::Disabled, 1_002)
        .await
        .unwrap();
    let disabled = store.member_by_id(m.id).await.unwrap().unwrap();
    let refused = store
        .create_session(session(3, m.id, disabled.epoch, 5_000))
        .await;
    assert!(matches!(refused, Err(StoreError::Stale)), "{refused:?}");
    let renewed = store
        .replace_session([2; 32], session(4, m.id, now.epoch, 5_000), 1_003)
        .await;
    // (The disable ended the old session, so there is nothing to renew.)
    assert!(
        matches!(renewed, Ok(false) | Err(StoreError::Stale)),
        "{renewed:?}"
    );
    assert!(store.session([4; 32]).await.unwrap().is_none());
}

async fn sessions_are_stored_touched_and_ended(store: Store) {
    let m = store
        .create_member(new_member("ada@example.com"), 1_000)
        .await
        .unwrap();
    let other = store
        .create_member(new_member("bob@example.com"), 1_000)
        .await
        .unwrap();
    store
        .create_session(session(1, m.id, m.epoch, 5_000))
        .await
        .unwrap();
    store
        .create_session(session(2, m.id, m.epoch, 2_000))
        .await
        .unwrap();
    store
        .create_session(session(3, other.id, other.epoch, 5_000))
        .await
        .unwrap();
    assert_eq!(
        store.session([1; 32]).await.unwrap(),
        Some(session(1, m.id, m.epoch, 5_000))
    );
    assert!(store.session([9; 32]).await.unwrap().is_none());
    store.touch_session([1; 32], 1_500).await.unwrap();
    assert_eq!(
        store.session([1; 32]).await.unwrap().unwrap().last_seen_at,
        1_500
    );
    // Expired sessions are swept; others stay.
    assert_eq!(store.delete_expired(3_000).await.unwrap(), 1);
    assert!(store.session([2; 32]).await.unwrap().is_none());
    store.delete_session([1; 32]).await.unwrap();
    assert!(store.session([1; 32]).await.unwrap().is_none());
    store
        .create_session(session(4, m.id, m.epoch, 5_000))
        .await
        .unwrap();
    store
        .create_session(session(5, m.id, m.epoch, 5_000))
        .await
        .unwrap();
    assert_eq!(store.delete_member_sessions(m.id, 3_001).await.unwrap(), 2);
    assert!(store.session([4; 32]).await.unwrap().is_none());
    assert!(store.session([3; 32]).await.unwrap().is_some());
    // A log-out ends its one session and tells every process the member changed.
    let (_, before) = store.changes_since(0).await.unwrap();
    store.end_session([3; 32], m.id, 3_002).await.unwrap();
    assert!(store.session([3; 32]).await.unwrap().is_none());
    let (changed, _) = store.changes_since(before).await.unwrap();
    assert_eq!(changed, [m.id]);
}

async fn tokens_work_once_for_their_purpose_epoch_and_lifetime(store: Store) {
    let m = store
        .create_member(new_member("ada@example.com"), 1_000)
        .await
        .unwrap();
    let create = |hash: u8, purpose, expires_at| {
        let store = store.clone();
        async move {
            store
                .create_token(purpose, [hash; 32], m.id, m.epoch, expires_at)
                .await
                .unwrap()
        }
    };
    create(1, TokenPurpose::Reset, 5_000).await;
    // The wrong purpose does not find it (and does not spend it).
    assert_eq!(
        store
            .take_token(TokenPurpose::Verify, [1; 32], 1_100)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .take_token(TokenPurpose::Reset, [1; 32], 1_100)
            .await
            .unwrap(),
        Some(Taken {
            member_id: m.id,
            epoch: m.epoch
        })
    );
    assert_eq!(
        store
            .take_token(TokenPurpose::Reset, [1; 32], 1_101)
            .await
            .unwrap(),
        None,
        "a token works once"
    );
    create(2, TokenPurpose::Verify, 1_200).await;
    assert_eq!(
        store
            .take_token(TokenPurpose::Verify, [2; 32], 1_200)
            .await
            .unwrap(),
        None,
        "expired"
    );
    create(3, TokenPurpose::Reset, 5_000).await;
    store
        .set_password(m.id, "$argon2id$x", None, 1_300)
        .await
        .unwrap();
    assert_eq!(
        store
            .take_token(TokenPurpose::Reset, [3; 32], 1_301)
            .await
            .unwrap(),
        None,
        "issued before the password changed"
    );
}

/// Two reset links taken before either's password is written both pass
/// `take_token`; the password is written at the epoch the link was taken
/// at, so the second write finds the first's and is refused, not silently
/// written over it. The same for a disable written meanwhile.
async fn a_password_written_at_an_old_epoch_is_refused(store: Store) {
    let m = store
        .create_member(new_member("ada@example.com"), 1_000)
        .await
        .unwrap();
    for hash in [1, 2] {
        store
            .create_token(TokenPurpose::Reset, [hash; 32], m.id, m.epoch, 5_000)
            .await
            .unwrap();
    }
    let take = |hash: u8| {
        let store = store.clone();
        async move {
            store
                .take_token(TokenPurpose::Reset, [hash; 32], 1_100)
                .await
                .unwrap()
                .unwrap()
        }
    };
    let (first, second) = (take(1).await, take(2).await);
    assert_eq!((first.epoch, second.epoch), (m.epoch, m.epoch));
    store
        .set_password(m.id, "$argon2id$first", Some(first.epoch), 1_101)
        .await
        .unwrap();
    let late = store
        .set_password(m.id, "$argon2id$second", Some(second.epoch), 1_102)
        .await;
    assert!(matches!(late, Err(StoreError::Stale)), "{late:?}");
    let now = store.member_by_id(m.id).await.unwrap().unwrap();
    assert_eq!(now.password_hash.as_deref(), Some("$argon2id$first"));
    assert_eq!(now.epoch, m.epoch + 1, "the refused write bumped nothing");

    // A disable written meanwhile is not written over either.
    store
        .set_status(m.id, Status::Active, Status::Disabled, 1_103)
        .await
        .unwrap();
    let late = store
        .set_password(m.id, "$argon2id$third", Some(now.epoch), 1_104)
        .await;
    assert!(matches!(late, Err(StoreError::Stale)), "{late:?}");
    let disabled = store.member_by_id(m.id).await.unwrap().unwrap();
    assert_eq!(disabled.password_hash.as_deref(), Some("$argon2id$first"));

    // At the member's epoch, or with none (an administrator's), it applies.
    store
        .set_password(m.id, "$argon2id$fourth", Some(disabled.epoch), 1_105)
        .await
        .unwrap();
    store
        .set_password(m.id, "$argon2id$fifth", None, 1_106)
        .await
        .unwrap();
    let last = store.member_by_id(m.id).await.unwrap().unwrap();
    assert_eq!(last.password_hash.as_deref(), Some("$argon2id$fifth"));
    assert_eq!(last.epoch, disabled.epoch + 2);
    assert!(matches!(
        store
            .set_password(m.id + 1, "$argon2id$x", None, 1_107)
            .await,
        Err(StoreError::NotFound)
    ));
}

async fn every_member_change_is_in_the_change_log(store: Store) {
    let (_, start) = store.changes_since(0).await.unwrap();
    let a = store
        .create_member(new_member("a@example.com"), 1)
        .await
        .unwrap();
    let b = store
        .create_member(new_member("b@example.com"), 1)
        .await
        .unwrap();
    let (_, after_create) = store.changes_since(start).await.unwrap();
    store.add_to_group(a.id, "vip", 2).await.unwrap();
    store
        .set_status(b.id, Status::Active, Status::Disabled, 3)
        .await
        .unwrap();
    let (changed, newest) = store.changes_since(after_create).await.unwrap();
    assert!(newest > after_create);
    assert!(
        changed.contains(&a.id) && changed.contains(&b.id),
        "{changed:?}"
    );
    let (nothing, same) = store.changes_since(newest).await.unwrap();
    assert!(nothing.is_empty());
    assert_eq!(same, newest);
    store.delete_member_sessions(a.id, 4).await.unwrap();
    let (changed, _) = store.changes_since(newest).await.unwrap();
    assert_eq!(changed, [a.id]);
}

/// A deleted member takes their groups, sessions and links with them, and
/// leaves a change record for other processes; the address is free again,
/// for a member with a new id. A deletion decided at an older epoch (a
/// password checked before a reset) is refused.
async fn a_deleted_member_leaves_nothing_but_a_change_record(store: Store) {
    let bob = store
        .create_member(new_member("bob@example.com"), 1_000)
        .await
        .unwrap();
    // The newest member: a store that hands out the highest id plus one
    // would give theirs again.
    let ada = store
        .create_member(new_member("ada@example.com"), 1_000)
        .await
        .unwrap();
    store.add_to_group(ada.id, "vip", 1_001).await.unwrap();
    store.add_to_group(bob.id, "vip", 1_001).await.unwrap();
    let ada = store.member_by_id(ada.id).await.unwrap().unwrap();
    for byte in [1, 2] {
        store
            .create_session(session(byte, ada.id, ada.epoch, 9_000))
            .await
            .unwrap();
    }
    // Over already, or renewed under a new id: not counted as ended.
    store
        .create_session(session(5, ada.id, ada.epoch, 1_002))
        .await
        .unwrap();
    assert!(
        store
            .replace_session([1; 32], session(6, ada.id, ada.epoch, 9_000), 1_060)
            .await
            .unwrap()
    );
    store
        .create_session(session(3, bob.id, bob.epoch, 9_000))
        .await
        .unwrap();
    store
        .create_token(TokenPurpose::Reset, [4; 32], ada.id, ada.epoch, 9_000)
        .await
        .unwrap();
    let (_, before) = store.changes_since(0).await.unwrap();

    let stale = store
        .delete_member(ada.id, Some(ada.epoch - 1), 1_002)
        .await;
    assert!(matches!(stale, Err(StoreError::Stale)), "{stale:?}");
    assert!(store.member_by_id(ada.id).await.unwrap().is_some());

    let deleted = store
        .delete_member(ada.id, Some(ada.epoch), 1_003)
        .await
        .unwrap();
    assert_eq!(
        deleted,
        Deleted {
            sessions: 2,
            links: 1
        }
    );
    assert!(store.member_by_id(ada.id).await.unwrap().is_none());
    assert!(
        store
            .member_by_email("ada@example.com")
            .await
            .unwrap()
            .is_none()
    );
    for byte in [1, 2, 5, 6] {
        assert!(store.session([byte; 32]).await.unwrap().is_none());
    }
    assert_eq!(
        store
            .take_token(TokenPurpose::Reset, [4; 32], 1_004)
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.list_groups().await.unwrap(), [("vip".to_owned(), 1)]);
    // Someone else's things stay.
    assert!(store.session([3; 32]).await.unwrap().is_some());
    let (changed, _) = store.changes_since(before).await.unwrap();
    assert_eq!(changed, [ada.id]);

    for epoch in [None, Some(ada.epoch)] {
        assert!(matches!(
            store.delete_member(ada.id, epoch, 1_005).await,
            Err(StoreError::NotFound)
        ));
    }
    let again = store
        .create_member(new_member("ada@example.com"), 1_006)
        .await
        .unwrap();
    assert!(again.id > ada.id, "a new id: {} after {}", again.id, ada.id);
    assert!(again.groups.is_empty());
    // Whatever the epoch, an administrator's deletion goes through.
    store
        .set_password(bob.id, "$argon2id$x", None, 1_007)
        .await
        .unwrap();
    assert_eq!(
        store.delete_member(bob.id, None, 1_008).await.unwrap(),
        Deleted {
            sessions: 0,
            links: 0
        },
        "the password change ended bob's session"
    );
    assert!(store.list_groups().await.unwrap().is_empty());
}

/// A pending change moves nothing until its link is taken; taking it works
/// once, before it expires, at the epoch it was asked at; writing it bumps
/// the epoch, which ends the sessions and kills every other link of the
/// member's (another change, a reset mailed to the old address).
async fn an_email_change_waits_for_its_link_and_kills_the_old_ones(store: Store) {
    let ada = store
        .create_member(new_member("ada@example.com"), 1_000)
        .await
        .unwrap();
    let ask = |hash: u8, address: &'static str, expires_at: i64| {
        let store = store.clone();
        async move {
            store
                .create_email_change([hash; 32], ada.id, address, ada.epoch, expires_at)
                .await
                .unwrap()
        }
    };
    ask(1, "ada@new.example", 5_000).await;
    ask(2, "ada@other.example", 5_000).await;
    ask(3, "ada@late.example", 1_200).await;
    store
        .create_token(TokenPurpose::Reset, [4; 32], ada.id, ada.epoch, 5_000)
        .await
        .unwrap();
    store
        .create_session(session(5, ada.id, ada.epoch, 9_000))
        .await
        .unwrap();
    let found = |address: &'static str| {
        let store = store.clone();
        async move { store.member_by_email(address).await.unwrap() }
    };
    assert_eq!(found("ada@example.com").await.unwrap().id, ada.id);
    assert!(
        found("ada@new.example").await.is_none(),
        "nothing moved yet"
    );

    assert_eq!(
        store.take_email_change([3; 32], 1_200).await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(store.take_email_change([9; 32], 1_100).await.unwrap(), None);
    let (_, before) = store.changes_since(0).await.unwrap();
    let change = store.take_email_change([1; 32], 1_100).await.unwrap();
    assert_eq!(
        change,
        Some(EmailChange {
            member_id: ada.id,
            new_email: "ada@new.example".into(),
            epoch: ada.epoch
        })
    );
    assert_eq!(
        store.take_email_change([1; 32], 1_101).await.unwrap(),
        None,
        "a link works once"
    );
    store
        .set_email(ada.id, "ada@new.example", Some(ada.epoch), 1_102)
        .await
        .unwrap();
    let moved = found("ada@new.example").await.unwrap();
    assert_eq!((moved.id, moved.epoch), (ada.id, ada.epoch + 1));
    assert!(found("ada@example.com").await.is_none());
    let (changed, _) = store.changes_since(before).await.unwrap();
    assert_eq!(changed, [ada.id]);
    assert!(store.session([5; 32]).await.unwrap().is_none());
    assert_eq!(
        store.take_email_change([2; 32], 1_103).await.unwrap(),
        None,
        "asked for at the old epoch"
    );
    assert_eq!(
        store
            .take_token(TokenPurpose::Reset, [4; 32], 1_103)
            .await
            .unwrap(),
        None,
        "mailed to the old address"
    );
    // Written at an epoch the member has left: refused, nothing moves.
    let late = store
        .set_email(ada.id, "ada@late.example", Some(ada.epoch), 1_104)
        .await;
    assert!(matches!(late, Err(StoreError::Stale)), "{late:?}");
    assert!(found("ada@late.example").await.is_none());
    assert!(matches!(
        store
            .set_email(ada.id + 1000, "x@example.com", None, 1_105)
            .await,
        Err(StoreError::NotFound)
    ));
}

/// The unique address decides: another member's address is refused, and of
/// changes and a registration racing for one free address, one wins.
async fn an_address_is_one_members_even_when_changes_race_for_it(store: Store) {
    let ada = store
        .create_member(new_member("ada@example.com"), 1_000)
        .await
        .unwrap();
    let bob = store
        .create_member(new_member("bob@example.com"), 1_000)
        .await
        .unwrap();
    let refused = store
        .set_email(bob.id, "ada@example.com", None, 1_001)
        .await;
    assert!(matches!(refused, Err(StoreError::Duplicate)), "{refused:?}");
    let bob_now = store.member_by_id(bob.id).await.unwrap().unwrap();
    assert_eq!(bob_now, bob, "a refused change changes nothing");
    assert_eq!(
        store.member_by_id(ada.id).await.unwrap().unwrap().email,
        "ada@example.com"
    );

    let mut racers = Vec::new();
    for i in 0..8 {
        let m = store
            .create_member(new_member(&format!("racer{i}@example.com")), 1_000)
            .await
            .unwrap();
        racers.push(m.id);
    }
    // Spawned all before any is awaited, so they run together.
    let changes: Vec<_> = racers
        .iter()
        .map(|&id| {
            let store = store.clone();
            tokio::spawn(async move { store.set_email(id, "race@example.com", None, 1_002).await })
        })
        .collect();
    let registration = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .create_member(new_member("race@example.com"), 1_002)
                .await
                .map(|_| ())
        })
    };
    let mut won = 0;
    for attempt in changes.into_iter().chain([registration]) {
        match attempt.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::Duplicate) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(won, 1);
    let holders = store
        .list_members()
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.email == "race@example.com")
        .count();
    assert_eq!(holders, 1);
}

/// Runs each check against a fresh store made by `$open` (an async block).
macro_rules! conformance {
    ($module:ident, $open:expr) => {
        mod $module {
            use super::*;

            async fn run<F: Future<Output = ()>>(check: impl FnOnce(Store) -> F) {
                let dir = tempfile::tempdir().unwrap();
                let store: Store = $open(dir.path().to_owned()).await;
                check(store).await;
            }

            #[tokio::test]
            async fn members_are_unique_and_found_by_email_and_id() {
                run(super::members_are_unique_and_found_by_email_and_id).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_registrations_of_one_email_make_one_member() {
                run(super::concurrent_registrations_of_one_email_make_one_member).await
            }
            #[tokio::test]
            async fn credential_changes_bump_the_epoch_and_others_do_not() {
                run(super::credential_changes_bump_the_epoch_and_others_do_not).await
            }
            #[tokio::test]
            async fn only_a_new_group_bumps_the_grants() {
                run(super::only_a_new_group_bumps_the_grants).await
            }
            #[tokio::test]
            async fn a_session_is_replaced_once_by_its_successor() {
                run(super::a_session_is_replaced_once_by_its_successor).await
            }
            #[tokio::test]
            async fn registrations_never_confirmed_are_swept() {
                run(super::registrations_never_confirmed_are_swept).await
            }
            #[tokio::test]
            async fn groups_are_data_with_counts() {
                run(super::groups_are_data_with_counts).await
            }
            #[tokio::test]
            async fn a_session_is_stored_only_for_the_member_as_it_is_now() {
                run(super::a_session_is_stored_only_for_the_member_as_it_is_now).await
            }
            #[tokio::test]
            async fn sessions_are_stored_touched_and_ended() {
                run(super::sessions_are_stored_touched_and_ended).await
            }
            #[tokio::test]
            async fn tokens_work_once_for_their_purpose_epoch_and_lifetime() {
                run(super::tokens_work_once_for_their_purpose_epoch_and_lifetime).await
            }
            #[tokio::test]
            async fn a_password_written_at_an_old_epoch_is_refused() {
                run(super::a_password_written_at_an_old_epoch_is_refused).await
            }
            #[tokio::test]
            async fn every_member_change_is_in_the_change_log() {
                run(super::every_member_change_is_in_the_change_log).await
            }
            #[tokio::test]
            async fn a_deleted_member_leaves_nothing_but_a_change_record() {
                run(super::a_deleted_member_leaves_nothing_but_a_change_record).await
            }
            #[tokio::test]
            async fn an_email_change_waits_for_its_link_and_kills_the_old_ones() {
                run(super::an_email_change_waits_for_its_link_and_kills_the_old_ones).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_address_is_one_members_even_when_changes_race_for_it() {
                run(super::an_address_is_one_members_even_when_changes_race_for_it).await
            }
        }
    };
}

conformance!(sqlite, |dir: std::path::PathBuf| async move {
    Arc::new(SqliteStore::open(&dir.join("members.db")).await.unwrap()) as Store
});

/// Processes that open a new database at the same moment (the gateway and
/// a CLI job at first start) migrate it one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_opened_together_on_a_new_file_all_open() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members.db");
        let opens = (0..6).map(|_| {
            let path = path.clone();
            tokio::spawn(async move { SqliteStore::open(&path).await.map(|_| ()) })
        });
        for opened in futures_util::future::join_all(opens).await {
            let opened = opened.unwrap();
            assert!(opened.is_ok(), "{:?}", opened.err().map(|e| e.to_string()));
        }
    }
}

/// Members' emails and password hashes are for the gateway's user alone.
#[tokio::test]
async fn a_new_store_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/members.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store
        .create_member(new_member("ada@example.com"), 1)
        .await
        .unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("data")), 0o700);
    for file in ["members.db", "members.db-wal", "members.db-shm"] {
        assert_eq!(mode(&dir.path().join("data").join(file)), 0o600, "{file}");
    }
}

/// Specific to a file-backed store: everything survives closing and reopening.
#[tokio::test]
async fn sqlite_keeps_everything_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/members.db");
    {
        let store = SqliteStore::open(&path).await.unwrap();
        let m = store
            .create_member(new_member("ada@example.com"), 1)
            .await
            .unwrap();
        store.add_to_group(m.id, "vip", 2).await.unwrap();
        store
            .create_session(session(7, m.id, m.epoch, 9_999))
            .await
            .unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    let m = store
        .member_by_email("ada@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.groups, ["vip"]);
    assert_eq!(
        store.session([7; 32]).await.unwrap().unwrap().member_id,
        m.id
    );
}
