//! The store against the real Cassandra node: migrations, journal, snapshots, values, CRDT states,
//! checkpoints.

use bytes::Bytes;
use statehouse_store::{
    CrdtRow, Error, JournalRow, Options, SnapshotRow, Store, ValueRow, migrations,
};
use statehouse_test_support::{cassandra_contact_point, unique_keyspace};

fn options() -> Options {
    Options {
        contact_points: vec![cassandra_contact_point()],
        keyspace: unique_keyspace("t"),
        request_timeout_ms: 30_000,
        ..Options::default()
    }
}

fn event(entity: &str, seq: i64) -> JournalRow {
    JournalRow {
        service: "cart".into(),
        entity_id: entity.into(),
        seq,
        type_url: "type.googleapis.com/com.example.ItemAdded".into(),
        payload: Bytes::from(format!("{entity}-{seq}")),
        command_id: Some(format!("cmd-{seq}")),
        idempotency_key: (seq % 2 == 0).then(|| format!("idem-{seq}")),
        timestamp_ms: 1_700_000_000_000 + seq,
        writer_id: "p1".into(),
        writer_epoch: 3,
        reply: (seq % 3 == 0).then(|| {
            (
                "type.googleapis.com/google.protobuf.Empty".to_string(),
                Bytes::new(),
            )
        }),
        partition: 2,
        offset: 100 + seq,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_required() {
    let options = options();
    // Before migrating, the store refuses to start and says what to run.
    let err = Store::connect(&options)
        .await
        .err()
        .expect("unmigrated keyspace accepted");
    assert!(matches!(err, Error::NotMigrated { .. }), "{err}");
    assert!(
        err.to_string().contains("statehouse admin migrate"),
        "{err}"
    );

    let first = migrations::run(&options).await.unwrap();
    let all: Vec<i32> = migrations::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(first.applied, all);
    assert!(first.already_applied.is_empty());
    let second = migrations::run(&options).await.unwrap();
    assert!(second.applied.is_empty());
    assert_eq!(second.already_applied, all);

    let store = Store::connect(&options).await.unwrap();
    assert_eq!(store.keyspace(), options.keyspace);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_and_snapshots_round_trip() {
    let options = options();
    migrations::run(&options).await.unwrap();
    let store = Store::connect(&options).await.unwrap();

    // Rows of three entities, given out of order and with a repeat (a retried backup batch).
    let mut rows: Vec<JournalRow> = (1..=20)
        .rev()
        .flat_map(|seq| ["a", "b", "c#1"].map(|e| event(e, seq)))
        .collect();
    rows.extend((5..=8).map(|seq| event("a", seq)));
    store.write_journal(&rows).await.unwrap();
    store.write_journal(&rows[..10]).await.unwrap();

    let a = store.read_journal("cart", "a", 1).await.unwrap();
    assert_eq!(a.len(), 20, "duplicates must not add rows");
    assert_eq!(
        a.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    assert_eq!(a[4], event("a", 5), "every column round-trips");
    let tail = store.read_journal("cart", "c#1", 18).await.unwrap();
    assert_eq!(
        tail.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![18, 19, 20]
    );
    assert!(
        store
            .read_journal("cart", "nobody", 1)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .read_journal("other-service", "a", 1)
            .await
            .unwrap()
            .is_empty()
    );

    let snapshot = |seq: i64| SnapshotRow {
        service: "cart".into(),
        entity_id: "a".into(),
        seq,
        type_url: "type.googleapis.com/com.example.Cart".into(),
        snapshot: Bytes::from(format!("state@{seq}")),
        timestamp_ms: 1_700_000_000_000,
    };
    for seq in [5, 15, 10] {
        store.write_snapshot(&snapshot(seq)).await.unwrap();
    }
    assert_eq!(
        store.latest_snapshot("cart", "a", None).await.unwrap(),
        Some(snapshot(15))
    );
    assert_eq!(
        store.latest_snapshot("cart", "a", Some(12)).await.unwrap(),
        Some(snapshot(10))
    );
    assert_eq!(
        store.latest_snapshot("cart", "a", Some(4)).await.unwrap(),
        None
    );
    assert_eq!(
        store.latest_snapshot("cart", "b", None).await.unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_and_values_never_go_backwards() {
    let options = options();
    migrations::run(&options).await.unwrap();
    let store = Store::connect(&options).await.unwrap();
    let topic = "statehouse.cart.journal";

    assert_eq!(store.checkpoint("cart", topic, 0).await.unwrap(), 0);
    store.write_checkpoint("cart", topic, 0, 100).await.unwrap();
    store.write_checkpoint("cart", topic, 1, 7).await.unwrap();
    // A late, older checkpoint (e.g. from a deposed owner) does not move it back.
    store.write_checkpoint("cart", topic, 0, 50).await.unwrap();
    store.write_checkpoint("cart", topic, 1, 9).await.unwrap();
    let all = store.checkpoints("cart", topic).await.unwrap();
    assert_eq!(all.into_iter().collect::<Vec<_>>(), vec![(0, 100), (1, 9)]);
    assert!(store.checkpoints("cart", "other").await.unwrap().is_empty());

    let value = |offset: i64, v: Option<&str>| ValueRow {
        service: "cart".into(),
        entity_id: "v1".into(),
        seq: offset,
        type_url: "type.googleapis.com/com.example.Cart".into(),
        value: v.map(|s| Bytes::from(s.to_string())),
        partition: 0,
        offset,
        record: Some(Bytes::from(format!("record@{offset}"))),
    };
    store.write_value(&value(10, Some("ten"))).await.unwrap();
    store.write_value(&value(5, Some("five"))).await.unwrap();
    assert_eq!(
        store.read_value("cart", "v1").await.unwrap(),
        Some(value(10, Some("ten")))
    );
    store.write_value(&value(20, None)).await.unwrap();
    let deleted = store.read_value("cart", "v1").await.unwrap().unwrap();
    assert_eq!((deleted.value, deleted.offset), (None, 20));
    assert_eq!(store.read_value("cart", "nobody").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crdt_states_are_read_back_per_partition_and_never_go_backwards() {
    let options = options();
    migrations::run(&options).await.unwrap();
    let store = Store::connect(&options).await.unwrap();
    let row = |key: &str, partition: i32, offset: i64, state: Option<&str>| CrdtRow {
        service: "presence".into(),
        partition,
        entity_key: format!("presence|{key}"),
        persistence_id: "presence".into(),
        entity_id: key.into(),
        state: state.map(|s| Bytes::from(s.to_string())),
        deleted: state.is_none(),
        pruned: if offset > 10 {
            vec!["p0:1".into()]
        } else {
            vec![]
        },
        offset,
    };
    store
        .write_crdts(&[
            row("a", 0, 10, Some("a@10")),
            row("b", 0, 12, None),
            row("c", 1, 3, Some("c@3")),
        ])
        .await
        .unwrap();
    // A late, older state (a deposed owner's) does not replace a newer one.
    store
        .write_crdts(&[row("a", 0, 8, Some("a@8"))])
        .await
        .unwrap();
    let mut p0 = store.read_crdts("presence", 0).await.unwrap();
    p0.sort_by(|x, y| x.entity_key.cmp(&y.entity_key));
    assert_eq!(
        p0,
        vec![row("a", 0, 10, Some("a@10")), row("b", 0, 12, None)]
    );
    assert_eq!(
        store.read_crdts("presence", 1).await.unwrap(),
        vec![row("c", 1, 3, Some("c@3"))]
    );
    assert!(store.read_crdts("presence", 2).await.unwrap().is_empty());
}
