//! What a schema costs to check: how many subschemas validation may apply
//! to one value of a document, every `$ref` counted as if its target were
//! written out in its place.
//!
//! jsonschema bounds nothing of the kind: 25 definitions, each an `allOf`
//! of two `$ref`s to the next, are 1.7 KB of text and 2^25 checks of every
//! value. So a schema is walked once when it is compiled, its references
//! followed by jsonschema's own resolver (`referencing`), into a graph of
//! its subschemas with two kinds of edges: those that apply a subschema to
//! the same value (`allOf`, `$ref`, `not`, `if`...) and those that apply it
//! to a member or an item (`properties`, `items`...). A cycle of the first
//! kind never reaches into the document and is refused; recursion through
//! the second kind is a tree schema, fine as long as what applies at each
//! depth stays bounded.
//!
//! The count follows the paths a document can take: a state is what
//! applies to one value (each subschema with how many times), and a state
//! steps to the next by a member name the schema names, by any other name,
//! by an item index, or by any other index. States are explored depth by
//! depth down to the document depth limit, each distinct one once, so a
//! binary tree schema (`left` and `right` both `$ref: #`) costs the same at
//! every depth while two `allOf` branches recursing on the same name double
//! at each. The states are kept: what a document costs to check is a walk
//! of the document through them ([`CostModel::work`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use referencing::{Draft, Registry, Resolver};
use serde_json::Value;

use crate::domain::MAX_DEPTH;

/// Distinct states the analysis may explore, and subschemas it may visit
/// in all, before it calls a schema too intricate to bound: a few MiB and
/// about a second of a debug build at most (4 million steps took 5.6 s);
/// ordinary schemas take a few hundred steps, a tree of 2,000 members 10,000.
const MAX_STATES: usize = 10_000;
const MAX_ANALYSIS_STEPS: u64 = 1_000_000;

/// A string (a value or a member name) costs one check more per this many
/// bytes: `pattern` and `patternProperties` read all of it.
const BYTES_PER_CHECK: usize = 64;

/// What starting a regex costs, in checks, and what hashing a value for
/// `uniqueItems` does: measured against a plain subschema's 2 ns on a
/// release build (80 to 200 ns a `pattern` on 130 bytes).
const REGEX_CHECKS: u64 = 32;
const HASH_CHECKS: u64 = 8;

/// How many times jsonschema walks what a subschema with
/// `unevaluatedProperties` or `unevaluatedItems` applies to the same value:
/// to check it, then again to learn what it evaluated, and a branch (of
/// `anyOf`, `oneOf`, `if`...) once more to learn whether it holds, all of
/// it again within each nested one. Measured: nested `allOf`s or `anyOf`s
/// under `unevaluatedProperties` took 2 to 3 times longer per level (20
/// levels, 1 KB of schema: 11 to 24 s). What is below the value (members,
/// items) is not walked again: a tree schema closed at each level is fine.
const UNEVALUATED_WALKS: usize = 3;

/// Why a schema's cost could not be bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CostError {
    /// Subschemas apply one another to the same value, round and round:
    /// where each is in the schema, the first repeated at the end.
    Cycle(Vec<String>),
    /// A value at `at` (a path of member names and item indexes, `*` for
    /// any) would be checked against `cost` subschemas.
    TooCostly { cost: u64, at: String },
    /// More states than the analysis explores.
    TooIntricate,
    /// A reference jsonschema followed that this walk could not.
    Unresolved { reference: String, reason: String },
}

impl std::fmt::Display for CostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CostError::Cycle(path) => write!(
                f,
                "its references go round a cycle that never reaches into the document ({}); \
                 recursion must go through a member or an item (properties, items...)",
                path.join(" -> ")
            ),
            CostError::TooCostly { cost, at } => {
                let cost = if *cost == u64::MAX {
                    format!("more than {}", u64::MAX - 1)
                } else {
                    cost.to_string()
                };
                write!(
                    f,
                    "a value of a document at {at:?} would be checked against {cost} subschemas, \
                     each $ref counted as written out in full"
                )
            }
            CostError::TooIntricate => write!(
                f,
                "what it costs to check cannot be bounded: it has more than {MAX_STATES} distinct ways \
                 of applying its subschemas down a document"
            ),
            CostError::Unresolved { reference, reason } => {
                write!(f, "its reference {reference:?} cannot be followed: {reason}")
            }
        }
    }
}

/// What a schema costs to check, value by value.
#[derive(Debug)]
pub struct CostModel {
    states: Vec<State>,
    /// The most any one value costs.
    per_value: u64,
}

/// What applies to a value, as its cost and where its members and items go.
#[derive(Debug)]
struct State {
    cost: u64,
    /// What its regexes cost for each byte of the value (and its name).
    regex_per_byte: u64,
    steps: Arc<Steps>,
}

/// Where the members and items of a value go: states that differ only in
/// subschemas that look at nothing below share them.
#[derive(Debug)]
struct Steps {
    /// Sorted by name.
    members: Box<[(Box<str>, u32)]>,
    other_member: u32,
    /// Sorted by index.
    items: Box<[(usize, u32)]>,
    other_item: u32,
}

impl Steps {
    /// Every member and item to `state`.
    fn all_to(state: u32) -> Arc<Self> {
        Arc::new(Steps {
            members: Box::new([]),
            other_member: state,
            items: Box::new([]),
            other_item: state,
        })
    }
}

/// Nothing applies: what is below a value the schema says nothing of.
const NOTHING: u32 = 0;
/// The document itself.
const ROOT: u32 = 1;

impl CostModel {
    /// The most any one value of a document costs to check.
    pub fn per_value(&self) -> u64 {
        self.per_value
    }

