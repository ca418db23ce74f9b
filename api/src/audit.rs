//! The audit log's writing side: every mutation (with its outcome) and
//! every denied attempt becomes one [`Entry`].
//!
//! - Denials are recorded by the auth [`Gate`](crate::auth::layer::Gate),
//!   which decides every call on both doors: unauthenticated, permission
//!   denied, rate limited. A handler that answers NOT_FOUND for another
//!   tenant's object says so through the request's [`AuditNote`], and the
//!   auth layer records that as `denied:NOT_FOUND`.
//! - Mutations (the methods [`policy::MUTATING`](crate::auth::policy::MUTATING)
//!   lists) are recorded by the auth layer once the handler has answered,
//!   with the target the handler noted.
//!
//! Recording never touches the database on the request's path: entries go
//! through a bounded queue to one writer task, which appends them in
//! batches (the store numbers and signs them). If the database is down the
//! writer keeps retrying; if the queue is full, entries are counted and
//! the count is written as an `audit.overflow` entry, so nothing is lost
//! silently. At shutdown the queue is flushed. A checkpointer signs a
//! checkpoint over the log every minute (when it grew) and at shutdown.
//!
//! The signing key is `audit-signing-key.pk8` (Ed25519, PKCS#8) in the
//! data dir, created on first start with mode 0600 (`finpool up`), or a
//! mounted Secret named by `finpool api --audit-key`.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use finpool_audit::{Checkpoint, Entry, Frontier, Outcome, PublicKey, Signer};
use finpool_store::{Store, StoreError};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::auth::{AuthError, Principal};

/// The signing key's file in the data dir.
pub const KEY_FILE: &str = "audit-signing-key.pk8";
/// How often a checkpoint is signed by default (when the log grew).
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(60);
/// The request header naming a request; echoed on every answer.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Entries waiting for the writer at most.
const QUEUE: usize = 65_536;
/// Entries per append.
const MAX_BATCH: usize = 1024;
/// How long the writer gathers entries before an append: one commit (and
/// fsync) per batch, not per call, so submits keep the database to
/// themselves.
const LINGER: Duration = Duration::from_millis(100);
/// The longest a mutation's entry waits for room in the queue.
const ENQUEUE_WAIT: Duration = Duration::from_secs(2);
/// How long the shutdown flush keeps trying an unavailable database.
const FLUSH_DEADLINE: Duration = Duration::from_secs(10);
/// Rows read per page when the checkpointer catches up.
const PAGE: u32 = 10_000;
/// The longest text kept in an entry's free fields.
const MAX_FIELD_CHARS: usize = 512;

/// Reads the audit key from `dir`, creating it (mode 0600) if missing.
pub fn load_or_create_key(dir: &Path) -> Result<Signer, AuthError> {
    let path = dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(_) => load_key(&path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let rng = ring::rand::SystemRandom::new();
            let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| AuthError::Key("could not generate the audit key".into()))?;
            crate::auth::write_private(&path, doc.as_ref())
                .map_err(|e| AuthError::Key(format!("writing {}: {e}", path.display())))?;
            load_key(&path)
        }
        Err(e) => Err(AuthError::Key(format!("reading {}: {e}", path.display()))),
    }
}

/// Reads an existing audit key (PKCS#8 DER, as `openssl genpkey -algorithm
/// ed25519 -outform DER` writes it).
pub fn load_key(path: &Path) -> Result<Signer, AuthError> {
    let der = std::fs::read(path)
        .map_err(|e| AuthError::Key(format!("reading the audit key {}: {e}", path.display())))?;
    Signer::from_pkcs8_der(&der)
        .map_err(|e| AuthError::Key(format!("the audit key {}: {e}", path.display())))
}

