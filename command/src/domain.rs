//! Domain types. Each is built only through `parse`, so a value of the type is valid.

use std::fmt;

use accounts_platform::FieldError;
use secrecy::{ExposeSecret, SecretString};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Maximum length of names, in characters (Unicode scalar values), not bytes.
pub const MAX_NAME_CHARS: usize = 100;
/// Maximum length of an email address, in bytes, as RFC 5321 allows for a path.
pub const MAX_EMAIL_BYTES: usize = 254;
/// Minimum and maximum password length in characters. The maximum bounds hashing time.
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 128;

fn field_error(field: &str, code: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        code: code.to_owned(),
        message: message.into(),
    }
}

/// An email address: kept as typed for display and mail, and normalised for uniqueness
/// (lower case, international domain names in their ASCII form).
#[derive(Clone, PartialEq, Eq)]
pub struct EmailAddress {
    typed: String,
    normalized: String,
}

impl EmailAddress {
    /// Parses an address, reporting failures against `field`.
    pub fn parse(field: &str, input: &str) -> Result<Self, FieldError> {
        let typed = input.trim();
        if typed.is_empty() {
            return Err(field_error(field, "required", "enter an email address"));
        }
        if typed.len() > MAX_EMAIL_BYTES {
            return Err(field_error(
                field,
                "too_long",
                format!("an email address has at most {MAX_EMAIL_BYTES} bytes"),
            ));
        }

        let invalid = || {
            field_error(
                field,
                "invalid_email",
                "enter an email address such as name@example.com",
            )
        };
        let (local, domain) = typed.rsplit_once('@').ok_or_else(invalid)?;
        let hidden = |c: char| {
            c.is_whitespace() || is_control(c) || c.general_category() == GeneralCategory::Format
        };
        if typed.chars().any(hidden) {
            return Err(invalid());
        }

        let ascii_domain = idna::domain_to_ascii(domain).map_err(|_| invalid())?;
        if local.is_empty() || !is_host_name(&ascii_domain) {
            return Err(invalid());
        }

        let ascii_form = format!("{local}@{ascii_domain}");
        if !email_address::EmailAddress::is_valid(&ascii_form)
            && !email_address::EmailAddress::is_valid(typed)
        {
            return Err(invalid());
        }

        Ok(Self {
            typed: typed.to_owned(),
            normalized: format!("{}@{}", local.to_lowercase(), ascii_domain.to_lowercase()),
        })
    }

    /// Returns the address as the user typed it.
    pub fn as_typed(&self) -> &str {
        &self.typed
    }

    /// Returns the uniqueness key: lower case with an ASCII domain.
    pub fn normalized(&self) -> &str {
        &self.normalized
    }
}

impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.typed)
    }
}

/// Returns true for a DNS host name of at least two labels, each of letters, digits and
/// inner hyphens, with a top-level label that is not all digits. Address literals such as
/// `[127.0.0.1]` are not accepted for account addresses.
fn is_host_name(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    let valid_label = |label: &&str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    domain.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(valid_label)
        && labels
            .last()
            .is_some_and(|top| !top.bytes().all(|byte| byte.is_ascii_digit()))
}

/// Checks that `text` is at most [`MAX_NAME_CHARS`] characters, contains no control or
/// bidirectional formatting characters, and has at least one visible character.
fn parse_name(field: &str, input: &str, required: bool) -> Result<Option<String>, FieldError> {
    let text = input.trim();
    if text.is_empty() {
        return if required {
            Err(field_error(field, "required", "enter a name"))
        } else {
            Ok(None)
        };
    }
    let length = text.chars().count();
    if length > MAX_NAME_CHARS {
        return Err(field_error(
            field,
            "too_long",
            format!("use at most {MAX_NAME_CHARS} characters (this one has {length})"),
        ));
    }
    if let Some(bad) = text.chars().find(|c| is_control(*c) || is_bidi_control(*c)) {
        return Err(field_error(
            field,
            "invalid_character",
            format!(
                "remove the invisible control character U+{:04X}",
                u32::from(bad)
            ),
        ));
    }
    if text.chars().next().is_some_and(is_combining_mark) {
        return Err(field_error(
            field,
            "invalid_character",
            "start with a letter, digit or symbol, not a combining mark",
        ));
    }
    if !text.chars().any(is_visible) {
        return Err(field_error(
            field,
            "invisible",
            "use at least one visible character",
        ));
    }
    Ok(Some(text.to_owned()))
}