    /// About what checking `document` costs, in subschemas applied (each
    /// string counting as one more per 64 bytes): a walk of the document,
    /// linear in its size.
    pub fn work(&self, document: &Value) -> u64 {
        let mut total = 0u64;
        let mut pending: Vec<(&Value, u32, usize)> = vec![(document, ROOT, 0)];
        while let Some((value, at, name_bytes)) = pending.pop() {
            if at == NOTHING {
                continue;
            }
            let state = &self.states[at as usize];
            let steps = &state.steps;
            let bytes = name_bytes + if let Value::String(text) = value { text.len() } else { 0 };
            let weight = 1 + (bytes / BYTES_PER_CHECK) as u64;
            total = total
                .saturating_add(state.cost.saturating_mul(weight))
                .saturating_add(state.regex_per_byte.saturating_mul(bytes as u64));
            match value {
                Value::Object(members) => {
                    for (name, member) in members {
                        pending.push((member, steps.member(name), name.len()));
                    }
                }
                Value::Array(items) => {
                    for (index, item) in items.iter().enumerate() {
                        pending.push((item, steps.item(index), 0));
                    }
                }
                _ => {}
            }
        }
        total
    }
}

impl Steps {
    fn member(&self, name: &str) -> u32 {
        match self.members.binary_search_by(|(known, _)| (**known).cmp(name)) {
            Ok(found) => self.members[found].1,
            Err(_) => self.other_member,
        }
    }

    fn item(&self, index: usize) -> u32 {
        match self.items.binary_search_by_key(&index, |(known, _)| *known) {
            Ok(found) => self.items[found].1,
            Err(_) => self.other_item,
        }
    }
}

/// Bounds what `schema` (which jsonschema compiled as draft 2020-12,
/// offline) costs to check: refused if a value would cost more than
/// `limit`.
pub fn analyse(schema: &Value, limit: u64) -> Result<CostModel, CostError> {
    let unresolved = |reference: &str, e: referencing::Error| CostError::Unresolved {
        reference: reference.to_owned(),
        reason: e.to_string(),
    };
    // As jsonschema builds its registry: the schema under its `$id`, or
    // under a default base.
    let draft = Draft::Draft202012;
    let resource = draft.create_resource_ref(schema);
    let base = resource.id().unwrap_or("json-schema:///");
    let base_uri = referencing::uri::from_str(base).map_err(|e| unresolved(base, e))?;
    let registry = Registry::new()
        .draft(draft)
        .retrieve_known_draft_meta_schemas(false)
        .add(base_uri.as_str(), resource)
        .and_then(|builder| builder.prepare())
        .map_err(|e| unresolved(base, e))?;
    let resolver = registry.resolver(base_uri);
    let mut graph = Graph::build(schema, resolver)?;
    let position = graph.order()?;
    graph.weigh_unevaluated(&position);
    Explorer::new(&graph.nodes, position, limit).run()
}

/// Where a subschema applies, relative to the value its parent checks.
#[derive(Debug, Clone, Copy)]
enum Step<'s> {
    Member(&'s str),
    AnyMember,
    Item(usize),
    AnyItem,
}

/// A subschema, once, however many places refer to it.
#[derive(Debug)]
struct Node<'s> {
    /// Where it is in the schema (a JSON Pointer), for messages.
    at: String,
    /// What one application costs besides its subschemas.
    weight: u64,
    /// What it costs for each member or item it reads
    /// (`additionalProperties`, `items`, each regex of `patternProperties`).
    scans: u64,
    /// What it costs for each value below (`uniqueItems` hashes whole
    /// items).
    deep: u64,
    /// What its `pattern` costs for each byte of the value, in checks.
    regex_per_byte: u64,
    /// What its `patternProperties` cost for each byte of a member's name.
    names_regex_per_byte: u64,
    /// Subschemas applied to the same value, one entry per application.
    same_value: Vec<u32>,
    /// Those of them that hold or not depending on the value (`anyOf`,
    /// `oneOf`, `if`, `then`, `else`, `dependentSchemas`).
    branches: Vec<u32>,
    /// It has `unevaluatedProperties` or `unevaluatedItems`.
    unevaluated: bool,
    /// Subschemas applied to a member or an item.
    below: Vec<(Step<'s>, u32)>,
}

/// The subschemas reachable from the root, each once.
struct Graph<'s> {
    nodes: Vec<Node<'s>>,
}

/// A subschema waiting to be read, with the resolver of its place.
struct Pending<'s> {
    node: u32,
    value: &'s Value,
    resolver: Resolver<'s>,
    draft: Draft,
}

/// Builds a [`Graph`]: each subschema is read once, keyed by its address
/// and base URI (a `$ref` found twice leads to the same node).
struct Builder<'s> {
    nodes: Vec<Node<'s>>,
    known: HashMap<(usize, String), u32>,
    pending: Vec<Pending<'s>>,
    /// Where each value of the schema text is, by address.
    places: HashMap<usize, String>,
    /// The schema's `$dynamicAnchor`s (name, place, whether in the root's
    /// own resource) and `$recursiveAnchor`s: where a dynamic reference
    /// may land.
    dynamic_anchors: Vec<(&'s str, String, bool)>,
    recursive_anchors: Vec<String>,
    root_resolver: Resolver<'s>,
}

fn address(value: &Value) -> usize {
    std::ptr::from_ref(value) as usize
}