/// The request's id: its `x-request-id` if that is 1 to 128 visible ASCII
/// characters, else a fresh UUIDv7, which is put on the headers so every
/// later reader sees the same.
pub fn ensure_request_id(headers: &mut http::HeaderMap) -> String {
    if let Some(id) = request_id(headers) {
        return id;
    }
    let id = uuid::Uuid::now_v7().to_string();
    headers.insert(
        REQUEST_ID_HEADER,
        http::HeaderValue::from_str(&id).expect("a UUID is a valid header value"),
    );
    id
}

/// The request's valid `x-request-id`, if it has one.
pub fn request_id(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
}

/// What a handler tells the audit log about its call: the object it
/// concerns, and whether that object is another tenant's (answered
/// NOT_FOUND, recorded as a denial).
#[derive(Debug, Clone, Default)]
pub struct AuditNote(Arc<Mutex<NoteState>>);

#[derive(Debug, Default)]
struct NoteState {
    target: String,
    cross_tenant: bool,
}

impl AuditNote {
    /// Names the object of the call (`job/<id>`, `tenant/<id>`, …).
    pub fn target(&self, target: impl Into<String>) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).target = bound(target.into());
    }

    /// The object is another tenant's: the caller is told NOT_FOUND, and
    /// the attempt is recorded as denied.
    pub fn cross_tenant(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cross_tenant = true;
    }

    pub(crate) fn get(&self) -> (String, bool) {
        let s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (s.target.clone(), s.cross_tenant)
    }
}

/// The note the auth layer put on a request (a detached one if none).
pub fn note<T>(request: &tonic::Request<T>) -> AuditNote {
    request
        .extensions()
        .get::<AuditNote>()
        .cloned()
        .unwrap_or_default()
}

/// A gRPC code's name, as outcomes carry it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The outcome of a handled call that answered `code`: refusals of the
/// caller's identity or rights (and another tenant's object) are denials,
/// the rest failures.
pub fn outcome(code: tonic::Code, cross_tenant: bool) -> Outcome {
    match code {
        tonic::Code::Ok => Outcome::Ok,
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
            Outcome::Denied(code_name(code).into())
        }
        tonic::Code::NotFound if cross_tenant => Outcome::Denied(code_name(code).into()),
        _ => Outcome::Failed(code_name(code).into()),
    }
}

/// Keeps free text within [`MAX_FIELD_CHARS`].
fn bound(mut text: String) -> String {
    if let Some((cut, _)) = text.char_indices().nth(MAX_FIELD_CHARS) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// An entry for a call to `action` by `principal` (or an anonymous caller
/// at `peer`).
pub fn entry(
    action: &str,
    principal: Option<&Principal>,
    peer: Option<IpAddr>,
    target: String,
    request_id: String,
    outcome: Outcome,
) -> Entry {
    let (actor, role, tenant) = match principal {
        Some(p) => (
            p.subject.clone(),
            p.role.as_str().to_owned(),
            p.tenant.as_ref().map(|t| t.to_string()),
        ),
        None => (
            match peer {
                Some(ip) => format!("address/{ip}"),
                None => "address/unknown".to_owned(),
            },
            "anonymous".to_owned(),
            None,
        ),
    };
    Entry {
        seq: 0,
        at_ms: finpool_domain::Timestamp::now().0,
        actor: bound(actor),
        role,
        tenant,
        action: bound(action.to_owned()),
        target: bound(target),
        request_id: bound(request_id),
        outcome,
    }
}

/// The audit log's queue and key; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
}

struct Shared {
    tx: mpsc::Sender<Entry>,
    /// Taken by the writer when it starts.
    rx: Mutex<Option<mpsc::Receiver<Entry>>>,
    /// Entries that found the queue full, not yet written as a count.
    dropped: AtomicU64,
    signer: OnceLock<Arc<Signer>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("key_id", &self.shared.signer.get().map(|s| s.key_id()))
            .field("queued", &(QUEUE - self.shared.tx.capacity()))
            .finish()
    }
}

impl Default for AuditLog {
    fn default() -> Self {
        Self::new()
    }
}

