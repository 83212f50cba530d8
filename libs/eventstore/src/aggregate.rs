//! Aggregates: the state of one stream, folded from its events, and the one loop every service
//! writes through — load the stream, fold it, decide, append at the version the decision was
//! made on, and when another writer got there first (a conflict) do it all again, a bounded
//! number of times.
//!
//! The state is a pure fold ([`Aggregate::evolve`]) and the decision a pure function of it, so
//! a retry only ever re-reads and re-decides; nothing is overwritten.

use std::collections::HashMap;

use whatsnap_events::{
    AggregateKind, DecodeError, Event, EventMetadata, NewEvent, RecordedEvent, StreamId,
};

use crate::{EventStore, ExpectedVersion, StoreError};

/// How many times [`Aggregates::update`] decides before it gives up on a stream that keeps
/// changing.
pub const DEFAULT_TRIES: usize = 5;

/// The state of one stream, built by folding its events in version order from
/// [`Default::default`].
pub trait Aggregate: Default + Send {
    /// Whether an event this build cannot decode is passed over (it still counts for the
    /// version) rather than failing the load: for a state that reads a few types out of a
    /// stream others write to.
    const SKIPS_UNDECODABLE: bool = false;

    /// The state after `event`, the stream's `version`th (versions start at 1).
    fn evolve(self, event: &Event, version: u64) -> Self;
}

/// A stream's state and the version it was folded up to (0 for a stream with no events).
#[derive(Debug, Clone, Default)]
pub struct Loaded<A> {
    pub state: A,
    pub version: u64,
}

/// What [`Aggregates::update`] did: the state after it, and how many events it appended (none
/// when the decision was that nothing changes).
#[derive(Debug, Clone)]
pub struct Updated<A> {
    pub loaded: Loaded<A>,
    pub appended: usize,
}

/// Why a stream could not be folded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Undecodable(#[from] DecodeError),
}

/// Why an update did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError<E> {
    /// The decision refused the command.
    #[error(transparent)]
    Rejected(E),
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The append failed for another reason than a conflict.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Every try conflicted with another writer; `last` is the last conflict.
    #[error("{stream} kept changing: {tries} tries conflicted")]
    KeptChanging {
        stream: StreamId,
        tries: usize,
        #[source]
        last: StoreError,
    },
}

/// States of streams kept between loads, so that a stream read again and again (an account
/// at each of its messages) costs a read of what changed since, not of its whole history.
/// [`Cache::load`] always asks the store for the events after the kept version, so it is never
/// stale. While [`Cache::follow`] runs, the log's changes to the streams of one kind reach the
/// kept states as they are appended, and [`Cache::current`] answers from memory alone.
pub struct Cache<A> {
    kept: std::sync::Mutex<Kept<A>>,
    capacity: usize,
}

#[derive(Default)]
struct Kept<A> {
    states: HashMap<StreamId, Loaded<A>>,
    /// True while a follower is delivering every change of the streams: a kept state is then
    /// the stream's as far as the follower has read.
    followed: bool,
    /// Moved on whenever the follower starts over or forgets what it saw: a load begun before
    /// does not keep what it read.
    epoch: u64,
    /// The latest version the follower has seen of each stream, kept or not: a load that read
    /// an older version than this (the change passed by while it read) does not keep it.
    seen: HashMap<StreamId, u64>,
    /// The log's position up to which the follower has delivered every change of the streams
    /// (the head it started at, then the last change it saw, or further where the watch says
    /// how far it read past other events).
    through: u64,
}

