//! Building and running the service: open the store, bind the listener, serve
//! until told to stop, then drain. Tests and `main` go through the same path.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api;
use crate::api::auth::Access;
use crate::config::{Settings, SettingsError};
use crate::connections::{self, ConnectionLimits};
use crate::metrics::Metrics;
use crate::stats::StoreEvents;
use crate::store::{Store, StoreError, StoreOptions};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
}

impl BootError {
    /// 2 for a setting or data folder the operator must fix, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            BootError::Settings(_)
            | BootError::Store(StoreError::DataFolder { .. })
            | BootError::Store(StoreError::ShardCountMismatch { .. })
            | BootError::Store(StoreError::Database { .. })
            | BootError::Store(StoreError::CorruptFile { .. }) => 2,
            _ => 1,
        }
    }
}

/// A started service: the store is open and the port is bound.
pub struct Application {
    settings: Settings,
    store: Store,
    metrics: Arc<Metrics>,
    listener: TcpListener,
    port: u16,
    /// Worked out at boot, where a lowered cap is said before listening.
    limits: ConnectionLimits,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, BootError> {
        let metrics = Arc::new(Metrics::new());
        let store = Store::open(store_options(&settings, metrics.clone())).await?;
        let addr = std::net::SocketAddr::new(settings.listen_addr, settings.port);
        let listener = match TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(source) => {
                store.shutdown().await;
                return Err(BootError::Bind {
                    addr: addr.to_string(),
                    source,
                });
            }
        };
        let port = listener.local_addr().map_or(settings.port, |a| a.port());
        let limits = connection_limits(&settings);
        if settings.api_keys.is_empty() {
            tracing::warn!(
                "no API keys configured (EXDAAS_API_KEYS): every route is open to anyone who can reach the port"
            );
        }
        for key in &settings.api_keys {
            let collections = key
                .collections
                .as_ref()
                .map(|c| c.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(","));
            tracing::info!(key = %key.label(), scope = key.scope.as_str(), collections = collections.as_deref().unwrap_or("all"), "API key configured");
        }
        match &settings.database_url {
            None => {
                tracing::info!(%addr, port, engine = "sqlite", shards = settings.shards.get(), data_dir = %settings.data_dir.display(), sync = settings.sync.as_str(), "exdaas listening")
            }
            Some(url) => {
                tracing::info!(%addr, port, engine = "postgresql", shards = settings.shards.get(), database = %crate::config::redact_url(url), from = settings.database_url_from, "exdaas listening");
                if !settings.ignored.is_empty() {
                    tracing::warn!(ignored = %settings.ignored.join(", "), "these settings are for the data folder's files and mean nothing with a database ({}); they are ignored", settings.database_url_from);
                }
            }
        }
        Ok(Self {
            settings,
            store,
            metrics,
            listener,
            port,
            limits,
        })
    }

    /// The bound port (useful with `PORT=0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves until `stop` resolves; then stops accepting, finishes requests
    /// in flight, drains every writer and checkpoints the WAL.
    pub async fn run_until_stopped(self, stop: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        // Told first when the server stops, so waits on the change feed
        // answer and its streams close instead of holding the drain.
        let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
        let stop = async move {
            stop.await;
            stopping.send_replace(true);
        };
        let options = api::ApiOptions {
            max_body_bytes: self.settings.max_body_bytes,
            max_page_bytes: self.settings.max_page_bytes,
            access: Access::new(self.settings.api_keys.clone()),
            cors_origins: self.settings.cors_origins.clone(),
            backups: api::Backups {
                dir: self.settings.backup_dir.clone(),
                max_count: self.settings.backup_max_count,
                min_free_bytes: self.settings.backup_min_free_bytes,
            },
            metrics: self.metrics.clone(),
            feed_max_subscribers: self.settings.feed_max_subscribers,
            feed_max_subscribers_per_client: self.settings.feed_max_subscribers_per_client,
            query_max_scan: self.settings.query_max_scan,
            query_max_work: self.settings.query_max_work,
            query_threads: self.settings.query_threads,
            feed_heartbeat: self.settings.feed_heartbeat,
            stopping: stopping_rx,
        };
        let routes = api::routes(&self.store, &options);
        let served = connections::serve(
            self.listener,
            routes,
            self.limits,
            self.metrics.clone(),
            stop,
            self.settings.shutdown_timeout,
        )
        .await;
        tracing::info!("stopped accepting requests; draining writers");
        self.store.shutdown().await;
        tracing::info!("every writer drained; exiting");
        served
    }
}

