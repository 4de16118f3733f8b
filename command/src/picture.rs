//! The profile picture.
//!
//! The type comes from the first bytes of the content (JPEG, PNG or GIF), never from the
//! declared type or a file name. The body is read up to 5 MB and no further. Dimensions
//! are read from the image header and bounded before any pixel is decoded. The served
//! picture is a 200x200 rendition in the uploaded format, stored in PostgreSQL under its
//! SHA-256. The event carries the type, size, dimensions and hashes, never the bytes.

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::OnceLock;

use accounts_events::{AggregateId, ProfilePictureChanged};
use accounts_platform::problem::internal_error;
use accounts_platform::{Problem, ProblemDetails};
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::{Json, Router};
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use utoipa::{OpenApi, ToSchema};

use crate::http::{
    accepted_status, actor, command_id, expected_version, idempotency_key, with_etag, AppState,
    CommandResponse,
};
use crate::wire::Command;

/// Largest accepted upload in bytes.
pub const MAX_PICTURE_BYTES: usize = 5 * 1024 * 1024;
/// Largest accepted width or height in pixels.
pub const MAX_SIDE: u32 = 8000;
/// Largest accepted number of pixels, which bounds the memory of one decode (4 bytes each).
pub const MAX_PIXELS: u64 = 36_000_000;
/// Width and height of the served rendition.
pub const RENDITION_SIDE: u32 = 200;
/// Pictures decoded at once; each may need up to `MAX_PIXELS * 4` bytes.
const CONCURRENT_DECODES: usize = 2;

#[derive(OpenApi)]
#[openapi(
    paths(put_picture, delete_picture),
    components(schemas(PictureResponse))
)]
pub struct PictureApi;

/// Returns the routes of this module.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/profile/picture",
            put(put_picture).delete(delete_picture),
        )
        .with_state(state)
}

#[derive(Serialize, ToSchema)]
pub struct PictureResponse {
    /// The path of the rendition on the query service.
    pub picture_url: Option<String>,
    pub version: u64,
    pub position: Option<String>,
}

/// Returns the path under which the query service serves the rendition `sha256`.
pub fn picture_url(sha256: &str) -> String {
    format!("/v1/pictures/{sha256}")
}

/// Returns the format that the first bytes announce, if it is one of the accepted three.
pub fn detect_format(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some(ImageFormat::Gif)
    } else {
        None
    }
}

/// A picture that passed every check, with its rendition.
#[derive(Debug)]
pub struct Rendition {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    pub bytes: Vec<u8>,
}

/// The reason an upload was rejected.
#[derive(Debug, thiserror::Error)]
pub enum PictureError {
    #[error("the content is not a JPEG, PNG or GIF image")]
    UnsupportedType,
    #[error("the image is {width}x{height} pixels")]
    TooLarge { width: u32, height: u32 },
    #[error("the image declares dimensions the decoder refuses to allocate")]
    DimensionsBeyondLimits,
    #[error("the image cannot be read: {0}")]
    Invalid(String),
}

/// Checks an upload and renders it at 200x200, cropped to a square around its centre.
/// The dimensions are checked from the header before any pixel is decoded.
pub fn render(bytes: &[u8]) -> Result<Rendition, PictureError> {
    let format = detect_format(bytes).ok_or(PictureError::UnsupportedType)?;
    // A decoder that refuses the header's dimensions as too large reports a limit error.
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|error| match error {
            image::ImageError::Limits(_) => PictureError::DimensionsBeyondLimits,
            error => PictureError::Invalid(error.to_string()),
        })?;
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(PictureError::TooLarge { width, height });
    }
    // The JPEG decoder fills missing data with grey instead of failing, so a truncated file
    // is caught by its missing end-of-image marker.
    if format == ImageFormat::Jpeg && !ends_with_jpeg_end_marker(bytes) {
        return Err(PictureError::Invalid(
            "the JPEG data ends before its end-of-image marker".to_owned(),
        ));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_PIXELS * 4 + 64 * 1024 * 1024);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|error| PictureError::Invalid(error.to_string()))?;
    let square = image.resize_to_fill(RENDITION_SIDE, RENDITION_SIDE, FilterType::Triangle);
    let square = match format {
        // JPEG has no alpha channel.
        ImageFormat::Jpeg => DynamicImage::ImageRgb8(square.to_rgb8()),
        _ => DynamicImage::ImageRgba8(square.to_rgba8()),
    };
    let mut encoded = Cursor::new(Vec::new());
    square
        .write_to(&mut encoded, format)
        .map_err(|error| PictureError::Invalid(error.to_string()))?;
    Ok(Rendition {
        format,
        width,
        height,
        bytes: encoded.into_inner(),
    })
}

