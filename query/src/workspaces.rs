//! Members and agents of a workspace, each with the current profile of the account behind
//! it. Only members of the workspace may read them.

use accounts_platform::problem::internal_error;
use accounts_platform::{Problem, ProblemDetails};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{await_min_position, picture_url, AppState};

/// A member of a workspace with the member's current profile.
#[derive(Serialize, ToSchema)]
pub struct MemberView {
    pub account_id: Uuid,
    pub name: String,
    pub company_name: Option<String>,
    pub industry: Option<String>,
    pub picture_url: Option<String>,
}

/// The owner of an agent with the owner's current profile.
#[derive(Serialize, ToSchema)]
pub struct AgentOwner {
    pub account_id: Uuid,
    pub name: String,
    pub picture_url: Option<String>,
}

/// An agent of a workspace.
#[derive(Serialize, ToSchema)]
pub struct AgentView {
    pub agent_id: Uuid,
    pub name: String,
    pub owner: AgentOwner,
}

/// Checks the session and the caller's membership. Returns the workspace id.
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    workspace_id: &str,
) -> Result<Uuid, Problem> {
    let caller = state.auth.authenticate(headers).await?;
    await_min_position(state, headers).await?;
    tracing::Span::current().record("account_id", tracing::field::display(caller.account_id));
    let workspace_id = Uuid::parse_str(workspace_id).map_err(|_| {
        Problem::malformed(
            "workspace_id",
            "use the workspace_id that POST /v1/workspaces returned",
        )
    })?;
    let (exists, member): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM workspaces WHERE workspace_id = $1), \
         EXISTS (SELECT 1 FROM workspace_members WHERE workspace_id = $1 AND account_id = $2)",
    )
    .bind(workspace_id)
    .bind(caller.account_id)
    .fetch_one(&state.pool)
    .await
    .map_err(|error| {
        internal_error(&anyhow::Error::new(error).context("failed to check membership"))
    })?;
    match (exists, member) {
        (false, _) => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "workspace_not_found",
            "no workspace has this id",
        )),
        (true, false) => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "not_workspace_member",
            "only members of the workspace may read it",
        )),
        (true, true) => Ok(workspace_id),
    }
}

type MemberRow = (Uuid, String, Option<String>, Option<String>, Option<String>);

/// Lists the members of a workspace with their current profiles, in the order they joined.
#[utoipa::path(get, path = "/v1/workspaces/{workspace_id}/members", tag = "workspaces", params(
    ("workspace_id" = Uuid, Path),
    ("X-Min-Position" = Option<String>, Header, description = "wait up to 2 s until the read models include this position"),
), responses(
    (status = 200, body = Vec<MemberView>), (status = 401, body = ProblemDetails),
    (status = 403, body = ProblemDetails, description = "not_workspace_member"),
    (status = 404, body = ProblemDetails, description = "workspace_not_found"),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub(crate) async fn list_members(
    State(state): State<AppState>,
    Path(workspace_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Vec<MemberView>>, Problem> {
    let workspace_id = authorize(&state, &headers, &workspace_id).await?;
    let rows: Vec<MemberRow> = sqlx::query_as(
        "SELECT a.account_id, a.name, a.company_name, a.industry, a.picture_sha256 \
         FROM workspace_members m JOIN accounts a USING (account_id) \
         WHERE m.workspace_id = $1 ORDER BY m.added_at, a.account_id",
    )
    .bind(workspace_id)
    .fetch_all(&state.pool)
    .await
    .map_err(|error| {
        internal_error(&anyhow::Error::new(error).context("failed to list members"))
    })?;
    Ok(Json(
        rows.into_iter()
            .map(
                |(account_id, name, company_name, industry, picture)| MemberView {
                    account_id,
                    name,
                    company_name,
                    industry,
                    picture_url: picture.as_deref().map(picture_url),
                },
            )
            .collect(),
    ))
}

type AgentRow = (Uuid, String, Uuid, String, Option<String>);

/// Lists the agents of a workspace with the current profile of each owner.
#[utoipa::path(get, path = "/v1/workspaces/{workspace_id}/agents", tag = "workspaces", params(
    ("workspace_id" = Uuid, Path),
    ("X-Min-Position" = Option<String>, Header, description = "wait up to 2 s until the read models include this position"),
), responses(
    (status = 200, body = Vec<AgentView>), (status = 401, body = ProblemDetails),
    (status = 403, body = ProblemDetails, description = "not_workspace_member"),
    (status = 404, body = ProblemDetails, description = "workspace_not_found"),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub(crate) async fn list_agents(
    State(state): State<AppState>,
    Path(workspace_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Vec<AgentView>>, Problem> {
    let workspace_id = authorize(&state, &headers, &workspace_id).await?;
    let rows: Vec<AgentRow> = sqlx::query_as(
        "SELECT g.agent_id, g.name, a.account_id, a.name, a.picture_sha256 \
         FROM agents g JOIN accounts a ON a.account_id = g.owner_id \
         WHERE g.workspace_id = $1 ORDER BY g.created_at, g.agent_id",
    )
    .bind(workspace_id)
    .fetch_all(&state.pool)
    .await
    .map_err(|error| internal_error(&anyhow::Error::new(error).context("failed to list agents")))?;
    Ok(Json(
        rows.into_iter()
            .map(
                |(agent_id, name, owner_id, owner_name, picture)| AgentView {
                    agent_id,
                    name,
                    owner: AgentOwner {
                        account_id: owner_id,
                        name: owner_name,
                        picture_url: picture.as_deref().map(picture_url),
                    },
                },
            )
            .collect(),
    ))
}