impl AuditLog {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            shared: Arc::new(Shared {
                tx,
                rx: Mutex::new(Some(rx)),
                dropped: AtomicU64::new(0),
                signer: OnceLock::new(),
            }),
        }
    }

    /// Sets the key entries and checkpoints are signed with; only the
    /// first key set counts.
    pub fn set_signer(&self, signer: Signer) {
        if self.shared.signer.set(Arc::new(signer)).is_err() {
            tracing::warn!("the audit key was already set; keeping the first");
        }
    }

    /// The public half of the key, once set.
    pub fn public_key(&self) -> Option<PublicKey> {
        self.shared.signer.get().map(|s| s.public_key())
    }

    /// Queues an entry without waiting (the gate's path): a full queue
    /// counts it as dropped, and the count is written later.
    pub fn record(&self, entry: Entry) {
        if self.shared.tx.try_send(entry).is_err() {
            self.dropped();
        }
    }

    /// Queues a mutation's entry, waiting briefly for room.
    pub async fn record_waiting(&self, entry: Entry) {
        let entry = match self.shared.tx.try_send(entry) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(entry)) => entry,
            Err(mpsc::error::TrySendError::Closed(_)) => return self.dropped(),
        };
        match tokio::time::timeout(ENQUEUE_WAIT, self.shared.tx.send(entry)).await {
            Ok(Ok(())) => {}
            _ => self.dropped(),
        }
    }

    fn dropped(&self) {
        let n = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::error!(
                dropped = n,
                "the audit queue is full; dropped entries are counted in the log"
            );
        }
    }

    /// Starts the writer and the checkpointer over `store`. Without a key
    /// set, a throwaway one is made (and said loudly): its entries cannot
    /// be verified after this process ends. `None` if already started.
    pub fn start(&self, store: Store, checkpoint_every: Duration) -> Option<AuditTasks> {
        let rx = self
            .shared
            .rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        let signer = self
            .shared
            .signer
            .get_or_init(|| {
                tracing::warn!(
                    "no audit key configured: signing the audit log with a throwaway key"
                );
                let mut seed = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
                    .expect("the system's random source works");
                Arc::new(Signer::from_seed(seed))
            })
            .clone();
        let (stop_writer, writer_stopped) = watch::channel(false);
        let (stop_checkpointer, checkpointer_stopped) = watch::channel(false);
        let writer = tokio::spawn(run_writer(
            store.clone(),
            signer.clone(),
            rx,
            self.shared.clone(),
            writer_stopped,
        ));
        let checkpointer = tokio::spawn(run_checkpointer(
            store,
            signer,
            checkpoint_every,
            checkpointer_stopped,
        ));
        Some(AuditTasks {
            stop_writer,
            stop_checkpointer,
            writer,
            checkpointer,
        })
    }
}

/// The running writer and checkpointer.
pub struct AuditTasks {
    stop_writer: watch::Sender<bool>,
    stop_checkpointer: watch::Sender<bool>,
    writer: JoinHandle<()>,
    checkpointer: JoinHandle<()>,
}

impl AuditTasks {
    /// Flushes the queue, signs a last checkpoint, and stops both.
    pub async fn shutdown(self) {
        self.stop_writer.send_replace(true);
        let _ = self.writer.await;
        // The writer has flushed: the last checkpoint covers everything.
        self.stop_checkpointer.send_replace(true);
        let _ = self.checkpointer.await;
    }
}

fn overflow_entry(count: u64) -> Entry {
    Entry {
        seq: 0,
        at_ms: finpool_domain::Timestamp::now().0,
        actor: "finpool".into(),
        role: "system".into(),
        tenant: None,
        action: "audit.overflow".into(),
        target: format!("dropped/{count}"),
        request_id: uuid::Uuid::now_v7().to_string(),
        outcome: Outcome::Failed("RESOURCE_EXHAUSTED".into()),
    }
}

