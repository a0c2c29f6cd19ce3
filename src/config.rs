//! Settings: built-in defaults, then an optional TOML file (`EXDAAS_CONFIG`),
//! then the environment. The original's names (`PORT`, `DETS_ROOT`,
//! `SHARD_LIMIT`) work as they did; everything newer is prefixed `EXDAAS_`.
//! Raw strings become typed values here, once, so a bad value stops the
//! program at boot with a message naming the setting.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};

use crate::domain::access::ApiKey;
use crate::domain::ShardCount;
pub use crate::domain::SyncMode;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything the service can be told, valid by construction.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen_addr: IpAddr,
    pub port: u16,
    pub data_dir: PathBuf,
    /// A PostgreSQL-protocol database (`postgres://…`) instead of the data
    /// folder's files.
    pub database_url: Option<String>,
    /// Where [`Self::database_url`] came from: `EXDAAS_DATABASE_URL` (or the
    /// file's `database_url`), else the PaaS convention `DATABASE_URL`
    /// (Heroku Postgres and most others set it), for the boot log.
    pub database_url_from: &'static str,
    /// How often a replica on a shared database looks for the others' writes.
    pub replica_poll: Duration,
    /// Settings that were set but mean nothing on the chosen engine, for
    /// the boot to name.
    pub ignored: Vec<&'static str>,
    pub shards: ShardCount,
    pub cache_bytes: u64,
    pub max_body_bytes: usize,
    pub sync: SyncMode,
    pub writer_batch: usize,
    pub writer_queue: usize,
    /// Bytes of documents that may wait for one shard's writer.
    pub writer_queue_bytes: usize,
    pub writer_queue_wait: Duration,
    /// Bytes of documents one answer (a page, a batch's results, a chunk
    /// of an export) may hold.
    pub max_page_bytes: usize,
    pub read_connections: u32,
    pub boot_check: bool,
    /// How long a shard keeps its change feed's entries...
    pub feed_retention: Duration,
    /// ...and how many at most.
    pub feed_max_entries: u64,
    /// Clients that may follow the change feed at once...
    pub feed_max_subscribers: usize,
    /// ...and at most with one key (or from one address, without keys).
    pub feed_max_subscribers_per_client: usize,
    /// Documents (or index entries) a query reads at most.
    pub query_max_scan: usize,
    /// Units of work a query does at most (bytes read and compared,
    /// conditions checked).
    pub query_max_work: u64,
    /// Queries' evaluations running at once, each on a thread of its own.
    pub query_threads: usize,
    /// How often a quiet event stream sends a comment line.
    pub feed_heartbeat: Duration,
    pub shutdown_timeout: Duration,
    /// A connection whose peer takes no bytes for this long is closed.
    pub send_timeout: Duration,
    /// What one connection may hold, and how many there may be.
    pub connections: ConnectionSettings,
    pub log_format: LogFormat,
    /// Where backups over HTTP go; `None`: they are off.
    pub backup_dir: Option<PathBuf>,
    /// Backups that folder may hold before another is refused...
    pub backup_max_count: usize,
    /// ...and the bytes a backup must leave free on its disk.
    pub backup_min_free_bytes: u64,
    /// Empty: the API is open to everyone, as the original was.
    pub api_keys: Vec<ApiKey>,
    pub cors_origins: Vec<String>,
    /// Where traces go: read from the standard `OTEL_*` variables.
    pub traces: TraceExport,
    /// Where `exdaas start` records the server's process id...
    pub pid_file: PathBuf,
    /// ...and where the server it starts writes its logs.
    pub log_file: PathBuf,
}

/// The bounds on clients' connections (see `connections`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    pub max_connections: usize,
    /// From a connection's opening, or a request head's first byte, to the
    /// head's end.
    pub head_timeout: Duration,
    /// A connection with nothing in flight and no byte for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 over cleartext (prior knowledge) beside HTTP/1.1.
    pub http2: bool,
    pub http2_max_streams: u32,
}

/// Whether spans are exported, from OpenTelemetry's standard variables
/// (`OTEL_EXPORTER_OTLP_ENDPOINT` and friends, which the exporter itself
/// reads for the endpoint, headers and timeouts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceExport {
    /// No endpoint set (or `OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`):
    /// no span is even created for a request.
    Off,
    /// OTLP over HTTP (protobuf) to this endpoint.
    Otlp { endpoint: String },
}

impl TraceExport {
    fn from_env(env: &HashMap<String, String>) -> Result<Self, SettingsError> {
        let var = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(TraceExport::Off);
        }
        match var("OTEL_TRACES_EXPORTER") {
            None | Some("otlp") => {}
            Some("none") => return Ok(TraceExport::Off),
            Some(other) => return Err(invalid("OTEL_TRACES_EXPORTER", other, "otlp or none")),
        }
        for name in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            if let Some(protocol) = var(name) {
                if protocol != "http/protobuf" {
                    return Err(invalid(
                        name,
                        protocol,
                        "http/protobuf (the only OTLP protocol exdaas speaks)",
                    ));
                }
            }
        }
        let endpoint = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
            .into_iter()
            .find_map(|name| Some((name, var(name)?)));
        let Some((name, endpoint)) = endpoint else {
            return Ok(TraceExport::Off);
        };
        if !endpoint.starts_with("http://") {
            return Err(invalid(
                name,
                &redact_url(endpoint),
                "an http:// URL such as http://localhost:4318 (export over TLS through a collector beside exdaas)",
            ));
        }
        Ok(TraceExport::Otlp {
            endpoint: endpoint.to_owned(),
        })
    }
}

