//! Restoring without reverting anyone: a three-way merge of the recorded original, what
//! kubedev wrote, and the live object. What kubedev changed goes back to the original;
//! what others changed meanwhile stays. Lists of objects merge element by element, keyed
//! as Kubernetes' strategic merge keys them (containers and env by name, ports by number,
//! mounts by path), so a teammate's new env var or container survives next to the agent's
//! removal.

use serde_json::{Map, Value};

use crate::printable::printable;

/// Fields identifying the elements of a list of objects, tried in order: the first that
/// every element of all three versions has, with no value twice in one version, keys the
/// list. A port is its number and protocol (TCP where unsaid), so a teammate's 8080/UDP
/// beside 8080/TCP is an element of its own.
const ELEMENT_KEYS: [&[&str]; 5] = [
    &["containerPort", "protocol"],
    &["mountPath"],
    &["devicePath"],
    &["name"],
    &["port", "protocol"],
];

/// One of [`ELEMENT_KEYS`].
#[derive(Clone, Copy)]
struct Key(&'static [&'static str]);

impl Key {
    /// `element`'s identity under this key, if it has one.
    fn id(self, element: &Value) -> Option<Value> {
        let (first, rest) = self.0.split_first()?;
        let head = element
            .get(first)
            .filter(|value| !value.is_object())?
            .clone();
        if rest.is_empty() {
            return Some(head);
        }
        let protocol = element.get("protocol").cloned();
        Some(Value::Array(vec![
            head,
            protocol.unwrap_or_else(|| "TCP".into()),
        ]))
    }

    /// An identity as a path names it: `8080/TCP`, `web`.
    fn label(id: &Value) -> String {
        let part = |value: &Value| {
            value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned)
        };
        match id {
            Value::Array(parts) => parts.iter().map(part).collect::<Vec<_>>().join("/"),
            other => part(other),
        }
    }
}

/// The most changes a [`Restoration`] names one by one.
const NAMED_CHANGES: usize = 12;

/// The object to write back, and what in it is not the recorded original.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Restoration {
    /// The merged object.
    pub(super) value: Value,
    /// What others changed during the session that stays.
    pub(super) changes: OthersChanges,
}

/// What others changed in a workload or Service during a session, which restoring kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OthersChanges {
    /// Fields others changed, kept as they are live.
    pub kept: Vec<String>,
    /// Fields both kubedev and someone else changed: the live value stays.
    pub overridden: Vec<String>,
}

impl OthersChanges {
    /// Adds `other`'s fields to these.
    pub fn extend(&mut self, other: Self) {
        self.kept.extend(other.kept);
        self.overridden.extend(other.overridden);
    }

    /// The fields kept and overridden, in words (empty when the original came back
    /// exactly), safe to print.
    pub fn describe(&self) -> String {
        printable(&self.describe_as_named())
    }

    fn describe_as_named(&self) -> String {
        let mut out = String::new();
        if !self.kept.is_empty() {
            out.push_str(&format!(
                "kept changes made during the session to {}",
                listed(&self.kept)
            ));
        }
        if !self.overridden.is_empty() {
            if !out.is_empty() {
                out.push_str("; ");
            }
            out.push_str(&format!(
                "left as they are now, changed by kubedev and by someone else: {}",
                listed(&self.overridden)
            ));
        }
        out
    }
}

fn listed(paths: &[String]) -> String {
    let named = paths
        .iter()
        .take(NAMED_CHANGES)
        .cloned()
        .collect::<Vec<_>>();
    match paths.len().saturating_sub(NAMED_CHANGES) {
        0 => named.join(", "),
        more => format!("{} and {more} more", named.join(", ")),
    }
}

/// Takes kubedev's change (`original` to `applied`) back out of `live`, under the name
/// `root` for what it reports.
pub(super) fn restore(root: &str, original: &Value, applied: &Value, live: &Value) -> Restoration {
    let mut restoration = Restoration::default();
    restoration.value = merge(
        &mut restoration,
        root,
        Versions {
            applied: Some(applied),
            original: Some(original),
            live: Some(live),
        },
    )
    .unwrap_or(Value::Null);
    restoration
}

/// One field in its three versions; `None` where that version does not have it.
#[derive(Clone, Copy)]
struct Versions<'a> {
    applied: Option<&'a Value>,
    original: Option<&'a Value>,
    live: Option<&'a Value>,
}

fn merge(out: &mut Restoration, path: &str, v: Versions<'_>) -> Option<Value> {
    if v.live == v.applied || v.original == v.live {
        // Nobody else touched it, or it is as the original already.
        return v.original.cloned();
    }
    if v.original == v.applied {
        // kubedev never changed it: someone else did.
        differences(path, v.applied, v.live, &mut out.changes.kept);
        return v.live.cloned();
    }
    match (v.applied, v.original, v.live) {
        // kubedev added it (the agent): it goes, whatever was done to it since.
        (Some(_), None, _) => None,
        (Some(Value::Object(_)), Some(Value::Object(_)), Some(Value::Object(_))) => {
            Some(merge_objects(out, path, v))
        }
        (Some(Value::Array(a)), Some(Value::Array(o)), Some(Value::Array(l))) => {
            match element_key([a, o, l]) {
                Some(key) => Some(merge_lists(out, path, key, [a, o, l])),
                None => overridden(out, path, v),
            }
        }
        _ => overridden(out, path, v),
    }
}

