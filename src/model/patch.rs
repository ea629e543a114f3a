//! APISIX's PATCH semantics (apisix/admin/resource.lua, apisix/core/table.lua): whole-object
//! merge and sub-path replacement.

use serde_json::{Map, Value};

/// Merges `patch` into `target`: objects merge recursively, arrays and scalars replace, JSON
/// `null` deletes the field. A non-object patch replaces the whole target.
pub fn merge_patch(target: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else { return };
    for (k, v) in patch {
        match v {
            Value::Null => {
                map.remove(&k);
            }
            Value::Object(_) => {
                let slot = map.entry(k).or_insert_with(|| Value::Object(Map::new()));
                merge_patch(slot, v);
            }
            other => {
                map.insert(k, other);
            }
        }
    }
}

/// Replaces the attribute at `path` (`nodes`, `a/b/c`) with `body`, creating intermediate
/// objects. A JSON `null` body removes the attribute. Walking through a non-object fails with
/// `invalid sub-path: /<walked path>`; an empty path replaces the whole value.
pub fn patch_sub_path(target: &mut Value, path: &str, body: Value) -> Result<(), String> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (last, parents) = match parts.split_last() {
        Some((last, parents)) => (*last, parents),
        None => ("", &[][..]),
    };
    let mut cur = target;
    for (i, name) in parents.iter().enumerate() {
        let Value::Object(map) = cur else {
            return Err(format!("invalid sub-path: /{}", parts[..i].join("/")));
        };
        cur = map
            .entry(name.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !cur.is_object() {
            return Err(format!("invalid sub-path: /{}", parts[..=i].join("/")));
        }
    }
    if last.is_empty() {
        *cur = body;
        return Ok(());
    }
    let Value::Object(map) = cur else {
        return Err(format!("invalid sub-path: /{}", parts.join("/")));
    };
    if body.is_null() {
        map.remove(last);
    } else {
        map.insert(last.to_string(), body);
    }
    Ok(())
}