/// One row of the settings table: its key in the TOML file, its environment
/// name, its default and what it means (Markdown, links relative to the
/// book's settings page, which shows [`settings_markdown`], checked by a
/// test; `--help` prints it as text).
pub struct SettingDoc {
    pub key: &'static str,
    pub env: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

pub const SETTINGS: &[SettingDoc] = &[
    SettingDoc {
        key: "port",
        env: "PORT",
        default: "4000",
        meaning: "TCP port to listen on",
    },
    SettingDoc {
        key: "dets_root",
        env: "DETS_ROOT",
        default: "./data",
        meaning: "data folder, created if missing",
    },
    SettingDoc {
        key: "database_url",
        env: "EXDAAS_DATABASE_URL",
        default: "",
        meaning: "`postgres://…`: keep the documents in a PostgreSQL database instead of `DETS_ROOT` (see [Scale out](../scale/postgresql.md)); unset, `DATABASE_URL` is read, as Heroku and most platforms set it. TLS as libpq reads `sslmode` (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`) and `sslrootcert`. `DETS_ROOT`, `EXDAAS_SYNC` and `EXDAAS_BOOT_CHECK` are then ignored, and the boot says so",
    },
    SettingDoc {
        key: "replica_poll_ms",
        env: "EXDAAS_REPLICA_POLL_MS",
        default: "100",
        meaning: "with `EXDAAS_DATABASE_URL`: how often each replica looks for the others' writes, so how long its cache may serve a document another replica changed (10 to 60000; see [what each read sees](../scale/postgresql.md#what-each-read-sees))",
    },
    SettingDoc {
        key: "shard_limit",
        env: "SHARD_LIMIT",
        default: "4",
        meaning: "number of shard files, 1 to 4096; fixed once the folder is written (change it with [`exdaas reshard`](../safe/backup.md))",
    },
    SettingDoc {
        key: "listen_addr",
        env: "EXDAAS_LISTEN_ADDR",
        default: "0.0.0.0",
        meaning: "IP address to listen on",
    },
    SettingDoc {
        key: "cache_mib",
        env: "EXDAAS_CACHE_MIB",
        default: "256",
        meaning: "memory for cached data in MiB: seven eighths for documents (counted at what their entries really cost; 0 disables the cache), one eighth for the shards' writers' SQLite pages. The process stays within this plus 64 MiB",
    },
    SettingDoc {
        key: "max_body_bytes",
        env: "EXDAAS_MAX_BODY_BYTES",
        default: "1048576",
        meaning: "largest request body accepted (larger gets 413), and the largest a document may grow to by patches (422); at most 512 MiB",
    },
    SettingDoc {
        key: "sync",
        env: "EXDAAS_SYNC",
        default: "full",
        meaning: "commit durability: `full` fsyncs each group commit; `normal` survives a process crash, not power loss (see [Durability](../safe/durability.md))",
    },
    SettingDoc {
        key: "writer_batch",
        env: "EXDAAS_WRITER_BATCH",
        default: "1024",
        meaning: "most writes one shard commits together (group commit)",
    },
    SettingDoc {
        key: "writer_queue",
        env: "EXDAAS_WRITER_QUEUE",
        default: "8192",
        meaning: "writes that may wait for one shard's writer",
    },
    SettingDoc {
        key: "writer_queue_bytes",
        env: "EXDAAS_WRITER_QUEUE_BYTES",
        default: "67108864",
        meaning: "bytes of documents that may wait for one shard's writer (64 MiB); past it, writes wait as for a full queue",
    },
    SettingDoc {
        key: "writer_queue_wait_ms",
        env: "EXDAAS_WRITER_QUEUE_WAIT_MS",
        default: "2000",
        meaning: "how long a write waits for room in a full queue, or a read for a free connection, before 503 with `Retry-After`",
    },
    SettingDoc {
        key: "max_page_bytes",
        env: "EXDAAS_MAX_PAGE_BYTES",
        default: "8388608",
        meaning: "bytes of documents one listing page, batch answer or export chunk holds (8 MiB; at least one document)",
    },
    SettingDoc {
        key: "feed_retention_hours",
        env: "EXDAAS_FEED_RETENTION_HOURS",
        default: "168",
        meaning: "how long the [change feed](../changes.md) keeps an entry (a week: a client offline over a weekend still resumes); a client further behind starts over (410)",
    },
    SettingDoc {
        key: "feed_max_entries",
        env: "EXDAAS_FEED_MAX_ENTRIES",
        default: "1000000",
        meaning: "most change-feed entries one shard keeps, the oldest going first (about 100 MB per shard at most)",
    },
    SettingDoc {
        key: "feed_max_subscribers",
        env: "EXDAAS_FEED_MAX_SUBSCRIBERS",
        default: "256",
        meaning: "clients that may wait on the change feed at once (long polls and event streams); past it, 503 with `Retry-After`",
    },
    SettingDoc {
        key: "feed_max_subscribers_per_client",
        env: "EXDAAS_FEED_MAX_SUBSCRIBERS_PER_CLIENT",
        default: "64",
        meaning: "most of those places one API key may hold (without keys: one client address; behind one proxy, raise it); past it, 429 with `Retry-After`",
    },
    SettingDoc {
        key: "query_max_scan",
        env: "EXDAAS_QUERY_MAX_SCAN",
        default: "10000",
        meaning: "documents (or index entries) a query reads at most: one that would read more is refused with 422 naming the index that fits it, instead of scanning (1 to 100000000)",
    },
    SettingDoc {
        key: "query_max_work",
        env: "EXDAAS_QUERY_MAX_WORK",
        default: "1000000000",
        meaning: "units of work one query may do: a byte of a document read or of a value written out to compare it, a condition checked, an array item looked at (about 1 GB of documents read). One that would do more is refused with 422 naming the bound and the index that fits it (100000 to 1000000000000)",
    },
    SettingDoc {
        key: "query_threads",
        env: "EXDAAS_QUERY_THREADS",
        default: "auto",
        meaning: "queries evaluating documents at once, each on a thread of its own beside those that answer requests (`auto`: one per CPU core); more wait their turn (1 to 1024)",
    },
    SettingDoc {
        key: "feed_heartbeat_secs",
        env: "EXDAAS_FEED_HEARTBEAT_SECS",
        default: "15",
        meaning: "seconds between comment lines on a quiet event stream; keep it under your proxies' idle timeout (1 to 300)",
    },
    SettingDoc {
        key: "boot_check",
        env: "EXDAAS_BOOT_CHECK",
        default: "quick",
        meaning: "integrity check of every shard at boot: `quick` (reads each file) or `off`",
    },
    SettingDoc {
        key: "read_connections",
        env: "EXDAAS_READ_CONNECTIONS",
        default: "4",
        meaning: "read-only SQLite connections per shard",
    },
    SettingDoc {
        key: "shutdown_timeout_secs",
        env: "EXDAAS_SHUTDOWN_TIMEOUT_SECS",
        default: "30",
        meaning: "how long SIGTERM waits for requests in flight",
    },
    SettingDoc {
        key: "send_timeout_secs",
        env: "EXDAAS_SEND_TIMEOUT_SECS",
        default: "60",
        meaning: "a connection whose client takes no bytes of an answer for this long is closed (a stalled event stream gives back its place among the feed's followers); over HTTP/2, an answer whose stream the client grants no window is one it does not take",
    },
    SettingDoc {
        key: "max_connections",
        env: "EXDAAS_MAX_CONNECTIONS",
        default: "1024",
        meaning: "client connections open at once; past it a new one is answered 503 with `Retry-After: 1` and closed, and the open ones go on. Lowered at boot, with a warning, to what the open-files limit (`ulimit -n`, raised to its hard limit first) leaves room for",
    },
    SettingDoc {
        key: "head_timeout_secs",
        env: "EXDAAS_HEAD_TIMEOUT_SECS",
        default: "10",
        meaning: "a connection that has not sent a whole request head this long after it opened, or after the head's first byte, is closed (slow clients that trickle headers)",
    },
    SettingDoc {
        key: "idle_timeout_secs",
        env: "EXDAAS_IDLE_TIMEOUT_SECS",
        default: "75",
        meaning: "a kept-alive connection with nothing in flight and no byte for this long is closed; keep it above your load balancer's idle timeout",
    },
    SettingDoc {
        key: "http2",
        env: "EXDAAS_HTTP2",
        default: "off",
        meaning: "`on`: also serve HTTP/2 over cleartext (prior knowledge) beside HTTP/1.1; off, an HTTP/2 preface is refused like any malformed request",
    },
    SettingDoc {
        key: "http2_max_streams",
        env: "EXDAAS_HTTP2_MAX_STREAMS",
        default: "32",
        meaning: "with `EXDAAS_HTTP2=on`: requests one connection may have open at once (1 to 1000)",
    },
    SettingDoc {
        key: "backup_dir",
        env: "EXDAAS_BACKUP_DIR",
        default: "",
        meaning: "where `POST /v1/admin/backup` writes backups (a new folder each); unset, backups over HTTP are off (403). Best outside the data volume",
    },
    SettingDoc {
        key: "backup_max_count",
        env: "EXDAAS_BACKUP_MAX_COUNT",
        default: "8",
        meaning: "backups that folder may hold; one more over HTTP gets 507",
    },
    SettingDoc {
        key: "backup_min_free_mib",
        env: "EXDAAS_BACKUP_MIN_FREE_MIB",
        default: "1024",
        meaning: "MiB a backup over HTTP must leave free on its disk, counting the data folder's size as the backup's; less gets 507",
    },
    SettingDoc {
        key: "api_keys",
        env: "EXDAAS_API_KEYS",
        default: "",
        meaning: "API keys and their scopes (see [API keys](../safe/keys.md)); a secret. In a file, a string or a list",
    },
    SettingDoc {
        key: "cors_origins",
        env: "EXDAAS_CORS_ORIGINS",
        default: "",
        meaning: "origins browsers may call from, `,`-separated, or `*`",
    },
    SettingDoc {
        key: "pid_file",
        env: "EXDAAS_PID_FILE",
        default: "",
        meaning: "where [`exdaas start`](../get-started/console.md) records the server's process id, for `stop` and `status` (by default `DETS_ROOT.pid`: beside the data folder, not in it, so `./data` gives `./data.pid`)",
    },
    SettingDoc {
        key: "log_file",
        env: "EXDAAS_LOG_FILE",
        default: "",
        meaning: "where the server `exdaas start` runs appends its logs (by default `DETS_ROOT.log`)",
    },
    SettingDoc {
        key: "log_format",
        env: "EXDAAS_LOG_FORMAT",
        default: "text",
        meaning: "`text` or `json` log lines; filter with `RUST_LOG`",
    },
];

/// The book's settings table, header included: one row per setting, in
/// the order of [`SETTINGS`].
pub fn settings_markdown() -> String {
    let mut table = String::from("| environment | file key | default | meaning |\n|---|---|---|---|\n");
    for s in SETTINGS {
        let default = if s.default.is_empty() {
            "(none)".to_owned()
        } else {
            format!("`{}`", s.default)
        };
        table.push_str(&format!("| `{}` | `{}` | {default} | {} |\n", s.env, s.key, s.meaning));
    }
    table
}

impl SettingDoc {
    /// The meaning as plain text for a terminal: links keep their words,
    /// code loses its backticks.
    pub fn meaning_text(&self) -> String {
        let mut text = String::with_capacity(self.meaning.len());
        let mut rest = self.meaning;
        while let Some(open) = rest.find('[') {
            let Some(close) = rest[open..].find("](").map(|i| open + i) else {
                break;
            };
            let Some(end) = rest[close..].find(')').map(|i| close + i) else {
                break;
            };
            text.push_str(&rest[..open]);
            text.push_str(&rest[open + 1..close]);
            rest = &rest[end + 1..];
        }
        text.push_str(rest);
        text.replace('`', "")
    }
}

/// A setting that could not be read or has a value outside what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid setting {name}={value:?}: expected {expected}{}", reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Invalid {
        name: &'static str,
        value: String,
        expected: Cow<'static, str>,
        /// What exactly is wrong, when the value alone does not say it.
        reason: Option<String>,
    },
    #[error("cannot read config file EXDAAS_CONFIG={path:?}: {reason}")]
    File { path: String, reason: String },
}

