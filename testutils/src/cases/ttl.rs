//! TTLs, keep-alive and closing a store.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kvstore_core::{Candidate, ElectionOptions, Error, LockOptions, MAX_TTL, Store, WriteOptions};

use super::watch::expect_state;
use crate::{EVENT_TIMEOUT, Opener, cleanup, eventually, next_within, ok, scratch_dir, ttl};

/// A TTL over [`MAX_TTL`] — `Duration::MAX` among them — is refused with `InvalidConfig`
/// naming the maximum, before anything is written, by `put`, `put` with `keep_alive`,
/// `atomic_put`, `new_lock` and `Candidate::campaign`; it never panics. (Where TTL keys are
/// not supported, the write may be refused as `CallNotSupported` instead.)
pub async fn ttl_over_the_maximum(opener: &Opener) {
    let store = opener.open().await;
    let dir = scratch_dir("ttl_max");
    let key = format!("{dir}/k");
    let over = MAX_TTL + Duration::from_millis(1);
    for long in [Duration::MAX, over] {
        for opts in [
            WriteOptions::default().with_ttl(long),
            WriteOptions::default().with_ttl(long).with_keep_alive(true),
        ] {
            for result in [
                store.put(&key, b"v", Some(&opts)).await,
                store.atomic_put(&key, b"v", None, Some(&opts)).await,
            ] {
                match result {
                    Err(Error::InvalidConfig { source, .. }) => assert!(
                        source.to_string().contains("MAX_TTL"),
                        "the refusal names the maximum: {source}"
                    ),
                    Err(Error::CallNotSupported { .. }) if !store.capabilities().ttl => {}
                    other => panic!(
                        "a write with a TTL of {long:?}: expected InvalidConfig, got {other:?}"
                    ),
                }
            }
        }
        assert!(
            !ok(store.exists(&key, None).await, "exists"),
            "a refused write wrote nothing"
        );
        let lock = LockOptions::default().with_ttl(long);
        match store.new_lock(&key, Some(&lock)).await {
            Err(Error::InvalidConfig { source, .. }) => {
                assert!(source.to_string().contains("MAX_TTL"), "{source}");
            }
            Err(Error::CallNotSupported { .. }) if !store.capabilities().lock => {}
            other => panic!(
                "new_lock with a TTL of {long:?}: expected InvalidConfig, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    if store.capabilities().lock {
        let election = ElectionOptions::default().with_ttl(Duration::MAX);
        let candidate = Candidate::new(
            store.clone(),
            &format!("{dir}/leader"),
            "v",
            Some(&election),
        );
        let campaign = tokio::time::timeout(EVENT_TIMEOUT, candidate.campaign())
            .await
            .expect("a refused campaign returns at once");
        assert_err!(
            campaign,
            Error::InvalidConfig { .. },
            "campaign with a TTL of Duration::MAX"
        );
    }
    assert_err!(
        store.list(&dir, None).await,
        Error::KeyNotFound { .. },
        "nothing written under the dir"
    );
    let _ = store.close().await;
}

/// A TTL key survives until its TTL and is gone within TTL + slack; a watcher sees `None`.
pub async fn ttl_expiry(opener: &Opener) {
    let store = opener.open().await;
    let dir = scratch_dir("ttl");
    let key = format!("{dir}/ephemeral");
    if !store.capabilities().ttl {
        assert_err!(
            store.put(&key, b"v", Some(&ttl(opener.ttl))).await,
            Error::CallNotSupported { .. },
            "put with TTL"
        );
        return;
    }
    let mut watch = if store.capabilities().watch {
        let mut s = ok(store.watch(&key, None).await, "watch");
        expect_state(next_within(&mut s, "initial").await, None, "initial");
        Some(s)
    } else {
        None
    };
    let written = Instant::now();
    ok(
        store
            .put(&key, b"short-lived", Some(&ttl(opener.ttl)))
            .await,
        "put with TTL",
    );
    let persistent = format!("{dir}/persistent");
    ok(
        store.put(&persistent, b"stays", None).await,
        "put without TTL",
    );
    if let Some(s) = watch.as_mut() {
        expect_state(
            next_within(s, "put").await,
            Some(b"short-lived"),
            "put seen",
        );
    }
    // Still there just before the TTL (checked at 80 % of it).
    tokio::time::sleep((opener.ttl * 4 / 5).saturating_sub(written.elapsed())).await;
    let present = ok(store.exists(&key, None).await, "exists");
    // The server's TTL starts no earlier than the put was sent: an answer received before
    // `written + ttl` was given while the key had to exist. A later answer proves nothing.
    let answered = written.elapsed();
    assert!(
        answered < opener.ttl,
        "the check at 80 % of the TTL was answered only {answered:?} after the put, past the \
         TTL ({:?}): too slow to tell whether the key lived its TTL",
        opener.ttl
    );
    assert!(present, "a TTL key must not disappear before its TTL");
    let bound = opener.ttl + opener.ttl_slack;
    match watch.as_mut() {
        Some(s) => {
            let item = tokio::time::timeout(bound + Duration::from_secs(1), s.next())
                .await
                .expect("the watcher must see the expiry")
                .expect("stream open");
            expect_state(item, None, "expiry yields None");
            assert!(
                written.elapsed() >= opener.ttl,
                "expired after {:?}, before its TTL",
                written.elapsed()
            );
        }
        None => {
            let gone = eventually(bound, || async {
                !ok(store.exists(&key, None).await, "exists")
            })
            .await;
            assert!(gone, "a TTL key must be gone within TTL + slack");
        }
    }
    assert!(
        !ok(store.exists(&key, None).await, "exists"),
        "expired key must not be readable"
    );
    assert_err!(
        store.get(&key, None).await,
        Error::KeyNotFound { .. },
        "get of an expired key"
    );
    assert!(
        ok(store.exists(&persistent, None).await, "exists"),
        "a key without TTL stays"
    );
    // Overwriting without a TTL removes the TTL.
    ok(
        store.put(&key, b"v", Some(&ttl(opener.ttl))).await,
        "put with TTL",
    );
    ok(
        store.put(&key, b"forever", None).await,
        "overwrite without TTL",
    );
    // So does a compare-and-swap without a TTL.
    let swapped = format!("{dir}/swapped");
    let prev = ok(
        store
            .atomic_put(&swapped, b"v", None, Some(&ttl(opener.ttl)))
            .await,
        "atomic_put with TTL",
    );
    ok(
        store
            .atomic_put(&swapped, b"forever", Some(&prev), None)
            .await,
        "compare-and-swap without TTL",
    );
    tokio::time::sleep(bound).await;
    assert!(
        ok(store.exists(&key, None).await, "exists"),
        "overwriting without TTL must clear the TTL"
    );
    assert!(
        ok(store.exists(&swapped, None).await, "exists"),
        "a compare-and-swap without TTL must clear the TTL"
    );
    cleanup(&*store, &dir).await;
    let _ = store.close().await;
}

/// `keep_alive` keeps a TTL key alive while its store is open; after `close()` it expires.
pub async fn keep_alive(opener: &Opener) {
    let (owner, observer) = (opener.open().await, opener.open().await);
    let dir = scratch_dir("keep_alive");
    let key = format!("{dir}/service");
    if !owner.capabilities().keep_alive {
        let opts = ttl(opener.ttl).with_keep_alive(true);
        assert_err!(
            owner.put(&key, b"v", Some(&opts)).await,
            Error::CallNotSupported { .. },
            "keep_alive"
        );
        return;
    }
    let opts = WriteOptions::default()
        .with_ttl(opener.ttl)
        .with_keep_alive(true);
    ok(
        owner.put(&key, b"10.0.0.1:80", Some(&opts)).await,
        "put with keep_alive",
    );
    // Well past the TTL plus its slack, the key must still be there.
    tokio::time::sleep(opener.ttl * 2 + opener.ttl_slack).await;
    assert!(
        ok(observer.exists(&key, None).await, "exists"),
        "keep_alive must renew the key while the store is open"
    );
    let closed = Instant::now();
    ok(owner.close().await, "close");
    let bound = opener.ttl + opener.ttl_slack + Duration::from_secs(1);
    let gone = eventually(bound, || async {
        !ok(observer.exists(&key, None).await, "exists")
    })
    .await;
    assert!(
        gone,
        "after close() the kept-alive key must expire within TTL + slack ({bound:?})"
    );
    assert!(closed.elapsed() <= bound + Duration::from_millis(100));
    cleanup(&*observer, &dir).await;
    let _ = observer.close().await;
}

/// `close()` ends watches; every later call fails.
pub async fn close_ends_everything(opener: &Opener) {
    let (store, other) = (opener.open().await, opener.open().await);
    let dir = scratch_dir("close");
    let key = format!("{dir}/k");
    ok(store.put(&key, b"v", None).await, "put");
    let mut watch = if store.capabilities().watch {
        let mut s = ok(store.watch(&key, None).await, "watch");
        next_within(&mut s, "initial").await.expect("initial");
        Some(s)
    } else {
        None
    };
    let mut tree = if store.capabilities().watch_tree {
        let mut s = ok(store.watch_tree(&dir, None).await, "watch_tree");
        next_within(&mut s, "initial").await.expect("initial");
        Some(s)
    } else {
        None
    };
    ok(store.close().await, "close");
    ok(store.close().await, "a second close is a no-op");
    for (name, s) in [
        (
            "watch",
            watch.as_mut().map(|s| s.map(|i| i.map(|_| ())).boxed()),
        ),
        (
            "watch_tree",
            tree.as_mut().map(|s| s.map(|i| i.map(|_| ())).boxed()),
        ),
    ] {
        let Some(mut s) = s else { continue };
        // The stream may report the close as one final error, then it must end.
        let ended = tokio::time::timeout(EVENT_TIMEOUT, async {
            while let Some(item) = s.next().await {
                if item.is_err() {
                    return s.next().await.is_none();
                }
            }
            true
        })
        .await;
        assert_eq!(ended, Ok(true), "{name} must end after close()");
    }
    assert!(
        store.get(&key, None).await.is_err(),
        "get after close must fail"
    );
    assert!(
        store.put(&key, b"v", None).await.is_err(),
        "put after close must fail"
    );
    assert!(
        store.list(&dir, None).await.is_err(),
        "list after close must fail"
    );
    assert!(
        store.watch(&key, None).await.is_err(),
        "watch after close must fail"
    );
    assert!(
        store.new_lock(&key, None).await.is_err(),
        "new_lock after close must fail"
    );
    // Other handles are unaffected.
    assert_eq!(
        &ok(other.get(&key, None).await, "get on another handle").value[..],
        b"v"
    );
    cleanup(&*other, &dir).await;
    let _ = other.close().await;
}
