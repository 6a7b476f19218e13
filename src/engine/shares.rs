//! Share lifecycle: creating and joining shares, handing out tokens, changing a share's peer
//! allowlist, starting folder actors, and finding a share's members (DHT provider records and
//! the addresses tokens carry).
//!
//! These are the engine's answers to the local API; they change what the store holds about
//! shares, and the membership and announcement rooms pick up from there.

use std::path::{Path, PathBuf};

use libp2p::PeerId;
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{EngineActor, EngineError, InvalidRequest};
use crate::folder::Resume;
use crate::home::STATE_DIR;
use crate::share::{self, Token};
use crate::store::{MAX_SHARE_NAME, ShareKind, ShareMeta};

/// A new share and the token to join it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CreatedShare {
    /// Hex id.
    pub id: String,
    /// Local name.
    pub name: String,
    /// The token (only for created shares).
    pub token: Option<String>,
}

/// A change to a share's peer allowlist.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct TrustChange {
    /// Peer ids to allow.
    #[serde(default)]
    pub add: Vec<String>,
    /// Peer ids to remove from the list (an emptied list admits anyone with a token again).
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Checks a share's local name: 1 to [`MAX_SHARE_NAME`] bytes, no `/` or control characters.
pub fn check_name(name: &str) -> Result<(), InvalidRequest> {
    if name.is_empty()
        || name.len() > MAX_SHARE_NAME
        || name.chars().any(|c| c.is_control() || c == '/')
    {
        return Err(InvalidRequest::ShareName { name: name.into() });
    }
    Ok(())
}

/// Where a new folder share may not be: the other folder shares' folders (two shares would
/// write the same files, and one would sync the other's `.meshsync`: its id, its versions) and
/// the daemon's home around it or its database inside (the keys and the database would be
/// sent to members). Paths resolved (absolute, symbolic links followed).
struct Taken {
    home: PathBuf,
    folders: Vec<(String, PathBuf)>,
}

impl Taken {
    /// What `folder` (resolved) overlaps, in words for the user; `None` if nothing.
    fn overlap(&self, folder: &Path) -> Option<String> {
        for (name, other) in &self.folders {
            if folder == other {
                return Some(format!("it is already shared as `{name}`"));
            }
            if folder.starts_with(other) {
                let other = other.display();
                return Some(format!("it is inside {other}, shared as `{name}`"));
            }
            if other.starts_with(folder) {
                let other = other.display();
                return Some(format!("it holds {other}, shared as `{name}`"));
            }
        }
        if self.home.starts_with(folder) {
            let home = self.home.display();
            return Some(format!(
                "it holds this daemon's home {home} (its keys and database would be sent to members)"
            ));
        }
        let state = self.home.join(STATE_DIR);
        if folder.starts_with(&state) {
            let state = state.display();
            return Some(format!(
                "it is inside this daemon's database directory {state}"
            ));
        }
        None
    }
}

/// `path` made absolute with its symbolic links resolved, as it will be once created: its
/// nearest existing ancestor resolved, the missing components after it appended.
fn resolved_ahead(path: &Path) -> std::io::Result<PathBuf> {
    let mut missing = Vec::new();
    let mut at = path;
    loop {
        match at.canonicalize() {
            Ok(mut resolved) => {
                resolved.extend(missing.iter().rev());
                return Ok(resolved);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // `..` or `.` among missing components cannot be resolved without them.
                let (Some(name), Some(parent)) = (at.file_name(), at.parent()) else {
                    return Err(e);
                };
                missing.push(name);
                at = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
            }
            Err(e) => return Err(e),
        }
    }
}

/// Resolves and prepares a folder share's directory: absolute, created if missing, with its
/// marker inside; refused, before anything is created, where it would overlap what `taken`
/// names.
fn prepare_folder(path: Option<PathBuf>, taken: &Taken) -> Result<PathBuf, InvalidRequest> {
    let path = path.ok_or(InvalidRequest::NoFolderPath)?;
    let ahead = match resolved_ahead(&path) {
        Ok(ahead) => ahead,
        Err(source) => return Err(InvalidRequest::ResolveFolder { path, source }),
    };
    if let Some(what) = taken.overlap(&ahead) {
        return Err(InvalidRequest::FolderOverlaps { path, what });
    }
    if let Err(source) = crate::folder::prepare_root(&path) {
        return Err(InvalidRequest::PrepareFolder { path, source });
    }
    if crate::folder::synced_elsewhere(&path) {
        let what = "another meshsync daemon on this machine syncs it".into();
        return Err(InvalidRequest::FolderOverlaps { path, what });
    }
    path.canonicalize()
        .map_err(|source| InvalidRequest::ResolveFolder { path, source })
}