/// `path`, or when it is empty (the default), a file named after the data
/// folder with `extension`: `./data` gives `./data.pid`. Beside the folder,
/// not in it, so a backup or restore never meets it.
fn beside_data(dets_root: &str, path: &str, extension: &str) -> PathBuf {
    let path = path.trim();
    if path.is_empty() {
        let root = dets_root.trim();
        let root = root.trim_end_matches('/');
        PathBuf::from(format!("{}.{extension}", if root.is_empty() { "data" } else { root }))
    } else {
        PathBuf::from(path)
    }
}

/// `url` without its secrets, fit for an error message or a log: the
/// password of its user information (`user:***@`), and the value of every
/// query parameter whose name looks like a secret (`password=***`,
/// `sslpassword=***`, `token=***`...). Not a URL (a PostgreSQL
/// `key=value ...` string): the values of such keys.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact_keywords(url);
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    // The user information ends at the authority's last `@`. A password
    // with a raw `/`, `?` or `#` (not a valid URL, yet one a hand may type)
    // ends the authority early: then the last `@` anywhere after a `:`
    // counts, which may hide more than the password but never less.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end]
        .rfind('@')
        .or_else(|| rest.rfind('@').filter(|&at| rest[..at].contains(':')));
    let (userinfo, after) = match at {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let mut shown = String::with_capacity(url.len());
    shown.push_str(scheme);
    if let Some(userinfo) = userinfo {
        match userinfo.split_once(':') {
            Some((user, _)) => {
                shown.push_str(user);
                shown.push_str(":***");
            }
            None => shown.push_str(userinfo),
        }
        shown.push('@');
    }
    let (before_fragment, fragment) = match after.find('#') {
        Some(hash) => after.split_at(hash),
        None => (after, ""),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            shown.push_str(path);
            shown.push('?');
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if looks_secret(name) => format!("{name}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            shown.push_str(&pairs.join("&"));
        }
        None => shown.push_str(before_fragment),
    }
    if !fragment.is_empty() {
        shown.push_str("#***");
    }
    shown
}