/// Returns true when the last bytes, trailing zero padding aside, are the JPEG end-of-image
/// marker `FF D9`.
fn ends_with_jpeg_end_marker(bytes: &[u8]) -> bool {
    let end = bytes
        .iter()
        .rposition(|byte| *byte != 0)
        .map_or(0, |index| index + 1);
    bytes[..end].ends_with(&[0xFF, 0xD9])
}

fn decode_slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| Semaphore::new(CONCURRENT_DECODES))
}

fn too_large_body() -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "picture_too_large",
        format!(
            "a picture has at most {} MB",
            MAX_PICTURE_BYTES / (1024 * 1024)
        ),
    )
}

fn rejection(error: &PictureError) -> Problem {
    match error {
        PictureError::UnsupportedType => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_picture_type",
            "upload a JPG, PNG or GIF image; the type is read from the content",
        ),
        PictureError::TooLarge { width, height } => Problem::validation(vec![
            accounts_platform::FieldError {
                field: "picture".into(),
                code: "picture_dimensions_too_large".into(),
                message: format!(
                    "the image is {width}x{height} pixels; upload one of at most {MAX_SIDE} pixels a side and {} megapixels",
                    MAX_PIXELS / 1_000_000
                ),
            },
        ]),
        PictureError::DimensionsBeyondLimits => Problem::validation(vec![
            accounts_platform::FieldError {
                field: "picture".into(),
                code: "picture_dimensions_too_large".into(),
                message: format!(
                    "the image declares enormous dimensions; upload one of at most {MAX_SIDE} pixels a side and {} megapixels",
                    MAX_PIXELS / 1_000_000
                ),
            },
        ]),
        PictureError::Invalid(_) => Problem::validation(vec![accounts_platform::FieldError {
            field: "picture".into(),
            code: "invalid_picture".into(),
            message: "the image is damaged or incomplete; upload another file".into(),
        }]),
    }
}

/// Replaces the profile picture with the uploaded JPG, PNG or GIF.
#[utoipa::path(put, path = "/v1/profile/picture", tag = "profile",
    request_body(content = Vec<u8>, content_type = "image/*", description = "the image file, at most 5 MB"),
    params(("If-Match" = Option<String>, Header, description = "the expected account version")),
    responses(
    (status = 200, body = PictureResponse), (status = 401, body = ProblemDetails),
    (status = 412, body = ProblemDetails, description = "version_mismatch"),
    (status = 413, body = ProblemDetails, description = "picture_too_large"),
    (status = 415, body = ProblemDetails, description = "unsupported_picture_type"),
    (status = 422, body = ProblemDetails, description = "picture_dimensions_too_large or invalid_picture"),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn put_picture(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?;
    let account_id = caller.account_id;
    tracing::Span::current().record("account_id", tracing::field::display(account_id));
    let expected = expected_version(&headers)?;
    let key = idempotency_key(&headers)?;
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/")
        });
    if form {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_picture_type",
            "send the image file itself as the request body, not as a form upload",
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_PICTURE_BYTES as u64) {
        return Err(too_large_body());
    }
    let bytes = axum::body::to_bytes(body, MAX_PICTURE_BYTES)
        .await
        .map_err(|_| too_large_body())?;
    let upload_sha256 = hex::encode(Sha256::digest(&bytes));
    let size = bytes.len() as u64;

    let permit = decode_slots()
        .acquire()
        .await
        .map_err(|error| internal_error(&anyhow::Error::new(error)))?;
    let rendered = tokio::task::spawn_blocking(move || render(&bytes))
        .await
        .map_err(|error| internal_error(&anyhow::Error::new(error)))?;
    drop(permit);
    let rendition = rendered.map_err(|error| {
        tracing::info!(%error, "picture rejected");
        rejection(&error)
    })?;

    let sha256 = hex::encode(Sha256::digest(&rendition.bytes));
    let content_type = rendition.format.to_mime_type().to_owned();
    sqlx::query(
        "INSERT INTO pictures (sha256, content_type, bytes) VALUES ($1, $2, $3) \
         ON CONFLICT (sha256) DO NOTHING",
    )
    .bind(&sha256)
    .bind(&content_type)
    .bind(&rendition.bytes)
    .execute(&state.pool)
    .await
    .map_err(|error| {
        internal_error(&anyhow::Error::new(error).context("failed to store the picture"))
    })?;

    let command = Command::ChangeProfilePicture {
        account_id,
        picture: ProfilePictureChanged {
            content_type,
            size,
            width: rendition.width,
            height: rendition.height,
            upload_sha256,
            sha256: sha256.clone(),
        },
    };
    let id = command_id(
        &account_id.to_string(),
        "change_profile_picture",
        key.as_deref(),
    );
    let actor = actor(
        accounts_events::ActorKind::Account,
        Some(account_id.to_string()),
        address,
        &headers,
    );
    let executed = state
        .execute(
            AggregateId::Account(account_id),
            id,
            expected,
            actor,
            command,
        )
        .await?;
    let body = PictureResponse {
        picture_url: Some(picture_url(&sha256)),
        version: executed.version,
        position: executed.position.clone(),
    };
    Ok(with_etag(
        (accepted_status(&executed, StatusCode::OK), Json(body)).into_response(),
        executed.version,
    ))
}

