//! Proves the engine's durability contract against a real, throw-away `redis-server`: an answer is only given once the order's snapshot is in the store, acknowledged orders survive engine restarts, Redis restarts and `kill -9`, stale writers are refused (by fencing: see `tests/fencing.rs`), store outages fail commands instead of acknowledging them, passivation keeps the live set bounded, and a repeated command id is applied once.

mod support;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orderly::config::Settings;
use orderly::domain::{Command, CommandEnvelope, OrderId, OrderStatus};
use orderly::engine::{
    Admission, BatchItem, CommandOutcome, CommandResult, Engine, EngineError, Request,
};
use orderly::store::redis::RedisStore;
use orderly::store::SnapshotStore;
use support::orders::new_order;
use support::redis_server::RedisServer;

use support::calls::within;
use support::settings::for_store as settings_for;

async fn open_store(settings: &Settings) -> Arc<dyn SnapshotStore> {
    within("open store", orderly::store::open(settings))
        .await
        .unwrap_or_else(|e| panic!("cannot open store {}: {e}", settings.store.url))
}

fn acked(result: CommandResult, what: &str) -> CommandOutcome {
    result.unwrap_or_else(|e| panic!("{what}: expected an acknowledgement, got {e:?}"))
}

/// Sends one envelope to an order.
async fn send(engine: &Engine, id: OrderId, envelope: CommandEnvelope) -> CommandResult {
    within(
        "execute",
        engine.execute(id, Request::Command(envelope), Admission::Wait),
    )
    .await
}

/// Sends one command with a fresh command id.
async fn run(engine: &Engine, id: OrderId, command: Command) -> CommandResult {
    send(engine, id, CommandEnvelope::new(command)).await
}

fn pay() -> Command {
    Command::StartPayment { method: None }
}

fn ship() -> Command {
    Command::ShipOrder {
        tracking_number: Some("TRACK-1".into()),
    }
}

/// Places one order and pays it; returns its id and the acknowledged state (Paid, v3).
async fn place_and_pay_one(engine: &Engine, n: u64) -> (OrderId, OrderStatus, u64) {
    let placed = acked(
        within("place", engine.place(new_order(n), Admission::Wait)).await,
        "place",
    );
    assert_eq!(placed.order.version, 1);
    assert_eq!(placed.order.status, OrderStatus::PendingPayment);
    let id = placed.order.id();
    let paid = acked(run(engine, id, pay()).await, "pay");
    assert_eq!(paid.order.status, OrderStatus::Paid);
    assert_eq!(
        paid.order.version, 3,
        "place, start payment, payment result"
    );
    (id, paid.order.status, paid.order.version)
}

/// Places and pays `n` orders with two `execute_batch` calls; returns the acknowledged states.
async fn place_and_pay_batch(engine: &Engine, n: u64) -> Vec<(OrderId, OrderStatus, u64)> {
    let ids: Vec<OrderId> = (0..n).map(|_| OrderId::new()).collect();
    let places = ids
        .iter()
        .zip(0..)
        .map(|(id, i)| BatchItem::place(*id, new_order(i)))
        .collect();
    let placed = within("place batch", engine.execute_batch(places, Admission::Wait)).await;
    for (result, id) in placed.into_iter().zip(&ids) {
        let outcome = acked(result, "batch place");
        assert_eq!(outcome.order.id(), *id);
        assert_eq!(outcome.order.version, 1);
    }
    let pays = ids
        .iter()
        .map(|id| BatchItem::command(*id, pay()))
        .collect();
    let paid = within("pay batch", engine.execute_batch(pays, Admission::Wait)).await;
    paid.into_iter()
        .zip(&ids)
        .map(|(result, id)| {
            let outcome = acked(result, "batch pay");
            assert_eq!(outcome.order.status, OrderStatus::Paid);
            assert_eq!(outcome.order.version, 3);
            (*id, outcome.order.status, outcome.order.version)
        })
        .collect()
}

