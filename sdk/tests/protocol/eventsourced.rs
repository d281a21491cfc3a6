use statehouse_schemas::cloudstate::{Forward, SideEffect, client_action::Action};

use crate::{
    model::{self, SERVICE, value},
    support::{UserFunction, reply_failure, reply_payload},
};

const ID: &str = "cart-1";

#[tokio::test]
async fn commands_emit_events_and_reply_in_order() -> anyhow::Result<()> {
    let uf = UserFunction::start(model::service()).await?;
    let mut entity = uf.open().await?;
    entity.init(SERVICE, ID, None)?;

    // Ids are echoed, whatever they are.
    entity.command(7, ID, "Emit", value("A"))?;
    let reply = entity.reply().await?;
    assert_eq!(reply.command_id, 7);
    assert_eq!(reply_payload(&reply), Some(&value("A")));
    assert_eq!(reply.events, [value("A")]);
    assert_eq!(reply.snapshot, None);
    assert!(reply.side_effects.is_empty());

    // Pipelined commands are answered one by one, in order.
    entity.command(8, ID, "Emit", value("BC"))?;
    entity.command(9, ID, "Get", value(""))?;
    let emitted = entity.reply().await?;
    assert_eq!(emitted.command_id, 8);
    assert_eq!(emitted.events, [value("B"), value("C")]);
    let got = entity.reply().await?;
    assert_eq!(got.command_id, 9);
    assert_eq!(reply_payload(&got), Some(&value("ABC")));
    assert!(got.events.is_empty());

    // Passivation: the proxy half-closes, the user function closes.
    entity.half_close();
    assert_eq!(entity.next().await?, None);
    uf.stop().await
}

#[tokio::test]
async fn snapshot_every_five_events_holds_the_state_after_them() -> anyhow::Result<()> {
    let uf = UserFunction::start(model::service()).await?;
    let mut entity = uf.open().await?;
    entity.init(SERVICE, ID, None)?;

    // The TCK's "multiple emitted events and snapshots" sequence.
    let steps = [
        ("A", None),
        ("B", None),
        ("C", None),
        ("D", None),
        ("E", Some("ABCDE")),
        ("FGH", None),
        ("IJ", Some("ABCDEFGHIJ")),
        ("K", None),
    ];
    for (id, (emit, snapshot)) in (1..).zip(steps) {
        entity.command(id, ID, "Emit", value(emit))?;
        let reply = entity.reply().await?;
        assert_eq!(reply.command_id, id);
        assert_eq!(reply.events.len(), emit.len(), "command {id}");
        assert_eq!(reply.snapshot, snapshot.map(value), "command {id}");
    }
    entity.command(9, ID, "Get", value(""))?;
    let reply = entity.reply().await?;
    assert_eq!(reply_payload(&reply), Some(&value("ABCDEFGHIJK")));
    assert_eq!(reply.snapshot, None, "no snapshot without events");
    Ok(())
}

#[tokio::test]
async fn init_with_snapshot_and_replayed_events_restores_state() -> anyhow::Result<()> {
    let uf = UserFunction::start(model::service()).await?;
    let mut entity = uf.open().await?;
    entity.init(SERVICE, ID, Some((5, value("ABCDE"))))?;
    entity.event(6, value("F"))?;
    entity.event(7, value("G"))?;

    entity.command(1, ID, "Get", value(""))?;
    assert_eq!(
        reply_payload(&entity.reply().await?),
        Some(&value("ABCDEFG"))
    );

    // The sequence continues from the replay: 7 + 3 crosses 10.
    entity.command(2, ID, "Emit", value("HIJ"))?;
    let reply = entity.reply().await?;
    assert_eq!(reply.events, [value("H"), value("I"), value("J")]);
    assert_eq!(reply.snapshot, Some(value("ABCDEFGHIJ")));

    // Events alone (no snapshot) restore too.
    let mut other = uf.open().await?;
    other.init(SERVICE, "cart-2", None)?;
    other.event(1, value("x"))?;
    other.event(2, value("y"))?;
    other.command(1, "cart-2", "Emit", value("zzz"))?;
    let reply = other.reply().await?;
    assert_eq!(reply_payload(&reply), Some(&value("xyzzz")));
    assert_eq!(reply.snapshot, Some(value("xyzzz")), "2 + 3 events = 5");
    Ok(())
}

#[tokio::test]
async fn failures_carry_no_events_and_leave_state_unchanged() -> anyhow::Result<()> {
    let uf = UserFunction::start(model::service()).await?;
    let mut entity = uf.open().await?;
    entity.init(SERVICE, ID, None)?;
    entity.command(1, ID, "Emit", value("ABCD"))?;
    entity.reply().await?;

    // ctx.fail after emitting and adding a side effect.
    entity.command(2, ID, "Fail", value("expected failure"))?;
    let failed = entity.reply().await?;
    assert_eq!(failed.command_id, 2);
    let failure = reply_failure(&failed).cloned().unwrap_or_default();
    assert_eq!(failure.command_id, 2);
    assert_eq!(failure.description, "expected failure");
    assert!(!failure.restart, "the state was never touched: no restart");
    assert!(failed.events.is_empty());
    assert!(failed.side_effects.is_empty());
    assert_eq!(failed.snapshot, None);

    // Returning Err does the same.
    entity.command(3, ID, "Reject", value("no way"))?;
    let rejected = entity.reply().await?;
    assert_eq!(
        reply_failure(&rejected).map(|f| f.description.as_str()),
        Some("no way")
    );
    assert!(rejected.events.is_empty());

    // The stream is still usable, the state unchanged, and the failed
    // events did not count towards the snapshot.
    entity.command(4, ID, "Get", value(""))?;
    assert_eq!(reply_payload(&entity.reply().await?), Some(&value("ABCD")));
    entity.command(5, ID, "Emit", value("E"))?;
    let reply = entity.reply().await?;
    assert_eq!(reply.snapshot, Some(value("ABCDE")));

    // A payload of the wrong type is a failure too, not a crash.
    entity.command(6, ID, "Get", statehouse_sdk::any::pack(&()))?;
    let wrong = entity.reply().await?;
    assert!(
        reply_failure(&wrong).is_some_and(|f| f.description.contains("statehouse.sdk.test.Value")),
        "{wrong:?}"
    );
    Ok(())
}