fn overridden(out: &mut Restoration, path: &str, v: Versions<'_>) -> Option<Value> {
    out.changes.overridden.push(path.to_owned());
    v.live.cloned()
}

fn merge_objects(out: &mut Restoration, path: &str, v: Versions<'_>) -> Value {
    let field = |value: Option<&'_ Value>, key: &str| -> Option<Value> {
        value.and_then(|value| value.get(key)).cloned()
    };
    let mut keys: Vec<&String> = Vec::new();
    for object in [v.live, v.original, v.applied].into_iter().flatten() {
        for key in object.as_object().into_iter().flat_map(Map::keys) {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    let mut merged = Map::new();
    for key in keys {
        let (applied, original, live) = (
            field(v.applied, key),
            field(v.original, key),
            field(v.live, key),
        );
        let versions = Versions {
            applied: applied.as_ref(),
            original: original.as_ref(),
            live: live.as_ref(),
        };
        if let Some(value) = merge(out, &format!("{path}.{key}"), versions) {
            merged.insert(key.clone(), value);
        }
    }
    Value::Object(merged)
}

/// The key that identifies the elements of `lists`, if one does.
fn element_key(lists: [&Vec<Value>; 3]) -> Option<Key> {
    ELEMENT_KEYS.into_iter().map(Key).find(|key| {
        lists.iter().all(|list| {
            let mut seen = Vec::new();
            list.iter().all(|element| match key.id(element) {
                Some(id) if !seen.contains(&id) => {
                    seen.push(id);
                    true
                }
                _ => false,
            })
        })
    })
}

/// Merges three lists element by element: in the live order, with elements only the
/// original has put back after the element they followed there.
fn merge_lists(out: &mut Restoration, path: &str, key: Key, lists: [&Vec<Value>; 3]) -> Value {
    let [applied, original, live] = lists;
    let find = |list: &'_ Vec<Value>, id: &Value| -> Option<Value> {
        list.iter()
            .find(|e| key.id(e).as_ref() == Some(id))
            .cloned()
    };
    let id_of = |element: &Value| key.id(element).unwrap_or(Value::Null);
    let mut merged: Vec<Value> = Vec::new();
    let put = |out: &mut Restoration, id: &Value, merged: &mut Vec<Value>, at: usize| {
        let (a, o, l) = (find(applied, id), find(original, id), find(live, id));
        let label = Key::label(id);
        let versions = Versions {
            applied: a.as_ref(),
            original: o.as_ref(),
            live: l.as_ref(),
        };
        if let Some(value) = merge(out, &format!("{path}[{label}]"), versions) {
            merged.insert(at.min(merged.len()), value);
        }
    };
    for element in live {
        put(out, &id_of(element), &mut merged, usize::MAX);
    }
    for (index, element) in original.iter().enumerate() {
        let id = id_of(element);
        if live.iter().any(|e| key.id(e).as_ref() == Some(&id)) {
            continue;
        }
        // After the nearest element that preceded it in the original and is still here.
        let at = original[..index]
            .iter()
            .rev()
            .find_map(|before| {
                let before = id_of(before);
                merged
                    .iter()
                    .position(|e| key.id(e).as_ref() == Some(&before))
                    .map(|position| position + 1)
            })
            .unwrap_or(0);
        put(out, &id, &mut merged, at);
    }
    Value::Array(merged)
}

/// Names each field where `from` and `to` differ, as precisely as their shape allows.
fn differences(path: &str, from: Option<&Value>, to: Option<&Value>, out: &mut Vec<String>) {
    match (from, to) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            for key in a.keys().chain(b.keys().filter(|key| !a.contains_key(*key))) {
                if a.get(key) != b.get(key) {
                    differences(&format!("{path}.{key}"), a.get(key), b.get(key), out);
                }
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            let Some(key) = element_key([a, b, b]) else {
                out.push(path.to_owned());
                return;
            };
            let find = |list: &'_ Vec<Value>, id: &Value| {
                list.iter()
                    .find(|e| key.id(e).as_ref() == Some(id))
                    .cloned()
            };
            let mut ids: Vec<Value> = a.iter().filter_map(|e| key.id(e)).collect();
            ids.extend(
                b.iter()
                    .filter_map(|e| key.id(e))
                    .filter(|id| !a.iter().any(|e| key.id(e).as_ref() == Some(id))),
            );
            for id in ids {
                let (x, y) = (find(a, &id), find(b, &id));
                if x != y {
                    let label = Key::label(&id);
                    differences(&format!("{path}[{label}]"), x.as_ref(), y.as_ref(), out);
                }
            }
        }
        _ => out.push(path.to_owned()),
    }
}

#[cfg(test)]
mod tests;
