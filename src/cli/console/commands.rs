//! The console's commands: what a line does against the server, whether
//! typed in the shell (`shell.rs`) or given on the command line (`mod.rs`).
//! Both call in here and it imports neither, so they no longer import
//! each other.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::Method;
use serde_json::Value;

use super::client::{Api, ClientError};

/// Set by Ctrl-C: a running `watch` ends and the shell goes on.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Ctrl-C was pressed: a running `watch` ends.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Every command, with its usage, for `help` and completion.
pub const COMMANDS: &[(&str, &str)] = &[
    ("get", "get COLLECTION ID                 a document, with its version"),
    ("put", "put COLLECTION ID JSON            create or replace a document"),
    (
        "create",
        "create COLLECTION JSON            a new document under a fresh id",
    ),
    (
        "patch",
        "patch COLLECTION ID JSON          merge a JSON merge patch into a document",
    ),
    ("delete", "delete COLLECTION ID              delete a document"),
    (
        "list",
        "list COLLECTION [PREFIX] [--limit N] [--cursor C]   a page of documents in id order",
    ),
    (
        "batch",
        "batch COLLECTION JSON             operations, as {\"ops\": [...]} or [...]",
    ),
    (
        "import",
        "import COLLECTION FILE            NDJSON lines from FILE into the collection",
    ),
    (
        "export",
        "export COLLECTION FILE            every document of the collection to FILE, as NDJSON",
    ),
    (
        "watch",
        "watch [COLLECTION] [--count N] [--docs]   changes as they commit, until Ctrl-C",
    ),
    (
        "collections",
        "collections                       every collection, with its number of documents",
    ),
    ("health", "health                            what /readyz says"),
    ("help", "help                              this list"),
    (
        "exit",
        "exit                              leave the shell (also quit, Ctrl-D)",
    ),
];

fn usage(message: impl Into<String>) -> ClientError {
    ClientError::Usage(message.into())
}

/// What the shell does after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    Exit,
}

/// Splits `line` into its first `words` words and the rest (trimmed).
fn split(line: &str, words: usize) -> (Vec<&str>, &str) {
    let mut taken = Vec::with_capacity(words);
    let mut rest = line.trim_start();
    while taken.len() < words && !rest.is_empty() {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        taken.push(&rest[..end]);
        rest = rest[end..].trim_start();
    }
    (taken, rest.trim_end())
}

/// The JSON at the end of a line.
fn json_arg(text: &str, what: &str) -> Result<Value, ClientError> {
    if text.is_empty() {
        return Err(usage(format!("missing {what}: give it as JSON after the other words")));
    }
    serde_json::from_str(text).map_err(|e| usage(format!("{what} is not valid JSON: {e}")))
}

/// Exactly the words a command takes (`names` says what each is).
fn words<'a>(rest: &'a str, names: &[&str], command: &str) -> Result<Vec<&'a str>, ClientError> {
    let found: Vec<&str> = rest.split_whitespace().collect();
    if found.len() != names.len() {
        return Err(usage(format!(
            "{command} takes {}: {}",
            if names.is_empty() {
                "no arguments".to_owned()
            } else {
                names.join(" ")
            },
            COMMANDS
                .iter()
                .find(|(name, _)| *name == command)
                .map_or("", |(_, text)| text.trim())
        )));
    }
    Ok(found)
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// A document envelope as the console shows it: a line naming it, its
/// version and times, then its data as pretty JSON.
fn show_doc(doc: &Value) -> String {
    let mut head = format!(
        "{}/{}  version {}  updated {}",
        doc["collection"].as_str().unwrap_or("?"),
        doc["id"].as_str().unwrap_or("?"),
        doc["version"],
        doc["updated_at"].as_str().unwrap_or("?")
    );
    if let Some(at) = doc["expires_at"].as_str() {
        head.push_str(&format!("  expires {at}"));
    }
    format!("{head}\n{}", pretty(&doc["data"]))
}

