//! The authorization table covers every RPC whatsnap serves: an RPC added to a contract
//! without a rule fails here (and is refused by the layer at run time).

use whatsnap_auth::policy::{Policy, RULES, Target, whatsnap_rpcs};

#[test]
fn every_rpc_of_every_service_has_a_rule() {
    let policy = Policy::whatsnap().expect("the table fits the compiled contracts");
    let rpcs = whatsnap_rpcs();
    assert!(rpcs.len() > 40, "only {} RPCs found", rpcs.len());
    let missing: Vec<_> = rpcs
        .iter()
        .filter(|rpc| policy.rule(&rpc.path).is_none())
        .map(|rpc| rpc.path.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "RPCs without an entry in whatsnap_auth::policy::RULES: {missing:?}"
    );
}

#[test]
fn only_health_checks_are_open() {
    let open: Vec<_> = RULES
        .iter()
        .filter(|(_, _, _, target)| *target == Target::Open)
        .map(|(service, method, _, _)| format!("{service}/{method}"))
        .collect();
    assert_eq!(
        open,
        ["grpc.health.v1.Health/Check", "grpc.health.v1.Health/Watch"]
    );
}
