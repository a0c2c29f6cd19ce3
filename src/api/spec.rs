//! The OpenAPI document as this server serves it, and what it says about
//! each path.
//!
//! poem-openapi writes the document from the routes' annotations; two
//! things only the running configuration knows are set here: whether a key
//! is required (with keys configured, every data route needs one, so the
//! document must not offer anonymous access), and, for a method a path does
//! not take, the `Allow` header RFC 9110 requires on the 405.

use serde_json::Value;

/// One path of the document: its template, its segments (`None` for a
/// `{parameter}`) and the methods it takes, as an `Allow` header value.
#[derive(Debug)]
struct PathMethods {
    template: String,
    segments: Vec<Option<String>>,
    allow: String,
}

/// The document's text and each path's methods.
#[derive(Debug)]
pub struct Spec {
    text: String,
    paths: Vec<PathMethods>,
}

/// The security requirement of a route that needs a key.
const KEY_REQUIRED: &str = "BearerKey";

impl Spec {
    /// Reads poem-openapi's document; with `keys_required`, an operation
    /// that takes a key or none takes a key only.
    pub fn new(generated: &str, keys_required: bool) -> Self {
        let mut document: Value = serde_json::from_str(generated).unwrap_or_default();
        let mut paths = Vec::new();
        if let Some(items) = document.get_mut("paths").and_then(Value::as_object_mut) {
            for (template, operations) in items.iter_mut() {
                let Some(operations) = operations.as_object_mut() else {
                    continue;
                };
                let mut methods: Vec<String> = operations.keys().map(|m| m.to_ascii_uppercase()).collect();
                if methods.iter().any(|m| m == "GET") {
                    methods.push("HEAD".into());
                }
                paths.push(PathMethods {
                    template: template.clone(),
                    segments: template
                        .split('/')
                        .map(|part| (!(part.starts_with('{') && part.ends_with('}'))).then(|| part.to_owned()))
                        .collect(),
                    allow: methods.join(", "),
                });
                if keys_required {
                    for operation in operations.values_mut() {
                        if let Some(security) = operation.get_mut("security").and_then(Value::as_array_mut) {
                            security.retain(|requirement| requirement.get(KEY_REQUIRED).is_some());
                        }
                    }
                }
            }
        }
        let text = serde_json::to_string_pretty(&document).unwrap_or_else(|_| generated.to_owned());
        Self { text, paths }
    }

    /// The document, as `/openapi.json` serves it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Every path of the document as it writes it
    /// (`/v1/collections/{collection}`).
    pub fn templates(&self) -> impl Iterator<Item = &str> {
        self.paths.iter().map(|p| p.template.as_str())
    }

    /// The methods `path` takes (`GET, HEAD, PUT`), if the document has it.
    pub fn allow(&self, path: &str) -> Option<&str> {
        self.find(path).map(|p| p.allow.as_str())
    }

    /// The name the document gives the `index`-th parameter of `path`'s
    /// template (`collection`, `id`): poem calls it `param0`, `param1`...
    pub fn path_parameter(&self, path: &str, index: usize) -> Option<&str> {
        self.path_parameters(path).nth(index)
    }

    /// The names of the parameters of `path`'s template.
    pub fn path_parameters(&self, path: &str) -> impl Iterator<Item = &str> {
        self.find(path)
            .into_iter()
            .flat_map(|p| p.template.split('/'))
            .filter_map(|part| part.strip_prefix('{')?.strip_suffix('}'))
    }

    fn find(&self, path: &str) -> Option<&PathMethods> {
        let parts: Vec<&str> = path.split('/').collect();
        self.paths.iter().find(|p| {
            p.segments.len() == parts.len()
                && p.segments.iter().zip(&parts).all(|(segment, part)| match segment {
                    Some(fixed) => fixed == part,
                    None => !part.is_empty(),
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENERATED: &str = r#"{"paths": {
        "/v1/collections/{collection}/docs/{id}": {
            "get": {"security": [{"BearerKey": []}, {}]},
            "put": {"security": [{"BearerKey": []}, {}]}
        },
        "/healthz": {"get": {}}
    }}"#;

    #[test]
    fn allow_lists_a_paths_methods() {
        let spec = Spec::new(GENERATED, false);
        assert_eq!(spec.allow("/v1/collections/c/docs/7"), Some("GET, PUT, HEAD"));
        assert_eq!(spec.allow("/healthz"), Some("GET, HEAD"));
        assert_eq!(spec.allow("/v1/collections/c/docs"), None);
        assert_eq!(spec.allow("/v1/collections//docs/7"), None);
    }

    #[test]
    fn path_parameters_have_the_documents_names() {
        let spec = Spec::new(GENERATED, false);
        assert_eq!(spec.path_parameter("/v1/collections/c/docs/7", 0), Some("collection"));
        assert_eq!(spec.path_parameter("/v1/collections/c/docs/7", 1), Some("id"));
        assert_eq!(spec.path_parameter("/v1/collections/c/docs/7", 2), None);
        assert_eq!(spec.path_parameter("/healthz", 0), None);
    }

    #[test]
    fn with_keys_a_key_is_required() {
        let open: Value = serde_json::from_str(Spec::new(GENERATED, false).text()).expect("JSON");
        let keyed: Value = serde_json::from_str(Spec::new(GENERATED, true).text()).expect("JSON");
        let security = |doc: &Value| doc["paths"]["/v1/collections/{collection}/docs/{id}"]["get"]["security"].clone();
        assert_eq!(security(&open), serde_json::json!([{"BearerKey": []}, {}]));
        assert_eq!(security(&keyed), serde_json::json!([{"BearerKey": []}]));
    }
}