/// Runs one command line, writing what it shows to `out`.
pub fn execute(api: &Api, line: &str, out: &mut dyn Write) -> Result<Next, ClientError> {
    let (head, rest) = split(line, 1);
    let Some(&command) = head.first() else {
        return Ok(Next::Continue);
    };
    let command = command.to_ascii_lowercase();
    let shown = |out: &mut dyn Write, text: String| -> Result<(), ClientError> {
        writeln!(out, "{text}").map_err(|e| usage(format!("cannot write the answer: {e}")))
    };
    match command.as_str() {
        "get" => {
            let w = words(rest, &["COLLECTION", "ID"], "get")?;
            let doc = api.call(Method::GET, &["v1", "collections", w[0], "docs", w[1]], &[], None)?;
            shown(out, show_doc(&doc.json()?))?;
        }
        "put" | "patch" => {
            let (w, json) = split(rest, 2);
            if w.len() < 2 {
                return Err(usage(format!("{command} takes COLLECTION ID JSON")));
            }
            let data = json_arg(json, "the document")?;
            let url = api.url(&["v1", "collections", w[0], "docs", w[1]], &[]);
            let request = if command == "put" {
                api.request(Method::PUT, url).json(&data)
            } else {
                api.request(Method::PATCH, url)
                    .header(reqwest::header::CONTENT_TYPE, "application/merge-patch+json")
                    .body(data.to_string())
            };
            let answer = api.send(request)?;
            shown(out, show_doc(&answer.json()?))?;
        }
        "create" => {
            let (w, json) = split(rest, 1);
            if w.is_empty() {
                return Err(usage("create takes COLLECTION JSON"));
            }
            let data = json_arg(json, "the document")?;
            let answer = api.call(Method::POST, &["v1", "collections", w[0], "docs"], &[], Some(&data))?;
            shown(out, show_doc(&answer.json()?))?;
        }
        "delete" => {
            let w = words(rest, &["COLLECTION", "ID"], "delete")?;
            api.call(Method::DELETE, &["v1", "collections", w[0], "docs", w[1]], &[], None)?;
            shown(out, format!("deleted {}/{}", w[0], w[1]))?;
        }
        "list" => list(api, rest, out)?,
        "batch" => {
            let (w, json) = split(rest, 1);
            if w.is_empty() {
                return Err(usage("batch takes COLLECTION JSON"));
            }
            let ops = match json_arg(json, "the operations")? {
                Value::Array(ops) => serde_json::json!({ "ops": ops }),
                other => other,
            };
            let answer = api.call(Method::POST, &["v1", "collections", w[0], "batch"], &[], Some(&ops))?;
            shown(out, pretty(&answer.json()?))?;
        }
        "import" => {
            let (w, path) = split(rest, 1);
            if w.is_empty() || path.is_empty() {
                return Err(usage("import takes COLLECTION FILE"));
            }
            let file = File::open(path).map_err(|e| usage(format!("cannot open {path}: {e}")))?;
            let answer = api.upload(&["v1", "collections", w[0], "import"], "application/x-ndjson", file)?;
            shown(out, pretty(&answer.json()?))?;
        }
        "export" => {
            let (w, path) = split(rest, 1);
            if w.is_empty() || path.is_empty() {
                return Err(usage("export takes COLLECTION FILE"));
            }
            let count = export(api, w[0], Path::new(path))?;
            shown(out, format!("exported {count} documents of {} to {path}", w[0]))?;
        }
        "watch" => watch(api, rest, out)?,
        "collections" => {
            words(rest, &[], "collections")?;
            let answer = api.call(Method::GET, &["v1", "collections"], &[], None)?.json()?;
            let listed = answer["collections"].as_array().cloned().unwrap_or_default();
            if listed.is_empty() {
                shown(out, "(no collections)".to_owned())?;
            }
            for c in listed {
                shown(
                    out,
                    format!("{:<32} {:>12}", c["name"].as_str().unwrap_or("?"), c["documents"]),
                )?;
            }
        }
        "health" => {
            words(rest, &[], "health")?;
            // 503 still says why: show it either way.
            let response = api.request(Method::GET, api.url(&["readyz"], &[]));
            let answer = match api.send(response) {
                Ok(answer) => answer.json()?,
                Err(ClientError::Refused { status, detail }) if status.as_u16() == 503 => {
                    shown(out, format!("NOT ready: {detail}"))?;
                    return Err(ClientError::Refused { status, detail });
                }
                Err(e) => return Err(e),
            };
            shown(out, pretty(&answer))?;
        }
        "help" | "?" => {
            for (_, text) in COMMANDS {
                shown(out, format!("  {text}"))?;
            }
        }
        "exit" | "quit" => return Ok(Next::Exit),
        other => return Err(usage(format!("unknown command {other:?}; `help` lists them"))),
    }
    Ok(Next::Continue)
}

