//! Workspaces, their members and their agents.
//!
//! Each workspace is an aggregate (`workspace:<id>`) decided on its own partition. Its
//! members and agents are read through the query service together with the current profile
//! of each member and owner.

use std::net::SocketAddr;

use accounts_events::{ActorKind, AggregateId};
use accounts_platform::problem::internal_error;
use accounts_platform::{Problem, ProblemDetails};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::domain::DisplayName;
use crate::http::{
    accepted_status, actor, command_id, idempotency_key, read_json, with_etag, AppState,
    CommandResponse, Executed,
};
use crate::wire::Command;

#[derive(OpenApi)]
#[openapi(
    paths(
        create_workspace,
        add_member,
        remove_member,
        create_agent,
        delete_agent
    ),
    components(schemas(NameRequest, AddMemberRequest, WorkspaceCreated, AgentCreatedResponse))
)]
pub struct WorkspaceApi;

/// Returns the routes of this module.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/workspaces", post(create_workspace))
        .route("/v1/workspaces/{workspace_id}/members", post(add_member))
        .route(
            "/v1/workspaces/{workspace_id}/members/{account_id}",
            delete(remove_member),
        )
        .route("/v1/workspaces/{workspace_id}/agents", post(create_agent))
        .route("/v1/agents/{agent_id}", delete(delete_agent))
        .with_state(state)
}

/// Body of `POST /v1/workspaces` and `POST /v1/workspaces/{id}/agents`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NameRequest {
    pub name: String,
}

/// Body of `POST /v1/workspaces/{id}/members`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    pub account_id: String,
}