/// A PostgreSQL keyword/value connection string (`host=db password='x y'`)
/// with the values of secret-looking keys replaced by `***`.
fn redact_keywords(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let name = rest[..eq]
            .trim_end()
            .rsplit(char::is_whitespace)
            .next()
            .unwrap_or_default();
        let value_start = eq + 1 + (rest[eq + 1..].len() - rest[eq + 1..].trim_start().len());
        // A quoted value ends at its closing quote (`\'` escapes one), a
        // bare one at the next white space.
        let value_len = if rest[value_start..].starts_with('\'') {
            let mut escaped = false;
            rest[value_start + 1..]
                .char_indices()
                .find(|&(_, c)| {
                    let closes = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                })
                .map_or(rest.len() - value_start, |(i, _)| i + 2)
        } else {
            rest[value_start..]
                .find(char::is_whitespace)
                .unwrap_or(rest.len() - value_start)
        };
        shown.push_str(&rest[..value_start]);
        if looks_secret(name.trim()) {
            shown.push_str("***");
        } else {
            shown.push_str(&rest[value_start..value_start + value_len]);
        }
        rest = &rest[value_start + value_len..];
    }
    shown.push_str(rest);
    shown
}

/// Whether a parameter's name (`password`, `sslpassword`, `api_key`,
/// `X-Amz-Signature`, `access_token`...) says its value is a secret.
fn looks_secret(name: &str) -> bool {
    let name: String = form_urlencoded::parse(name.as_bytes())
        .next()
        .map(|(name, _)| name.to_ascii_lowercase())
        .unwrap_or_default();
    [
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "auth",
        "sig",
        "credential",
        "session",
    ]
    .iter()
    .any(|word| name.contains(word))
}