/// The folder path a share of `kind` keeps: prepared for folders, none for records.
fn share_path(
    kind: ShareKind,
    path: Option<PathBuf>,
    taken: &Taken,
) -> Result<Option<PathBuf>, InvalidRequest> {
    match kind {
        ShareKind::Folder => prepare_folder(path, taken).map(Some),
        ShareKind::Records => Ok(None),
    }
}

impl EngineActor {
    /// Where a new folder share may not be.
    fn taken(&self) -> Taken {
        let folders = self
            .store
            .shares()
            .into_iter()
            .filter_map(|share| Some((share.meta.name, share.meta.path?)))
            .collect();
        let home = self
            .home
            .canonicalize()
            .unwrap_or_else(|_| self.home.clone());
        Taken { home, folders }
    }

    /// Creates a share with a fresh secret and write key; returns its token.
    pub(super) async fn create_share(
        &mut self,
        name: String,
        kind: ShareKind,
        path: Option<PathBuf>,
    ) -> Result<CreatedShare, EngineError> {
        check_name(&name)?;
        let path = share_path(kind, path, &self.taken())?;
        let (id, secret) = share::new_share();
        let write_key = share::new_write_key();
        let meta = ShareMeta {
            id,
            name: name.clone(),
            kind,
            secret,
            seed_addrs: Vec::new(),
            path,
            writers: share::writer_public(&write_key),
            write_key: Some(write_key),
            trusted_peers: Vec::new(),
            paused: false,
        };
        self.store.create_share(meta.clone()).await?;
        info!(share = %name, "created share {}", hex::encode(id));
        let token = self.token_for(&meta, false).await;
        self.on_new_share(&meta).await;
        Ok(CreatedShare {
            id: hex::encode(id),
            name,
            token: Some(token),
        })
    }

    /// Joins a share from a token and dials the addresses it carries.
    pub(super) async fn join_share(
        &mut self,
        token: String,
        name: String,
        kind: ShareKind,
        path: Option<PathBuf>,
    ) -> Result<CreatedShare, EngineError> {
        check_name(&name)?;
        let token = Token::parse(&token)?;
        if token.kind != kind {
            let token = token.kind;
            return Err(InvalidRequest::TokenKind { token, asked: kind }.into());
        }
        let path = share_path(kind, path, &self.taken())?;
        let meta = ShareMeta {
            id: *token.id,
            name: name.clone(),
            kind,
            secret: *token.secret,
            seed_addrs: token.addrs.clone(),
            path,
            writers: *token.writers,
            write_key: token.write.map(|k| *k),
            trusted_peers: Vec::new(),
            paused: false,
        };
        self.store.create_share(meta.clone()).await?;
        info!(
            share = %name,
            "joined share {}{}",
            hex::encode(meta.id),
            if meta.writable() { "" } else { " read-only" }
        );
        self.net.dial(token.dialable_addrs()).await;
        self.on_new_share(&meta).await;
        Ok(CreatedShare {
            id: hex::encode(meta.id),
            name,
            token: None,
        })
    }

    /// A fresh token for an existing share; a member that joined read-only can only hand out
    /// read-only ones.
    pub(super) async fn token(&self, share: &str, read_only: bool) -> Result<String, EngineError> {
        let meta = self.store.resolve(share)?.meta;
        if !read_only && !meta.writable() {
            return Err(InvalidRequest::ReadOnlyShare { share: meta.name }.into());
        }
        Ok(self.token_for(&meta, read_only).await)
    }