#[derive(Serialize, ToSchema)]
pub struct WorkspaceCreated {
    pub workspace_id: Uuid,
    pub version: u64,
    pub position: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AgentCreatedResponse {
    pub agent_id: Uuid,
    pub version: u64,
    pub position: Option<String>,
}

fn parse_id(field: &str, value: &str, hint: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(value).map_err(|_| Problem::malformed(field, hint))
}

/// Returns the id of a new workspace or agent. With an `Idempotency-Key` it derives from the
/// caller and the key, so a retry addresses the same aggregate and gets the first outcome.
fn new_id(caller: Uuid, kind: &str, key: Option<&str>) -> Uuid {
    match key {
        Some(key) => Uuid::new_v5(&caller, format!("{kind}:{key}").as_bytes()),
        None => Uuid::now_v7(),
    }
}

async fn run(
    state: &AppState,
    caller: Uuid,
    workspace_id: Uuid,
    command: Command,
    key: Option<&str>,
    address: SocketAddr,
    headers: &HeaderMap,
) -> Result<Executed, Problem> {
    let id = command_id(&workspace_id.to_string(), command.kind(), key);
    let actor = actor(
        ActorKind::Account,
        Some(caller.to_string()),
        address,
        headers,
    );
    state
        .execute(
            AggregateId::Workspace(workspace_id),
            id,
            None,
            actor,
            command,
        )
        .await
}

/// Creates a workspace; the caller becomes its owner and first member.
#[utoipa::path(post, path = "/v1/workspaces", tag = "workspaces", request_body = NameRequest, params(
    ("Idempotency-Key" = Option<String>, Header, description = "makes a retry return the first outcome"),
), responses(
    (status = 201, body = WorkspaceCreated), (status = 400, body = ProblemDetails),
    (status = 401, body = ProblemDetails), (status = 422, body = ProblemDetails),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn create_workspace(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?.account_id;
    tracing::Span::current().record("account_id", tracing::field::display(caller));
    let request: NameRequest = read_json(&headers, body).await?;
    let key = idempotency_key(&headers)?;
    let name = DisplayName::parse("name", &request.name)
        .map_err(|error| Problem::validation(vec![error]))?;
    let workspace_id = new_id(caller, "workspace", key.as_deref());
    let command = Command::CreateWorkspace {
        workspace_id,
        owner_id: caller,
        name: name.into_inner(),
    };
    let executed = run(
        &state,
        caller,
        workspace_id,
        command,
        key.as_deref(),
        address,
        &headers,
    )
    .await?;
    let body = WorkspaceCreated {
        workspace_id,
        version: executed.version,
        position: executed.position.clone(),
    };
    Ok(with_etag(
        (accepted_status(&executed, StatusCode::CREATED), Json(body)).into_response(),
        executed.version,
    ))
}

/// Adds an account to the workspace. Only the owner may.
#[utoipa::path(post, path = "/v1/workspaces/{workspace_id}/members", tag = "workspaces", request_body = AddMemberRequest,
    params(("workspace_id" = Uuid, Path)), responses(
    (status = 200, body = CommandResponse), (status = 400, body = ProblemDetails), (status = 401, body = ProblemDetails),
    (status = 403, body = ProblemDetails, description = "not_workspace_owner"),
    (status = 404, body = ProblemDetails, description = "workspace_not_found or account_not_found"),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn add_member(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    Path(workspace_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?.account_id;
    tracing::Span::current().record("account_id", tracing::field::display(caller));
    let workspace_id = parse_id(
        "workspace_id",
        &workspace_id,
        "use the workspace_id that POST /v1/workspaces returned",
    )?;
    let request: AddMemberRequest = read_json(&headers, body).await?;
    let key = idempotency_key(&headers)?;
    let account_id = Uuid::parse_str(request.account_id.trim()).map_err(|_| {
        Problem::validation(vec![accounts_platform::FieldError {
            field: "account_id".into(),
            code: "invalid_account_id".into(),
            message: "use the account_id of a registered account".into(),
        }])
    })?;
    let known: Option<Uuid> =
        sqlx::query_scalar("SELECT account_id FROM accounts WHERE account_id = $1")
            .bind(account_id)
            .fetch_optional(&state.pool)
            .await
            .map_err(|error| {
                internal_error(&anyhow::Error::new(error).context("failed to look up the account"))
            })?;
    if known.is_none() {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "account_not_found",
            "no account has this account_id",
        ));
    }
    let command = Command::AddWorkspaceMember {
        workspace_id,
        actor_id: caller,
        account_id,
    };
    let executed = run(
        &state,
        caller,
        workspace_id,
        command,
        key.as_deref(),
        address,
        &headers,
    )
    .await?;
    Ok(crate::http::command_reply(&executed, StatusCode::OK))
}

/// Removes a member. The owner may remove others, and a member may leave.
#[utoipa::path(delete, path = "/v1/workspaces/{workspace_id}/members/{account_id}", tag = "workspaces",
    params(("workspace_id" = Uuid, Path), ("account_id" = Uuid, Path)), responses(
    (status = 204, description = "the account is no longer a member"), (status = 400, body = ProblemDetails),
    (status = 401, body = ProblemDetails), (status = 403, body = ProblemDetails, description = "not_workspace_owner"),
    (status = 404, body = ProblemDetails, description = "workspace_not_found or member_not_found"),
    (status = 409, body = ProblemDetails, description = "owner_cannot_leave"),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn remove_member(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    Path((workspace_id, account_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?.account_id;
    tracing::Span::current().record("account_id", tracing::field::display(caller));
    let workspace_id = parse_id(
        "workspace_id",
        &workspace_id,
        "use the workspace_id that POST /v1/workspaces returned",
    )?;
    let account_id = parse_id("account_id", &account_id, "use the account_id of a member")?;
    let command = Command::RemoveWorkspaceMember {
        workspace_id,
        actor_id: caller,
        account_id,
    };
    let executed = run(
        &state,
        caller,
        workspace_id,
        command,
        None,
        address,
        &headers,
    )
    .await?;
    Ok(accepted_status(&executed, StatusCode::NO_CONTENT).into_response())
}

/// Creates an agent in the workspace, owned by the caller, who must be a member.
#[utoipa::path(post, path = "/v1/workspaces/{workspace_id}/agents", tag = "workspaces", request_body = NameRequest,
    params(("workspace_id" = Uuid, Path),
    ("Idempotency-Key" = Option<String>, Header, description = "makes a retry return the first outcome")), responses(
    (status = 201, body = AgentCreatedResponse), (status = 400, body = ProblemDetails), (status = 401, body = ProblemDetails),
    (status = 403, body = ProblemDetails, description = "not_workspace_member"),
    (status = 404, body = ProblemDetails, description = "workspace_not_found"), (status = 422, body = ProblemDetails),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn create_agent(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    Path(workspace_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?.account_id;
    tracing::Span::current().record("account_id", tracing::field::display(caller));
    let workspace_id = parse_id(
        "workspace_id",
        &workspace_id,
        "use the workspace_id that POST /v1/workspaces returned",
    )?;
    let request: NameRequest = read_json(&headers, body).await?;
    let key = idempotency_key(&headers)?;
    let name = DisplayName::parse("name", &request.name)
        .map_err(|error| Problem::validation(vec![error]))?;
    let agent_id = new_id(caller, "agent", key.as_deref());
    let command = Command::CreateAgent {
        workspace_id,
        actor_id: caller,
        agent_id,
        name: name.into_inner(),
    };
    let executed = run(
        &state,
        caller,
        workspace_id,
        command,
        key.as_deref(),
        address,
        &headers,
    )
    .await?;
    let body = AgentCreatedResponse {
        agent_id,
        version: executed.version,
        position: executed.position.clone(),
    };
    Ok(with_etag(
        (accepted_status(&executed, StatusCode::CREATED), Json(body)).into_response(),
        executed.version,
    ))
}

/// Deletes an agent. Its owner or the workspace owner may.
#[utoipa::path(delete, path = "/v1/agents/{agent_id}", tag = "workspaces", params(("agent_id" = Uuid, Path)), responses(
    (status = 204, description = "the agent is deleted"), (status = 400, body = ProblemDetails),
    (status = 401, body = ProblemDetails), (status = 403, body = ProblemDetails, description = "not_workspace_owner"),
    (status = 404, body = ProblemDetails, description = "agent_not_found"),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn delete_agent(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?.account_id;
    tracing::Span::current().record("account_id", tracing::field::display(caller));
    let agent_id = parse_id(
        "agent_id",
        &agent_id,
        "use an agent_id from GET /v1/workspaces/{id}/agents",
    )?;
    let workspace_id: Option<Uuid> =
        sqlx::query_scalar("SELECT workspace_id FROM agents WHERE agent_id = $1")
            .bind(agent_id)
            .fetch_optional(&state.pool)
            .await
            .map_err(|error| {
                internal_error(&anyhow::Error::new(error).context("failed to look up the agent"))
            })?;
    let workspace_id = workspace_id.ok_or_else(|| {
        crate::http::rejection_problem(&crate::decider::Rejection::AgentNotFound, Uuid::nil())
    })?;
    let command = Command::DeleteAgent {
        workspace_id,
        actor_id: caller,
        agent_id,
    };
    let executed = run(
        &state,
        caller,
        workspace_id,
        command,
        None,
        address,
        &headers,
    )
    .await?;
    Ok(accepted_status(&executed, StatusCode::NO_CONTENT).into_response())
}
