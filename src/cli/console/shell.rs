//! The interactive side of the console: line editing, history, completion
//! of commands and collection names.

use std::borrow::Cow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use reqwest::Method;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Config, Context, Editor, Helper};

use super::client::Api;
use super::commands::{execute, Next, COMMANDS};

/// Lines the history keeps.
const HISTORY_LINES: usize = 1000;

/// How long the collection names completion offers stay fresh.
const NAMES_TTL: Duration = Duration::from_secs(5);

/// Commands whose first argument is a collection.
const TAKES_COLLECTION: &[&str] = &[
    "get", "put", "create", "patch", "delete", "list", "batch", "import", "export", "watch",
];

/// Completes commands and collection names (asked of the server, kept a
/// few seconds).
struct Completion {
    api: Arc<Api>,
    names: Mutex<Option<(Instant, Vec<String>)>>,
}

impl Completion {
    fn collections(&self) -> Vec<String> {
        let mut cached = self.names.lock();
        if let Some((at, names)) = cached.as_ref() {
            if at.elapsed() < NAMES_TTL {
                return names.clone();
            }
        }
        let names: Vec<String> = api_names(&self.api).unwrap_or_default();
        *cached = Some((Instant::now(), names.clone()));
        names
    }
}

fn api_names(api: &Api) -> Option<Vec<String>> {
    let answer = api.call(Method::GET, &["v1", "collections"], &[], None).ok()?;
    let listed = answer.json().ok()?;
    Some(
        listed["collections"]
            .as_array()?
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect(),
    )
}

impl Completer for Completion {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before.rfind(char::is_whitespace).map_or(0, |i| i + 1);
        let word = &before[start..];
        let earlier: Vec<&str> = before[..start].split_whitespace().collect();
        let offers: Vec<String> = match earlier.as_slice() {
            [] => COMMANDS.iter().map(|(name, _)| (*name).to_owned()).collect(),
            [command] if TAKES_COLLECTION.contains(&command.to_ascii_lowercase().as_str()) => self.collections(),
            _ => Vec::new(),
        };
        let pairs = offers
            .into_iter()
            .filter(|offer| offer.starts_with(word))
            .map(|offer| Pair {
                display: offer.clone(),
                replacement: format!("{offer} "),
            })
            .collect();
        Ok((start, pairs))
    }
}

impl Hinter for Completion {
    type Hint = String;
}
impl Highlighter for Completion {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(&'s self, prompt: &'p str, _default: bool) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}
impl Validator for Completion {}
impl Helper for Completion {}

/// Where the history lives: `EXDAAS_CONSOLE_HISTORY`, else
/// `~/.exdaas_history`; none without a home.
fn history_file() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("EXDAAS_CONSOLE_HISTORY") {
        return (!path.is_empty()).then(|| PathBuf::from(path));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".exdaas_history"))
}

/// Reads lines until `exit`, Ctrl-D or the end of the input; a failed
/// command prints its reason and the shell goes on.
pub fn run(api: Arc<Api>) -> ExitCode {
    let config = Config::builder()
        .max_history_size(HISTORY_LINES)
        .and_then(|c| c.history_ignore_dups(true))
        .map(|c| c.history_ignore_space(true).build());
    let editor = config
        .map_err(|e| e.to_string())
        .and_then(|config| Editor::<Completion, DefaultHistory>::with_config(config).map_err(|e| e.to_string()));
    let mut editor = match editor {
        Ok(editor) => editor,
        Err(e) => {
            eprintln!("exdaas console: cannot set up line editing: {e}");
            return ExitCode::FAILURE;
        }
    };
    editor.set_helper(Some(Completion {
        api: api.clone(),
        names: Mutex::new(None),
    }));
    let history = history_file();
    if let Some(path) = &history {
        // A first run has none yet.
        let _ = editor.load_history(path);
    }
    let prompt = format!("exdaas {}> ", api.shown());
    let mut failed = false;
    loop {
        match editor.readline(&prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                let mut out = std::io::stdout().lock();
                match execute(&api, &line, &mut out) {
                    Ok(Next::Exit) => break,
                    Ok(Next::Continue) => failed = false,
                    Err(e) => {
                        drop(out);
                        eprintln!("error: {e}");
                        failed = true;
                    }
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("exdaas console: cannot read the input: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(path) = &history {
        if let Err(e) = editor.save_history(path) {
            eprintln!("exdaas console: cannot save the history to {}: {e}", path.display());
        }
    }
    // Fed from a pipe, the last command's failure is the exit status.
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offers(completion: &Completion, line: &str) -> (usize, Vec<String>) {
        let history = DefaultHistory::new();
        let context = Context::new(&history);
        let (start, pairs) = completion.complete(line, line.len(), &context).expect("completes");
        (start, pairs.into_iter().map(|p| p.replacement).collect())
    }

    #[test]
    fn commands_complete_and_collection_names_come_from_the_cache() {
        let completion = Completion {
            api: Arc::new(Api::new("http://127.0.0.1:9", None).expect("a URL")),
            names: Mutex::new(Some((
                Instant::now(),
                vec!["users".into(), "uploads".into(), "orders".into()],
            ))),
        };
        assert_eq!(offers(&completion, "pa"), (0, vec!["patch ".to_owned()]));
        assert_eq!(
            offers(&completion, "c"),
            (0, vec!["create ".to_owned(), "collections ".to_owned()])
        );
        assert_eq!(
            offers(&completion, "get u"),
            (4, vec!["users ".to_owned(), "uploads ".to_owned()])
        );
        assert_eq!(offers(&completion, "GET or"), (4, vec!["orders ".to_owned()]));
        // Ids and JSON are not completed; nor a collection after `health`.
        assert_eq!(offers(&completion, "get users a").1, Vec::<String>::new());
        assert_eq!(offers(&completion, "health u").1, Vec::<String>::new());
    }
}