/// Removes the profile picture.
#[utoipa::path(delete, path = "/v1/profile/picture", tag = "profile", responses(
    (status = 200, body = CommandResponse), (status = 401, body = ProblemDetails),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn delete_picture(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?;
    let account_id = caller.account_id;
    tracing::Span::current().record("account_id", tracing::field::display(account_id));
    let executed = state
        .execute_for_account(
            account_id,
            Command::RemoveProfilePicture { account_id },
            address,
            &headers,
        )
        .await?;
    Ok(crate::http::command_reply(&executed, StatusCode::OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(format: ImageFormat, width: u32, height: u32) -> Vec<u8> {
        let image = DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        }));
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    #[test]
    fn renders_each_format_as_itself_at_200_square() {
        for format in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Gif] {
            let rendition = render(&encoded(format, 640, 480)).unwrap();
            assert_eq!(rendition.format, format);
            assert_eq!((rendition.width, rendition.height), (640, 480));
            assert_eq!(detect_format(&rendition.bytes), Some(format));
            let served = image::load_from_memory(&rendition.bytes).unwrap();
            assert_eq!((served.width(), served.height()), (200, 200));
        }
    }

    #[test]
    fn truncated_jpeg_is_invalid() {
        let mut jpeg = encoded(ImageFormat::Jpeg, 640, 480);
        jpeg.truncate(jpeg.len() / 2);
        assert!(matches!(render(&jpeg), Err(PictureError::Invalid(_))));
    }

    #[test]
    fn huge_declared_dimensions_are_named() {
        let mut png = oversized_png_header();
        // Width and height fields of the header chunk, then its checksum.
        png[16..20].copy_from_slice(&i32::MAX.to_be_bytes());
        png[20..24].copy_from_slice(&i32::MAX.to_be_bytes());
        let checksum = crc32fast::hash(&png[12..29]);
        png[29..33].copy_from_slice(&checksum.to_be_bytes());
        assert!(matches!(
            render(&png),
            Err(PictureError::TooLarge { .. } | PictureError::DimensionsBeyondLimits)
        ));
    }

    #[test]
    fn markup_is_not_an_image() {
        for content in [
            &b"<html><body>hi</body></html>"[..],
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
        ] {
            assert!(matches!(
                render(content),
                Err(PictureError::UnsupportedType)
            ));
        }
    }

    /// Returns a PNG that declares 20000x20000 pixels in its header but carries almost no
    /// data.
    pub(crate) fn oversized_png_header() -> Vec<u8> {
        let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = b"IHDR".to_vec();
        chunk.extend(20_000_u32.to_be_bytes());
        chunk.extend(20_000_u32.to_be_bytes());
        chunk.extend([8, 2, 0, 0, 0]);
        bytes.extend(13_u32.to_be_bytes());
        bytes.extend(&chunk);
        bytes.extend(crc32fast::hash(&chunk).to_be_bytes());
        append_chunk(
            &mut bytes,
            b"IDAT",
            &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        );
        append_chunk(&mut bytes, b"IEND", &[]);
        bytes
    }

    fn append_chunk(bytes: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        let mut chunk = kind.to_vec();
        chunk.extend(data);
        bytes.extend(u32::try_from(data.len()).unwrap().to_be_bytes());
        bytes.extend(&chunk);
        bytes.extend(crc32fast::hash(&chunk).to_be_bytes());
    }

    #[test]
    fn oversized_header_is_rejected_before_decoding() {
        assert!(matches!(
            render(&oversized_png_header()),
            Err(PictureError::TooLarge {
                width: 20_000,
                height: 20_000
            })
        ));
    }
}