impl Settings {
    /// Reads the settings from this process's environment.
    pub fn load() -> Result<Self, SettingsError> {
        Self::from_env(std::env::vars().collect())
    }

    /// Reads the settings from the given environment (tests pass their own).
    pub fn from_env(env: HashMap<String, String>) -> Result<Self, SettingsError> {
        let mut builder = Config::builder();
        for doc in SETTINGS {
            builder = builder
                .set_default(doc.key, doc.default)
                .map_err(|e| file_error("<defaults>", e))?;
        }
        let file = env.get("EXDAAS_CONFIG").cloned();
        if let Some(path) = &file {
            builder = builder.add_source(File::new(path, FileFormat::Toml).required(true));
        }
        // Prefixed names map to file keys: EXDAAS_CACHE_MIB -> cache_mib.
        builder = builder.add_source(
            Environment::with_prefix("EXDAAS")
                .prefix_separator("_")
                .source(Some(env.clone())),
        );
        for (key, name) in [
            ("port", "PORT"),
            ("dets_root", "DETS_ROOT"),
            ("shard_limit", "SHARD_LIMIT"),
        ] {
            builder = builder
                .set_override_option(key, env.get(name).cloned())
                .map_err(|e| file_error("<environment>", e))?;
        }
        let config = builder
            .build()
            .map_err(|e| file_error(file.as_deref().unwrap_or("<environment>"), e))?;
        let read = Reader {
            config: &config,
            source: file.as_deref().unwrap_or("<environment>"),
        };

        let (database_url, database_url_from) = match read.text("database_url")? {
            url if !url.trim().is_empty() => (url, "EXDAAS_DATABASE_URL"),
            _ => match env.get("DATABASE_URL") {
                Some(url) if !url.trim().is_empty() => (url.clone(), "DATABASE_URL"),
                _ => (String::new(), "EXDAAS_DATABASE_URL"),
            },
        };
        let dets_root = read.text("dets_root")?;
        Ok(Settings {
            listen_addr: read.parsed("listen_addr", "an IP address such as 0.0.0.0 or ::1")?,
            port: read.int("port", 0, 65_535, "a TCP port")? as u16,
            database_url: match database_url.trim() {
                "" => None,
                url if url.starts_with("postgres://") || url.starts_with("postgresql://") => Some(url.to_owned()),
                url => {
                    return Err(invalid(
                        database_url_from,
                        &redact_url(url),
                        "a postgres:// or postgresql:// URL",
                    ))
                }
            },
            database_url_from,
            replica_poll: read.millis("replica_poll_ms", 10, 60_000)?,
            ignored: if database_url.trim().is_empty() {
                Vec::new()
            } else {
                ["DETS_ROOT", "EXDAAS_SYNC", "EXDAAS_BOOT_CHECK"]
                    .into_iter()
                    .filter(|name| env.contains_key(*name))
                    .collect()
            },
            data_dir: match dets_root.trim() {
                "" => return Err(invalid("DETS_ROOT", &dets_root, "a folder path")),
                _ => PathBuf::from(&dets_root),
            },
            shards: ShardCount::new(read.int("shard_limit", 1, 4096, "an integer")? as u32).ok_or_else(|| {
                invalid(
                    "SHARD_LIMIT",
                    &read.text("shard_limit").unwrap_or_default(),
                    "an integer from 1 to 4096",
                )
            })?,
            cache_bytes: (read.int("cache_mib", 0, 1 << 20, "a size in MiB")? as u64) << 20,
            // A document is at most this long, and SQLite holds no string
            // over 1,000,000,000 bytes.
            max_body_bytes: read.int("max_body_bytes", 1024, 1 << 29, "a byte count")?,
            sync: read.choice(
                "sync",
                &[("normal", SyncMode::Normal), ("full", SyncMode::Full)],
                "normal or full",
            )?,
            writer_batch: read.int("writer_batch", 1, 100_000, "an integer")?,
            writer_queue: read.int("writer_queue", 1, 10_000_000, "an integer")?,
            writer_queue_bytes: read.int("writer_queue_bytes", 1 << 20, 1 << 32, "a byte count")?,
            max_page_bytes: read.int("max_page_bytes", 1 << 16, 1 << 30, "a byte count")?,
            writer_queue_wait: read.millis("writer_queue_wait_ms", 1, 600_000)?,
            feed_retention: Duration::from_secs(
                read.int("feed_retention_hours", 1, 24 * 365 * 10, "hours")? as u64 * 3600,
            ),
            feed_max_entries: read.int("feed_max_entries", 1000, 1_000_000_000, "an integer")? as u64,
            feed_max_subscribers: read.int("feed_max_subscribers", 1, 100_000, "an integer")?,
            feed_max_subscribers_per_client: read.int("feed_max_subscribers_per_client", 1, 100_000, "an integer")?,
            query_max_scan: read.int("query_max_scan", 1, 100_000_000, "a document count")?,
            query_max_work: read.int("query_max_work", 100_000, 1_000_000_000_000, "a number of units")? as u64,
            query_threads: match read.text("query_threads")?.trim() {
                "auto" => std::thread::available_parallelism().map_or(1, |n| n.get()),
                other => ranged(
                    "EXDAAS_QUERY_THREADS",
                    other,
                    1,
                    1024,
                    "auto, or an integer from 1 to 1024",
                )?,
            },
            feed_heartbeat: read.secs("feed_heartbeat_secs", 1, 300)?,
            boot_check: read.choice("boot_check", &[("quick", true), ("off", false)], "quick or off")?,
            read_connections: read.int("read_connections", 1, 64, "an integer")? as u32,
            shutdown_timeout: read.secs("shutdown_timeout_secs", 0, 3600)?,
            send_timeout: read.secs("send_timeout_secs", 1, 3600)?,
            connections: ConnectionSettings {
                max_connections: read.int("max_connections", 1, 1_000_000, "a connection count")?,
                head_timeout: read.secs("head_timeout_secs", 1, 3600)?,
                idle_timeout: read.secs("idle_timeout_secs", 1, 86_400)?,
                http2: read.choice(
                    "http2",
                    &[
                        ("on", true),
                        ("true", true),
                        ("1", true),
                        ("off", false),
                        ("false", false),
                        ("0", false),
                    ],
                    "on or off",
                )?,
                http2_max_streams: read.int("http2_max_streams", 1, 1000, "a stream count")? as u32,
            },
            log_format: read.choice(
                "log_format",
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
                "text or json",
            )?,
            pid_file: beside_data(&dets_root, &read.text("pid_file")?, "pid"),
            log_file: beside_data(&dets_root, &read.text("log_file")?, "log"),
            backup_dir: match read.text("backup_dir")?.trim() {
                "" => None,
                dir => Some(PathBuf::from(dir)),
            },
            backup_max_count: read.int("backup_max_count", 1, 100_000, "a count")?,
            backup_min_free_bytes: (read.int("backup_min_free_mib", 0, 1 << 30, "MiB")? as u64) << 20,
            api_keys: {
                // A TOML file may give a list; the environment gives one string.
                let listed = config.get::<Vec<String>>("api_keys").map(|keys| keys.join(";"));
                let keys = listed.or_else(|_| read.text("api_keys"))?;
                ApiKey::parse_list(&keys).map_err(|e| SettingsError::Invalid {
                    name: "EXDAAS_API_KEYS",
                    value: e.shown.clone(),
                    expected: "scope:key[:collection,...] entries; see --help".into(),
                    reason: Some(e.to_string()),
                })?
            },
            cors_origins: cors_origins(&read.text("cors_origins")?)?,
            traces: TraceExport::from_env(&env)?,
        })
    }
}

