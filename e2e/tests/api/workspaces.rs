//! Workspaces, members and agents, and how profile changes reach them.

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app, TestApp, User};

async fn create_workspace(app: &TestApp, owner: &User, name: &str) -> Uuid {
    let response = app
        .post("/v1/workspaces", Some(&owner.token), &json!({"name": name}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json::<Value>().await.unwrap()["workspace_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn add_member(app: &TestApp, owner: &User, workspace: Uuid, member: &User) -> StatusCode {
    app.post(
        &format!("/v1/workspaces/{workspace}/members"),
        Some(&owner.token),
        &json!({"account_id": member.account_id}),
    )
    .await
    .status()
}

async fn create_agent(app: &TestApp, owner: &User, workspace: Uuid, name: &str) -> Uuid {
    let response = app
        .post(
            &format!("/v1/workspaces/{workspace}/agents"),
            Some(&owner.token),
            &json!({"name": name}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json::<Value>().await.unwrap()["agent_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn view(app: &TestApp, reader: &User, workspace: Uuid, list: &str) -> (StatusCode, Value) {
    let response = app
        .http
        .get(format!(
            "{}/v1/workspaces/{workspace}/{list}",
            app.query_url
        ))
        .bearer_auth(&reader.token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn entry_of(list: &Value, account_id: Uuid) -> Option<&Value> {
    list.as_array()?
        .iter()
        .find(|entry| entry["account_id"] == account_id.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn profile_changes_reach_every_workspace_and_agent() {
    let app = spawn_app(2).await;
    let (user, alice, bob) = (
        app.new_user().await,
        app.new_user().await,
        app.new_user().await,
    );
    let own = create_workspace(&app, &user, "Own workspace").await;
    let at_alice = create_workspace(&app, &alice, "Alice's workspace").await;
    let at_bob = create_workspace(&app, &bob, "Bob's workspace").await;
    assert_eq!(
        add_member(&app, &alice, at_alice, &user).await,
        StatusCode::OK
    );
    assert_eq!(add_member(&app, &bob, at_bob, &user).await, StatusCode::OK);
    let workspaces = [own, at_alice, at_bob];
    create_agent(&app, &user, own, "Support agent").await;
    create_agent(&app, &user, at_alice, "Sales agent").await;

    let renamed = app
        .patch_profile(&user, &json!({"name": "Renamed Person"}))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), StatusCode::OK);
    let picture = crate::picture::upload(&app, &user, "image/png", {
        let image = image::DynamicImage::ImageRgb8(image::RgbImage::new(64, 64));
        let mut bytes = std::io::Cursor::new(Vec::new());
        image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
        bytes.into_inner()
    })
    .await;
    assert_eq!(picture.status(), StatusCode::OK);
    let picture_url = picture.json::<Value>().await.unwrap()["picture_url"].clone();

    // No waiting: each response above returned once the read models showed the change.
    for workspace in workspaces {
        let (status, members) = view(&app, &user, workspace, "members").await;
        assert_eq!(status, StatusCode::OK);
        let entry = entry_of(&members, user.account_id).expect("the user is listed");
        assert_eq!(entry["name"], "Renamed Person");
        assert_eq!(entry["picture_url"], picture_url);
    }
    for workspace in [own, at_alice] {
        let (status, agents) = view(&app, &user, workspace, "agents").await;
        assert_eq!(status, StatusCode::OK);
        let agents = agents.as_array().unwrap();
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0]["owner"]["name"], "Renamed Person");
        assert_eq!(agents[0]["owner"]["picture_url"], picture_url);
    }

    // Removal takes the user, and the user's agents, out of that workspace only.
    let removed = app
        .http
        .delete(format!(
            "{}/v1/workspaces/{at_alice}/members/{}",
            app.command_url, user.account_id
        ))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    let (_, members) = view(&app, &alice, at_alice, "members").await;
    assert!(entry_of(&members, user.account_id).is_none(), "{members}");
    let (_, agents) = view(&app, &alice, at_alice, "agents").await;
    assert_eq!(agents, json!([]));
    let (status, _) = view(&app, &user, at_alice, "members").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, members) = view(&app, &bob, at_bob, "members").await;
    assert!(entry_of(&members, user.account_id).is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn workspace_rules_are_enforced() {
    let app = spawn_app(1).await;
    let (owner, member, stranger) = (
        app.new_user().await,
        app.new_user().await,
        app.new_user().await,
    );
    let workspace = create_workspace(&app, &owner, "Rules").await;
    assert_eq!(
        add_member(&app, &owner, workspace, &member).await,
        StatusCode::OK
    );

    assert_eq!(
        add_member(&app, &member, workspace, &stranger).await,
        StatusCode::FORBIDDEN
    );
    let (status, _) = view(&app, &stranger, workspace, "members").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let agent_by_stranger = app
        .post(
            &format!("/v1/workspaces/{workspace}/agents"),
            Some(&stranger.token),
            &json!({"name": "Intruder"}),
        )
        .await;
    assert_eq!(agent_by_stranger.status(), StatusCode::FORBIDDEN);
    let missing = Uuid::now_v7();
    let (status, _) = view(&app, &owner, missing, "members").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        add_member(&app, &owner, missing, &member).await,
        StatusCode::NOT_FOUND
    );

    let agent = create_agent(&app, &owner, workspace, "Owner's agent").await;
    let by_member = app
        .http
        .delete(format!("{}/v1/agents/{agent}", app.command_url))
        .bearer_auth(&member.token)
        .send()
        .await
        .unwrap();
    assert_eq!(by_member.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        by_member.json::<Value>().await.unwrap()["code"],
        "not_agent_owner"
    );
    let by_owner = app
        .http
        .delete(format!("{}/v1/agents/{agent}", app.command_url))
        .bearer_auth(&owner.token)
        .send()
        .await
        .unwrap();
    assert_eq!(by_owner.status(), StatusCode::NO_CONTENT);
    let again = app
        .http
        .delete(format!("{}/v1/agents/{agent}", app.command_url))
        .bearer_auth(&owner.token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);

    let owner_leaves = app
        .http
        .delete(format!(
            "{}/v1/workspaces/{workspace}/members/{}",
            app.command_url, owner.account_id
        ))
        .bearer_auth(&owner.token)
        .send()
        .await
        .unwrap();
    assert_eq!(owner_leaves.status(), StatusCode::CONFLICT);
    let empty_name = app
        .post("/v1/workspaces", Some(&owner.token), &json!({"name": "  "}))
        .await;
    assert_eq!(empty_name.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        empty_name.json::<Value>().await.unwrap()["errors"][0]["field"],
        "name"
    );
}