/// Reads every order in one batch.
async fn read_batch(engine: &Engine, ids: &[OrderId]) -> Vec<CommandResult> {
    let items = ids
        .iter()
        .map(|id| BatchItem::existing(*id, Request::Read))
        .collect();
    within("read batch", engine.execute_batch(items, Admission::Wait)).await
}

/// The version field of an order's Redis hash (None: no such order).
fn stored_version(
    server: &RedisServer,
    settings: &Settings,
    engine: &Engine,
    id: OrderId,
) -> Option<i64> {
    let key = RedisStore::order_key(&settings.store.redis.key_prefix, engine.shard_of(id), id);
    support::stored::stored_version(server, &key)
}

/// Runs a blocking harness operation (stop, restart, kill) off the actix thread, so the Redis
/// connections and tasks driven by that thread keep running meanwhile.
async fn server_op(
    server: RedisServer,
    op: impl FnOnce(&mut RedisServer) + Send + 'static,
) -> RedisServer {
    let task = tokio::task::spawn_blocking(move || {
        let mut server = server;
        op(&mut server);
        server
    });
    within("redis-server operation", task)
        .await
        .expect("redis-server operation panicked")
}

/// What happens to Redis between engine A and engine B.
#[derive(Clone, Copy, Debug)]
enum Between {
    /// Nothing: only the engine restarts.
    Nothing,
    /// Graceful `SHUTDOWN` and start (AOF, appendfsync always).
    RedisRestart,
    /// `kill -9` while engine A still has traffic in flight, then start.
    RedisKill9,
}

/// Traffic for the kill -9 variant: batches of placements then payments until the first error.
/// Records the last acknowledged state of every order it touched.
async fn traffic_until_failure(
    engine: Engine,
    acks: Rc<RefCell<Vec<(OrderId, OrderStatus, u64)>>>,
) -> usize {
    const ROUNDS_MAX: u64 = 2_000;
    const PER_ROUND: u64 = 10;
    let mut failures = 0;
    for round in 0..ROUNDS_MAX {
        let ids: Vec<OrderId> = (0..PER_ROUND).map(|_| OrderId::new()).collect();
        let places = ids
            .iter()
            .zip(0..)
            .map(|(id, i)| BatchItem::place(*id, new_order(round * PER_ROUND + i)))
            .collect();
        let mut placed = Vec::new();
        for (result, id) in within(
            "traffic place",
            engine.execute_batch(places, Admission::Wait),
        )
        .await
        .into_iter()
        .zip(&ids)
        {
            match result {
                Ok(outcome) => {
                    acks.borrow_mut()
                        .push((*id, outcome.order.status, outcome.order.version));
                    placed.push(*id);
                }
                Err(_) => failures += 1,
            }
        }
        let pays = placed
            .iter()
            .map(|id| BatchItem::command(*id, pay()))
            .collect();
        for (result, id) in within("traffic pay", engine.execute_batch(pays, Admission::Wait))
            .await
            .into_iter()
            .zip(&placed)
        {
            match result {
                Ok(outcome) => {
                    let mut acks = acks.borrow_mut();
                    let entry = acks
                        .iter_mut()
                        .find(|(a, _, _)| a == id)
                        .expect("placed order was recorded");
                    *entry = (*id, outcome.order.status, outcome.order.version);
                }
                Err(_) => failures += 1,
            }
        }
        if failures > 0 {
            break;
        }
    }
    failures
}