/// `segment` escaped for a JSON Pointer (`~0`, `~1`).
fn escaped(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

impl<'s> Graph<'s> {
    fn build(schema: &'s Value, resolver: Resolver<'s>) -> Result<Self, CostError> {
        let mut builder = Builder {
            nodes: Vec::new(),
            known: HashMap::new(),
            pending: Vec::new(),
            places: HashMap::new(),
            dynamic_anchors: Vec::new(),
            recursive_anchors: Vec::new(),
            root_resolver: resolver.clone(),
        };
        builder.survey(schema);
        builder.node(schema, resolver, Draft::Draft202012);
        while let Some(next) = builder.pending.pop() {
            builder.read(next)?;
        }
        let mut nodes = builder.nodes;
        walk_branches_again(&mut nodes);
        Ok(Graph { nodes })
    }

    /// Each node's position in an order where a node comes before every
    /// subschema it applies to the same value; a cycle if there is none.
    fn order(&self) -> Result<Vec<u32>, CostError> {
        let count = self.nodes.len();
        let mut incoming = vec![0u32; count];
        for node in &self.nodes {
            for &to in &node.same_value {
                incoming[to as usize] += 1;
            }
        }
        let mut ready: Vec<u32> = (0..count as u32).filter(|&n| incoming[n as usize] == 0).collect();
        let mut position = vec![u32::MAX; count];
        let mut next = 0u32;
        while let Some(n) = ready.pop() {
            position[n as usize] = next;
            next += 1;
            for &to in &self.nodes[n as usize].same_value {
                incoming[to as usize] -= 1;
                if incoming[to as usize] == 0 {
                    ready.push(to);
                }
            }
        }
        if next as usize == count {
            return Ok(position);
        }
        Err(CostError::Cycle(self.cycle_among(&position)))
    }

    /// Adds to each subschema with `unevaluated*` what walking again what it
    /// applies to the same value costs, nested ones within counted so too
    /// ([`UNEVALUATED_WALKS`]). `position` orders the nodes (see `order`).
    fn weigh_unevaluated(&mut self, position: &[u32]) {
        let mut by_position: Vec<u32> = (0..self.nodes.len() as u32).collect();
        by_position.sort_unstable_by_key(|&n| std::cmp::Reverse(position[n as usize]));
        // What one application costs on its value, all it applies there
        // included: what it applies comes later in the order, so first here.
        let mut whole = vec![0u64; self.nodes.len()];
        for n in by_position {
            let node = &self.nodes[n as usize];
            let applied = node
                .same_value
                .iter()
                .fold(0u64, |sum, &to| sum.saturating_add(whole[to as usize]));
            if node.unevaluated {
                // Branches are counted so already (`walk_branches_again`),
                // what is below them too.
                let mut plain = node.same_value.clone();
                for branch in &node.branches {
                    for _ in 0..UNEVALUATED_WALKS {
                        if let Some(at) = plain.iter().position(|to| to == branch) {
                            plain.swap_remove(at);
                        }
                    }
                }
                let plain = plain
                    .iter()
                    .fold(0u64, |sum, &to| sum.saturating_add(whole[to as usize]));
                let again = plain.saturating_mul(UNEVALUATED_WALKS as u64 - 1);
                let node = &mut self.nodes[n as usize];
                node.weight = node.weight.saturating_add(again);
            }
            let node = &self.nodes[n as usize];
            whole[n as usize] = node.weight.saturating_add(applied);
        }
    }

    /// A cycle among the nodes left unordered: each has a predecessor among
    /// them, so walking predecessors back must come round.
    fn cycle_among(&self, position: &[u32]) -> Vec<String> {
        let left = |n: u32| position[n as usize] == u32::MAX;
        let mut before: HashMap<u32, u32> = HashMap::new();
        for (from, node) in self.nodes.iter().enumerate() {
            for &to in &node.same_value {
                if left(from as u32) && left(to) {
                    before.entry(to).or_insert(from as u32);
                }
            }
        }
        let Some(mut at) = (0..self.nodes.len() as u32).find(|&n| left(n)) else {
            return Vec::new();
        };
        let mut seen: Vec<u32> = Vec::new();
        while !seen.contains(&at) {
            seen.push(at);
            match before.get(&at) {
                Some(&from) => at = from,
                None => break,
            }
        }
        let start = seen.iter().position(|&n| n == at).unwrap_or(0);
        let mut cycle: Vec<String> = seen[start..]
            .iter()
            .rev()
            .map(|&n| self.nodes[n as usize].at.clone())
            .collect();
        if let Some(first) = cycle.first().cloned() {
            cycle.push(first);
        }
        cycle
    }
}

impl<'s> Builder<'s> {
    /// Notes where every value of the schema text is, and its anchors.
    fn survey(&mut self, schema: &'s Value) {
        let mut pending: Vec<(&'s Value, String, bool)> = vec![(schema, String::new(), true)];
        while let Some((value, at, in_root)) = pending.pop() {
            match value {
                Value::Object(members) => {
                    // An `$id` below the root starts a resource of its own.
                    let in_root = in_root && (at.is_empty() || !members.contains_key("$id"));
                    if let Some(Value::String(name)) = members.get("$dynamicAnchor") {
                        self.dynamic_anchors.push((name, at.clone(), in_root));
                    }
                    if members.get("$recursiveAnchor") == Some(&Value::Bool(true)) {
                        self.recursive_anchors.push(at.clone());
                    }
                    for (name, member) in members {
                        // Values, not subschemas.
                        if !matches!(name.as_str(), "enum" | "const" | "default" | "examples") {
                            pending.push((member, format!("{at}/{}", escaped(name)), in_root));
                        }
                    }
                }
                Value::Array(items) => {
                    for (index, item) in items.iter().enumerate() {
                        pending.push((item, format!("{at}/{index}"), in_root));
                    }
                }
                _ => {}
            }
            self.places.insert(address(value), at);
        }
    }

    /// The node of `value` read under `resolver`, queued if new.
    fn node(&mut self, value: &'s Value, resolver: Resolver<'s>, draft: Draft) -> u32 {
        let key = (address(value), resolver.base_uri().as_str().to_owned());
        if let Some(&known) = self.known.get(&key) {
            return known;
        }
        let node = self.nodes.len() as u32;
        let at = match self.places.get(&address(value)) {
            Some(at) if at.is_empty() => "#".to_owned(),
            Some(at) => format!("#{at}"),
            None => format!("{}#", resolver.base_uri().as_str()),
        };
        self.nodes.push(Node {
            at,
            weight: 1,
            scans: 0,
            deep: 0,
            regex_per_byte: 0,
            names_regex_per_byte: 0,
            same_value: Vec::new(),
            branches: Vec::new(),
            unevaluated: false,
            below: Vec::new(),
        });
        self.known.insert(key, node);
        self.pending.push(Pending {
            node,
            value,
            resolver,
            draft,
        });
        node
    }

    /// Follows `reference` from `resolver`.
    fn follow(&mut self, resolver: &Resolver<'s>, reference: &str) -> Result<u32, CostError> {
        self.follow_to(resolver, reference).map(|(node, _)| node)
    }

    /// Follows `reference` from `resolver`: its node and what it found.
    fn follow_to(&mut self, resolver: &Resolver<'s>, reference: &str) -> Result<(u32, &'s Value), CostError> {
        let resolved = resolver.lookup(reference).map_err(|e| CostError::Unresolved {
            reference: reference.to_owned(),
            reason: e.to_string(),
        })?;
        let (contents, resolver, draft) = resolved.into_inner();
        Ok((self.node(contents, resolver, draft), contents))
    }

    /// Where a `$dynamicRef` may land: its target, or (if that bears the
    /// same dynamic anchor) the outermost same-named anchor in the dynamic
    /// scope. Evaluation starts at the root, so that is the root resource's
    /// anchor if it has one; otherwise any of them may be, and all count.
    fn dynamic_targets(&mut self, resolver: &Resolver<'s>, reference: &str) -> Result<Vec<u32>, CostError> {
        let (target, contents) = self.follow_to(resolver, reference)?;
        let name = reference.rsplit_once('#').map_or("", |(_, name)| name);
        let anchored = !name.is_empty()
            && !name.starts_with('/')
            && contents.get("$dynamicAnchor").and_then(Value::as_str) == Some(name);
        if !anchored {
            return Ok(vec![target]);
        }
        let same_name: Vec<(String, bool)> = self
            .dynamic_anchors
            .iter()
            .filter(|(anchor, _, _)| *anchor == name)
            .map(|(_, place, in_root)| (place.clone(), *in_root))
            .collect();
        if let Some((place, _)) = same_name.iter().find(|(_, in_root)| *in_root) {
            return Ok(vec![self.at_place(place)?]);
        }
        let mut targets = vec![target];
        for (place, _) in same_name {
            let node = self.at_place(&place)?;
            if !targets.contains(&node) {
                targets.push(node);
            }
        }
        Ok(targets)
    }

    /// Reads one subschema: its weight and its edges.
    fn read(&mut self, pending: Pending<'s>) -> Result<(), CostError> {
        let Pending {
            node,
            value,
            resolver,
            draft,
        } = pending;
        let Value::Object(members) = value else {
            // `true`, `false`, or whatever a reference pointed at.
            return Ok(());
        };
        let draft = draft.detect(value);
        let resource = draft.create_resource_ref(value);
        let resolver = if resource.id().is_some() {
            resolver.in_subresource(resource).map_err(|e| CostError::Unresolved {
                reference: resource.id().unwrap_or_default().to_owned(),
                reason: e.to_string(),
            })?
        } else {
            resolver
        };
        let mut weight = 1u64;
        let mut same_value = Vec::new();
        let mut branches = Vec::new();
        let mut below = Vec::new();
        let mut scans = 0u64;
        let mut deep = 0u64;
        let mut regex_per_byte = 0u64;
        let mut names_regex_per_byte = 0u64;
        for (keyword, sub) in members {
            let child = |this: &mut Self, sub: &'s Value| this.node(sub, resolver.clone(), draft);
            match keyword.as_str() {
                "allOf" => {
                    for item in sub.as_array().into_iter().flatten() {
                        same_value.push(child(self, item));
                    }
                }
                "anyOf" | "oneOf" => {
                    for item in sub.as_array().into_iter().flatten() {
                        let branch = child(self, item);
                        same_value.push(branch);
                        branches.push(branch);
                    }
                }
                "not" => same_value.push(child(self, sub)),
                "if" | "then" | "else" => {
                    let branch = child(self, sub);
                    same_value.push(branch);
                    branches.push(branch);
                }
                "dependentSchemas" | "dependentRequired" | "dependencies" => {
                    for dependent in sub.as_object().into_iter().flat_map(|map| map.values()) {
                        match dependent {
                            // `dependencies` also takes lists of names.
                            Value::Object(_) | Value::Bool(_) => {
                                let branch = child(self, dependent);
                                same_value.push(branch);
                                branches.push(branch);
                            }
                            Value::Array(names) => weight = weight.saturating_add(1 + names.len() as u64),
                            _ => {}
                        }
                    }
                }
                "$ref" => {
                    if let Some(reference) = sub.as_str() {
                        same_value.push(self.follow(&resolver, reference)?);
                    }
                }
                "$dynamicRef" if draft != Draft::Draft201909 => {
                    if let Some(reference) = sub.as_str() {
                        same_value.extend(self.dynamic_targets(&resolver, reference)?);
                    }
                }
                "$recursiveRef" if draft == Draft::Draft201909 => {
                    let resolved = resolver.lookup_recursive_ref().map_err(|e| CostError::Unresolved {
                        reference: "$recursiveRef".to_owned(),
                        reason: e.to_string(),
                    })?;
                    let (contents, target, draft) = resolved.into_inner();
                    let mut targets = vec![self.node(contents, target, draft)];
                    for place in self.recursive_anchors.clone() {
                        let node = self.at_place(&place)?;
                        if !targets.contains(&node) {
                            targets.push(node);
                        }
                    }
                    same_value.extend(targets);
                }
                "properties" => {
                    // Each member is looked up, named or not.
                    scans = scans.max(1);
                    for (name, schema) in sub.as_object().into_iter().flatten() {
                        below.push((Step::Member(name.as_str()), child(self, schema)));
                    }
                }
                "patternProperties" => {
                    for (pattern, schema) in sub.as_object().into_iter().flatten() {
                        scans = scans.saturating_add(REGEX_CHECKS);
                        names_regex_per_byte = names_regex_per_byte.saturating_add(regex_checks_per_byte(pattern));
                        below.push((Step::AnyMember, child(self, schema)));
                    }
                }
                "additionalProperties" | "unevaluatedProperties" | "propertyNames" => {
                    scans = scans.max(1);
                    below.push((Step::AnyMember, child(self, sub)));
                }
                "items" | "prefixItems" => {
                    scans = scans.max(1);
                    match sub {
                        Value::Array(schemas) => {
                            for (index, schema) in schemas.iter().enumerate() {
                                below.push((Step::Item(index), child(self, schema)));
                            }
                        }
                        schema => below.push((Step::AnyItem, child(self, schema))),
                    }
                }
                "additionalItems" | "unevaluatedItems" | "contains" => {
                    scans = scans.max(1);
                    below.push((Step::AnyItem, child(self, sub)));
                }
                "uniqueItems" => deep = HASH_CHECKS,
                "pattern" => {
                    weight = weight.saturating_add(REGEX_CHECKS);
                    regex_per_byte = regex_checks_per_byte(sub.as_str().unwrap_or_default());
                }
                "enum" => weight = weight.saturating_add(enum_checks(sub)),
                "const" => weight = weight.saturating_add(value_checks(sub)),
                "required" => weight = weight.saturating_add(sub.as_array().map_or(0, Vec::len) as u64),
                _ => {}
            }
        }
        let node = &mut self.nodes[node as usize];
        node.unevaluated = members.contains_key("unevaluatedProperties") || members.contains_key("unevaluatedItems");
        node.branches = branches;
        node.weight = weight;
        node.same_value = same_value;
        node.below = below;
        node.scans = scans;
        node.deep = deep;
        node.regex_per_byte = regex_per_byte;
        node.names_regex_per_byte = names_regex_per_byte;
        Ok(())
    }

    /// The node at `place` (a JSON Pointer into the schema text).
    fn at_place(&mut self, place: &str) -> Result<u32, CostError> {
        // A URI fragment: `%` would be read as an escape.
        let reference = format!("#{}", place.replace('%', "%25"));
        let resolver = self.root_resolver.clone();
        self.follow(&resolver, &reference)
    }
}

/// Counts each branch found beside `unevaluated*` (anywhere the value's
/// own subschemas lead from it) [`UNEVALUATED_WALKS`] times, itself and
/// what it applies below.
fn walk_branches_again(nodes: &mut [Node<'_>]) {
    let mut beside = vec![false; nodes.len()];
    let mut pending: Vec<u32> = (0..nodes.len() as u32)
        .filter(|&n| nodes[n as usize].unevaluated)
        .collect();
    for &n in &pending {
        beside[n as usize] = true;
    }
    while let Some(n) = pending.pop() {
        for &to in &nodes[n as usize].same_value {
            if !beside[to as usize] {
                beside[to as usize] = true;
                pending.push(to);
            }
        }
    }
    for (node, beside) in nodes.iter_mut().zip(beside) {
        if beside && !node.branches.is_empty() {
            let again = node.branches.repeat(UNEVALUATED_WALKS - 1);
            node.same_value.extend(again);
        }
    }
}

/// What a regex costs for each byte it reads, in checks. The lazy DFA
/// reads a byte in a nanosecond or two, but a counted repetition makes it
/// give up on a large enough pattern for a slower engine, slower by the
/// size it expands to: measured (release, per byte) 15 ns for `\w{100}y`,
/// 50 for `\w{300}y`, 130 for `\w{500}y`, 0.9 us for `\w{1000}y`, 11 us
/// for `[a-z]{3000}y`. So: 4 checks, plus the expanded size squared over
/// 1,250 (1 us a byte at 1,000).
fn regex_checks_per_byte(pattern: &str) -> u64 {
    let expanded = jsonschema_regex::to_rust_regex(pattern)
        .ok()
        .and_then(|translated| regex_syntax::Parser::new().parse(&translated).ok())
        .map_or(pattern.len() as u64 * 1_000, |hir| expanded_size(&hir));
    4u64.saturating_add(expanded.saturating_mul(expanded) / 1_250)
}

/// What a regex expands to, its counted repetitions written out.
fn expanded_size(hir: &regex_syntax::hir::Hir) -> u64 {
    use regex_syntax::hir::HirKind;
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) | HirKind::Class(_) => 1,
        HirKind::Literal(literal) => literal.0.len() as u64,
        HirKind::Repetition(repetition) => {
            let times = repetition.max.unwrap_or(repetition.min).max(repetition.min).max(1);
            expanded_size(&repetition.sub).saturating_mul(u64::from(times))
        }
        HirKind::Capture(capture) => expanded_size(&capture.sub),
        HirKind::Concat(parts) | HirKind::Alternation(parts) => parts
            .iter()
            .fold(0, |sum, part| sum.saturating_add(expanded_size(part))),
    }
}

/// What comparing a document's value with `value` may cost, in checks.
fn value_checks(value: &Value) -> u64 {
    (crate::domain::measure(value).bytes / BYTES_PER_CHECK) as u64
}

/// What an `enum` costs: jsonschema hashes one of only strings or only
/// integers, and compares a value with each option of any other.
fn enum_checks(options: &Value) -> u64 {
    let options = options.as_array().map_or(&[][..], Vec::as_slice);
    if options.iter().all(Value::is_string) || options.iter().all(|option| option.is_i64() || option.is_u64()) {
        return 4;
    }
    options
        .iter()
        .fold(0u64, |sum, option| sum.saturating_add(1 + value_checks(option)))
}

/// The subschemas applied to one value: each node with how many times,
/// sorted by node.
type Applied = Vec<(u32, u64)>;

/// A state as explored: what applies, and the checks of members and items
/// that the value's ancestors make whatever applies to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    applied: Applied,
    /// Checks of this value by the applications that read every member
    /// or item of its parent, or every value below an ancestor.
    touched: u64,
    /// Applications above that read every value below them.
    inherited: u64,
    /// What the parent's `patternProperties` cost for each byte of this
    /// value's name.
    name_regexes: u64,
}