fn invalid(name: &'static str, value: &str, expected: impl Into<Cow<'static, str>>) -> SettingsError {
    SettingsError::Invalid {
        name,
        value: value.to_owned(),
        expected: expected.into(),
        reason: None,
    }
}

/// Reads one setting at a time from the merged sources (defaults, the
/// file, the environment), and refuses a value by the setting's name in the
/// environment, from [`SETTINGS`], with what was expected.
struct Reader<'a> {
    config: &'a Config,
    /// Where the values came from, for a source that cannot be read.
    source: &'a str,
}

impl Reader<'_> {
    /// The setting's name in the environment.
    fn name(key: &str) -> &'static str {
        SETTINGS
            .iter()
            .find(|doc| doc.key == key)
            .map_or("EXDAAS_CONFIG", |doc| doc.env)
    }

    fn text(&self, key: &str) -> Result<String, SettingsError> {
        self.config.get_string(key).map_err(|e| file_error(self.source, e))
    }

    /// A value of a type that parses itself (an address, say).
    fn parsed<T: std::str::FromStr>(&self, key: &str, expected: &'static str) -> Result<T, SettingsError> {
        parse(Self::name(key), &self.text(key)?, expected)
    }

    /// A whole number from `min` to `max`, refused as "`unit` from `min` to
    /// `max`".
    fn int(&self, key: &str, min: usize, max: usize, unit: &str) -> Result<usize, SettingsError> {
        let value = self.text(key)?;
        value
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| invalid(Self::name(key), &value, format!("{unit} from {min} to {max}")))
    }

    fn secs(&self, key: &str, min: usize, max: usize) -> Result<Duration, SettingsError> {
        Ok(Duration::from_secs(self.int(key, min, max, "seconds")? as u64))
    }

    fn millis(&self, key: &str, min: usize, max: usize) -> Result<Duration, SettingsError> {
        Ok(Duration::from_millis(self.int(key, min, max, "milliseconds")? as u64))
    }

    /// One of `choices` (any case), refused as `expected`.
    fn choice<T: Copy>(&self, key: &str, choices: &[(&str, T)], expected: &'static str) -> Result<T, SettingsError> {
        let value = self.text(key)?;
        let wanted = value.trim().to_ascii_lowercase();
        choices
            .iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, choice)| *choice)
            .ok_or_else(|| invalid(Self::name(key), &value, expected))
    }
}

