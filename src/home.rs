//! The daemon's home directory: identity, config, API token and the files scripts look for.
//!
//! One directory holds everything a daemon owns, so that many daemons can run on one machine side
//! by side (tests and `scripts/mesh.sh` rely on that) and so that a user can back up or remove a
//! node by one path. Secrets are created with mode 0600 and written atomically: a crash during
//! `init` never leaves a half-written key behind.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use libp2p::PeerId;
use libp2p::identity::Keypair;

use crate::config::{self, RawConfig};

/// Environment variable that names the home when `--home` is not given.
pub const HOME_ENV: &str = "MESHSYNC_HOME";
/// File holding the protobuf-encoded Ed25519 keypair.
pub const IDENTITY_FILE: &str = "identity.key";
/// The configuration file.
pub const CONFIG_FILE: &str = "config.toml";
/// The bearer token of the control API.
pub const TOKEN_FILE: &str = "api-token";
/// Written by a running daemon: the address its API really listens on.
pub const API_ADDR_FILE: &str = "api.addr";
/// Where the daemon keeps its databases.
pub const STATE_DIR: &str = "state";
/// Bytes of randomness in an API token.
const TOKEN_BYTES: usize = 32;

/// What can go wrong with a home directory.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// No `--home`, no `MESHSYNC_HOME`, and the platform has no home directory either.
    #[error("cannot find a home directory: pass --home DIR or set {HOME_ENV}")]
    NoHome,
    /// The home has not been initialised.
    #[error("{path} is not a meshsync home (no {CONFIG_FILE}): run `meshsync --home {home} init` first", path = .home.display(), home = .home.display())]
    NotInitialised {
        /// The home directory.
        home: PathBuf,
    },
    /// A file in the home could not be read or written.
    #[error("{action} {path}")]
    Io {
        /// What was being done ("cannot read", "cannot write", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The identity file exists but is not a valid key.
    #[error("identity file {path} is corrupt: {message}")]
    BadIdentity {
        /// The identity file.
        path: PathBuf,
        /// Why decoding failed.
        message: String,
    },
    /// The identity or token file can be read by other users.
    #[error("{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`", path = .path.display())]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The API token file is empty or malformed.
    #[error("API token file {path} is malformed", path = .path.display())]
    BadToken {
        /// The token file.
        path: PathBuf,
    },
    /// A generated config did not validate (a bad `--listen`, `--api` or `--peer`).
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The OS random generator failed.
    #[error("cannot get random bytes: {0}")]
    Random(String),
}

/// A home directory; cheap to clone, does no I/O until asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    dir: PathBuf,
}

/// Options for `meshsync init` that end up in the generated config.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// `--listen`, replacing the default listen addresses when given.
    pub listen: Vec<String>,
    /// `--api`.
    pub api: Option<String>,
    /// `--peer`.
    pub peers: Vec<String>,
    /// `--no-mdns`.
    pub no_mdns: bool,
    /// `--name`: this device's name.
    pub name: Option<String>,
}

/// What `init` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// A new home was created.
    Created(PeerId),
    /// Everything was already there; nothing was changed.
    AlreadyInitialised(PeerId),
}

