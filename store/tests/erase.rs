//! Erasing an entity's rows against the real Cassandra node: counted, removed up to the erased
//! seq (journal and snapshots) or as of the tombstone's offset (value), other entities kept, and
//! rows written afterwards (the entity started again) not shadowed by the delete.

use bytes::Bytes;
use statehouse_store::{EntityRows, JournalRow, Options, SnapshotRow, Store, ValueRow, migrations};
use statehouse_test_support::{cassandra_contact_point, unique_keyspace};

fn event(entity: &str, seq: i64, offset: i64) -> JournalRow {
    JournalRow {
        service: "cart".into(),
        entity_id: entity.into(),
        seq,
        type_url: "t".into(),
        payload: Bytes::from(format!("{entity}-{seq}")),
        command_id: None,
        idempotency_key: None,
        timestamp_ms: 1,
        writer_id: "p1".into(),
        writer_epoch: 1,
        reply: None,
        partition: 0,
        offset,
    }
}

fn snapshot(entity: &str, seq: i64) -> SnapshotRow {
    SnapshotRow {
        service: "cart".into(),
        entity_id: entity.into(),
        seq,
        type_url: "s".into(),
        snapshot: Bytes::from_static(b"state"),
        timestamp_ms: 1,
    }
}

fn value(entity: &str, seq: i64, offset: i64) -> ValueRow {
    ValueRow {
        service: "cart".into(),
        entity_id: entity.into(),
        seq,
        type_url: "v".into(),
        value: Some(Bytes::from(format!("v{seq}"))),
        partition: 0,
        offset,
        record: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entity_is_erased_and_may_start_again() {
    let options = Options {
        contact_points: vec![cassandra_contact_point()],
        keyspace: unique_keyspace("erase"),
        request_timeout_ms: 30_000,
        ..Options::default()
    };
    migrations::run(&options).await.unwrap();
    let store = Store::connect(&options).await.unwrap();

    let rows: Vec<_> = (1..=6)
        .map(|seq| event("p|a", seq, 10 + seq))
        .chain([event("p|b", 1, 30)])
        .collect();
    store.write_journal(&rows).await.unwrap();
    for seq in [5, 3] {
        store.write_snapshot(&snapshot("p|a", seq)).await.unwrap();
    }
    store.write_snapshot(&snapshot("p|b", 1)).await.unwrap();
    store.write_value(&value("p|a", 2, 40)).await.unwrap();
    store.write_value(&value("p|b", 1, 41)).await.unwrap();

    assert_eq!(
        store.entity_rows("cart", "p|a").await.unwrap(),
        EntityRows {
            journal: 6,
            snapshots: 2,
            value: true
        }
    );
    assert_eq!(
        store
            .snapshots("cart", "p|a")
            .await
            .unwrap()
            .iter()
            .map(|s| s.seq)
            .collect::<Vec<_>>(),
        [5, 3],
        "newest first"
    );

    store.erase_journal("cart", "p|a", 6).await.unwrap();
    store.erase_value("cart", "p|a", 50).await.unwrap();
    assert_eq!(
        store.entity_rows("cart", "p|a").await.unwrap(),
        EntityRows::default()
    );
    assert!(
        store
            .read_journal("cart", "p|a", 1)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.latest_snapshot("cart", "p|a", None).await.unwrap(),
        None
    );
    assert_eq!(store.read_value("cart", "p|a").await.unwrap(), None);
    // Erasing again is harmless; the other entity keeps everything.
    store.erase_journal("cart", "p|a", 6).await.unwrap();
    assert_eq!(
        store.entity_rows("cart", "p|b").await.unwrap(),
        EntityRows {
            journal: 1,
            snapshots: 1,
            value: true
        }
    );

    // A late write of the value as of an offset before the tombstone stays erased; the entity
    // started again (later offsets, seq from 1) is stored.
    store.write_value(&value("p|a", 2, 40)).await.unwrap();
    assert_eq!(store.read_value("cart", "p|a").await.unwrap(), None);
    store.write_value(&value("p|a", 1, 60)).await.unwrap();
    assert_eq!(
        store.read_value("cart", "p|a").await.unwrap().unwrap().seq,
        1
    );
    store.write_journal(&[event("p|a", 1, 61)]).await.unwrap();
    store.write_snapshot(&snapshot("p|a", 1)).await.unwrap();
    let journal = store.read_journal("cart", "p|a", 1).await.unwrap();
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].offset, 61);
    assert_eq!(
        store.entity_rows("cart", "p|a").await.unwrap(),
        EntityRows {
            journal: 1,
            snapshots: 1,
            value: true
        }
    );
}