/// `EXDAAS_CORS_ORIGINS`: comma-separated origins, each `http(s)://...` or `*`.
fn cors_origins(list: &str) -> Result<Vec<String>, SettingsError> {
    let origins: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(bad) = origins
        .iter()
        .find(|o| *o != "*" && !(o.starts_with("http://") || o.starts_with("https://")))
    {
        return Err(invalid(
            "EXDAAS_CORS_ORIGINS",
            bad,
            "origins such as https://app.example.com, or *",
        ));
    }
    Ok(origins)
}

fn file_error(path: &str, err: config::ConfigError) -> SettingsError {
    SettingsError::File {
        path: path.to_owned(),
        reason: err.to_string(),
    }
}

fn parse<T: std::str::FromStr>(name: &'static str, value: &str, expected: &'static str) -> Result<T, SettingsError> {
    value.trim().parse().map_err(|_| invalid(name, value, expected))
}

fn ranged(
    name: &'static str,
    value: &str,
    min: usize,
    max: usize,
    expected: &'static str,
) -> Result<usize, SettingsError> {
    let n: usize = parse(name, value, expected)?;
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(invalid(name, value, expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_match_the_original() {
        let s = Settings::from_env(env(&[])).expect("defaults are valid");
        assert_eq!(s.port, 4000);
        assert_eq!(s.shards.get(), 4);
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert_eq!(s.sync, SyncMode::Full);
    }

    #[test]
    fn original_names_are_honoured() {
        let s = Settings::from_env(env(&[("PORT", "8080"), ("SHARD_LIMIT", "16"), ("DETS_ROOT", "/tmp/x")]))
            .expect("valid");
        assert_eq!((s.port, s.shards.get()), (8080, 16));
        assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn prefixed_names_are_honoured() {
        let s = Settings::from_env(env(&[("EXDAAS_SYNC", "normal"), ("EXDAAS_CACHE_MIB", "8")])).expect("valid");
        assert_eq!(s.sync, SyncMode::Normal);
        assert_eq!(s.cache_bytes, 8 << 20);
    }

    #[test]
    fn bad_values_name_the_setting_and_the_value() {
        for (name, value) in [
            ("SHARD_LIMIT", "0"),
            ("SHARD_LIMIT", "-3"),
            ("SHARD_LIMIT", "abc"),
            ("PORT", "70000"),
            ("EXDAAS_SYNC", "sometimes"),
            ("EXDAAS_QUERY_MAX_WORK", "99999"),
            ("EXDAAS_QUERY_THREADS", "0"),
            ("EXDAAS_QUERY_THREADS", "many"),
        ] {
            let err = Settings::from_env(env(&[(name, value)]))
                .expect_err("must refuse")
                .to_string();
            assert!(err.contains(name) && err.contains(value), "{err}");
        }
    }

    #[test]
    fn a_file_sits_between_defaults_and_environment() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("exdaas.toml");
        std::fs::write(&path, "shard_limit = 8\nport = 5000\n").expect("write config");
        let path = path.to_string_lossy().into_owned();
        let s = Settings::from_env(env(&[("EXDAAS_CONFIG", &path), ("PORT", "6000")])).expect("valid");
        assert_eq!((s.shards.get(), s.port), (8, 6000));
    }

    #[test]
    fn redaction_hides_every_form_a_secret_takes_in_a_url() {
        for (url, shown) in [
            (
                "postgres://exdaas:s3cret@db:5432/exdaas",
                "postgres://exdaas:***@db:5432/exdaas",
            ),
            (
                "postgres://exdaas@db/exdaas?password=s3cret&sslmode=require",
                "postgres://exdaas@db/exdaas?password=***&sslmode=require",
            ),
            (
                "postgresql://db/x?sslpassword=s3cret&application_name=a",
                "postgresql://db/x?sslpassword=***&application_name=a",
            ),
            ("postgres://u:p/s?x@db/x", "postgres://u:***@db/x"),
            ("postgres://db/x?pass%77ord=s3cret", "postgres://db/x?pass%77ord=***"),
            (
                "http://otel:s3cret@collector:4318/v1?api_key=s3cret&region=eu",
                "http://otel:***@collector:4318/v1?api_key=***&region=eu",
            ),
            ("http://collector:4318#s3cret", "http://collector:4318#***"),
            ("postgres://db/exdaas", "postgres://db/exdaas"),
            (
                "host=db user=me password=s3cret dbname=x",
                "host=db user=me password=*** dbname=x",
            ),
            (
                "host=db password = 's3 cr\\'et' port=5",
                "host=db password = *** port=5",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn a_database_url_chooses_postgresql_and_names_what_it_ignores() {
        let s = Settings::from_env(env(&[
            ("EXDAAS_DATABASE_URL", "postgres://exdaas:secret@db:5432/exdaas"),
            ("DETS_ROOT", "/data"),
        ]))
        .expect("valid");
        assert_eq!(
            s.database_url.as_deref(),
            Some("postgres://exdaas:secret@db:5432/exdaas")
        );
        assert_eq!(s.ignored, vec!["DETS_ROOT"]);
        assert!(Settings::from_env(env(&[])).expect("valid").database_url.is_none());
        let err = Settings::from_env(env(&[("EXDAAS_DATABASE_URL", "mysql://root:hunter2@db/x")]))
            .expect_err("not PostgreSQL")
            .to_string();
        assert!(
            err.contains("EXDAAS_DATABASE_URL") && err.contains("postgres://"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "the password stays out of messages: {err}");
    }

    /// Heroku Postgres and most platforms set `DATABASE_URL`: it is the
    /// database when `EXDAAS_DATABASE_URL` is not set, and the name a
    /// mistake in it is reported under.
    #[test]
    fn database_url_is_read_when_exdaas_database_url_is_unset() {
        let s = Settings::from_env(env(&[("DATABASE_URL", "postgres://u:p@paas/db?sslmode=require")])).expect("valid");
        assert_eq!(
            s.database_url.as_deref(),
            Some("postgres://u:p@paas/db?sslmode=require")
        );
        assert_eq!(s.database_url_from, "DATABASE_URL");
        let s = Settings::from_env(env(&[
            ("DATABASE_URL", "postgres://paas/db"),
            ("EXDAAS_DATABASE_URL", "postgres://mine/db"),
        ]))
        .expect("valid");
        assert_eq!(s.database_url.as_deref(), Some("postgres://mine/db"));
        assert_eq!(s.database_url_from, "EXDAAS_DATABASE_URL");
        let err = Settings::from_env(env(&[("DATABASE_URL", "mysql://root@db/x")]))
            .expect_err("not PostgreSQL")
            .to_string();
        assert!(
            err.contains("DATABASE_URL=") && !err.contains("EXDAAS_DATABASE_URL"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod settings_table {
    use super::*;

    /// The book's settings page shows the table the program reads: a
    /// setting added, removed or reworded in one and not the other fails
    /// here. `EXDAAS_BLESS=1 cargo test settings_table` writes the program's
    /// table into the page instead (the page's words around it are kept).
    #[test]
    fn the_book_shows_the_settings_table_the_program_reads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/src/run/settings.md");
        let page = std::fs::read_to_string(path).expect("the book has a settings page");
        let start = page
            .find("| environment | file key | default | meaning |")
            .expect("the settings page has a settings table");
        let end = page[start..].find("\n\n").map_or(page.len(), |i| start + i + 1);
        if std::env::var_os("EXDAAS_BLESS").is_some() {
            let blessed = format!("{}{}{}", &page[..start], settings_markdown(), &page[end..]);
            std::fs::write(path, blessed).expect("the settings page is writable");
            return;
        }
        assert_eq!(
            &page[start..end],
            settings_markdown(),
            "docs/src/run/settings.md's table differs from config::SETTINGS: run EXDAAS_BLESS=1 cargo test settings_table"
        );
    }

    #[test]
    fn help_prints_links_as_their_words() {
        let doc = SettingDoc {
            key: "k",
            env: "E",
            default: "",
            meaning: "see [Scale out](#scale-out) and `exdaas check`",
        };
        assert_eq!(doc.meaning_text(), "see Scale out and exdaas check");
    }
}
