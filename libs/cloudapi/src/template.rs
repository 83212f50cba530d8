//! How a GHL user sends one of the number's approved message templates: a reply whose text is
//!
//! ```text
//! /template <name> <language> [param …]
//! [param on its own line …]
//! ```
//!
//! e.g. `/template order_ready en_US Ana 4521`, or, for parameters with spaces, one per line
//! after the first. The parameters fill the template body's `{{1}}`, `{{2}}`, … in order.
//! Outside the 24-hour customer service window (the customer has not written for a day) a
//! template is the only message WhatsApp delivers.

use serde_json::{Value, json};

/// What starts a template reply.
pub const PREFIX: &str = "/template";

/// A template to send, as a reply asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRequest {
    pub name: String,
    /// Meta's language code, e.g. `en_US`, `pt_BR`, `es`.
    pub language: String,
    /// The body's parameters, in order.
    pub params: Vec<String>,
}

impl TemplateRequest {
    /// `Ok(None)` when `body` is an ordinary reply; the template it asks for, or why it cannot
    /// be one.
    pub fn parse(body: &str) -> Result<Option<Self>, String> {
        let body = body.trim();
        let Some(rest) = body.strip_prefix(PREFIX) else {
            return Ok(None);
        };
        if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
            return Ok(None);
        }
        let mut lines = rest.lines();
        let mut words = lines.next().unwrap_or_default().split_whitespace();
        let usage = "a template reply is `/template <name> <language> [param …]`, e.g. `/template order_ready en_US Ana`";
        let (Some(name), Some(language)) = (words.next(), words.next()) else {
            return Err(usage.to_owned());
        };
        if name.is_empty()
            || name.len() > 512
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!(
                "{name:?} is not a template name (lowercase letters, digits and _); {usage}"
            ));
        }
        if !is_language(language) {
            return Err(format!(
                "{language:?} is not a template language code such as en, en_US or pt_BR; {usage}"
            ));
        }
        let params = words
            .map(str::to_owned)
            .chain(
                lines
                    .map(str::trim)
                    .filter(|line| !line.is_empty())
                    .map(str::to_owned),
            )
            .collect();
        Ok(Some(Self {
            name: name.to_owned(),
            language: language.to_owned(),
            params,
        }))
    }

    /// The `template` object of a send.
    pub fn to_json(&self) -> Value {
        let mut template = json!({
            "name": self.name,
            "language": { "code": self.language },
        });
        if !self.params.is_empty() {
            let parameters: Vec<Value> = self
                .params
                .iter()
                .map(|text| json!({ "type": "text", "text": text }))
                .collect();
            template["components"] = json!([{ "type": "body", "parameters": parameters }]);
        }
        template
    }
}

/// `en`, `fil`, `en_US`, `zh_CN`, `pt_BR`: Meta's template language codes.
fn is_language(code: &str) -> bool {
    let (lang, region) = match code.split_once('_') {
        Some((lang, region)) => (lang, Some(region)),
        None => (code, None),
    };
    (2..=3).contains(&lang.len())
        && lang.bytes().all(|b| b.is_ascii_lowercase())
        && region.is_none_or(|r| r.len() == 2 && r.bytes().all(|b| b.is_ascii_uppercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ordinary_reply_is_no_template() {
        assert_eq!(TemplateRequest::parse("See you at 6"), Ok(None));
        assert_eq!(TemplateRequest::parse("/templates are nice"), Ok(None));
    }

    #[test]
    fn words_after_the_language_and_lines_after_the_first_are_parameters() {
        let asked =
            TemplateRequest::parse("/template order_ready en_US Ana 4521\nMain street 12\n\n")
                .unwrap()
                .unwrap();
        assert_eq!(asked.name, "order_ready");
        assert_eq!(asked.language, "en_US");
        assert_eq!(asked.params, ["Ana", "4521", "Main street 12"]);
        assert_eq!(
            asked.to_json(),
            json!({
                "name": "order_ready",
                "language": { "code": "en_US" },
                "components": [{ "type": "body", "parameters": [
                    { "type": "text", "text": "Ana" },
                    { "type": "text", "text": "4521" },
                    { "type": "text", "text": "Main street 12" },
                ]}],
            })
        );
        let bare = TemplateRequest::parse("/template hello_world en")
            .unwrap()
            .unwrap();
        assert_eq!(
            bare.to_json(),
            json!({ "name": "hello_world", "language": { "code": "en" } })
        );
    }

    #[test]
    fn a_template_without_a_usable_name_or_language_is_refused_with_the_form() {
        for bad in [
            "/template",
            "/template order_ready",
            "/template Order-Ready en_US",
            "/template order_ready english",
        ] {
            let error = TemplateRequest::parse(bad).unwrap_err();
            assert!(
                error.contains("/template <name> <language>"),
                "{bad}: {error}"
            );
        }
    }
}
