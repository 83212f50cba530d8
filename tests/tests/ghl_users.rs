//! A location's GHL users, end to end with the real binary against the fake GHL: given a
//! location connected with a Private Integration Token and its company id, the assignment
//! service lists the location's GHL users within seconds, and a user deleted in GHL shows as
//! inactive after the next refresh.

use std::path::Path;

use whatsnap_proto::assignment::v1 as assignment;
use whatsnap_proto::ghlsync::v1 as ghlsync;
use whatsnap_testkit::Channel;
use whatsnap_testkit::{FakeGhl, FakeGhlUser, Whatsnap, eventually};

const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const LOCATION: &str = "locUsers";

fn user(id: &str, name: &str, deleted: bool) -> FakeGhlUser {
    FakeGhlUser {
        id: id.into(),
        name: name.into(),
        email: format!("{id}@example.com"),
        role: "user".into(),
        deleted,
    }
}

/// The users `ListUsers` shows, as (id, active), in its order.
async fn listed(channel: &Channel) -> Vec<(String, bool)> {
    let request = assignment::ListUsersRequest {
        location_id: LOCATION.into(),
    };
    assignment::assignment_service_client::AssignmentServiceClient::new(channel.clone())
        .list_users(request)
        .await
        .map(|r| r.into_inner().users)
        .unwrap_or_default()
        .into_iter()
        .map(|u| (u.user_id, u.active))
        .collect()
}

#[tokio::test]
async fn ghl_users_are_listed_and_a_user_deleted_in_ghl_becomes_inactive() {
    let ghl = FakeGhl::start().await.unwrap();
    ghl.add_user(LOCATION, user("userAna", "Ana Lima", false));
    ghl.add_user(LOCATION, user("userBruno", "Bruno Souza", false));
    let data = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--data-dir",
        data.path().to_str().unwrap(),
        "--secret-key",
        SECRET_KEY,
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--ghl-api-url",
        &ghl.base_url(),
        "--ghl-users-refresh",
        "1",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let binary = Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"));
    let whatsnap = Whatsnap::serve(binary, &args, "ghl_users").unwrap();
    let channel = whatsnap.channel().await;

    let token = "pit-users-0000-0000";
    ghl.add_private_token(LOCATION, token);
    ghlsync::ghl_sync_service_client::GhlSyncServiceClient::new(channel.clone())
        .connect_private_token(ghlsync::ConnectPrivateTokenRequest {
            location_id: LOCATION.into(),
            token: token.into(),
            company_id: FakeGhl::COMPANY_ID.into(),
        })
        .await
        .unwrap();

    let mut users = eventually("both GHL users listed", async || {
        let users = listed(&channel).await;
        (users.len() == 2).then_some(users)
    })
    .await;
    users.sort();
    assert_eq!(
        users,
        [("userAna".to_owned(), true), ("userBruno".to_owned(), true)]
    );
    let search = ghl
        .requests()
        .into_iter()
        .find(|r| r.path == "/users/search")
        .unwrap();
    assert_eq!(search.query_param("companyId"), Some(FakeGhl::COMPANY_ID));
    assert_eq!(search.query_param("locationId"), Some(LOCATION));

    // Bruno is deleted in GHL; the next listing marks him inactive, and Ana stays active.
    ghl.add_user(LOCATION, user("userBruno", "Bruno Souza", true));
    let mut users = eventually("Bruno inactive", async || {
        let users = listed(&channel).await;
        users
            .iter()
            .any(|(id, active)| id == "userBruno" && !active)
            .then_some(users)
    })
    .await;
    users.sort();
    assert_eq!(
        users,
        [
            ("userAna".to_owned(), true),
            ("userBruno".to_owned(), false)
        ]
    );
}
