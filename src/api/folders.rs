//! Folder shares' safety nets over the control API: deciding for a share the mass-deletion
//! breaker holds, and listing and restoring kept versions.
//!
//! | method | path | body / query | answer |
//! |---|---|---|---|
//! | POST | `/v1/shares/{share}/resume` | `{"accept_deletes": true}` or `{"restore": true}` | `{"share", "resumed", "paths"}`; 400 if not held |
//! | POST | `/v1/shares/{share}/resume` | `{}` | resumes a paused share: `{"share", "paused": false, "changed"}` |
//! | GET | `/v1/shares/{share}/versions` | `?path=P` (optional) | `[{"path", "at", "size", "kept_at"}…]`, oldest first |
//! | POST | `/v1/shares/{share}/restore` | `{"path", "at"}` (`at`: RFC 3339, optional) | the version restored; 404 if none |

use std::path::PathBuf;
use std::time::SystemTime;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState};
use crate::folder::Resume;
use crate::folder::versions::{self, RestoreError, Version};
use crate::store::{ShareKind, StoreError};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/shares/{share}/resume", post(share_resume))
        .route("/v1/shares/{share}/versions", get(list_versions))
        .route("/v1/shares/{share}/restore", post(restore_version))
}

/// What the user decides for a share held by the mass-deletion breaker: exactly one is true.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ResumeRequest {
    /// Send the held deletes.
    #[serde(default)]
    pub accept_deletes: bool,
    /// Fetch the deleted files back from members.
    #[serde(default)]
    pub restore: bool,
}

async fn share_resume(
    State(state): State<ApiState>,
    Path(share): Path<String>,
    Json(request): Json<ResumeRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let choice = match (request.accept_deletes, request.restore) {
        (true, false) => Resume::AcceptDeletes,
        (false, true) => Resume::Restore,
        (false, false) => {
            // No breaker decision: resume a share the user paused.
            let changed = state.engine.set_paused(share.clone(), false).await?;
            return Ok(Json(serde_json::json!({
                "share": share,
                "paused": false,
                "changed": changed,
            })));
        }
        (true, true) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "say at most one of accept_deletes and restore",
            ));
        }
    };
    let paths = state.engine.resume(share.clone(), choice).await?;
    Ok(Json(serde_json::json!({
        "share": share,
        "resumed": if choice == Resume::AcceptDeletes { "accept-deletes" } else { "restore" },
        "paths": paths,
    })))
}

/// The folder of a folder share.
fn folder_root(state: &ApiState, share: &str) -> Result<PathBuf, ApiError> {
    let found = state.store.resolve(share)?;
    match (found.meta.kind, found.meta.path) {
        (ShareKind::Folder, Some(path)) => Ok(path),
        _ => Err(StoreError::WrongKind(share.to_owned()).into()),
    }
}

/// `?path=P`: only the versions of this path.
#[derive(Debug, Deserialize)]
struct VersionsQuery {
    path: Option<String>,
}

async fn list_versions(
    State(state): State<ApiState>,
    Path(share): Path<String>,
    Query(query): Query<VersionsQuery>,
) -> Result<Json<Vec<Version>>, ApiError> {
    let root = folder_root(&state, &share)?;
    let listed =
        tokio::task::spawn_blocking(move || versions::list(&root, query.path.as_deref())).await;
    listed
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Which version to put back.
#[derive(Debug, Serialize, Deserialize)]
pub struct RestoreRequest {
    /// The file's path in the folder.
    pub path: String,
    /// The newest version kept at or before this time (RFC 3339); without it, the newest.
    #[serde(default)]
    pub at: Option<String>,
}

async fn restore_version(
    State(state): State<ApiState>,
    Path(share): Path<String>,
    Json(request): Json<RestoreRequest>,
) -> Result<Json<Version>, ApiError> {
    let root = folder_root(&state, &share)?;
    let at = match &request.at {
        None => None,
        Some(text) => Some(parse_time(text)?),
    };
    let path = request.path;
    let restored = tokio::task::spawn_blocking(move || versions::restore(&root, &path, at))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match restored {
        Ok(version) => Ok(Json(version)),
        Err(e @ RestoreError::NoVersion { .. }) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}

fn parse_time(text: &str) -> Result<SystemTime, ApiError> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`{text}` is not an RFC 3339 time such as 2026-12-02T17:30:00Z ({e})"),
            )
        })
}