/// `list COLLECTION [PREFIX] [--limit N] [--cursor C]`: a page, one line
/// per document, then how to get the next.
fn list(api: &Api, rest: &str, out: &mut dyn Write) -> Result<(), ClientError> {
    let mut args = rest.split_whitespace();
    let collection = args
        .next()
        .ok_or_else(|| usage("list takes COLLECTION [PREFIX] [--limit N] [--cursor C]"))?;
    let mut query: Vec<(&str, &str)> = Vec::new();
    while let Some(arg) = args.next() {
        match arg {
            "--limit" | "--cursor" => {
                let value = args.next().ok_or_else(|| usage(format!("{arg} needs a value")))?;
                query.push((&arg[2..], value));
            }
            prefix if !prefix.starts_with("--") && !query.iter().any(|(k, _)| *k == "prefix") => {
                query.push(("prefix", prefix));
            }
            other => return Err(usage(format!("list: unexpected {other:?}"))),
        }
    }
    let page = api
        .call(Method::GET, &["v1", "collections", collection, "docs"], &query, None)?
        .json()?;
    let items = page["items"].as_array().cloned().unwrap_or_default();
    let write = |out: &mut dyn Write, text: String| {
        writeln!(out, "{text}").map_err(|e| usage(format!("cannot write the answer: {e}")))
    };
    if items.is_empty() {
        write(out, "(no documents)".to_owned())?;
    }
    for doc in &items {
        write(
            out,
            format!(
                "{}  v{}  {}",
                doc["id"].as_str().unwrap_or("?"),
                doc["version"],
                doc["data"]
            ),
        )?;
    }
    if let Some(cursor) = page["next_cursor"].as_str() {
        let prefix = query
            .iter()
            .find(|(k, _)| *k == "prefix")
            .map_or(String::new(), |(_, p)| format!(" {p}"));
        write(out, format!("more: list {collection}{prefix} --cursor {cursor}"))?;
    }
    Ok(())
}

/// Streams a collection's export into a new file at `path`; answers how
/// many documents it holds. A cut-off stream (the server failed midway)
/// is an error, not a short file passed for whole.
fn export(api: &Api, collection: &str, path: &Path) -> Result<u64, ClientError> {
    let mut response = api.download(&["v1", "collections", collection, "export"])?;
    let file = File::create(path).map_err(|e| usage(format!("cannot create {}: {e}", path.display())))?;
    let mut counted = LineCounter { file, lines: 0 };
    std::io::copy(&mut response, &mut counted).map_err(|e| ClientError::Broken {
        detail: format!("the export was cut off ({e}); {} is incomplete", path.display()),
    })?;
    counted
        .file
        .sync_all()
        .map_err(|e| usage(format!("cannot write {}: {e}", path.display())))?;
    Ok(counted.lines)
}

/// A file that counts the lines written to it: one document per line.
struct LineCounter {
    file: File,
    lines: u64,
}

impl Write for LineCounter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.file.write(bytes)?;
        self.lines += bytes[..written].iter().filter(|&&b| b == b'\n').count() as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// `watch [COLLECTION] [--count N] [--docs]`: long polls from now, one line
/// per change, until Ctrl-C or `--count` changes.
fn watch(api: &Api, rest: &str, out: &mut dyn Write) -> Result<(), ClientError> {
    let mut collection = None;
    let mut count: Option<u64> = None;
    let mut docs = false;
    let mut args = rest.split_whitespace();
    while let Some(arg) = args.next() {
        match arg {
            "--count" => {
                let value = args.next().ok_or_else(|| usage("--count needs a number"))?;
                count = Some(
                    value
                        .parse()
                        .map_err(|_| usage(format!("--count {value}: not a number")))?,
                );
            }
            "--docs" => docs = true,
            name if !name.starts_with("--") && collection.is_none() => collection = Some(name),
            other => return Err(usage(format!("watch: unexpected {other:?}"))),
        }
    }
    let segments: Vec<&str> = match collection {
        Some(c) => vec!["v1", "collections", c, "changes"],
        None => vec!["v1", "changes"],
    };
    INTERRUPTED.store(false, Ordering::SeqCst);
    let mut since = "now".to_owned();
    let mut seen = 0u64;
    let write = |out: &mut dyn Write, text: String| {
        writeln!(out, "{text}")
            .and_then(|()| out.flush())
            .map_err(|e| usage(format!("cannot write the answer: {e}")))
    };
    write(
        out,
        format!("watching {} (Ctrl-C to stop)", collection.unwrap_or("every collection")),
    )?;
    while count.is_none_or(|n| seen < n) && !INTERRUPTED.load(Ordering::SeqCst) {
        // Short waits, so Ctrl-C is noticed within a second.
        let mut query = vec![("since", since.as_str()), ("wait", "1")];
        if docs {
            query.push(("include_docs", "true"));
        }
        let page = api.call(Method::GET, &segments, &query, None)?.json()?;
        for change in page["changes"].as_array().into_iter().flatten() {
            if count.is_some_and(|n| seen >= n) {
                break;
            }
            seen += 1;
            let mut line = format!(
                "{}  {:<8} {}/{}  v{}",
                change["updated_at"].as_str().unwrap_or("?"),
                change["kind"].as_str().unwrap_or("?"),
                change["collection"].as_str().unwrap_or("?"),
                change["id"].as_str().unwrap_or("?"),
                change["version"]
            );
            if docs {
                line.push_str(&format!("  {}", change["doc"]["data"]));
            }
            write(out, line)?;
        }
        match page["cursor"].as_str() {
            Some(cursor) => since = cursor.to_owned(),
            None => return Err(usage("the feed's answer has no cursor")),
        }
    }
    Ok(())
}
