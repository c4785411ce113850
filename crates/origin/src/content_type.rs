//! `Content-Type` from a file name's extension: a small built-in table of
//! the types a CDN origin mostly serves. Anything else is
//! `application/octet-stream`.

/// The fallback for unknown or missing extensions.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

const TABLE: &[(&str, &str)] = &[
    ("mp4", "video/mp4"),
    ("m4s", "video/iso.segment"),
    ("webm", "video/webm"),
    ("mkv", "video/x-matroska"),
    ("ts", "video/mp2t"),
    ("mp3", "audio/mpeg"),
    ("m3u8", "application/vnd.apple.mpegurl"),
    ("mpd", "application/dash+xml"),
    ("zip", "application/zip"),
    ("tar", "application/x-tar"),
    ("gz", "application/gzip"),
    ("iso", "application/x-iso9660-image"),
    ("bin", "application/octet-stream"),
    ("json", "application/json"),
    ("txt", "text/plain; charset=utf-8"),
    ("html", "text/html; charset=utf-8"),
    ("htm", "text/html; charset=utf-8"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("png", "image/png"),
    ("shoalmf", "application/vnd.shoal.manifest"),
];

/// The media type for a file name, from its last extension
/// (case-insensitive).
pub fn content_type_for(file_name: &str) -> &'static str {
    let Some((stem, extension)) = file_name.rsplit_once('.') else {
        return DEFAULT_CONTENT_TYPE;
    };
    if stem.is_empty() {
        // A dot file such as `.profile` has no extension.
        return DEFAULT_CONTENT_TYPE;
    }
    TABLE
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(extension))
        .map_or(DEFAULT_CONTENT_TYPE, |(_, media_type)| media_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown() {
        assert_eq!(content_type_for("movie.mp4"), "video/mp4");
        assert_eq!(content_type_for("MOVIE.MP4"), "video/mp4");
        assert_eq!(content_type_for("seg-1.m4s"), "video/iso.segment");
        assert_eq!(
            content_type_for("master.m3u8"),
            "application/vnd.apple.mpegurl"
        );
        assert_eq!(content_type_for("archive.tar.gz"), "application/gzip");
        assert_eq!(content_type_for("notes.txt"), "text/plain; charset=utf-8");
        assert_eq!(content_type_for("README"), DEFAULT_CONTENT_TYPE);
        assert_eq!(content_type_for(".hidden"), DEFAULT_CONTENT_TYPE);
        assert_eq!(content_type_for("x.unknownext"), DEFAULT_CONTENT_TYPE);
        assert_eq!(content_type_for("trailing."), DEFAULT_CONTENT_TYPE);
    }
}
