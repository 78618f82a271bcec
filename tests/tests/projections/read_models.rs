//! The KV read-model store: compare-and-set.

use cqrs_core::ReadModelStore;
use cqrs_core::read_model::{Applied, ReadModelError, Write, apply_once, apply_once_batch};
use cqrs_nats::KvReadModelStore;
use cqrs_tests::jetstream as fixture;

#[tokio::test]
async fn kv_read_model_store_compare_and_set() {
    let f = fixture().await.unwrap();
    let store = KvReadModelStore::<Vec<String>>::open(f.store.jetstream(), "model", 1)
        .await
        .unwrap();
    assert!(store.get("k").await.unwrap().is_none());
    let r1 = store.put("k", vec!["a".into()], 3, None).await.unwrap();
    let err = store.put("k", vec![], 4, None).await.unwrap_err();
    assert!(
        matches!(err, ReadModelError::Conflict { expected: None, .. }),
        "{err}"
    );
    let err = store.put("k", vec![], 4, Some(r1 + 7)).await.unwrap_err();
    assert!(matches!(err, ReadModelError::Conflict { .. }), "{err}");
    let r2 = store
        .put("k", vec!["a".into(), "b".into()], 4, Some(r1))
        .await
        .unwrap();
    assert!(r2 > r1);
    let entry = store.get("k").await.unwrap().unwrap();
    assert_eq!(
        (entry.value, entry.position, entry.revision),
        (vec!["a".to_owned(), "b".to_owned()], 4, r2)
    );
    // A stale revision after a newer write is refused.
    let err = store.put("k", vec![], 5, Some(r1)).await.unwrap_err();
    assert!(matches!(err, ReadModelError::Conflict { expected: Some(r), .. } if r == r1));

    // A batch: each write stands alone, a conflict on one leaves the others written.
    let outcomes = store
        .put_batch(vec![
            Write {
                key: "k".into(),
                value: vec![],
                position: 5,
                expected_revision: Some(r1),
            },
            Write {
                key: "k2".into(),
                value: vec!["x".into()],
                position: 6,
                expected_revision: None,
            },
            Write {
                key: "k3".into(),
                value: vec!["y".into()],
                position: 7,
                expected_revision: None,
            },
        ])
        .await;
    assert!(matches!(outcomes[0], Err(ReadModelError::Conflict { .. })));
    assert!(outcomes[1].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
    assert_eq!(store.get("k3").await.unwrap().unwrap().value, ["y"]);
    assert_eq!(store.get("k").await.unwrap().unwrap().revision, r2);
    // Folded per key through the batch helper: two events of `k2`, one write.
    let applied = apply_once_batch(
        &store,
        [("k2".to_owned(), 8, "p"), ("k2".to_owned(), 9, "q")],
        |old: Option<Vec<String>>, s: &&str| {
            let mut v = old.unwrap_or_default();
            v.push((*s).to_owned());
            v
        },
    )
    .await
    .unwrap();
    assert_eq!(applied, 2);
    let k2 = store.get("k2").await.unwrap().unwrap();
    assert_eq!(
        (k2.value, k2.position),
        (vec!["x".to_owned(), "p".into(), "q".into()], 9)
    );

    // Keys are arbitrary strings, listed back exactly.
    let odd = "order.1 *>é";
    store.put(odd, vec![], 9, None).await.unwrap();
    store.put("", vec!["empty".into()], 9, None).await.unwrap();
    let keys: Vec<String> = store
        .entries()
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["", "k", "k2", "k3", odd]);

    // `apply_once` on KV: a redelivered position is skipped; racing writers both land.
    let counts = KvReadModelStore::<u64>::open(f.store.jetstream(), "counts", 1)
        .await
        .unwrap();
    assert_eq!(
        apply_once(&counts, "c", 1, |old| old.unwrap_or(0) + 1)
            .await
            .unwrap(),
        Applied::Written(1)
    );
    assert_eq!(
        apply_once(&counts, "c", 1, |old| old.unwrap_or(0) + 1)
            .await
            .unwrap(),
        Applied::AlreadyApplied
    );
    let racers = (2..=5).map(|position| {
        let counts = counts.clone();
        tokio::spawn(async move {
            apply_once(&counts, "d", position, |old| old.unwrap_or(0) + position).await
        })
    });
    for racer in racers {
        racer.await.unwrap().unwrap();
    }
    let d = counts.get("d").await.unwrap().unwrap();
    // Each racer either wrote or found a higher position already there.
    assert!(d.value >= 5 && d.position == 5, "{d:?}");
    // A value of another shape is a codec error, not a panic.
    let wrong = KvReadModelStore::<Vec<String>>::open(f.store.jetstream(), "counts", 1)
        .await
        .unwrap();
    assert!(matches!(
        wrong.get("c").await,
        Err(ReadModelError::Codec { .. })
    ));
}