    /// The share's token, with our current listen addresses; a read-only one leaves the write
    /// key out.
    async fn token_for(&self, meta: &ShareMeta, read_only: bool) -> String {
        let addrs = self
            .net
            .status()
            .await
            .map(|s| s.listen_addrs)
            .unwrap_or_default()
            .into_iter()
            .take(share::MAX_TOKEN_ADDRS)
            .collect();
        Token {
            id: meta.id.into(),
            secret: meta.secret.into(),
            kind: meta.kind,
            addrs,
            writers: meta.writers.into(),
            write: meta.write_key.filter(|_| !read_only).map(Into::into),
        }
        .encode()
    }

    /// Changes a share's peer allowlist; returns the new list.
    pub(super) async fn change_trust(
        &mut self,
        share: &str,
        change: TrustChange,
    ) -> Result<Vec<String>, EngineError> {
        let mut meta = self.store.resolve(share)?.meta;
        for peer in change.add.iter().chain(&change.remove) {
            if let Err(source) = peer.parse::<PeerId>() {
                let peer = peer.clone();
                return Err(InvalidRequest::PeerId { peer, source }.into());
            }
        }
        meta.trusted_peers.retain(|p| !change.remove.contains(p));
        for peer in change.add {
            if !meta.trusted_peers.contains(&peer) {
                meta.trusted_peers.push(peer);
            }
        }
        self.store.update_share(meta.clone()).await?;
        info!(share = %meta.name, "peer allowlist is now {:?}", meta.trusted_peers);
        self.on_trust_changed(&meta);
        Ok(meta.trusted_peers)
    }

    /// Hands the user's decision to a held folder's actor; answers when it acted, off the loop.
    pub(super) fn on_resume(
        &mut self,
        share: &str,
        choice: Resume,
        reply: oneshot::Sender<Result<u64, EngineError>>,
    ) {
        let folder = self.store.resolve(share).map(|state| {
            let name = state.meta.name.clone();
            (self.folders.get(&state.meta.id).cloned(), name)
        });
        let (folder, name) = match folder {
            Ok(found) => found,
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
        };
        tokio::spawn(async move {
            let answer = match folder {
                None => Err(InvalidRequest::NotHeld {
                    reason: format!("share `{name}` is not a folder share"),
                }
                .into()),
                Some(folder) => match folder.resume(choice).await {
                    Some(Ok(count)) => Ok(count),
                    Some(Err(reason)) => Err(InvalidRequest::NotHeld { reason }.into()),
                    None => Err(EngineError::Stopped),
                },
            };
            let _ = reply.send(answer);
        });
    }

    /// Starts the folder actor of a folder share.
    pub(super) fn start_folder(&mut self, meta: &ShareMeta) {
        if meta.kind != ShareKind::Folder || meta.paused || self.folders.contains_key(&meta.id) {
            return;
        }
        let (tx, rx) = watch::channel(self.roster.members_of(&meta.id));
        let policy = crate::folder::Policy {
            breaker: self.folder_settings.breaker_for(&meta.name),
            min_free_disk: self.folder_settings.min_free_disk_for(&meta.name),
            versions: self.folder_settings.versions_for(&meta.name),
            breaker_remote: self.folder_settings.breaker_remote_for(&meta.name),
            device_name: self.folder_settings.device_name().map(str::to_owned),
        };
        let (store, net) = (self.store.clone(), self.net.clone());
        let events = self.events.clone();
        match crate::folder::spawn(meta, self.local, store, net, rx, policy, events) {
            Ok(handle) => {
                self.folders.insert(meta.id, handle);
                self.member_watch.insert(meta.id, tx);
            }
            Err(e) => warn!(share = %meta.name, "cannot start folder: {e}"),
        }
    }

    /// A share appeared: find its members among connected peers and in the DHT.
    async fn on_new_share(&mut self, meta: &ShareMeta) {
        self.start_folder(meta);
        for peer in self.roster.connected() {
            self.start_auth(peer, meta.id);
        }
        let key = share::provider_key(&meta.secret);
        self.net.start_providing(key.clone()).await;
        self.net.find_providers(key).await;
        self.schedule.share_added(Instant::now());
    }

    /// Looks up, in the DHT, members of the shares that have none connected.
    pub(super) fn look_up_lonely_shares(&self) {
        let lonely: Vec<Vec<u8>> = self
            .store
            .shares()
            .into_iter()
            .filter(|state| !self.roster.has_members(&state.meta.id))
            .map(|state| share::provider_key(&state.meta.secret))
            .collect();
        if lonely.is_empty() {
            return;
        }
        let net = self.net.clone();
        tokio::spawn(async move {
            for key in lonely {
                net.find_providers(key).await;
            }
        });
    }