/// How long a follower whose watch failed waits before it watches again (loads read the store
/// meanwhile).
const FOLLOW_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl<A: Aggregate + Clone> Cache<A> {
    /// Keeps up to `capacity` streams; when full it starts over empty.
    pub fn new(capacity: usize) -> Self {
        Self {
            kept: Default::default(),
            capacity: capacity.max(1),
        }
    }

    /// The stream's state now: the kept one with the events since folded in.
    pub async fn load(
        &self,
        aggregates: &Aggregates<'_>,
        stream: &StreamId,
    ) -> Result<Loaded<A>, LoadError> {
        let (epoch, kept) = {
            let kept = self.kept();
            let state = kept.states.get(stream).cloned().unwrap_or_default();
            (kept.epoch, state)
        };
        let loaded = aggregates.catch_up(stream, kept).await?;
        self.keep(epoch, stream, &loaded);
        Ok(loaded)
    }

    /// Keeps `loaded`, a state of the stream read (or written) since `epoch`, unless a change
    /// the follower saw passed it by, or the follower started over meanwhile.
    fn keep(&self, epoch: u64, stream: &StreamId, loaded: &Loaded<A>) {
        let mut kept = self.kept();
        let passed_by = kept.seen.get(stream).is_some_and(|v| *v > loaded.version);
        if kept.epoch != epoch || passed_by {
            return;
        }
        if kept.states.len() >= self.capacity && !kept.states.contains_key(stream) {
            kept.states.clear();
        }
        // Another load, or the follower, may have kept a later version meanwhile.
        if kept
            .states
            .get(stream)
            .is_none_or(|k| k.version < loaded.version)
        {
            kept.states.insert(stream.clone(), loaded.clone());
        }
    }

    /// Decides on the stream as the log had it at `position` (the handler of the event at
    /// that position deciding in log order) and appends what it decided at the version it
    /// decided on, keeping the state after: [`Aggregates::update`] without the read, in the
    /// usual case. The state comes from memory when it is kept and the follower has delivered
    /// the log up to `position`. A stream not kept is first taken as new (most such streams
    /// are: a contact's first message, say), and a state not known current only as a guess:
    /// when the decision on a guess is that nothing changes, or its append conflicts, the
    /// stream is read from the store and decided again, up to `aggregates`' tries.
    pub async fn update_at<E, F>(
        &self,
        aggregates: &Aggregates<'_>,
        stream: &StreamId,
        position: u64,
        metadata: &EventMetadata,
        mut decide: F,
    ) -> Result<Updated<A>, AggregateError<E>>
    where
        F: FnMut(&A) -> Result<Vec<Event>, E> + Send,
    {
        let (epoch, guess, current) = {
            let kept = self.kept();
            let state = kept.states.get(stream).cloned();
            let current = kept.followed && state.is_some() && kept.through + 1 >= position;
            (kept.epoch, state.unwrap_or_default(), current)
        };
        let events = decide(&guess.state).map_err(AggregateError::Rejected)?;
        if events.is_empty() && current {
            return Ok(Updated {
                loaded: guess,
                appended: 0,
            });
        }
        if !events.is_empty() {
            match aggregates.append(stream, guess, &events, metadata).await {
                Ok(loaded) => {
                    self.keep(epoch, stream, &loaded);
                    let appended = events.len();
                    return Ok(Updated { loaded, appended });
                }
                Err(err) if err.is_conflict() => {}
                Err(err) => return Err(err.into()),
            }
        }
        // The guess was wrong, or nothing says it was right: as the store has it now.
        let epoch = self.kept().epoch;
        let updated = aggregates
            .update_loading(stream, metadata, &mut decide, || {
                self.load(aggregates, stream)
            })
            .await?;
        self.keep(epoch, stream, &updated.loaded);
        Ok(updated)
    }

    /// The stream's state as far as the follower has read the log: from memory when the
    /// stream is kept and [`Cache::follow`] is running, else as [`Cache::load`] reads it. For
    /// a reader that may act on a state a moment old (a webhook checked against its
    /// account), not for a decision appended at the state's version.
    pub async fn current(
        &self,
        aggregates: &Aggregates<'_>,
        stream: &StreamId,
    ) -> Result<Loaded<A>, LoadError> {
        {
            let kept = self.kept();
            if kept.followed
                && let Some(state) = kept.states.get(stream)
            {
                return Ok(state.clone());
            }
        }
        self.load(aggregates, stream).await
    }

    /// Forgets the stream's kept state, and keeps none that a load begun before reads: for a
    /// writer that has just appended to it, so that its own change is never answered with a
    /// state from before.
    pub fn forget(&self, stream: &StreamId) {
        let mut kept = self.kept();
        kept.states.remove(stream);
        kept.epoch += 1;
    }

    /// Whether [`Cache::follow`] is current with the log (its watch open), so that
    /// [`Cache::current`] answers kept streams from memory.
    pub fn is_following(&self) -> bool {
        self.kept().followed
    }

    /// The position up to which the follower has delivered the log's changes of the streams
    /// to the kept states; `None` while it is not following.
    pub fn followed_through(&self) -> Option<u64> {
        let kept = self.kept();
        kept.followed.then_some(kept.through)
    }

    /// Keeps the kept streams of `kind` current from the log, as [`EventStore::watch`]
    /// delivers their events; returns only when the store cannot watch. While the watch
    /// fails, [`Cache::current`] reads the store, and the follower tries again.
    pub async fn follow(&self, store: &dyn EventStore, kind: AggregateKind) {
        // Said once per outage, not at every try.
        let mut failing = false;
        loop {
            match self.follow_once(store, kind, &mut failing).await {
                Ok(()) => return,
                Err(err) => {
                    self.kept().followed = false;
                    if !failing {
                        tracing::warn!(
                            kind = kind.as_str(),
                            error = %err,
                            "the cache's watch of the log failed; reading the store until it is back"
                        );
                        failing = true;
                    }
                    tokio::time::sleep(FOLLOW_RETRY).await;
                }
            }
        }
    }

    /// [`Cache::follow`] until `shutdown` (or until the store turns out unable to watch).
    pub async fn follow_until(
        &self,
        store: &dyn EventStore,
        kind: AggregateKind,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::select! {
            () = self.follow(store, kind) => {}
            () = shutdown => {}
        }
    }

    /// Watches from the head: what was kept before may have missed changes, so it starts
    /// over empty. `Ok` only when the store cannot watch.
    async fn follow_once(
        &self,
        store: &dyn EventStore,
        kind: AggregateKind,
        failing: &mut bool,
    ) -> Result<(), StoreError> {
        let head = store.head_position().await?;
        let Some(mut watch) = store.watch(kind, head).await? else {
            return Ok(());
        };
        {
            let mut kept = self.kept();
            kept.states.clear();
            kept.seen.clear();
            kept.epoch += 1;
            kept.followed = true;
            kept.through = head;
        }
        if std::mem::take(failing) {
            tracing::info!(kind = kind.as_str(), "the cache's watch of the log is back");
        }
        loop {
            for recorded in watch.next_batch(256).await? {
                self.observe(&recorded);
            }
            // Past the other kinds' events too, where the store says how far it read.
            let mut kept = self.kept();
            kept.through = kept.through.max(watch.scanned());
        }
    }

    /// One event of a followed stream: folded into the kept state when it is the next one,
    /// and the kept state forgotten when events were missed or it does not decode.
    fn observe(&self, recorded: &RecordedEvent) {
        let mut kept = self.kept();
        kept.through = kept.through.max(recorded.position);
        let seen = kept.seen.entry(recorded.stream.clone()).or_default();
        *seen = (*seen).max(recorded.version);
        if let Some(loaded) = kept.states.get_mut(&recorded.stream) {
            if recorded.version == loaded.version + 1 {
                match recorded.decode() {
                    Ok(event) => {
                        let state = std::mem::take(&mut loaded.state);
                        loaded.state = state.evolve(&event, recorded.version);
                        loaded.version = recorded.version;
                    }
                    Err(_) if A::SKIPS_UNDECODABLE => loaded.version = recorded.version,
                    Err(_) => {
                        kept.states.remove(&recorded.stream);
                    }
                }
            } else if recorded.version > loaded.version + 1 {
                kept.states.remove(&recorded.stream);
            }
        }
        // What was seen is needed only against loads in flight: forgetting it, the epoch
        // moves on so that none of them keeps what it read.
        if kept.seen.len() > self.capacity.saturating_mul(4) {
            kept.seen.clear();
            kept.epoch += 1;
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept<A>> {
        self.kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Loads, decides and appends aggregates through one [`EventStore`].
#[derive(Clone, Copy)]
pub struct Aggregates<'s> {
    store: &'s dyn EventStore,
    tries: usize,
}

impl<'s> Aggregates<'s> {
    pub fn new(store: &'s dyn EventStore) -> Self {
        Self {
            store,
            tries: DEFAULT_TRIES,
        }
    }

    /// How many times [`Self::update`] decides (at least once).
    pub fn tries(mut self, tries: usize) -> Self {
        self.tries = tries.max(1);
        self
    }

    /// The stream's state, folded from all its events.
    pub async fn load<A: Aggregate>(&self, stream: &StreamId) -> Result<Loaded<A>, LoadError> {
        self.catch_up(stream, Loaded::default()).await
    }

    /// `loaded`, a state of the stream at some version, with the events after that version
    /// folded in: for a state kept between two loads, only the events since are read.
    pub async fn catch_up<A: Aggregate>(
        &self,
        stream: &StreamId,
        loaded: Loaded<A>,
    ) -> Result<Loaded<A>, LoadError> {
        let mut loaded = loaded;
        let from = loaded.version + 1;
        for recorded in self.store.read_stream(stream, from, usize::MAX).await? {
            loaded.version = recorded.version;
            match recorded.decode() {
                Ok(event) => loaded.state = loaded.state.evolve(&event, recorded.version),
                Err(_) if A::SKIPS_UNDECODABLE => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(loaded)
    }

    /// Appends `events`, decided on `loaded`, at the version `loaded` was folded up to (a
    /// concurrent change is [`StoreError::WrongExpectedVersion`]); the state after them.
    pub async fn append<A: Aggregate>(
        &self,
        stream: &StreamId,
        loaded: Loaded<A>,
        events: &[Event],
        metadata: &EventMetadata,
    ) -> Result<Loaded<A>, StoreError> {
        if events.is_empty() {
            return Ok(loaded);
        }
        let new = events
            .iter()
            .map(|event| NewEvent::new(event, metadata.clone()))
            .collect();
        self.store
            .append(stream, ExpectedVersion::Exact(loaded.version), new)
            .await?;
        let Loaded { mut state, version } = loaded;
        for (offset, event) in events.iter().enumerate() {
            state = state.evolve(event, version + 1 + offset as u64);
        }
        Ok(Loaded {
            state,
            version: version + events.len() as u64,
        })
    }

    /// Loads the stream, lets `decide` say what happens (no events: nothing), and appends that
    /// at the loaded version; on a conflict, loads and decides again, up to the configured
    /// number of tries. `decide` may run more than once.
    pub async fn update<A, E, F>(
        &self,
        stream: &StreamId,
        metadata: &EventMetadata,
        decide: F,
    ) -> Result<Updated<A>, AggregateError<E>>
    where
        A: Aggregate,
        F: FnMut(&A) -> Result<Vec<Event>, E> + Send,
    {
        self.update_loading(stream, metadata, decide, || self.load::<A>(stream))
            .await
    }

    /// [`Self::update`], each try deciding on the state `load` gives.
    async fn update_loading<A, E, F, L, Loading>(
        &self,
        stream: &StreamId,
        metadata: &EventMetadata,
        mut decide: F,
        mut load: L,
    ) -> Result<Updated<A>, AggregateError<E>>
    where
        A: Aggregate,
        F: FnMut(&A) -> Result<Vec<Event>, E> + Send,
        L: FnMut() -> Loading + Send,
        Loading: Future<Output = Result<Loaded<A>, LoadError>> + Send,
    {
        let mut last = None;
        for _ in 0..self.tries {
            let loaded = load().await?;
            let events = decide(&loaded.state).map_err(AggregateError::Rejected)?;
            let appended = events.len();
            match self.append(stream, loaded, &events, metadata).await {
                Ok(loaded) => return Ok(Updated { loaded, appended }),
                Err(err) if err.is_conflict() => last = Some(err),
                Err(err) => return Err(err.into()),
            }
        }
        Err(AggregateError::KeptChanging {
            stream: stream.clone(),
            tries: self.tries,
            last: last.expect("at least one try"),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use whatsnap_events::{AggregateKind, GhlUninstalled, LocationId, RecordedEvent};

    use super::*;
    use crate::sqlite::{SqliteConfig, SqliteEventStore};
    use crate::{AppendOutcome, SubscribeFrom, Subscription};

    /// Counts the events of its stream.
    #[derive(Debug, Default, Clone)]
    struct Count(u64);

    impl Aggregate for Count {
        fn evolve(self, _: &Event, _: u64) -> Self {
            Self(self.0 + 1)
        }
    }

    /// A store where another writer appends to the stream just before each of the first
    /// `races` appends; and, given a cache's follower, during the first read of a stream,
    /// after the read, with the follower seeing that append before the read returns.
    struct Racing {
        inner: SqliteEventStore,
        races: AtomicUsize,
        /// The version each read of a stream started at.
        read_from: std::sync::Mutex<Vec<u64>>,
        follower: Option<Arc<Cache<Count>>>,
    }

    #[async_trait]
    impl EventStore for Racing {
        async fn append(
            &self,
            stream: &StreamId,
            expected: ExpectedVersion,
            events: Vec<NewEvent>,
        ) -> crate::Result<AppendOutcome> {
            if self
                .races
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                let other = NewEvent::new(&event(), EventMetadata::new_correlation());
                self.inner
                    .append(stream, ExpectedVersion::Any, vec![other])
                    .await?;
            }
            self.inner.append(stream, expected, events).await
        }

        async fn read_stream(
            &self,
            stream: &StreamId,
            from_version: u64,
            limit: usize,
        ) -> crate::Result<Vec<RecordedEvent>> {
            let first = self.read_from.lock().unwrap().is_empty();
            self.read_from.lock().unwrap().push(from_version);
            let read = self.inner.read_stream(stream, from_version, limit).await?;
            if let Some(cache) = self.follower.as_ref().filter(|_| first) {
                let other = NewEvent::new(&event(), EventMetadata::new_correlation());
                let outcome = self
                    .inner
                    .append(stream, ExpectedVersion::Any, vec![other])
                    .await?;
                let seen = self.inner.read_stream(stream, outcome.version, 1).await?;
                cache.observe(&seen[0]);
            }
            Ok(read)
        }

        async fn read_all(&self, after: u64, limit: usize) -> crate::Result<Vec<RecordedEvent>> {
            self.inner.read_all(after, limit).await
        }

        async fn head_position(&self) -> crate::Result<u64> {
            self.inner.head_position().await
        }

        async fn subscribe(&self, name: &str, from: SubscribeFrom) -> crate::Result<Subscription> {
            self.inner.subscribe(name, from).await
        }
    }

    fn event() -> Event {
        Event::from(GhlUninstalled { app_id: None })
    }

    async fn store(races: usize) -> (tempfile::TempDir, Racing) {
        let dir = tempfile::tempdir().unwrap();
        let inner = SqliteEventStore::open(&SqliteConfig::new(dir.path().join("events.db")))
            .await
            .unwrap();
        let races = AtomicUsize::new(races);
        let read_from = Default::default();
        (
            dir,
            Racing {
                inner,
                races,
                read_from,
                follower: None,
            },
        )
    }

    fn stream() -> StreamId {
        let location = LocationId::parse("loc-1").unwrap();
        StreamId::for_uuid(location, AggregateKind::Ghl, uuid::Uuid::now_v7())
    }

    #[tokio::test]
    async fn a_kept_state_reads_only_the_events_since_and_is_never_stale() {
        let (_dir, store) = store(0).await;
        let aggregates = Aggregates::new(&store);
        let stream = stream();
        let append = async |n: usize| {
            let events = (0..n)
                .map(|_| NewEvent::new(&event(), EventMetadata::new_correlation()))
                .collect();
            store
                .inner
                .append(&stream, ExpectedVersion::Any, events)
                .await
                .unwrap();
        };
        append(3).await;
        let cache = Cache::<Count>::new(10);
        let first = cache.load(&aggregates, &stream).await.unwrap();
        assert_eq!((first.state.0, first.version), (3, 3));
        append(2).await;
        let second = cache.load(&aggregates, &stream).await.unwrap();
        assert_eq!((second.state.0, second.version), (5, 5));
        let third = cache.load(&aggregates, &stream).await.unwrap();
        assert_eq!((third.state.0, third.version), (5, 5));
        assert_eq!(*store.read_from.lock().unwrap(), [1, 4, 6]);
    }

    /// The follower saw a change go by while a load read the stream: the load's state, older,
    /// is not kept, so the next answer from memory is not the one from before the change.
    #[tokio::test]
    async fn a_load_that_a_followed_change_passed_by_is_not_kept() {
        let (_dir, mut store) = store(0).await;
        let stream = stream();
        let first = vec![NewEvent::new(&event(), EventMetadata::new_correlation())];
        store
            .inner
            .append(&stream, ExpectedVersion::NoStream, first)
            .await
            .unwrap();
        let cache = Arc::new(Cache::<Count>::new(10));
        cache.kept().followed = true;
        store.follower = Some(cache.clone());
        let aggregates = Aggregates::new(&store);
        let loaded = cache.current(&aggregates, &stream).await.unwrap();
        assert_eq!(loaded.version, 1, "the load read before the other append");
        let now = cache.current(&aggregates, &stream).await.unwrap();
        assert_eq!((now.state.0, now.version), (2, 2));
    }

    /// Appends `n` events to `stream` as another writer would.
    async fn append_other(store: &Racing, stream: &StreamId, n: usize) {
        let events = (0..n)
            .map(|_| NewEvent::new(&event(), EventMetadata::new_correlation()))
            .collect();
        store
            .inner
            .append(stream, ExpectedVersion::Any, events)
            .await
            .unwrap();
    }

    /// Decides at `position` that nothing changes: the states it decided on, and the outcome.
    async fn decide_nothing(
        cache: &Cache<Count>,
        aggregates: &Aggregates<'_>,
        stream: &StreamId,
        position: u64,
    ) -> (Vec<u64>, Updated<Count>) {
        let mut decided_on = Vec::new();
        let metadata = EventMetadata::new_correlation();
        let updated = cache
            .update_at::<String, _>(aggregates, stream, position, &metadata, |state| {
                decided_on.push(state.0);
                Ok(vec![])
            })
            .await
            .unwrap();
        (decided_on, updated)
    }

    /// Decides on a kept stream the follower has delivered up to `position`, in log order:
    /// from memory, with no read; past what the follower delivered, from the store.
    #[tokio::test]
    async fn a_decision_at_a_position_the_follower_has_passed_is_made_from_memory() {
        let (_dir, store) = store(0).await;
        let aggregates = Aggregates::new(&store);
        let stream = stream();
        append_other(&store, &stream, 2).await;
        let cache = Cache::<Count>::new(10);
        cache.kept().followed = true;
        cache.load(&aggregates, &stream).await.unwrap();
        let head = store.head_position().await.unwrap();
        cache.kept().through = head;
        let metadata = EventMetadata::new_correlation();

        let nothing = cache
            .update_at::<String, _>(&aggregates, &stream, head + 1, &metadata, |_| Ok(vec![]))
            .await
            .unwrap();
        assert_eq!((nothing.loaded.version, nothing.appended), (2, 0));
        let one = cache
            .update_at::<String, _>(&aggregates, &stream, head + 1, &metadata, |_| {
                Ok(vec![event()])
            })
            .await
            .unwrap();
        assert_eq!(
            (one.loaded.state.0, one.loaded.version, one.appended),
            (3, 3, 1)
        );
        assert_eq!(
            *store.read_from.lock().unwrap(),
            [1],
            "only the first load read"
        );
        let kept = cache.current(&aggregates, &stream).await.unwrap();
        assert_eq!(kept.version, 3, "the state after its own append is kept");

        // Another writer's change the follower has not delivered yet: a decision at a later
        // position than the follower has read reads the store, and sees it.
        append_other(&store, &stream, 1).await;
        let later = store.head_position().await.unwrap();
        let (decided_on, _) = decide_nothing(&cache, &aggregates, &stream, later).await;
        assert_eq!(
            decided_on,
            [3, 4],
            "a guess that decides nothing is checked with the store"
        );
        assert_eq!(*store.read_from.lock().unwrap(), [1, 4]);
    }

    /// A stream not kept is decided as new, with no read: right for a new stream, and for
    /// an existing one the append conflicts (or the guess decides nothing) and it is read.
    #[tokio::test]
    async fn a_stream_not_kept_is_taken_as_new_and_read_when_that_guess_is_wrong() {
        let (_dir, store) = store(0).await;
        let aggregates = Aggregates::new(&store);
        let cache = Cache::<Count>::new(10);
        let metadata = EventMetadata::new_correlation();
        let create = |state: &Count| Ok::<_, String>(vec![event(); 2 - (state.0 as usize).min(2)]);

        let new = stream();
        let created = cache
            .update_at(&aggregates, &new, 1, &metadata, create)
            .await
            .unwrap();
        assert_eq!((created.loaded.version, created.appended), (2, 2));
        assert!(
            store.read_from.lock().unwrap().is_empty(),
            "no read for a new stream"
        );

        let existing = stream();
        append_other(&store, &existing, 1).await;
        let mut decided_on = Vec::new();
        let topped_up = cache
            .update_at::<String, _>(&aggregates, &existing, 1, &metadata, |state| {
                decided_on.push(state.0);
                create(state)
            })
            .await
            .unwrap();
        assert_eq!(
            decided_on,
            [0, 1],
            "decided as new, conflicted, read and decided again"
        );
        assert_eq!((topped_up.loaded.version, topped_up.appended), (2, 1));

        let other = stream();
        append_other(&store, &other, 2).await;
        let (decided_on, nothing) = decide_nothing(&cache, &aggregates, &other, 1).await;
        assert_eq!(
            decided_on,
            [0, 2],
            "nothing decided on a guess is decided again"
        );
        assert_eq!((nothing.loaded.version, nothing.appended), (2, 0));
    }

    #[tokio::test]
    async fn given_a_stream_when_a_decision_is_appended_then_the_state_follows_it() {
        let (_dir, store) = store(0).await;
        let aggregates = Aggregates::new(&store);
        let stream = stream();
        let metadata = EventMetadata::new_correlation();
        let updated = aggregates
            .update::<Count, String, _>(&stream, &metadata, |_| Ok(vec![event(), event()]))
            .await
            .unwrap();
        assert_eq!((updated.loaded.state.0, updated.loaded.version), (2, 2));
        assert_eq!(updated.appended, 2);
        let nothing = aggregates
            .update::<Count, String, _>(&stream, &metadata, |_| Ok(vec![]))
            .await
            .unwrap();
        assert_eq!((nothing.loaded.version, nothing.appended), (2, 0));
        let refused = aggregates
            .update::<Count, String, _>(&stream, &metadata, |_| Err("no".to_owned()))
            .await
            .unwrap_err();
        assert!(matches!(refused, AggregateError::Rejected(reason) if reason == "no"));
    }

    #[tokio::test]
    async fn given_another_writer_when_the_append_conflicts_then_it_decides_again() {
        let (_dir, store) = store(1).await;
        let aggregates = Aggregates::new(&store);
        let stream = stream();
        let mut seen = Vec::new();
        let updated = aggregates
            .update::<Count, String, _>(&stream, &EventMetadata::new_correlation(), |state| {
                seen.push(state.0);
                Ok(vec![event()])
            })
            .await
            .unwrap();
        // Decided on an empty stream, overtaken, decided again on the other writer's event.
        assert_eq!(seen, [0, 1]);
        assert_eq!((updated.loaded.state.0, updated.loaded.version), (2, 2));
    }

    #[tokio::test]
    async fn given_a_stream_that_keeps_changing_then_it_gives_up_after_its_tries() {
        let (_dir, store) = store(usize::MAX).await;
        let aggregates = Aggregates::new(&store).tries(3);
        let stream = stream();
        let err = aggregates
            .update::<Count, String, _>(&stream, &EventMetadata::new_correlation(), |_| {
                Ok(vec![event()])
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AggregateError::KeptChanging { tries: 3, last, .. } if last.is_conflict())
        );
        assert_eq!(
            store.inner.read_stream(&stream, 1, 10).await.unwrap().len(),
            3
        );
    }
}
