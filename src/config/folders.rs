//! The folder shares' settings: the mass-deletion breaker, the free-space floor and the
//! versions policy, each global with per-share overrides (`[shares."NAME"]`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The mass-deletion breaker holds a folder that would delete more than this percentage of its
/// files...
pub const DEFAULT_BREAKER_PERCENT: u8 = 50;
/// ... and more than this many.
pub const DEFAULT_BREAKER_MIN_FILES: u64 = 100;
/// Versions are kept this many days...
pub const DEFAULT_VERSIONS_DAYS: u32 = 30;
/// ... and take at most this percentage of the file system.
pub const DEFAULT_VERSIONS_PERCENT: u8 = 10;

/// When a folder share's local deletes are too many to send without asking: more than
/// `percent` % of its entries *and* more than `min_files` of them (see `folder::breaker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerLimit {
    /// 0–100; 100 turns the breaker off.
    pub percent: u8,
    /// Deletes up to this many never trip it.
    pub min_files: u64,
}

/// How much space a folder's file system must keep free: no download starts that would go below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinFreeDisk {
    /// 1 % of the file system or 1 GiB, whichever is smaller.
    Default,
    /// This percentage of the file system's size.
    Percent(u8),
    /// This many bytes.
    Bytes(u64),
}

impl MinFreeDisk {
    /// Parses `""` (the default), `"5%"`, or a size: `"500 MiB"`, `"2GiB"`, `"1048576"` (bytes;
    /// units B, KiB, MiB, GiB, TiB, and KB, MB, GB, TB as powers of 1,000).
    pub fn parse(text: &str) -> Result<MinFreeDisk, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(MinFreeDisk::Default);
        }
        if let Some(number) = text.strip_suffix('%') {
            return match number.trim().parse::<u8>() {
                Ok(p) if p <= 100 => Ok(MinFreeDisk::Percent(p)),
                _ => Err(format!("`{text}` is not a percentage (0–100 %)")),
            };
        }
        super::size::parse_bytes(text)
            .map(MinFreeDisk::Bytes)
            .map_err(|e| format!("{e}, or a percentage such as \"5%\""))
    }

    /// The bytes to keep free on a file system of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            MinFreeDisk::Default => (total / 100).min(1 << 30),
            MinFreeDisk::Percent(p) => total / 100 * u64::from(p),
            MinFreeDisk::Bytes(n) => n,
        }
    }
}

/// What a folder keeps of files that peers' changes deleted or replaced (`folder::versions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionsKind {
    /// Nothing, beyond the next cleanup (up to a minute, for renames to reuse the content).
    None,
    /// Everything, for an hour.
    Trash,
    /// Everything, up to the age and size limits.
    Simple,
    /// Every version of the last hour, one per hour for a day, then one per day; up to the
    /// age and size limits.
    Staggered,
}

/// A folder's versions policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionsPolicy {
    /// What is kept.
    pub kind: VersionsKind,
    /// Versions older than this go (`simple`, `staggered`).
    pub max_age: std::time::Duration,
    /// Versions together at most this percentage of the file system; the oldest go first.
    pub max_percent: u8,
}

/// Settings of one share, under `[shares."NAME"]`; each key overrides the global one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShareSettings {
    /// See [`RawConfig::breaker_percent`].
    pub breaker_percent: Option<u8>,
    /// See [`RawConfig::breaker_min_files`].
    pub breaker_min_files: Option<u64>,
    /// See [`RawConfig::breaker_remote`].
    pub breaker_remote: Option<bool>,
    /// See [`RawConfig::min_free_disk`].
    pub min_free_disk: Option<String>,
    /// See [`RawConfig::versions`].
    pub versions: Option<VersionsKind>,
    /// See [`RawConfig::versions_max_age_days`].
    pub versions_max_age_days: Option<u32>,
    /// See [`RawConfig::versions_max_percent`].
    pub versions_max_percent: Option<u8>,
}

/// The folder settings the daemon runs with: global values and per-share overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderSettings {
    pub(super) breaker: BreakerLimit,
    pub(super) breaker_remote: bool,
    pub(super) min_free_disk: MinFreeDisk,
    pub(super) versions: VersionsPolicy,
    pub(super) shares: BTreeMap<String, RawShareSettings>,
    /// This device's name, which our conflict copies are named after.
    pub(super) device_name: Option<String>,
}