fn is_control(c: char) -> bool {
    c.general_category() == GeneralCategory::Control
}

/// Bidirectional embeddings, overrides and isolates, which can make text display in an
/// order other than the one stored (as in "Trojan Source" attacks).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

fn is_combining_mark(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::NonspacingMark
            | GeneralCategory::SpacingMark
            | GeneralCategory::EnclosingMark
    )
}

fn is_visible(c: char) -> bool {
    !c.is_whitespace()
        && !matches!(
            c.general_category(),
            GeneralCategory::Format
                | GeneralCategory::Control
                | GeneralCategory::NonspacingMark
                | GeneralCategory::EnclosingMark
                | GeneralCategory::Unassigned
                | GeneralCategory::PrivateUse
                | GeneralCategory::Surrogate
        )
        && !matches!(
            c,
            '\u{3164}' | '\u{115F}' | '\u{1160}' | '\u{FFA0}' | '\u{2800}'
        )
}

/// A person's display name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(field: &str, input: &str) -> Result<Self, FieldError> {
        parse_name(field, input, true)?
            .map(Self)
            .ok_or_else(|| field_error(field, "required", "enter a name"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A company name; empty input clears it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompanyName(String);

impl CompanyName {
    pub fn parse(field: &str, input: &str) -> Result<Option<Self>, FieldError> {
        Ok(parse_name(field, input, false)?.map(Self))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

pub use accounts_events::INDUSTRIES;

/// One entry of [`INDUSTRIES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Industry(&'static str);

impl Industry {
    /// Accepts an identifier (`ai_agents`) or a label (`AI Agents`), ignoring case.
    pub fn parse(field: &str, input: &str) -> Result<Self, FieldError> {
        let wanted = input.trim();
        INDUSTRIES
            .iter()
            .find(|(id, label)| id.eq_ignore_ascii_case(wanted) || label.eq_ignore_ascii_case(wanted))
            .map(|(id, _)| Self(id))
            .ok_or_else(|| {
                field_error(
                    field,
                    "unknown_industry",
                    format!("choose one of the identifiers listed by GET /v1/industries; {wanted:?} is not one"),
                )
            })
    }

    pub fn id(self) -> &'static str {
        self.0
    }
}

/// A business phone number, validated against the numbering plan of its country and
/// stored in E.164 form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusinessPhone(String);

impl BusinessPhone {
    /// Parses a country calling code such as `+91` and a number typed with or without
    /// spaces, dashes or brackets.
    pub fn parse(field: &str, country_code: &str, number: &str) -> Result<Self, FieldError> {
        let code_field = format!("{field}.country_code");
        let number_field = format!("{field}.number");

        let code = country_code.trim().trim_start_matches('+');
        if code.is_empty() || code.len() > 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(field_error(
                &code_field,
                "invalid_country_code",
                "enter a country calling code such as +91",
            ));
        }

        let typed = number.trim();
        if typed.is_empty()
            || typed.len() > 32
            || !typed
                .chars()
                .all(|c| c.is_ascii_digit() || " -().".contains(c))
        {
            return Err(field_error(
                &number_field,
                "invalid_phone_number",
                "enter digits only, spaces allowed",
            ));
        }

        let digits: String = typed.chars().filter(char::is_ascii_digit).collect();
        let invalid = || {
            field_error(
                &number_field,
                "invalid_phone_number",
                format!("+{code} {typed} is not a valid phone number for that country code"),
            )
        };

        let parsed = phonenumber::parse(None, format!("+{code}{digits}")).map_err(|_| invalid())?;
        if !phonenumber::is_valid(&parsed) {
            return Err(invalid());
        }

        Ok(Self(
            parsed.format().mode(phonenumber::Mode::E164).to_string(),
        ))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A character-class rule of the password policy: the test, its problem code and a hint.
type PasswordRule = (fn(char) -> bool, &'static str, &'static str);

/// A new password that meets the policy. Wrapped so that it never reaches a log.
pub struct NewPassword(SecretString);

/// The account data a new password must not contain: the email address and the name.
#[derive(Default)]
pub struct PasswordContext<'a> {
    pub email: Option<&'a EmailAddress>,
    pub name: Option<&'a str>,
}

/// Shortest email local part or name word that a password must not contain. Shorter ones,
/// such as "al", appear in too many good passwords to reject them.
const MIN_PERSONAL_TOKEN_CHARS: usize = 3;

impl NewPassword {
    /// Checks the password policy, with one problem code per failed rule. The rules cover
    /// length, character classes, the email's local part, words of the name, and a zxcvbn
    /// strength estimate that rejects common and guessable passwords.
    pub fn parse(
        field: &str,
        input: &SecretString,
        context: &PasswordContext<'_>,
    ) -> Result<Self, FieldError> {
        let password = input.expose_secret();
        let length = password.chars().count();
        if length < MIN_PASSWORD_CHARS {
            return Err(field_error(
                field,
                "password_too_short",
                format!("use at least {MIN_PASSWORD_CHARS} characters"),
            ));
        }
        if length > MAX_PASSWORD_CHARS {
            return Err(field_error(
                field,
                "password_too_long",
                format!("use at most {MAX_PASSWORD_CHARS} characters"),
            ));
        }
        let rules: [PasswordRule; 4] = [
            (
                char::is_uppercase,
                "password_missing_uppercase",
                "add an upper-case letter",
            ),
            (
                char::is_lowercase,
                "password_missing_lowercase",
                "add a lower-case letter",
            ),
            (
                |c| c.is_ascii_digit(),
                "password_missing_digit",
                "add a digit",
            ),
            (
                |c| !c.is_alphanumeric() && !c.is_whitespace(),
                "password_missing_special",
                "add a special character such as ! or #",
            ),
        ];
        for (present, code, message) in rules {
            if !password.chars().any(present) {
                return Err(field_error(field, code, message));
            }
        }
        let lowered = password.to_lowercase();
        let local_part = context
            .email
            .and_then(|email| email.normalized().split('@').next())
            .filter(|local| local.chars().count() >= MIN_PERSONAL_TOKEN_CHARS);
        if local_part.is_some_and(|local| lowered.contains(local)) {
            return Err(field_error(
                field,
                "password_contains_email",
                "do not use your email address in the password",
            ));
        }
        let name_words: Vec<String> = context
            .name
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_lowercase)
            .filter(|word| word.chars().count() >= MIN_PERSONAL_TOKEN_CHARS)
            .collect();
        if name_words
            .iter()
            .any(|word| lowered.contains(word.as_str()))
        {
            return Err(field_error(
                field,
                "password_contains_name",
                "do not use your name in the password",
            ));
        }

        let mut personal: Vec<&str> = name_words.iter().map(String::as_str).collect();
        personal.extend(local_part);
        if zxcvbn::zxcvbn(password, &personal).score() < zxcvbn::Score::Three {
            return Err(field_error(
                field,
                "password_too_common",
                "this password is common or easy to guess; use a longer phrase of unrelated words",
            ));
        }
        Ok(Self(input.clone()))
    }

    pub fn secret(&self) -> &SecretString {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_keeps_typed_form_and_normalises_key() {
        let email = EmailAddress::parse("email", " User+Tag@Example.COM ").unwrap();
        assert_eq!(email.as_typed(), "User+Tag@Example.COM");
        assert_eq!(email.normalized(), "user+tag@example.com");
    }

    #[test]
    fn email_domain_becomes_punycode() {
        let email = EmailAddress::parse("email", "zoe@Bücher.example").unwrap();
        assert_eq!(email.normalized(), "zoe@xn--bcher-kva.example");
    }

    #[test]
    fn email_rejects_garbage() {
        for input in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a b@example.com",
            "a@[127.0.0.1]",
            "a@exa_mple.com",
            "a@ex\u{200B}ample.com",
            "a@-example.com",
            "a@example.123",
        ] {
            assert!(
                EmailAddress::parse("email", input).is_err(),
                "{input:?} accepted"
            );
        }
    }

    #[test]
    fn name_counts_characters_not_bytes() {
        let hundred = "ë".repeat(100);
        assert!(DisplayName::parse("name", &hundred).is_ok());
        let error = DisplayName::parse("name", &"ë".repeat(101)).unwrap_err();
        assert_eq!(error.code, "too_long");
        assert_eq!(error.field, "name");
    }

    #[test]
    fn name_rejects_bidi_override() {
        let error = DisplayName::parse("name", "abc\u{202E}def").unwrap_err();
        assert_eq!(error.code, "invalid_character");
    }

    #[test]
    fn name_rejects_invisible_only() {
        for input in ["\u{200B}\u{200B}", "\u{3164}", "\u{FEFF} \u{00AD}"] {
            let error = DisplayName::parse("name", input).unwrap_err();
            assert_eq!(error.code, "invisible", "{input:?}");
        }
    }

    #[test]
    fn name_rejects_leading_combining_mark() {
        let error = DisplayName::parse("name", "\u{0301}Zoe").unwrap_err();
        assert_eq!(error.code, "invalid_character");
    }

    #[test]
    fn name_keeps_diacritics() {
        assert_eq!(
            DisplayName::parse("name", "Zoë Müller")
                .unwrap()
                .into_inner(),
            "Zoë Müller"
        );
    }

    #[test]
    fn industry_accepts_id_or_label() {
        assert_eq!(
            Industry::parse("industry", "AI Agents").unwrap().id(),
            "ai_agents"
        );
        assert_eq!(
            Industry::parse("industry", "ai_agents").unwrap().id(),
            "ai_agents"
        );
        assert_eq!(
            Industry::parse("industry", "Alchemy").unwrap_err().code,
            "unknown_industry"
        );
    }

    #[test]
    fn phone_is_stored_in_e164() {
        let phone = BusinessPhone::parse("business_phone", "+91", "99887 76655").unwrap();
        assert_eq!(phone.into_inner(), "+919988776655");
    }

    #[test]
    fn phone_too_short_is_rejected() {
        let error = BusinessPhone::parse("business_phone", "+91", "98765 4321").unwrap_err();
        assert_eq!(error.field, "business_phone.number");
        assert_eq!(error.code, "invalid_phone_number");
    }

    #[test]
    fn phone_country_code_must_be_digits() {
        let error = BusinessPhone::parse("business_phone", "+9a", "9988776655").unwrap_err();
        assert_eq!(error.field, "business_phone.country_code");
    }

    #[test]
    fn password_rules_have_distinct_codes() {
        let cases = [
            ("Sh0rt!", "password_too_short"),
            ("alllower-case-1", "password_missing_uppercase"),
            ("ALLUPPER-CASE-1", "password_missing_lowercase"),
            ("No-Digits-Here", "password_missing_digit"),
            ("NoSpecial123", "password_missing_special"),
        ];
        let email = EmailAddress::parse("email", "Zoe.Muller@example.com").unwrap();
        let context = PasswordContext {
            email: Some(&email),
            name: Some("Zoë Müller"),
        };
        let cases = cases.into_iter().chain([
            ("Xx-zoe.muller-42!", "password_contains_email"),
            ("Müller-Quartz-77!", "password_contains_name"),
            ("Password1!", "password_too_common"),
        ]);
        for (password, code) in cases {
            let error = NewPassword::parse("password", &SecretString::from(password), &context)
                .err()
                .unwrap();
            assert_eq!(error.code, code, "{password}");
        }
        assert!(NewPassword::parse(
            "password",
            &SecretString::from("Correct-Horse-9-battery"),
            &context
        )
        .is_ok());
        let long = format!("Aa1!{}", "x".repeat(MAX_PASSWORD_CHARS));
        let error = NewPassword::parse("password", &SecretString::from(long), &context)
            .err()
            .unwrap();
        assert_eq!(error.code, "password_too_long");
    }
}