impl Home {
    /// `--home` if given, else `$MESHSYNC_HOME`, else the platform's data directory.
    pub fn resolve(flag: Option<PathBuf>) -> Result<Home, HomeError> {
        if let Some(dir) = flag {
            return Ok(Home { dir });
        }
        if let Some(dir) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
            return Ok(Home { dir: dir.into() });
        }
        directories::ProjectDirs::from("", "", "meshsync")
            .map(|dirs| Home {
                dir: dirs.data_dir().to_owned(),
            })
            .ok_or(HomeError::NoHome)
    }

    /// A home at an explicit path.
    pub fn at(dir: impl Into<PathBuf>) -> Home {
        Home { dir: dir.into() }
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// Path of the identity key.
    pub fn identity_path(&self) -> PathBuf {
        self.dir.join(IDENTITY_FILE)
    }

    /// Path of the API token.
    pub fn token_path(&self) -> PathBuf {
        self.dir.join(TOKEN_FILE)
    }

    /// Path of the file a running daemon writes its API address to.
    pub fn api_addr_path(&self) -> PathBuf {
        self.dir.join(API_ADDR_FILE)
    }

    /// Directory for the daemon's databases.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(STATE_DIR)
    }

    /// Creates identity, config and token where missing. Never overwrites: a second run reports
    /// [`InitOutcome::AlreadyInitialised`] and changes nothing.
    pub fn init(&self, options: &InitOptions) -> Result<InitOutcome, HomeError> {
        let config_path = self.config_path();
        let identity_path = self.identity_path();
        let token_path = self.token_path();
        if config_path.exists() && identity_path.exists() && token_path.exists() {
            let id = self.load_identity()?.public().to_peer_id();
            return Ok(InitOutcome::AlreadyInitialised(id));
        }
        // Build and validate the config before touching the disk, so a bad flag leaves nothing.
        let mut raw = RawConfig::default();
        if !options.listen.is_empty() {
            raw.listen = options.listen.clone();
        }
        if let Some(api) = &options.api {
            raw.api = api.clone();
        }
        raw.peers = options.peers.clone();
        raw.mdns = !options.no_mdns;
        if let Some(name) = &options.name {
            raw.name = name.clone();
        }
        raw.clone().validate(&config_path)?;

        fs::create_dir_all(&self.dir).map_err(|source| HomeError::Io {
            action: "cannot create home directory",
            path: self.dir.clone(),
            source,
        })?;
        let keypair = if identity_path.exists() {
            self.load_identity()?
        } else {
            let keypair = Keypair::generate_ed25519();
            let bytes = keypair
                .to_protobuf_encoding()
                .map_err(|e| HomeError::BadIdentity {
                    path: identity_path.clone(),
                    message: e.to_string(),
                })?;
            write_atomically(&identity_path, &bytes, Some(0o600))?;
            keypair
        };
        if !token_path.exists() {
            let mut token = [0u8; TOKEN_BYTES];
            getrandom::fill(&mut token).map_err(|e| HomeError::Random(e.to_string()))?;
            write_atomically(&token_path, hex::encode(token).as_bytes(), Some(0o600))?;
        }
        if !config_path.exists() {
            write_atomically(&config_path, config::render(&raw).as_bytes(), Some(0o644))?;
        }
        Ok(InitOutcome::Created(keypair.public().to_peer_id()))
    }

    /// Fails with a helpful message unless `init` has run here.
    pub fn ensure_initialised(&self) -> Result<(), HomeError> {
        if self.config_path().exists() {
            Ok(())
        } else {
            Err(HomeError::NotInitialised {
                home: self.dir.clone(),
            })
        }
    }

    /// Loads the node's keypair.
    pub fn load_identity(&self) -> Result<Keypair, HomeError> {
        self.ensure_initialised()?;
        let path = self.identity_path();
        let bytes = read_secret(&path)?;
        Keypair::from_protobuf_encoding(&bytes).map_err(|e| HomeError::BadIdentity {
            path,
            message: e.to_string(),
        })
    }

    /// Loads the API bearer token.
    pub fn load_token(&self) -> Result<String, HomeError> {
        self.ensure_initialised()?;
        let path = self.token_path();
        let bytes = read_secret(&path)?;
        let token = String::from_utf8(bytes)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or(HomeError::BadToken { path })?;
        Ok(token)
    }

    /// Records where the API listens, for the CLI and scripts.
    pub fn write_api_addr(&self, addr: SocketAddr) -> Result<(), HomeError> {
        write_atomically(
            &self.api_addr_path(),
            addr.to_string().as_bytes(),
            Some(0o644),
        )
    }

    /// The address a running daemon wrote, if any.
    pub fn read_api_addr(&self) -> Option<SocketAddr> {
        fs::read_to_string(self.api_addr_path())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Removes the API address file at clean shutdown, so a stale one does not mislead.
    pub fn remove_api_addr(&self) {
        let _ = fs::remove_file(self.api_addr_path());
    }
}

fn read_secret(path: &Path) -> Result<Vec<u8>, HomeError> {
    let meta = fs::metadata(path).map_err(|source| HomeError::Io {
        action: "cannot read",
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(HomeError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    fs::read(path).map_err(|source| HomeError::Io {
        action: "cannot read",
        path: path.to_owned(),
        source,
    })
}

/// Writes `bytes` to `path` durably and atomically (see [`crate::atomic_write`]), naming the path in
/// the error.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<(), HomeError> {
    crate::atomic_write::write_atomically(path, bytes, mode).map_err(|source| HomeError::Io {
        action: "cannot write",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> InitOptions {
        InitOptions {
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            api: Some("127.0.0.1:0".into()),
            peers: vec![],
            no_mdns: true,
            name: None,
        }
    }

    #[test]
    fn init_creates_private_files_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("h"));
        let InitOutcome::Created(id) = home.init(&options()).unwrap() else {
            panic!("expected a new home")
        };
        for file in [home.identity_path(), home.token_path()] {
            let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
        let config_before = fs::read(home.config_path()).unwrap();
        assert_eq!(
            home.init(&InitOptions::default()).unwrap(),
            InitOutcome::AlreadyInitialised(id)
        );
        assert_eq!(fs::read(home.config_path()).unwrap(), config_before);
        assert_eq!(home.load_identity().unwrap().public().to_peer_id(), id);
        assert_eq!(home.load_token().unwrap().len(), TOKEN_BYTES * 2);
    }

    #[test]
    fn bad_flag_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("h"));
        let err = home
            .init(&InitOptions {
                peers: vec!["nonsense".into()],
                ..options()
            })
            .unwrap_err();
        assert!(err.to_string().contains("peers[0]"), "{err}");
        assert!(!home.dir().exists());
    }

    #[test]
    fn corrupt_or_exposed_identity_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        home.init(&options()).unwrap();
        fs::write(home.identity_path(), b"garbage").unwrap();
        let err = home.load_identity().unwrap_err().to_string();
        assert!(
            err.contains("corrupt") && err.contains("identity.key"),
            "{err}"
        );
        fs::set_permissions(home.identity_path(), fs::Permissions::from_mode(0o644)).unwrap();
        let err = home.load_identity().unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