/// The connection bounds of the settings, with the connection cap lowered
/// to what the process's open-files limit leaves room for (each connection
/// is a descriptor, and so is each shard file and database connection):
/// past that limit, `accept` fails and nobody, probes included, gets in.
fn connection_limits(settings: &Settings) -> ConnectionLimits {
    let wanted = settings.connections.max_connections;
    let reserved = 64 + 8 * settings.shards.get() as usize + 2 * settings.read_connections as usize;
    let max_connections = match open_files_limit() {
        Some(limit) if (limit as usize) < wanted + reserved => {
            let fits = (limit as usize).saturating_sub(reserved).max(16);
            tracing::warn!(
                EXDAAS_MAX_CONNECTIONS = wanted,
                open_files_limit = limit,
                max_connections = fits,
                "the open-files limit (ulimit -n) leaves room for fewer connections than EXDAAS_MAX_CONNECTIONS; taking at most {fits}"
            );
            fits
        }
        _ => wanted,
    };
    ConnectionLimits {
        max_connections,
        head_timeout: settings.connections.head_timeout,
        idle_timeout: settings.connections.idle_timeout,
        send_timeout: settings.send_timeout,
        http2: settings.connections.http2,
        http2_max_streams: settings.connections.http2_max_streams,
    }
}

/// The soft limit on open files, raised first to the hard limit (what
/// every server that holds many sockets does; the soft limit is often
/// 1024 where the hard one is far higher).
#[cfg(unix)]
fn open_files_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

#[cfg(not(unix))]
fn open_files_limit() -> Option<u64> {
    None
}

/// What the store is told of the settings: plain data, handed down, so the
/// store does not read settings itself.
pub fn store_options(settings: &Settings, events: Arc<dyn StoreEvents>) -> StoreOptions {
    StoreOptions {
        data_dir: settings.data_dir.clone(),
        database_url: settings.database_url.clone(),
        replica_poll: settings.replica_poll,
        shards: settings.shards,
        sync: settings.sync,
        cache_bytes: settings.cache_bytes,
        writer_batch: settings.writer_batch,
        writer_queue: settings.writer_queue,
        writer_queue_bytes: settings.writer_queue_bytes,
        page_bytes: settings.max_page_bytes,
        max_document_bytes: settings.max_body_bytes,
        queue_wait: settings.writer_queue_wait,
        read_connections: settings.read_connections,
        boot_check: settings.boot_check,
        feed_retention: settings.feed_retention,
        feed_max_entries: settings.feed_max_entries,
        events,
    }
}

/// A future that resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are
/// installed when this is called, not when the future is first polled, so
/// call it before the service starts: a signal that arrives while it boots
/// then stops it cleanly instead of killing it.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |kind: SignalKind, name: &'static str| {
            let handler = signal(kind);
            if let Err(e) = &handler {
                tracing::error!(error = %e, "cannot listen for {name}");
            }
            async move {
                match handler {
                    Ok(mut handler) => {
                        handler.recv().await;
                        tracing::info!("received {name}");
                    }
                    Err(_) => std::future::pending().await,
                }
            }
        };
        let terminate = listen(SignalKind::terminate(), "SIGTERM");
        let interrupt = listen(SignalKind::interrupt(), "SIGINT");
        async move {
            tokio::select! {
                () = terminate => {}
                () = interrupt => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("received Ctrl-C");
    }
}