/// Engine A places and pays orders on a harness Redis and is stopped; engine B, on a new store
/// connection, must read every acknowledged order back with the same status and version.
async fn acknowledged_orders_survive(between: Between) {
    let mut server = RedisServer::start();
    let mut settings = settings_for(&server.url());
    settings.store.redis.command_timeout_ms = 1000;
    let store_a = open_store(&settings).await;
    let engine_a = Engine::start(&settings, Arc::clone(&store_a));

    let mut expected = vec![place_and_pay_one(&engine_a, 1).await];
    expected.extend(place_and_pay_batch(&engine_a, 200).await);

    // For the kill -9 variant: orders acknowledged while the crash happens, with the state
    // each was last acknowledged in (later unacknowledged commands may or may not be there).
    let mut in_flight_acks = Vec::new();
    match between {
        Between::Nothing => {
            engine_a.stop();
            drop(store_a);
        }
        Between::RedisRestart => {
            engine_a.stop();
            drop(store_a);
            server = server_op(server, RedisServer::restart).await;
        }
        Between::RedisKill9 => {
            let acks = Rc::new(RefCell::new(Vec::new()));
            let traffic =
                actix_rt::spawn(traffic_until_failure(engine_a.clone(), Rc::clone(&acks)));
            // Let some traffic be acknowledged, then crash Redis under it.
            let deadline = Instant::now() + Duration::from_secs(10);
            for _ in 0..500 {
                if acks.borrow().len() >= 60 || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(
                !acks.borrow().is_empty(),
                "no traffic was acknowledged before the crash"
            );
            server = server_op(server, RedisServer::kill9).await;
            let failures = within("traffic after kill -9", traffic)
                .await
                .expect("traffic task panicked");
            assert!(failures > 0, "traffic did not notice that Redis was killed");
            engine_a.stop();
            drop(store_a);
            server = server_op(server, RedisServer::start_again).await;
            in_flight_acks = acks.take();
        }
    }

    let store_b = open_store(&settings).await;
    let engine_b = Engine::start(&settings, Arc::clone(&store_b));
    let ids: Vec<OrderId> = expected.iter().map(|(id, _, _)| *id).collect();
    for (result, (id, status, version)) in
        read_batch(&engine_b, &ids).await.into_iter().zip(&expected)
    {
        let outcome = acked(
            result,
            &format!("{between:?}: read of acknowledged order {id}"),
        );
        assert_eq!(outcome.order.status, *status, "{between:?}: order {id}");
        assert_eq!(outcome.order.version, *version, "{between:?}: order {id}");
        assert_eq!(
            stored_version(&server, &settings, &engine_b, *id),
            Some(*version as i64)
        );
    }
    if !in_flight_acks.is_empty() {
        let ids: Vec<OrderId> = in_flight_acks.iter().map(|(id, _, _)| *id).collect();
        let reads = read_batch(&engine_b, &ids).await;
        let mut ahead_of_ack = 0;
        let mut payment_processing = 0;
        for (result, (id, status, version)) in reads.into_iter().zip(&in_flight_acks) {
            let outcome = acked(
                result,
                &format!("read of order {id} acknowledged before kill -9"),
            );
            assert!(
                outcome.order.version >= *version,
                "order {id} was acknowledged at v{version} ({status:?}) but Redis holds v{}",
                outcome.order.version
            );
            if *status == OrderStatus::Paid {
                // Nothing was sent to a paid order afterwards: its state is exactly as acked.
                assert_eq!(outcome.order.status, OrderStatus::Paid, "order {id}");
                assert_eq!(outcome.order.version, *version, "order {id}");
            }
            ahead_of_ack += usize::from(outcome.order.version > *version);
            payment_processing +=
                usize::from(outcome.order.status == OrderStatus::PaymentProcessing);
        }
        eprintln!(
            "kill -9: {} orders acknowledged under traffic, {ahead_of_ack} hold writes whose \
             answer was lost, {payment_processing} left in payment_processing",
            in_flight_acks.len()
        );
    }

    // Engine B carries on from the recovered state.
    let (first, _, version) = expected[0];
    let shipped = acked(run(&engine_b, first, ship()).await, "ship on engine B");
    assert_eq!(shipped.order.status, OrderStatus::Shipped);
    assert_eq!(shipped.order.version, version + 1);
    engine_b.stop();
}

/// A placed and paid order (and a batch of 200) survive an engine restart: engine B reads the
/// status and version engine A acknowledged.
#[actix_rt::test]
async fn placed_and_paid_order_survives_engine_restart() {
    acknowledged_orders_survive(Between::Nothing).await;
}

/// Acknowledged orders survive a graceful Redis restart between engines (AOF, fsync always).
#[actix_rt::test]
async fn placed_and_paid_order_survives_redis_restart() {
    acknowledged_orders_survive(Between::RedisRestart).await;
}

/// Acknowledged orders survive `kill -9` of Redis in the middle of traffic; orders whose
/// answer was lost in the crash are at least at their last acknowledged version.
#[actix_rt::test]
async fn placed_and_paid_order_survives_redis_kill9() {
    acknowledged_orders_survive(Between::RedisKill9).await;
}

/// While Redis refuses writes (`CLIENT PAUSE … WRITE`), a command is not answered; once the
/// pause ends the answer comes, and the Redis hash already holds the new version.
#[actix_rt::test]
async fn no_acknowledgement_before_the_snapshot_is_written() {
    let server = RedisServer::start();
    let mut settings = settings_for(&server.url());
    settings.store.redis.command_timeout_ms = 5000;
    let engine = Engine::start(&settings, open_store(&settings).await);
    let (id, _, _) = place_and_pay_one(&engine, 3).await;
    assert_eq!(stored_version(&server, &settings, &engine, id), Some(3));

    let pause = server.command(&["CLIENT", "PAUSE", "1500", "WRITE"]);
    assert!(pause.is_ok(), "CLIENT PAUSE: {pause}");
    let paused_at = Instant::now();

    let ship_engine = engine.clone();
    let shipping = actix_rt::spawn(async move {
        let result = ship_engine
            .execute(
                id,
                Request::Command(CommandEnvelope::new(ship())),
                Admission::Wait,
            )
            .await;
        (result, paused_at.elapsed())
    });
    // A read that follows the ship must not report the shipped state before it is durable.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let read_engine = engine.clone();
    let reading = actix_rt::spawn(async move {
        let result = read_engine
            .execute(id, Request::Read, Admission::Wait)
            .await;
        (result, paused_at.elapsed())
    });

    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !shipping.is_finished(),
        "ship answered {:?} into a write pause",
        paused_at.elapsed()
    );
    // Reads are not paused: the hash still holds the old version.
    assert_eq!(stored_version(&server, &settings, &engine, id), Some(3));

    let (result, elapsed) = within("ship after pause", shipping)
        .await
        .expect("ship task");
    let shipped = acked(result, "ship");
    assert!(
        elapsed >= Duration::from_millis(1300),
        "ship acknowledged after {elapsed:?}, before the paused write could be durable"
    );
    assert_eq!(shipped.order.status, OrderStatus::Shipped);
    assert_eq!(shipped.order.version, 4);
    assert_eq!(stored_version(&server, &settings, &engine, id), Some(4));

    let (result, read_elapsed) = within("read after pause", reading)
        .await
        .expect("read task");
    let seen = acked(result, "read");
    if seen.order.version == 4 {
        assert!(
            read_elapsed >= Duration::from_millis(1300),
            "read reported v4 after {read_elapsed:?}, before it was durable"
        );
    } else {
        assert_eq!(seen.order.version, 3);
    }
    eprintln!("ship answered after {elapsed:?}, read after {read_elapsed:?}");
    engine.stop();
}