impl Default for FolderSettings {
    fn default() -> Self {
        Self {
            breaker: BreakerLimit {
                percent: DEFAULT_BREAKER_PERCENT,
                min_files: DEFAULT_BREAKER_MIN_FILES,
            },
            min_free_disk: MinFreeDisk::Default,
            breaker_remote: false,
            versions: VersionsPolicy {
                kind: VersionsKind::Simple,
                max_age: std::time::Duration::from_secs(86_400 * u64::from(DEFAULT_VERSIONS_DAYS)),
                max_percent: DEFAULT_VERSIONS_PERCENT,
            },
            shares: BTreeMap::new(),
            device_name: None,
        }
    }
}

impl FolderSettings {
    /// This device's name (`name` in the config), if it has one.
    pub fn device_name(&self) -> Option<&str> {
        self.device_name.as_deref()
    }

    /// Whether peers' mass deletes are held too in the share named `share`.
    pub fn breaker_remote_for(&self, share: &str) -> bool {
        self.shares
            .get(share)
            .and_then(|s| s.breaker_remote)
            .unwrap_or(self.breaker_remote)
    }

    /// The versions policy of the share named `share`.
    pub fn versions_for(&self, share: &str) -> VersionsPolicy {
        let own = self.shares.get(share);
        VersionsPolicy {
            kind: own.and_then(|s| s.versions).unwrap_or(self.versions.kind),
            max_age: own
                .and_then(|s| s.versions_max_age_days)
                .map_or(self.versions.max_age, |days| {
                    std::time::Duration::from_secs(86_400 * u64::from(days))
                }),
            max_percent: own
                .and_then(|s| s.versions_max_percent)
                .unwrap_or(self.versions.max_percent),
        }
    }

    /// The space to keep free for the share named `share` (checked valid at load).
    pub fn min_free_disk_for(&self, share: &str) -> MinFreeDisk {
        self.shares
            .get(share)
            .and_then(|s| s.min_free_disk.as_deref())
            .and_then(|text| MinFreeDisk::parse(text).ok())
            .unwrap_or(self.min_free_disk)
    }

    /// The breaker's limit for the share named `share`.
    pub fn breaker_for(&self, share: &str) -> BreakerLimit {
        let own = self.shares.get(share);
        BreakerLimit {
            percent: own
                .and_then(|s| s.breaker_percent)
                .unwrap_or(self.breaker.percent),
            min_files: own
                .and_then(|s| s.breaker_min_files)
                .unwrap_or(self.breaker.min_files),
        }
    }
}

pub(super) fn kind_name(kind: VersionsKind) -> &'static str {
    match kind {
        VersionsKind::None => "none",
        VersionsKind::Trash => "trash",
        VersionsKind::Simple => "simple",
        VersionsKind::Staggered => "staggered",
    }
}

/// The `[shares."NAME"]` tables, keys as set.
pub(super) fn render_shares(shares: &BTreeMap<String, RawShareSettings>) -> String {
    let mut out = String::new();
    for (name, settings) in shares {
        out.push_str(&format!(
            "\n[shares.{}]\n",
            toml::Value::String(name.clone())
        ));
        if let Some(percent) = settings.breaker_percent {
            out.push_str(&format!("breaker_percent = {percent}\n"));
        }
        if let Some(min_files) = settings.breaker_min_files {
            out.push_str(&format!("breaker_min_files = {min_files}\n"));
        }
        if let Some(on) = settings.breaker_remote {
            out.push_str(&format!("breaker_remote = {on}\n"));
        }
        if let Some(kind) = settings.versions {
            out.push_str(&format!("versions = \"{}\"\n", kind_name(kind)));
        }
        if let Some(days) = settings.versions_max_age_days {
            out.push_str(&format!("versions_max_age_days = {days}\n"));
        }
        if let Some(percent) = settings.versions_max_percent {
            out.push_str(&format!("versions_max_percent = {percent}\n"));
        }
        if let Some(min_free) = &settings.min_free_disk {
            out.push_str(&format!(
                "min_free_disk = {}\n",
                toml::Value::String(min_free.clone())
            ));
        }
    }
    out
}
