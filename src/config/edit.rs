//! Changes the daemon makes to `config.toml` itself (`peer add`, `peer remove`, `peer block`,
//! `peer unblock`): one list at a time, keeping the user's comments and layout (`toml_edit`),
//! and replacing the file atomically so a crash leaves the old or the new file, never half.

use std::path::Path;

use libp2p::{Multiaddr, PeerId};

use super::ConfigError;

/// Appends a static peer to the `peers` list of the config file. Returns false if the address
/// was already there.
pub fn add_static_peer(path: &Path, addr: &Multiaddr) -> Result<bool, ConfigError> {
    append_to_list(path, "peers", &addr.to_string())
}

/// Appends a Kademlia bootstrap peer (an address ending in `/p2p/<id>`) to `bootstrap`;
/// returns false if it was already there.
pub fn add_bootstrap_peer(path: &Path, addr: &Multiaddr) -> Result<bool, ConfigError> {
    append_to_list(path, "bootstrap", &addr.to_string())
}

/// Appends a peer id to `blocked_peers`; returns false if it was already there.
pub fn add_blocked_peer(path: &Path, peer: &PeerId) -> Result<bool, ConfigError> {
    append_to_list(path, "blocked_peers", &peer.to_string())
}

/// Removes a peer id from `blocked_peers`; returns false if it was not there.
pub fn remove_blocked_peer(path: &Path, peer: &PeerId) -> Result<bool, ConfigError> {
    let value = peer.to_string();
    Ok(!remove_matching(path, "blocked_peers", |v| v == value)?.is_empty())
}

/// Removes from `peers` every address that is `target` or ends in `/p2p/<target>`; returns the
/// addresses removed.
pub fn remove_static_peers(path: &Path, target: &str) -> Result<Vec<String>, ConfigError> {
    let suffix = format!("/p2p/{target}");
    remove_matching(path, "peers", |addr| {
        addr == target || addr.ends_with(&suffix)
    })
}

/// Appends `value` to the list `key` (created if missing). Returns false if it was already
/// there (the file is then untouched).
fn append_to_list(path: &Path, key: &str, value: &str) -> Result<bool, ConfigError> {
    edit_list(path, key, true, |list| {
        if list.iter().any(|v| v.as_str() == Some(value)) {
            return false;
        }
        list.push(value);
        true
    })
}

/// Removes the strings of the list `key` that `matches` picks; returns what it removed
/// (nothing: the file is untouched).
fn remove_matching(
    path: &Path,
    key: &str,
    matches: impl Fn(&str) -> bool,
) -> Result<Vec<String>, ConfigError> {
    let mut removed = Vec::new();
    edit_list(path, key, false, |list| {
        list.retain(|v| match v.as_str() {
            Some(text) if matches(text) => {
                removed.push(text.to_owned());
                false
            }
            _ => true,
        });
        !removed.is_empty()
    })?;
    Ok(removed)
}

/// Reads the config file, lets `change` edit the list `key` (made empty first if `create` and
/// it is missing; a missing list is otherwise left alone), and writes the file back if `change`
/// says it changed something. Returns what `change` said.
fn edit_list(
    path: &Path,
    key: &str,
    create: bool,
    change: impl FnOnce(&mut toml_edit::Array) -> bool,
) -> Result<bool, ConfigError> {
    let update_error = |message: String| ConfigError::Update {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| update_error(e.to_string()))?;
    let item = if create {
        doc.entry(key)
            .or_insert_with(|| toml_edit::value(toml_edit::Array::new()))
    } else {
        match doc.get_mut(key) {
            Some(item) => item,
            None => return Ok(false),
        }
    };
    let list = item
        .as_array_mut()
        .ok_or_else(|| update_error(format!("`{key}` is not a list")))?;
    if !change(list) {
        return Ok(false);
    }
    crate::atomic_write::write_atomically(path, doc.to_string().as_bytes(), None)
        .map_err(|e| update_error(e.to_string()))?;
    Ok(true)
}