/// Retries `envelope` (same command id) until acknowledged: bounded to ~30 s / 150 attempts.
async fn retry_until_acked(
    engine: &Engine,
    id: OrderId,
    envelope: &CommandEnvelope,
) -> (CommandOutcome, u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    for attempt in 1..=150 {
        match send(engine, id, envelope.clone()).await {
            Ok(outcome) => return (outcome, attempt),
            Err(error @ (EngineError::Store(_) | EngineError::Conflict(_))) => last = Some(error),
            Err(other) => panic!("retry of {:?}: not retryable: {other:?}", envelope.command),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "{:?} was never acknowledged; last error {last:?}",
        envelope.command
    )
}

/// With Redis stopped, commands fail fast with a retryable store error (never an
/// acknowledgement); after Redis is back, retries with the same command id succeed exactly
/// once and versions advance by exactly the acknowledged commands.
#[actix_rt::test]
async fn store_down_fails_commands_instead_of_acknowledging() {
    let server = RedisServer::start();
    let mut settings = settings_for(&server.url());
    settings.store.redis.command_timeout_ms = 500;
    settings.store.redis.connect_timeout_ms = 500;
    let timeout = Duration::from_millis(settings.store.redis.command_timeout_ms);
    let engine = Engine::start(&settings, open_store(&settings).await);

    let (paid, _, paid_version) = place_and_pay_one(&engine, 11).await;
    let placed = acked(
        within("place", engine.place(new_order(12), Admission::Wait)).await,
        "place",
    );
    let unpaid = placed.order.id();
    assert_eq!(placed.order.version, 1);

    let server = server_op(server, RedisServer::stop).await;

    let ship_envelope = CommandEnvelope::new(ship());
    let started = Instant::now();
    let result = send(&engine, paid, ship_envelope.clone()).await;
    let took = started.elapsed();
    assert!(
        matches!(result, Err(EngineError::Store(_))),
        "ship with Redis down must fail with a store error, got {result:?}"
    );
    // Within the command timeout, plus scheduling slack on a busy 2-core machine.
    assert!(
        took <= timeout + Duration::from_millis(1500),
        "failure took {took:?} (command timeout {timeout:?})"
    );
    let pay_envelope = CommandEnvelope::new(pay());
    let result = send(&engine, unpaid, pay_envelope.clone()).await;
    assert!(
        matches!(result, Err(EngineError::Store(_))),
        "pay with Redis down must fail with a store error, got {result:?}"
    );
    eprintln!("store-down failure answered after {took:?}");

    let server = server_op(server, RedisServer::start_again).await;
    // Nothing refused while Redis was down reached the store.
    assert_eq!(
        stored_version(&server, &settings, &engine, paid),
        Some(paid_version as i64)
    );
    assert_eq!(stored_version(&server, &settings, &engine, unpaid), Some(1));

    let (shipped, attempts) = retry_until_acked(&engine, paid, &ship_envelope).await;
    eprintln!("ship acknowledged after {attempts} attempt(s) once Redis was back");
    assert_eq!(shipped.order.status, OrderStatus::Shipped);
    assert_eq!(shipped.order.version, paid_version + 1);
    let (now_paid, attempts) = retry_until_acked(&engine, unpaid, &pay_envelope).await;
    eprintln!("pay acknowledged after {attempts} attempt(s) once Redis was back");
    assert_eq!(now_paid.order.status, OrderStatus::Paid);
    assert_eq!(now_paid.order.version, 3);

    // The same ids again are duplicates; a new command advances by exactly one.
    let again = acked(
        send(&engine, paid, ship_envelope.clone()).await,
        "ship replay",
    );
    assert!(again.duplicate);
    assert_eq!(again.order.version, paid_version + 1);
    let delivered = acked(
        run(&engine, paid, Command::ConfirmDelivery).await,
        "deliver",
    );
    assert_eq!(delivered.order.status, OrderStatus::Completed);
    assert_eq!(delivered.order.version, paid_version + 2);

    assert_eq!(
        stored_version(&server, &settings, &engine, paid),
        Some(paid_version as i64 + 2)
    );
    assert_eq!(stored_version(&server, &settings, &engine, unpaid), Some(3));
    engine.stop();
}

/// A `pay` whose StartPayment write timed out (outcome unknown) but then landed in Redis must
/// still end Paid when the client retries it with the same command id: the replay re-requests
/// the live attempt's charge under the same idempotency key instead of leaving it in limbo.
#[actix_rt::test]
async fn pay_retried_after_an_unknown_outcome_write_reaches_paid() {
    let server = RedisServer::start();
    let mut settings = settings_for(&server.url());
    settings.store.redis.command_timeout_ms = 500;
    let engine = Engine::start(&settings, open_store(&settings).await);
    let placed = acked(
        within("place", engine.place(new_order(21), Admission::Wait)).await,
        "place",
    );
    let id = placed.order.id();

    // The write script queues behind the pause, the engine gives up after 500 ms, and Redis
    // runs the script when the pause ends: the outcome the engine reported is not the truth.
    let pause = server.command(&["CLIENT", "PAUSE", "1500", "WRITE"]);
    assert!(pause.is_ok(), "CLIENT PAUSE: {pause}");
    let pay_envelope = CommandEnvelope::new(pay());
    let result = send(&engine, id, pay_envelope.clone()).await;
    assert!(
        matches!(result, Err(EngineError::Store(_))),
        "pay during a long write pause must time out, got {result:?}"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        stored_version(&server, &settings, &engine, id),
        Some(2),
        "the timed-out StartPayment landed after the pause"
    );

    let (outcome, attempts) = retry_until_acked(&engine, id, &pay_envelope).await;
    assert_eq!(
        outcome.order.status,
        OrderStatus::Paid,
        "retry {attempts} of the same pay answered {:?} v{} (duplicate: {}) and nothing will \
         ever charge the live attempt",
        outcome.order.status,
        outcome.order.version,
        outcome.duplicate
    );
    engine.stop();
}

/// The batch item of one lifecycle step for order `id` (`n` varies the placed order).
fn lifecycle_step(step: &str, id: OrderId, n: u64) -> BatchItem {
    match step {
        "place" => BatchItem::place(id, new_order(n)),
        "pay" => BatchItem::command(id, pay()),
        "ship" => BatchItem::command(id, ship()),
        "deliver" => BatchItem::command(id, Command::ConfirmDelivery),
        other => unreachable!("no lifecycle step {other}"),
    }
}

/// 400 orders through place → pay → ship → deliver with at most 10 live orders per shard:
/// every command succeeds, no shard ever exceeds the bound, and every order reads back
/// completed (reloaded from the store after passivation).
async fn lifecycle_within_a_bounded_live_set(url: &str) {
    const SHARDS: u32 = 4;
    const LIVE_MAX: usize = 10;
    const ORDERS: u64 = 10 * SHARDS as u64 * LIVE_MAX as u64;
    const CHUNK: u64 = 50;
    let mut settings = settings_for(url);
    settings.engine.shards = SHARDS;
    settings.engine.max_live_orders_per_shard = LIVE_MAX;
    let engine = Engine::start(&settings, open_store(&settings).await);

    let chunks: Vec<Vec<OrderId>> = (0..ORDERS / CHUNK)
        .map(|_| (0..CHUNK).map(|_| OrderId::new()).collect())
        .collect();
    let lifecycles = chunks.iter().map(|ids| {
        let engine = engine.clone();
        async move {
            let steps = [
                ("place", OrderStatus::PendingPayment),
                ("pay", OrderStatus::Paid),
                ("ship", OrderStatus::Shipped),
                ("deliver", OrderStatus::Completed),
            ];
            for (step, status) in steps {
                let items = ids
                    .iter()
                    .zip(0..)
                    .map(|(id, n)| lifecycle_step(step, *id, n))
                    .collect();
                let results = within(step, engine.execute_batch(items, Admission::Wait)).await;
                for result in results {
                    let outcome = acked(result, step);
                    assert_eq!(outcome.order.status, status, "{step}");
                }
            }
        }
    });
    futures_util::future::join_all(lifecycles).await;

    let check_bound = |stats: &[orderly::engine::ShardStats], when: &str| {
        assert_eq!(stats.len(), SHARDS as usize);
        for (shard, s) in stats.iter().enumerate() {
            assert!(
                s.live <= LIVE_MAX,
                "{when}: shard {shard} has {} live",
                s.live
            );
            assert!(
                s.live_high_water <= LIVE_MAX,
                "{when}: shard {shard} peaked at {} live",
                s.live_high_water
            );
            assert_eq!(s.waiting, 0, "{when}: shard {shard} still parks requests");
        }
    };
    let stats = within("stats", engine.shard_stats()).await;
    check_bound(&stats, "after lifecycles");
    let passivations: u64 = stats.iter().map(|s| s.passivations).sum();
    assert!(
        passivations >= ORDERS - (SHARDS as u64 * LIVE_MAX as u64),
        "only {passivations} passivations for {ORDERS} orders"
    );

    for ids in &chunks {
        for (result, id) in read_batch(&engine, ids).await.into_iter().zip(ids) {
            let outcome = acked(result, "read back");
            assert_eq!(outcome.order.status, OrderStatus::Completed, "order {id}");
            assert_eq!(outcome.order.status.as_str(), "completed");
            assert_eq!(outcome.order.version, 5, "order {id}");
        }
    }
    let stats = within("stats", engine.shard_stats()).await;
    check_bound(&stats, "after reads");
    eprintln!("{} store: {stats:?}", engine.store_kind());
    engine.stop();
}

/// The live set stays within `max_live_orders_per_shard` on the memory store.
#[actix_rt::test]
async fn passivation_keeps_the_live_set_bounded() {
    lifecycle_within_a_bounded_live_set("memory").await;
}

/// The live set stays within `max_live_orders_per_shard` on Redis (reactivations load
/// snapshots from Redis).
#[actix_rt::test]
async fn passivation_keeps_the_live_set_bounded_on_redis() {
    let server = RedisServer::start();
    lifecycle_within_a_bounded_live_set(&server.url()).await;
}

/// The same envelope applied twice (sequentially and concurrently, and again on a restarted
/// engine) is applied once: later answers say `duplicate` with the same version, and nothing
/// more is written or emitted.
#[actix_rt::test]
async fn duplicate_command_id_is_applied_once() {
    let server = RedisServer::start();
    let settings = settings_for(&server.url());
    let engine = Engine::start(&settings, open_store(&settings).await);

    let id = OrderId::new();
    let place = CommandEnvelope::new(Command::PlaceOrder(Box::new(new_order(5))));
    let first = acked(send(&engine, id, place.clone()).await, "place");
    assert!(!first.duplicate);
    assert_eq!(first.order.version, 1);
    let second = acked(send(&engine, id, place.clone()).await, "place replay");
    assert!(second.duplicate, "replayed placement must be a duplicate");
    assert_eq!(second.order.version, 1);

    acked(run(&engine, id, pay()).await, "pay");
    let ship_envelope = CommandEnvelope::new(ship());
    let (a, b) = futures_util::future::join(
        send(&engine, id, ship_envelope.clone()),
        send(&engine, id, ship_envelope.clone()),
    )
    .await;
    let (a, b) = (acked(a, "ship"), acked(b, "concurrent ship replay"));
    assert_eq!(
        [a.duplicate, b.duplicate].iter().filter(|d| **d).count(),
        1,
        "exactly one of two concurrent identical commands is applied"
    );
    assert_eq!((a.order.version, b.order.version), (4, 4));
    let third = acked(
        send(&engine, id, ship_envelope.clone()).await,
        "ship replay",
    );
    assert!(third.duplicate);
    assert_eq!(third.order.version, 4);
    assert_eq!(third.order.status, OrderStatus::Shipped);
    engine.stop();

    // The recent command ids are part of the durable snapshot: a restarted engine still
    // recognises them.
    let engine = Engine::start(&settings, open_store(&settings).await);
    let replay = acked(
        send(&engine, id, ship_envelope.clone()).await,
        "ship replay on B",
    );
    assert!(replay.duplicate, "replay after restart must be a duplicate");
    assert_eq!(replay.order.version, 4);
    let replay = acked(send(&engine, id, place.clone()).await, "place replay on B");
    assert!(replay.duplicate);
    assert_eq!(replay.order.version, 4);
    assert_eq!(stored_version(&server, &settings, &engine, id), Some(4));
    // One event per applied command (placed, payment started, paid, shipped), none for replays.
    let events = RedisStore::events_key(&settings.store.redis.key_prefix, engine.shard_of(id));
    assert_eq!(server.command(&["XLEN", &events]).as_int(), Some(4));
    engine.stop();
}