    /// Refreshes every share's provider record, looks up its members and dials its seed
    /// addresses (those of the token it was joined with).
    pub(super) fn refresh_providers(&self) {
        let net = self.net.clone();
        let shares = self.store.shares();
        tokio::spawn(async move {
            for state in shares {
                let key = share::provider_key(&state.meta.secret);
                net.start_providing(key.clone()).await;
                net.find_providers(key).await;
                let seeds: Vec<libp2p::Multiaddr> = state
                    .meta
                    .seed_addrs
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .collect();
                net.dial(seeds).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_names_are_checked() {
        assert!(check_name("photos").is_ok());
        assert!(check_name(&"x".repeat(MAX_SHARE_NAME)).is_ok());
        for bad in ["", "a/b", "tab\there", &"x".repeat(MAX_SHARE_NAME + 1)] {
            let error = check_name(bad).unwrap_err();
            assert!(
                matches!(&error, InvalidRequest::ShareName { name } if name == bad),
                "{bad:?}: {error}"
            );
        }
    }

    fn nothing_taken() -> Taken {
        Taken {
            home: PathBuf::from("/nonexistent/meshsync-home"),
            folders: Vec::new(),
        }
    }

    #[test]
    fn folder_shares_need_a_path() {
        let taken = nothing_taken();
        assert!(matches!(
            share_path(ShareKind::Folder, None, &taken),
            Err(InvalidRequest::NoFolderPath)
        ));
        assert!(matches!(
            share_path(ShareKind::Records, None, &taken),
            Ok(None)
        ));
    }

    #[test]
    fn a_folder_may_not_overlap_another_share_or_hold_the_home() {
        let taken = Taken {
            home: PathBuf::from("/h/.local/share/meshsync"),
            folders: vec![("docs".into(), PathBuf::from("/h/docs"))],
        };
        let said = |p: &str| taken.overlap(Path::new(p));
        assert!(
            said("/h/docs")
                .unwrap()
                .contains("already shared as `docs`")
        );
        assert!(
            said("/h/docs/sub/deeper")
                .unwrap()
                .contains("inside /h/docs")
        );
        assert!(
            said("/h/docs/.meshsync/x")
                .unwrap()
                .contains("inside /h/docs")
        );
        assert!(said("/h").unwrap().contains("holds /h/docs"));
        assert!(said("/").unwrap().contains("holds /h/docs"));
        assert!(said("/h/.local").unwrap().contains("daemon's home"));
        assert!(
            said("/h/.local/share/meshsync/state")
                .unwrap()
                .contains("database")
        );
        // Components are compared, not text; a folder beside the database is fine.
        assert_eq!(said("/h/docs2"), None);
        assert_eq!(said("/h/doc"), None);
        assert_eq!(said("/h/.local/share/meshsync/folders/x"), None);
    }

    #[test]
    fn a_folder_is_resolved_before_it_exists_and_refused_before_it_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("real")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
        assert_eq!(
            resolved_ahead(&root.join("link/new/deeper")).unwrap(),
            root.join("real/new/deeper")
        );
        assert_eq!(
            resolved_ahead(&root.join("link")).unwrap(),
            root.join("real")
        );
        assert!(resolved_ahead(&root.join("missing/..")).is_err());

        let taken = Taken {
            home: root.join("home"),
            folders: vec![("real".into(), root.join("real"))],
        };
        let inside = root.join("link/new");
        let refused = share_path(ShareKind::Folder, Some(inside.clone()), &taken).unwrap_err();
        assert!(
            matches!(&refused, InvalidRequest::FolderOverlaps { what, .. } if what.contains("`real`")),
            "{refused}"
        );
        assert!(!inside.exists(), "nothing is created for a refused folder");
        let beside = root.join("beside");
        let made = share_path(ShareKind::Folder, Some(beside.clone()), &taken).unwrap();
        assert_eq!(made, Some(beside.clone()));
        assert!(beside.join(crate::folder::model::MARKER_DIR).is_dir());
    }
}