async fn run_writer(
    store: Store,
    signer: Arc<Signer>,
    mut rx: mpsc::Receiver<Entry>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let shared_dropped = move || shared.dropped.swap(0, Ordering::Relaxed);
    let mut batch: Vec<Entry> = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            biased;
            entry = rx.recv() => match entry {
                Some(e) => batch.push(e),
                None => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        }
        let gathered = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            tokio::select! {
                biased;
                entry = rx.recv() => match entry {
                    Some(e) => batch.push(e),
                    None => break,
                },
                _ = tokio::time::sleep_until(gathered) => break,
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        let lost = shared_dropped();
        if lost > 0 {
            batch.push(overflow_entry(lost));
        }
        if !append(&store, &signer, &mut batch, &mut stop).await {
            break;
        }
    }
    // Shutdown: everything queued by now goes in, or is said to be lost.
    let deadline = Instant::now() + FLUSH_DEADLINE;
    loop {
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let lost = shared_dropped();
        if lost > 0 {
            batch.push(overflow_entry(lost));
        }
        if batch.is_empty() {
            break;
        }
        if !append_until(&store, &signer, &mut batch, deadline).await {
            let mut left = batch.len();
            while rx.try_recv().is_ok() {
                left += 1;
            }
            tracing::error!(
                entries = left,
                "audit entries could not be written before shutdown: the database is unavailable"
            );
            break;
        }
    }
}