/// A state during the exploration.
struct Explored {
    key: Key,
    cost: u64,
    /// The state it was first reached from, and by what step (for messages).
    parent: Option<(u32, String)>,
    /// Worked out (states first met below the deepest value a document can
    /// have are not).
    steps: Option<Arc<Steps>>,
    regex_per_byte: u64,
}

/// Explores the states depth by depth.
struct Explorer<'g, 's> {
    nodes: &'g [Node<'s>],
    position: Vec<u32>,
    limit: u64,
    steps: u64,
    /// Per node: a count and the pass that last set it.
    counts: Vec<u64>,
    marks: Vec<u32>,
    pass: u32,
    states: Vec<Explored>,
    known: HashMap<Key, u32>,
    /// Steps by what decides them: the subschemas that look below, and
    /// what the value's ancestors hash of it.
    expansions: HashMap<(Applied, u64), Arc<Steps>>,
}

impl<'g, 's> Explorer<'g, 's> {
    fn new(nodes: &'g [Node<'s>], position: Vec<u32>, limit: u64) -> Self {
        Self {
            nodes,
            position,
            limit,
            steps: 0,
            counts: vec![0; nodes.len()],
            marks: vec![0; nodes.len()],
            pass: 0,
            states: Vec::new(),
            known: HashMap::new(),
            expansions: HashMap::new(),
        }
    }

    fn run(mut self) -> Result<CostModel, CostError> {
        let nothing = Key {
            applied: Vec::new(),
            touched: 0,
            inherited: 0,
            name_regexes: 0,
        };
        self.intern(nothing, None)?;
        let applied = self.close(vec![(0, 1)])?;
        let root = Key {
            applied,
            touched: 0,
            inherited: 0,
            name_regexes: 0,
        };
        let (root, _) = self.intern(root, None)?;
        let mut frontier = vec![root];
        // A document nests at most MAX_DEPTH arrays and objects: values
        // below that many steps are never there.
        for _ in 0..=MAX_DEPTH {
            let mut next = Vec::new();
            for state in frontier {
                self.expand(state, &mut next)?;
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        Ok(self.finish())
    }

    /// Where each member and item of a value in `state` goes; new states
    /// are added to `next`.
    fn expand(&mut self, state: u32, next: &mut Vec<u32>) -> Result<(), CostError> {
        if state == NOTHING {
            return Ok(());
        }
        let key = self.states[state as usize].key.clone();
        let deciding: Applied = key
            .applied
            .iter()
            .copied()
            .filter(|&(n, _)| {
                let node = &self.nodes[n as usize];
                !node.below.is_empty() || node.scans > 0 || node.deep > 0
            })
            .collect();
        let decided_by = (deciding, key.inherited);
        if let Some(steps) = self.expansions.get(&decided_by) {
            self.states[state as usize].steps = Some(steps.clone());
            return Ok(());
        }
        let mut inherited = key.inherited;
        let mut touched = 0u64;
        let mut name_regexes = 0u64;
        let mut any_member: Applied = Vec::new();
        let mut any_item: Applied = Vec::new();
        let mut members: BTreeMap<&'s str, Applied> = BTreeMap::new();
        let mut items: BTreeMap<usize, Applied> = BTreeMap::new();
        for &(n, times) in &decided_by.0 {
            let node = &self.nodes[n as usize];
            touched = touched.saturating_add(times.saturating_mul(node.scans));
            inherited = inherited.saturating_add(times.saturating_mul(node.deep));
            name_regexes = name_regexes.saturating_add(times.saturating_mul(node.names_regex_per_byte));
            for &(step, to) in &node.below {
                match step {
                    Step::Member(name) => members.entry(name).or_default().push((to, times)),
                    Step::AnyMember => any_member.push((to, times)),
                    Step::Item(index) => items.entry(index).or_default().push((to, times)),
                    Step::AnyItem => any_item.push((to, times)),
                }
            }
        }
        let touched = touched.saturating_add(inherited);
        let mut step = |this: &mut Self, start: Applied, label: String| -> Result<u32, CostError> {
            let applied = this.close(start)?;
            let key = Key {
                applied,
                touched,
                inherited,
                name_regexes,
            };
            let (id, new) = this.intern(key, Some((state, label)))?;
            if new {
                next.push(id);
            }
            Ok(id)
        };
        let other_member = step(self, any_member.clone(), "*".to_owned())?;
        let mut named = Vec::with_capacity(members.len());
        for (name, extra) in members {
            let mut start = any_member.clone();
            start.extend(extra);
            named.push((Box::from(name), step(self, start, escaped(name))?));
        }
        let other_item = step(self, any_item.clone(), "*".to_owned())?;
        let mut indexed = Vec::with_capacity(items.len());
        for (index, extra) in items {
            let mut start = any_item.clone();
            start.extend(extra);
            indexed.push((index, step(self, start, index.to_string())?));
        }
        let steps = Arc::new(Steps {
            members: named.into_boxed_slice(),
            other_member,
            items: indexed.into_boxed_slice(),
            other_item,
        });
        self.expansions.insert(decided_by, steps.clone());
        self.states[state as usize].steps = Some(steps);
        Ok(())
    }

    /// Everything `start` applies to the same value, with multiplicity:
    /// counts pushed along the same-value edges in topological order.
    fn close(&mut self, start: Applied) -> Result<Applied, CostError> {
        if start.is_empty() {
            return Ok(start);
        }
        self.pass += 1;
        let pass = self.pass;
        let mut reach: Vec<u32> = Vec::new();
        let mut stack: Vec<u32> = Vec::new();
        for &(n, _) in &start {
            if self.marks[n as usize] != pass {
                self.marks[n as usize] = pass;
                self.counts[n as usize] = 0;
                reach.push(n);
                stack.push(n);
            }
        }
        while let Some(n) = stack.pop() {
            let edges = &self.nodes[n as usize].same_value;
            self.steps += 1 + edges.len() as u64;
            for &to in edges {
                if self.marks[to as usize] != pass {
                    self.marks[to as usize] = pass;
                    self.counts[to as usize] = 0;
                    reach.push(to);
                    stack.push(to);
                }
            }
        }
        if self.steps > MAX_ANALYSIS_STEPS {
            return Err(CostError::TooIntricate);
        }
        for &(n, times) in &start {
            self.counts[n as usize] = self.counts[n as usize].saturating_add(times);
        }
        reach.sort_unstable_by_key(|&n| self.position[n as usize]);
        for &n in &reach {
            let times = self.counts[n as usize];
            if times == 0 {
                continue;
            }
            for &to in &self.nodes[n as usize].same_value {
                self.counts[to as usize] = self.counts[to as usize].saturating_add(times);
            }
        }
        let mut applied: Applied = reach
            .into_iter()
            .map(|n| (n, self.counts[n as usize]))
            .filter(|&(_, times)| times > 0)
            .collect();
        applied.sort_unstable();
        Ok(applied)
    }

    /// The state of `key`, added if new (and refused if too costly).
    fn intern(&mut self, key: Key, parent: Option<(u32, String)>) -> Result<(u32, bool), CostError> {
        if let Some(&known) = self.known.get(&key) {
            return Ok((known, false));
        }
        let cost = key.applied.iter().fold(key.touched, |sum, &(n, times)| {
            sum.saturating_add(times.saturating_mul(self.nodes[n as usize].weight))
        });
        if cost > self.limit {
            let at = parent
                .as_ref()
                .map_or_else(String::new, |(from, label)| format!("{}/{label}", self.path_of(*from)));
            return Err(CostError::TooCostly { cost, at });
        }
        if self.states.len() >= MAX_STATES {
            return Err(CostError::TooIntricate);
        }
        let id = self.states.len() as u32;
        let regex_per_byte = key.applied.iter().fold(key.name_regexes, |sum, &(n, times)| {
            sum.saturating_add(times.saturating_mul(self.nodes[n as usize].regex_per_byte))
        });
        // Nothing applies below what nothing applies to.
        let nothing = key.applied.is_empty() && key.touched == 0 && key.inherited == 0 && key.name_regexes == 0;
        self.states.push(Explored {
            steps: nothing.then(|| Steps::all_to(NOTHING)),
            regex_per_byte,
            key: key.clone(),
            cost,
            parent,
        });
        self.known.insert(key, id);
        Ok((id, true))
    }

    /// The path (member names and item indexes) by which `state` was first
    /// reached.
    fn path_of(&self, mut state: u32) -> String {
        let mut labels = Vec::new();
        while let Some((from, label)) = &self.states[state as usize].parent {
            labels.push(label.as_str());
            state = *from;
        }
        labels.iter().rev().map(|label| format!("/{label}")).collect()
    }

    /// The states as a model. Those below the depth explored never occur in
    /// a document; should one, it costs the most any value does.
    fn finish(self) -> CostModel {
        let per_value = self.states.iter().map(|s| s.cost).max().unwrap_or(0);
        let ceiling = Steps::all_to(self.states.len() as u32);
        let mut states: Vec<State> = self
            .states
            .into_iter()
            .map(|explored| State {
                cost: explored.cost,
                regex_per_byte: explored.regex_per_byte,
                steps: explored.steps.unwrap_or_else(|| ceiling.clone()),
            })
            .collect();
        let regex_per_byte = states.iter().map(|s| s.regex_per_byte).max().unwrap_or(0);
        states.push(State {
            cost: per_value,
            regex_per_byte,
            steps: ceiling,
        });
        CostModel { states, per_value }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cost(schema: Value) -> Result<u64, CostError> {
        analyse(&schema, 10_000).map(|model| model.per_value())
    }

    fn doubling(levels: usize) -> Value {
        let mut defs = serde_json::Map::new();
        for i in 0..levels {
            let next = format!("#/$defs/d{}", i + 1);
            defs.insert(format!("d{i}"), json!({"allOf": [{"$ref": next}, {"$ref": next}]}));
        }
        defs.insert(format!("d{levels}"), json!({}));
        json!({"$defs": defs, "$ref": "#/$defs/d0"})
    }

    #[test]
    fn refs_count_as_written_out() {
        // The root, then each level: the definition once per path to it and
        // its two `{"$ref"}` wrappers: 2^(levels + 2) - 2.
        assert_eq!(cost(doubling(3)), Ok(30));
        assert_eq!(cost(doubling(11)), Ok(8_190));
        match cost(doubling(25)) {
            Err(CostError::TooCostly { cost, at }) => {
                assert_eq!((cost, at.as_str()), ((1 << 27) - 2, ""));
            }
            other => panic!("{other:?}"),
        }
        // Unreferenced definitions cost nothing.
        assert_eq!(cost(json!({"$defs": {"big": doubling(20)}, "type": "object"})), Ok(1));
    }

    #[test]
    fn a_cycle_that_stays_on_one_value_is_refused() {
        for schema in [
            json!({"$ref": "#"}),
            json!({"allOf": [{"$ref": "#"}]}),
            json!({"$defs": {"a": {"not": {"$ref": "#/$defs/b"}}, "b": {"if": {"$ref": "#/$defs/a"}}}, "$ref": "#/$defs/a"}),
        ] {
            assert!(matches!(cost(schema.clone()), Err(CostError::Cycle(_))), "{schema}");
        }
        let Err(CostError::Cycle(path)) =
            cost(json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}))
        else {
            panic!("a cycle");
        };
        assert_eq!(path.first(), path.last());
        assert!(
            path.iter().any(|at| at == "#/$defs/a") && path.iter().any(|at| at == "#/$defs/b"),
            "{path:?}"
        );
    }

    #[test]
    fn recursion_through_the_document_is_bounded_per_value() {
        let tree = json!({"properties": {"children": {"items": {"$ref": "#"}}, "name": {"type": "string"}}});
        assert!(cost(tree).expect("a tree") <= 4);
        let binary = json!({"properties": {"left": {"$ref": "#"}, "right": {"$ref": "#"}}});
        assert!(cost(binary).expect("a binary tree") <= 4);
        let dynamic = json!({
            "$dynamicAnchor": "node",
            "properties": {"children": {"items": {"$dynamicRef": "#node"}}}
        });
        assert!(cost(dynamic).expect("a dynamic tree") <= 6);
        // The draft's own example: a strict tree extends a tree, whose
        // `$dynamicRef` lands on the strict one.
        let extended = json!({
            "$id": "https://example.com/strict-tree",
            "$dynamicAnchor": "node",
            "$ref": "tree",
            "unevaluatedProperties": false,
            "$defs": {"tree": {
                "$id": "https://example.com/tree",
                "$dynamicAnchor": "node",
                "type": "object",
                "properties": {"data": true, "children": {"type": "array", "items": {"$dynamicRef": "#node"}}}
            }}
        });
        assert!(cost(extended).expect("an extended tree") <= 12);
        // Many members of the same recursive kind: each value's state
        // differs (which `{"$ref"}` led there), the steps below do not.
        let wide: serde_json::Map<String, Value> = (0..2000).map(|n| (format!("p{n}"), json!({"$ref": "#"}))).collect();
        let started = std::time::Instant::now();
        assert!(cost(json!({"type": "object", "properties": wide})).expect("a wide tree") <= 4);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // Two branches recursing on the same member: doubles at each depth.
        let doubling = json!({"allOf": [{"properties": {"a": {"$ref": "#"}}}, {"properties": {"a": {"$ref": "#"}}}]});
        match cost(doubling) {
            Err(CostError::TooCostly { at, .. }) => assert!(at.starts_with("/a/a/a/a/a/a/a/a/a/a/a"), "{at}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_document_costs_what_its_paths_do() {
        let schema = json!({
            "type": "object",
            "properties": {"tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}}},
            "$defs": {"tag": {"allOf": [{"type": "string"}, {"minLength": 1}]}}
        });
        let model = analyse(&schema, 10_000).expect("a model");
        let small = model.work(&json!({"tags": ["a"]}));
        let large = model.work(&json!({"tags": vec!["a"; 1000]}));
        assert!(large > 900 * small / 2, "{small} then {large}");
        // What the schema says nothing of costs nothing below.
        let other = model.work(&json!({"other": vec![vec![1; 100]; 100]}));
        assert!(other < 10, "{other}");
        // Long strings cost by their length.
        let long = model.work(&json!({"tags": ["x".repeat(64_000)]}));
        assert!(long > 1000, "{long}");
    }

    #[test]
    fn what_a_keyword_costs_follows_what_jsonschema_does_with_it() {
        let plain = cost(json!({"type": "string"})).expect("plain");
        let pattern = cost(json!({"type": "string", "pattern": "^a"})).expect("a pattern");
        assert!(pattern >= plain + REGEX_CHECKS, "{plain} then {pattern}");
        // A regex costs by the byte, more as its counted repetitions grow
        // (jsonschema: 15 ns a byte for the first, 10 us for the second).
        let per_byte = |pattern: &str| {
            let model = analyse(&json!({"pattern": pattern}), 10_000).expect("a pattern");
            model.work(&json!("a".repeat(10_000))) / 10_000
        };
        assert!(per_byte("\\w{100}y") < 20, "{}", per_byte("\\w{100}y"));
        assert!(per_byte("[a-z]{3000}y") > 5_000, "{}", per_byte("[a-z]{3000}y"));
        // Hashed: an enum of strings or of integers costs as one of two.
        let names: Vec<String> = (0..1000).map(|n| format!("name{n}")).collect();
        assert!(cost(json!({"enum": names})).expect("names") <= 5);
        assert!(cost(json!({"enum": (0..1000).collect::<Vec<_>>()})).expect("integers") <= 5);
        // Compared one by one otherwise.
        let mixed: Vec<Value> = (0..1000).map(|n| json!({"n": n})).collect();
        assert!(cost(json!({"enum": mixed})).expect("objects") > 1000);
    }

    #[test]
    fn what_unevaluated_keywords_walk_again_is_counted_at_each_level() {
        let nested = |levels: usize| {
            let mut schema = json!({"properties": {"a": {"type": "integer"}}});
            for level in 0..levels {
                schema = json!({
                    "anyOf": [schema, {"properties": {format!("q{level}"): true}}],
                    "unevaluatedProperties": false
                });
            }
            schema
        };
        // jsonschema: 14 us at 5 levels, 24 s at 20.
        assert!(cost(nested(5)).is_ok());
        assert!(matches!(cost(nested(12)), Err(CostError::TooCostly { .. })));
        // The same with allOf: 0.5 ms at 10 levels, 11 s at 20.
        let all_of = |levels: usize| {
            let mut schema = json!({"properties": {"a": {"type": "integer"}}});
            for level in 0..levels {
                schema = json!({"allOf": [schema], "properties": {format!("p{level}"): true}, "unevaluatedProperties": false});
            }
            schema
        };
        assert!(cost(all_of(5)).is_ok());
        assert!(matches!(cost(all_of(12)), Err(CostError::TooCostly { .. })));
        // Branches re-checked whole, what they apply below included: 2
        // times longer a level in jsonschema (0.4 ms at 12 levels).
        let descending = |levels: usize| {
            let mut schema = json!({"type": "integer"});
            for level in 0..levels {
                schema = json!({
                    "anyOf": [{"properties": {"k": schema}}, {"required": [format!("never{level}")]}],
                    "unevaluatedProperties": false
                });
            }
            schema
        };
        assert!(cost(descending(6)).is_ok());
        assert!(matches!(cost(descending(12)), Err(CostError::TooCostly { .. })));
        // Once, as schemas usually have it, costs three walks.
        let closed = json!({"allOf": [{"$ref": "#/$defs/base"}], "unevaluatedProperties": false,
            "$defs": {"base": {"properties": {"a": true}}}});
        assert!(cost(closed).expect("a closed schema") <= 12);
    }

    #[test]
    fn a_document_path_below_the_explored_depth_costs_the_most() {
        let tree = json!({"properties": {"a": {"$ref": "#"}}, "type": "object"});
        let model = analyse(&tree, 10_000).expect("a model");
        let mut deep = json!(1);
        for _ in 0..150 {
            deep = json!({"a": deep});
        }
        assert!(model.work(&deep) >= 150);
    }
}
