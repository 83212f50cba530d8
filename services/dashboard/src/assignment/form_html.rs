//! The rules form drawn as HTML (`rules_form.html`): the choices of each select and group of
//! boxes, with those the document holds ticked, and the location's accounts offered as
//! conditions.

use askama::Template;
use whatsnap_proto::session::v1 as session;

use super::form::{self, RulesForm};

fn strs(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

/// One choice of a select or a box of a group, as the form shows it.
struct Choice {
    value: String,
    label: String,
    checked: bool,
}

/// The choices of `options` with those in `selected` ticked. A value the form does not know is
/// kept as a ticked choice of its own, so that the check names it rather than the form
/// dropping it.
fn choices(options: &[(&str, &str)], selected: &[&str]) -> Vec<Choice> {
    let mut all: Vec<Choice> = options
        .iter()
        .map(|(value, label)| Choice {
            value: (*value).to_owned(),
            label: (*label).to_owned(),
            checked: selected.contains(value),
        })
        .collect();
    for value in selected {
        if !options.iter().any(|(known, _)| known == value) {
            all.push(Choice {
                value: (*value).to_owned(),
                label: format!("{value} (not a known choice)"),
                checked: true,
            });
        }
    }
    all
}

#[derive(Template)]
#[template(path = "rules_form.html")]
struct RulesFormView {
    /// The field the form cannot show (empty: the whole document), instead of the form.
    not_shown: Option<String>,
    form: RulesForm,
    /// Each day's key, name and ranges as typed.
    days: Vec<(&'static str, &'static str, String)>,
    multi_touch: Vec<Choice>,
    manual: Vec<Choice>,
    rules: Vec<RuleView>,
}

struct RuleView {
    index: usize,
    /// As people count: from 1.
    number: usize,
    last: bool,
    /// `rules[0]`: where the check's field paths for this rule start.
    path: String,
    users_key: &'static str,
    /// How many conditions are set: the conditions start folded when none is.
    conditions: usize,
    strategies: Vec<Choice>,
    hours: Vec<Choice>,
    existed: Vec<Choice>,
    channels: Vec<Choice>,
    accounts: Vec<Choice>,
    triggers: Vec<Choice>,
    window_days: Vec<Choice>,
    rule: form::RuleForm,
}

/// The form of a rules document (the `rules_form.html` fragment); `accounts` are the location's,
/// offered as conditions.
pub(super) fn rules_form_html(rules_json: &str, accounts: &[session::Account]) -> String {
    let shown = serde_json::from_str::<serde_json::Value>(rules_json)
        .map_err(|_| form::NotShown {
            field: String::new(),
        })
        .and_then(|value| RulesForm::show(&value));
    let view = match shown {
        Ok(form) => form_view(form, accounts),
        Err(not_shown) => RulesFormView {
            not_shown: Some(not_shown.field),
            form: RulesForm::default(),
            days: Vec::new(),
            multi_touch: Vec::new(),
            manual: Vec::new(),
            rules: Vec::new(),
        },
    };
    view.render().unwrap_or_else(|err| {
        tracing::warn!(error = %err, "the rules form did not render");
        "<p class=\"error\">The form is not available: edit the JSON.</p>".to_owned()
    })
}

fn form_view(form: RulesForm, accounts: &[session::Account]) -> RulesFormView {
    let account_options: Vec<(String, String)> = accounts
        .iter()
        .map(|a| (a.account_id.clone(), format!("{} ({})", a.name, a.tag)))
        .collect();
    let last = form.rules.len().saturating_sub(1);
    let rules = form
        .rules
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            let options: Vec<(&str, &str)> = account_options
                .iter()
                .map(|(id, label)| (id.as_str(), label.as_str()))
                .collect();
            RuleView {
                index,
                number: index + 1,
                last: index == last,
                path: format!("rules[{index}]"),
                users_key: rule.users_key(),
                conditions: rule.conditions(),
                strategies: choices(&form::STRATEGIES, &[rule.strategy.as_str()]),
                hours: choices(&form::HOURS, &[rule.hours.as_str()]),
                existed: choices(&form::EXISTED, &[rule.existed_before.as_str()]),
                channels: choices(&form::CHANNELS, &strs(&rule.channels)),
                accounts: choices(&options, &strs(&rule.accounts)),
                triggers: choices(&form::TRIGGERS, &strs(&rule.triggers)),
                window_days: choices(&form::DAYS, &strs(&rule.window_days)),
                rule: rule.clone(),
            }
        })
        .collect();
    RulesFormView {
        not_shown: None,
        days: form::DAYS
            .iter()
            .zip(&form.business_hours)
            .map(|((key, label), ranges)| (*key, *label, ranges.clone()))
            .collect(),
        multi_touch: choices(&form::MULTI_TOUCH, &[form.multi_touch.as_str()]),
        manual: choices(&form::MANUAL, &[form.manual.as_str()]),
        rules,
        form,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> session::Account {
        session::Account {
            account_id: "0192f0c4-0000-7000-8000-000000000001".into(),
            name: "Sales".into(),
            tag: "whatsnap-account-sales".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_form_names_each_input_by_the_field_it_writes() {
        let html = rules_form_html(
            r#"{"time_zone": "Europe/Madrid", "business_hours": {"mon": ["09:00-17:00"]},
                "rules": [{"strategy": "team", "team": "Sales", "members": ["u_ana"],
                           "when": {"accounts": ["0192f0c4-0000-7000-8000-000000000001"]}}]}"#,
            &[account()],
        );
        for wanted in [
            r#"data-path="time_zone" value="Europe/Madrid""#,
            r#"data-path="business_hours.mon" value="09:00-17:00""#,
            r#"data-path="rules[0].members" value="u_ana""#,
            r#"value="0192f0c4-0000-7000-8000-000000000001" checked> Sales (whatsnap-account-sales)"#,
            "Conditions: 1 set",
        ] {
            assert!(html.contains(wanted), "{wanted} not in {html}");
        }
    }

    #[test]
    fn a_document_the_form_cannot_show_is_said_so() {
        let html = rules_form_html(r#"{"rules": [], "extra": 1}"#, &[]);
        assert!(html.contains("form-not-shown"), "{html}");
        assert!(
            html.contains("<code class=\"field\">extra</code>"),
            "{html}"
        );
        let html = rules_form_html(r#"{"rules": ["#, &[]);
        assert!(html.contains("cannot show this document"), "{html}");
    }
}