/// Appends the batch, retrying while the database is unavailable. Returns
/// false (the batch kept) if shutdown began meanwhile.
async fn append(
    store: &Store,
    signer: &Signer,
    batch: &mut Vec<Entry>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let mut backoff = Duration::from_millis(50);
    loop {
        match store.append_audit(batch, signer).await {
            Ok(_) => {
                batch.clear();
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, entries = batch.len(), "audit entries not written yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return false,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Appends the batch, retrying until `deadline`.
async fn append_until(
    store: &Store,
    signer: &Signer,
    batch: &mut Vec<Entry>,
    deadline: Instant,
) -> bool {
    loop {
        match store.append_audit(batch, signer).await {
            Ok(_) => {
                batch.clear();
                return true;
            }
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %e, "flushing the audit log; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => return false,
        }
    }
}

/// Signs checkpoints over the stored log.
struct Checkpointer {
    store: Store,
    signer: Arc<Signer>,
    /// The log as read so far.
    frontier: Frontier,
    /// The checkpoint found at start, checked once the log reaches it.
    pending_check: Option<Checkpoint>,
    /// Why the stored log contradicts a checkpoint: then none is signed.
    tainted: Option<String>,
    /// The size of the last checkpoint stored.
    signed: Option<u64>,
}

impl Checkpointer {
    /// Reads the entries appended since the last call.
    async fn catch_up(&mut self) -> Result<(), StoreError> {
        loop {
            let rows = self.store.audit_since(self.frontier.size(), PAGE).await?;
            let full = rows.len() == PAGE as usize;
            for row in rows {
                let next = self.frontier.size() + 1;
                if row.seq != next && self.tainted.is_none() {
                    self.tainted = Some(format!("entry {next} is missing (found {})", row.seq));
                }
                self.frontier
                    .push(finpool_audit::merkle::leaf_hash(&row.canonical));
                self.check_pending();
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn check_pending(&mut self) {
        if let Some(c) = &self.pending_check
            && c.tree_size == self.frontier.size()
        {
            if c.root != self.frontier.root() && self.tainted.is_none() {
                self.tainted = Some(format!(
                    "the first {} entries no longer hash to the root of the checkpoint signed at {}",
                    c.tree_size, c.timestamp_ms
                ));
            }
            self.pending_check = None;
        }
    }

    async fn start(&mut self) -> Result<(), StoreError> {
        let latest = self.store.latest_checkpoint().await?;
        if let Some(c) = latest {
            self.signed = Some(c.checkpoint.tree_size);
            self.pending_check = Some(c.checkpoint);
            self.check_pending();
        }
        self.catch_up().await?;
        if let Some(c) = self.pending_check.take() {
            self.tainted = Some(format!(
                "the log has {} entries, fewer than the {} its last checkpoint covers",
                self.frontier.size(),
                c.tree_size
            ));
        }
        if let Some(why) = &self.tainted {
            tracing::error!(%why, "the audit log contradicts its last checkpoint: no checkpoint will be signed over it");
        }
        Ok(())
    }

    /// Signs a checkpoint if the log grew (or has none yet).
    async fn tick(&mut self) -> Result<(), StoreError> {
        self.catch_up().await?;
        if let Some(why) = &self.tainted {
            tracing::error!(%why, "the audit log contradicts its last checkpoint: not signing");
            return Ok(());
        }
        let size = self.frontier.size();
        if self.signed.is_some_and(|s| s >= size) {
            return Ok(());
        }
        let checkpoint = Checkpoint {
            tree_size: size,
            root: self.frontier.root(),
            timestamp_ms: finpool_domain::Timestamp::now().0,
            key_id: String::new(),
        }
        .sign(&self.signer);
        self.store.save_checkpoint(&checkpoint).await?;
        tracing::info!(tree_size = size, root = %checkpoint.checkpoint.root_hex(), "audit checkpoint signed");
        self.signed = Some(size);
        Ok(())
    }
}

async fn run_checkpointer(
    store: Store,
    signer: Arc<Signer>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut c = Checkpointer {
        store,
        signer,
        frontier: Frontier::new(),
        pending_check: None,
        tainted: None,
        signed: None,
    };
    let mut started = false;
    let mut every = tokio::time::interval(every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        if !started {
            match c.start().await {
                Ok(()) => started = true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the audit log yet");
                    continue;
                }
            }
        }
        if let Err(e) = c.tick().await {
            tracing::warn!(error = %e, "audit checkpoint not signed this time");
        }
    }
    // The last one, over everything the writer flushed.
    if !started && c.start().await.is_err() {
        tracing::error!("no audit checkpoint at shutdown: the database is unavailable");
        return;
    }
    if let Err(e) = c.tick().await {
        tracing::error!(error = %e, "no audit checkpoint at shutdown");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut h = http::HeaderMap::new();
        h.insert(REQUEST_ID_HEADER, "abc-123".parse().unwrap());
        assert_eq!(ensure_request_id(&mut h), "abc-123");
        let mut h = http::HeaderMap::new();
        h.insert(REQUEST_ID_HEADER, "has space".parse().unwrap());
        let made = ensure_request_id(&mut h);
        assert_eq!(made.len(), 36);
        assert_eq!(request_id(&h).unwrap(), made);
        let mut h = http::HeaderMap::new();
        let made = ensure_request_id(&mut h);
        assert_eq!(uuid::Uuid::parse_str(&made).unwrap().get_version_num(), 7);
    }

    #[test]
    fn outcomes_tell_denials_from_failures() {
        assert_eq!(outcome(tonic::Code::Ok, false), Outcome::Ok);
        assert_eq!(
            outcome(tonic::Code::PermissionDenied, false),
            Outcome::Denied("PERMISSION_DENIED".into())
        );
        assert_eq!(
            outcome(tonic::Code::NotFound, true),
            Outcome::Denied("NOT_FOUND".into())
        );
        assert_eq!(
            outcome(tonic::Code::NotFound, false),
            Outcome::Failed("NOT_FOUND".into())
        );
        for code in 0..17 {
            let name = code_name(tonic::Code::from_i32(code));
            Outcome::parse(&format!("failed:{name}")).unwrap();
        }
    }

    #[test]
    fn free_text_is_bounded() {
        let long = "x".repeat(2000);
        let e = entry("a", None, None, long, "r".into(), Outcome::Ok);
        assert_eq!(e.target.chars().count(), MAX_FIELD_CHARS + 1);
        assert_eq!(e.actor, "address/unknown");
        assert_eq!(e.role, "anonymous");
    }

    #[test]
    fn the_key_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_key(dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let b = load_or_create_key(dir.path()).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        assert!(load_key(&dir.path().join("missing.pk8")).is_err());
    }
}
