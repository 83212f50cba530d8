//! The gRPC front door in a split deployment: the gateway answers every service's API and
//! forwards the calls of services that run in other processes.

use tonic::{Request, Response, Status};
use whatsnap_auth::AuthedChannel as Channel;
use whatsnap_proto::assignment::v1 as assignment;
use whatsnap_proto::contacts::v1 as contacts;
use whatsnap_proto::ghlsync::v1 as ghlsync;
use whatsnap_proto::session::v1 as session;

/// A service that runs in another process, reached over `channel`.
#[derive(Clone)]
pub struct Remote {
    channel: Channel,
}

impl Remote {
    pub fn new(channel: Channel) -> Self {
        Self { channel }
    }
}

/// The message of `request` in a new request, in the trace of this call, with its caller's
/// credential: the service that answers checks it too.
fn onward<T>(request: Request<T>) -> Request<T> {
    let credential = request.metadata().get("authorization").cloned();
    let mut onward = Request::new(request.into_inner());
    if let Some(credential) = credential {
        onward.metadata_mut().insert("authorization", credential);
    }
    whatsnap_telemetry::inject(&mut onward);
    onward
}

macro_rules! forward {
    ($trait:path, $client:ty {
        $($method:ident($req:ty) -> $resp:ty;)*
    } $(streams {
        $($smethod:ident($sreq:ty) -> $stream:ident of $sresp:ty;)*
    })?) => {
        #[tonic::async_trait]
        impl $trait for Remote {
            $(
                async fn $method(&self, request: Request<$req>) -> Result<Response<$resp>, Status> {
                    <$client>::new(self.channel.clone()).$method(onward(request)).await
                }
            )*
            $($(
                type $stream = tonic::codec::Streaming<$sresp>;

                async fn $smethod(&self, request: Request<$sreq>) -> Result<Response<Self::$stream>, Status> {
                    <$client>::new(self.channel.clone()).$smethod(onward(request)).await
                }
            )*)?
        }
    };
}

forward!(session::session_service_server::SessionService, session::session_service_client::SessionServiceClient<Channel> {
    add_account(session::AddAccountRequest) -> session::Account;
    get_account(session::GetAccountRequest) -> session::Account;
    list_accounts(session::ListAccountsRequest) -> session::ListAccountsResponse;
    remove_account(session::RemoveAccountRequest) -> session::Account;
    disconnect_account(session::DisconnectAccountRequest) -> session::Account;
    update_account_credentials(session::UpdateAccountCredentialsRequest) -> session::Account;
    record_inbound_message(session::RecordInboundMessageRequest) -> session::RecordInboundMessageResponse;
    request_outbound_message(session::RequestOutboundMessageRequest) -> session::RequestOutboundMessageResponse;
    record_delivery_status(session::RecordDeliveryStatusRequest) -> session::RecordDeliveryStatusResponse;
    connect_account(session::ConnectAccountRequest) -> session::Account;
    record_connector_webhook(session::ConnectorWebhookRequest) -> session::ConnectorWebhookResponse;
    set_pacing(session::SetPacingRequest) -> session::Account;
    rename_account(session::RenameAccountRequest) -> session::Account;
    set_engine(session::SetEngineRequest) -> session::Account;
    get_pairing(session::GetAccountRequest) -> session::DevicePairing;
    verify_twilio_webhook(session::VerifyTwilioWebhookRequest) -> session::VerifyTwilioWebhookResponse;
} streams {
    watch_account(session::WatchAccountRequest) -> WatchAccountStream of session::AccountUpdate;
});

forward!(contacts::contacts_service_server::ContactsService, contacts::contacts_service_client::ContactsServiceClient<Channel> {
    get_contact(contacts::GetContactRequest) -> contacts::Contact;
    list_contacts(contacts::ListContactsRequest) -> contacts::ListContactsResponse;
    count_tags(contacts::CountTagsRequest) -> contacts::TagCounts;
    resolve_route(contacts::ResolveRouteRequest) -> contacts::Route;
    tag_contact(contacts::TagContactRequest) -> contacts::Contact;
    apply_ghl_tags(contacts::ApplyGhlTagsRequest) -> contacts::Contact;
    erase_contact(contacts::EraseContactRequest) -> contacts::EraseContactResponse;
});

forward!(assignment::assignment_service_server::AssignmentService, assignment::assignment_service_client::AssignmentServiceClient<Channel> {
    get_assignment(assignment::GetAssignmentRequest) -> assignment::Assignment;
    set_rules(assignment::SetRulesRequest) -> assignment::Rules;
    get_rules(assignment::GetRulesRequest) -> assignment::Rules;
    list_users(assignment::ListUsersRequest) -> assignment::ListUsersResponse;
    set_availability(assignment::SetAvailabilityRequest) -> assignment::User;
    explain(assignment::ExplainRequest) -> assignment::ExplainResponse;
    simulate(assignment::SimulateRequest) -> assignment::SimulateResponse;
    report(assignment::ReportRequest) -> assignment::ReportResponse;
    metrics(assignment::MetricsRequest) -> assignment::MetricsResponse;
});

forward!(ghlsync::ghl_sync_service_server::GhlSyncService, ghlsync::ghl_sync_service_client::GhlSyncServiceClient<Channel> {
    sync_status(ghlsync::SyncStatusRequest) -> ghlsync::SyncStatusResponse;
    record_install(ghlsync::RecordInstallRequest) -> ghlsync::RecordInstallResponse;
    connect_private_token(ghlsync::ConnectPrivateTokenRequest) -> ghlsync::ConnectResponse;
    begin_o_auth(ghlsync::BeginOAuthRequest) -> ghlsync::BeginOAuthResponse;
    complete_o_auth(ghlsync::CompleteOAuthRequest) -> ghlsync::ConnectResponse;
    retry_set_aside(ghlsync::RetrySetAsideRequest) -> ghlsync::RetrySetAsideResponse;
    record_contact_webhook(ghlsync::RecordContactWebhookRequest) -> ghlsync::RecordContactWebhookResponse;
});
