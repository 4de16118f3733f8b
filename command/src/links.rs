//! Tokens of the links that are mailed to verify an address or reset a password.
//!
//! A token is the base64url form (no padding) of the account id's 16 bytes followed by 32
//! random bytes, so a link names the account it acts on without a lookup. Events carry the
//! token only as its hex SHA-256, which the decider compares, and sealed with AES-256-GCM
//! for the notifier that writes the mail.

use accounts_platform::secrets::{link_context, SecretBox};
use accounts_platform::{hash_token, FieldError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::RngCore;
use uuid::Uuid;

use crate::wire::MailToken;

const RANDOM_BYTES: usize = 32;
const TOKEN_BYTES: usize = 16 + RANDOM_BYTES;
/// Length of a token in characters.
const TOKEN_LENGTH: usize = (TOKEN_BYTES * 4).div_ceil(3);

/// Creates a token for `account_id` that expires at `expires_at`, ready for a command.
pub fn issue(
    secrets: &SecretBox,
    account_id: Uuid,
    expires_at: DateTime<Utc>,
) -> anyhow::Result<MailToken> {
    let mut bytes = [0_u8; TOKEN_BYTES];
    bytes[..16].copy_from_slice(account_id.as_bytes());
    rand::rngs::OsRng.fill_bytes(&mut bytes[16..]);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    Ok(MailToken {
        token_sha256: hash_token(&token),
        token_ciphertext: secrets.seal(token.as_bytes(), &link_context(&account_id))?,
        expires_at,
    })
}

/// A token read from a request: the account it names and its hash.
#[derive(Debug)]
pub struct ParsedToken {
    pub account_id: Uuid,
    pub token_sha256: String,
}

/// Parses the token of a link, reporting a malformed one against `field`.
pub fn parse(field: &str, token: &str) -> Result<ParsedToken, FieldError> {
    let malformed = || FieldError {
        field: field.to_owned(),
        code: "invalid_token".to_owned(),
        message: "copy the whole token from the link in the mail".to_owned(),
    };
    let token = token.trim();
    if token.len() != TOKEN_LENGTH {
        return Err(malformed());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| malformed())?;
    let account_id = bytes
        .get(..16)
        .and_then(|id| Uuid::from_slice(id).ok())
        .ok_or_else(malformed)?;
    Ok(ParsedToken {
        account_id,
        token_sha256: hash_token(token),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use accounts_platform::secrets::EncryptionConfig;

    fn secrets() -> SecretBox {
        let config = EncryptionConfig {
            keys: "test=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
                .to_owned()
                .into(),
            active_key_id: "test".to_owned(),
        };
        SecretBox::from_config(&config).unwrap().unwrap()
    }

    #[test]
    fn issued_token_opens_and_parses_to_its_account() {
        let secrets = secrets();
        let account_id = Uuid::now_v7();
        let issued = issue(&secrets, account_id, Utc::now()).unwrap();
        let token = secrets
            .open(&issued.token_ciphertext, &link_context(&account_id))
            .unwrap();
        let token = String::from_utf8(token).unwrap();
        assert_eq!(token.len(), TOKEN_LENGTH);
        let parsed = parse("token", &token).unwrap();
        assert_eq!(parsed.account_id, account_id);
        assert_eq!(parsed.token_sha256, issued.token_sha256);
    }

    #[test]
    fn malformed_tokens_name_the_field() {
        for token in [
            "",
            "short",
            &"!".repeat(TOKEN_LENGTH),
            &"a".repeat(TOKEN_LENGTH + 1),
        ] {
            let error = parse("token", token).unwrap_err();
            assert_eq!(
                (error.field.as_str(), error.code.as_str()),
                ("token", "invalid_token")
            );
        }
    }
}