#[tokio::test]
async fn forwards_and_side_effects_go_with_the_events() -> anyhow::Result<()> {
    let uf = UserFunction::start(model::service()).await?;
    let mut entity = uf.open().await?;
    entity.init(SERVICE, ID, None)?;
    entity.command(1, ID, "Emit", value("ABCD"))?;
    entity.reply().await?;

    entity.command(2, ID, "Forward", value("to-get"))?;
    let reply = entity.reply().await?;
    assert_eq!(
        reply.client_action.and_then(|a| a.action),
        Some(Action::Forward(Forward {
            service_name: SERVICE.into(),
            command_name: "Get".into(),
            payload: Some(value("to-get")),
            metadata: None,
        }))
    );
    assert_eq!(
        reply.side_effects,
        [SideEffect {
            service_name: SERVICE.into(),
            command_name: "Get".into(),
            payload: Some(value("effect")),
            synchronous: true,
            metadata: None,
        }]
    );
    assert_eq!(reply.events, [value("F")]);
    assert_eq!(reply.snapshot, Some(value("ABCDF")));
    Ok(())
}

#[tokio::test]
async fn protocol_violations_end_the_stream_with_a_failure() -> anyhow::Result<()> {
    let uf = UserFunction::start(model::service()).await?;

    let mut stream = uf.open().await?;
    stream.command(1, ID, "Get", value(""))?;
    let failure = stream.stream_failure().await?;
    assert_eq!(failure.command_id, 1);
    assert!(
        failure.description.starts_with("Protocol error: "),
        "{failure:?}"
    );

    let mut stream = uf.open().await?;
    stream.init(SERVICE, ID, None)?;
    stream.init(SERVICE, ID, None)?;
    let failure = stream.stream_failure().await?;
    assert_eq!(failure.command_id, 0);
    assert!(
        failure.description.contains("already initialised"),
        "{failure:?}"
    );

    let mut stream = uf.open().await?;
    stream.init("com.example.Unknown", ID, None)?;
    let failure = stream.stream_failure().await?;
    assert_eq!(
        failure.description,
        "Protocol error: Service not found: com.example.Unknown"
    );

    let mut stream = uf.open().await?;
    stream.init(SERVICE, ID, None)?;
    stream.command(1, "someone-else", "Get", value(""))?;
    let failure = stream.stream_failure().await?;
    assert_eq!(failure.command_id, 1);
    assert!(failure.description.contains("someone-else"), "{failure:?}");

    // An event that does not apply ends the stream; nothing is persisted.
    let mut stream = uf.open().await?;
    stream.init(SERVICE, ID, None)?;
    stream.command(1, ID, "Poison", value(""))?;
    let failure = stream.stream_failure().await?;
    assert_eq!(failure.command_id, 1);
    assert!(
        failure.description.starts_with("Unexpected failure: "),
        "{failure:?}"
    );

    // So does a snapshot the entity cannot read.
    let mut stream = uf.open().await?;
    stream.init(SERVICE, ID, Some((5, statehouse_sdk::any::pack(&()))))?;
    let failure = stream.stream_failure().await?;
    assert!(failure.description.contains("snapshot"), "{failure:?}");

    uf.stop().await
}

#[tokio::test]
async fn a_panic_fails_only_its_stream_and_shutdown_ends_the_rest() -> anyhow::Result<()> {
    let uf = UserFunction::start(model::service()).await?;
    let mut healthy = uf.open().await?;
    healthy.init(SERVICE, "healthy", None)?;
    healthy.command(1, "healthy", "Emit", value("A"))?;
    healthy.reply().await?;

    let mut doomed = uf.open().await?;
    doomed.init(SERVICE, ID, None)?;
    doomed.command(1, ID, "Panic", value("boom"))?;
    let failure = doomed.stream_failure().await?;
    assert_eq!(failure.command_id, 1);
    assert!(
        failure.description.starts_with("Unexpected failure: "),
        "{failure:?}"
    );
    assert!(failure.description.contains("boom"), "{failure:?}");

    // Other streams and new streams are unaffected.
    healthy.command(2, "healthy", "Get", value(""))?;
    assert_eq!(reply_payload(&healthy.reply().await?), Some(&value("A")));
    let mut restarted = uf.open().await?;
    restarted.init(SERVICE, ID, None)?;
    restarted.command(1, ID, "Get", value(""))?;
    assert_eq!(reply_payload(&restarted.reply().await?), Some(&value("")));

    // Shutting down ends the streams still open, then the server returns.
    uf.stop().await?;
    assert_eq!(healthy.next().await?, None);
    assert_eq!(restarted.next().await?, None);
    Ok(())
}
