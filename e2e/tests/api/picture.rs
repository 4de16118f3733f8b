//! The profile picture: type from the content, size and dimension limits, and the
//! 200x200 rendition served with the detected type.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, RgbImage};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{spawn_app, TestApp, User};

/// Encodes a 640x480 gradient with the real encoder of `format`.
fn encoded(format: ImageFormat) -> Vec<u8> {
    let image = DynamicImage::ImageRgb8(RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
    }));
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

/// Returns a PNG that declares 20000x20000 pixels in its header but carries almost no data.
fn oversized_png_header() -> Vec<u8> {
    let mut chunk = b"IHDR".to_vec();
    chunk.extend(20_000_u32.to_be_bytes());
    chunk.extend(20_000_u32.to_be_bytes());
    chunk.extend([8, 2, 0, 0, 0]);
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend(13_u32.to_be_bytes());
    bytes.extend(&chunk);
    bytes.extend(crc32fast::hash(&chunk).to_be_bytes());
    // A few bytes of image data and the end chunk: far too little for the declared size.
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

pub async fn upload(
    app: &TestApp,
    user: &User,
    content_type: &str,
    bytes: Vec<u8>,
) -> reqwest::Response {
    app.http
        .put(format!("{}/v1/profile/picture", app.command_url))
        .bearer_auth(&user.token)
        .header("Content-Type", content_type)
        .body(bytes)
        .send()
        .await
        .unwrap()
}

async fn code_of(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn pictures_are_served_with_the_detected_type() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    for (format, mime) in [
        (ImageFormat::Jpeg, "image/jpeg"),
        (ImageFormat::Png, "image/png"),
        (ImageFormat::Gif, "image/gif"),
    ] {
        // The declared type is wrong on purpose: only the content counts.
        let uploaded = upload(&app, &user, "application/octet-stream", encoded(format)).await;
        assert_eq!(uploaded.status(), StatusCode::OK, "{mime}");
        let picture_url = uploaded.json::<Value>().await.unwrap()["picture_url"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            app.profile_json(&user).await["picture_url"],
            picture_url.as_str()
        );

        for response in [
            app.http
                .get(format!("{}/v1/profile/picture", app.query_url))
                .bearer_auth(&user.token)
                .send()
                .await
                .unwrap(),
            app.http
                .get(format!("{}{picture_url}", app.query_url))
                .send()
                .await
                .unwrap(),
        ] {
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["content-type"], mime);
            assert_eq!(response.headers()["x-content-type-options"], "nosniff");
            let etag = response.headers()["etag"].clone();
            let bytes = response.bytes().await.unwrap();
            assert_eq!(image::guess_format(&bytes).unwrap(), format);
            let cached = app
                .http
                .get(format!("{}{picture_url}", app.query_url))
                .header("If-None-Match", etag)
                .send()
                .await
                .unwrap();
            assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
            let served = image::load_from_memory(&bytes).unwrap();
            assert_eq!((served.width(), served.height()), (200, 200));
        }
    }

    let events: Vec<Value> = app
        .committed_events()
        .into_iter()
        .filter(|event| event.event_type() == "accounts.ProfilePictureChanged")
        .map(|event| event.value["data"].clone())
        .collect();
    assert_eq!(events.len(), 3);
    assert_eq!(events[2]["content_type"], "image/gif");
    assert_eq!(
        (events[2]["width"].as_u64(), events[2]["height"].as_u64()),
        (Some(640), Some(480))
    );
    assert!(events[2]["size"].as_u64().unwrap() > 0);
    assert_eq!(events[2]["sha256"].as_str().unwrap().len(), 64);

    let removed = app
        .http
        .delete(format!("{}/v1/profile/picture", app.command_url))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::OK);
    assert_eq!(app.profile_json(&user).await["picture_url"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_uploads_are_rejected_and_append_nothing() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let events_before = app.committed_events().len();

    let html = b"<!DOCTYPE html><html><script>alert(1)</script></html>".to_vec();
    let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>".to_vec();
    for markup in [html, svg] {
        let response = upload(&app, &user, "image/png", markup).await;
        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(code_of(response).await, "unsupported_picture_type");
    }

    let mut six_megabytes = encoded(ImageFormat::Png);
    six_megabytes.resize(6 * 1024 * 1024, 0);
    let response = upload(&app, &user, "image/png", six_megabytes).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code_of(response).await, "picture_too_large");

    let response = upload(&app, &user, "image/png", oversized_png_header()).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "picture_dimensions_too_large");

    let mut truncated = encoded(ImageFormat::Png);
    truncated.truncate(100);
    let response = upload(&app, &user, "image/png", truncated).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    assert_eq!(app.committed_events().len(), events_before);
    assert_eq!(app.profile_json(&user).await["picture_url"], Value::Null);
}
