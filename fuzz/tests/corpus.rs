//! Every fuzz target over its seeds and over each input a fuzzer once found wrong
//! (`regressions/<target>/`): a plain test, so CI runs them on stable without cargo-fuzz.

use std::path::Path;

fn each_input(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut count = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n == ".keep") {
                continue;
            }
            let input = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&input));
            assert!(outcome.is_ok(), "{target} fails on {}", path.display());
            count += 1;
        }
    }
    assert!(count > 0, "no seeds for {target}");
}

#[test]
fn twilio_form() {
    each_input("twilio_form", whatsnap_fuzz::twilio_form);
}

#[test]
fn twilio_signature() {
    each_input("twilio_signature", whatsnap_fuzz::twilio_signature);
}

#[test]
fn ghl_webhook() {
    each_input("ghl_webhook", whatsnap_fuzz::ghl_webhook);
}

#[test]
fn ghl_delivery() {
    each_input("ghl_delivery", whatsnap_fuzz::ghl_delivery);
}

#[test]
fn ghl_sso() {
    each_input("ghl_sso", whatsnap_fuzz::ghl_sso);
}

#[test]
fn phone() {
    each_input("phone", whatsnap_fuzz::phone);
}
