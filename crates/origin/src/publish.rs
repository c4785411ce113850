//! `shoal publish`: a manifest for every file under an origin root.
//!
//! For each regular file `ROOT/<path>` a manifest is written to
//! `ROOT/.shoal/manifests/<path>.shoalmf`. Those are plain static files, so
//! the shoal origin (or nginx, or any web server) serves them at
//! `/.shoal/manifests/<path>.shoalmf` ([`manifest_path_for`]), and a cache
//! gets end-to-end integrity for objects it has never seen.
//!
//! # What is published
//!
//! - Regular files only. Symlinks (to files or directories) are not
//!   followed, and special files (FIFOs, sockets, devices) are skipped;
//!   both are listed in the report.
//! - The `ROOT/.shoal/` tree itself is never walked.
//! - Files or directories whose name starts with `.` are skipped unless
//!   [`PublishOptions::include_hidden`]; the origin does not serve them by
//!   default either.
//! - A file whose path cannot be a request path (not UTF-8, a control
//!   character or backslash in a name, too long or too deep; see
//!   [`RequestPath::parse`]) could never be requested, and is skipped.
//!
//! # Manifests
//!
//! Piece size is [`PieceSize::for_object_size`] unless
//! [`PublishOptions::piece_size`] is set. Validators: `last_modified_unix_s`
//! is the file's mtime in seconds, no entity tag (the origin's entity tag
//! has nanosecond mtime in it, which other servers such as nginx do not
//! reproduce, and the manifest must describe the bytes wherever they are
//! served from).
//!
//! Each manifest is written to a temporary file in its final directory,
//! synced, then renamed over the old one, so a reader sees the old or the
//! new manifest, never half of one.
//!
//! A manifest is up to date, and its file is not hashed again (unless
//! [`PublishOptions::force`]), when it decodes, states the file's size, its
//! mtime second and the piece size that would be chosen now, and the
//! manifest file itself is not older than the object (which catches most
//! same-size rewrites within the same second).
//!
//! # Speed
//!
//! Files are hashed in parallel on rayon's pool, and the pieces of each
//! large file are hashed in parallel too ([`shoal_core::manifest::hash_pieces`]),
//! so every core is busy whether the root holds one huge file or many small
//! ones. Large files are memory-mapped rather than read.
//!
//! The root must not change while it is published: a file whose size or
//! mtime changed during hashing is reported as failed (its manifest is not
//! written), but a file truncated *while* it is mapped makes the process
//! take a `SIGBUS`, as with any mmap-based tool.

use memmap2::Mmap;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rayon::prelude::*;
use shoal_core::{Manifest, ManifestError, PieceSize, Validators};
use shoal_http::RequestPath;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// The directory under the origin root that holds shoal's own files.
pub const SHOAL_DIR: &str = ".shoal";
/// Manifests live under this directory, relative to the origin root.
pub const MANIFEST_DIR: &str = ".shoal/manifests";
/// The URL path prefix of manifests.
pub const MANIFEST_URL_PREFIX: &str = "/.shoal/manifests";
/// The suffix a manifest adds to its object's file name.
pub const MANIFEST_SUFFIX: &str = ".shoalmf";
/// Files smaller than this are read into memory rather than mapped: a
/// mapping costs more than a read for small files.
pub const MMAP_THRESHOLD_BYTES: u64 = 1 << 20;
/// An existing manifest larger than this is not read for the up-to-date
/// check (it is just rewritten). 2^24 pieces of 32 bytes plus headers.
const EXISTING_MANIFEST_BYTES_MAX: u64 = (1 << 29) + (1 << 20);

/// The URL path of the manifest of `object_path`:
/// `/.shoal/manifests/<path>.shoalmf`, percent-encoded like
/// [`RequestPath::to_uri_path`].
///
/// ```
/// # use shoal_http::RequestPath;
/// let object = RequestPath::parse("/videos/big%20file.mp4").unwrap();
/// assert_eq!(
///     shoal_origin::manifest_path_for(&object),
///     "/.shoal/manifests/videos/big%20file.mp4.shoalmf"
/// );
/// ```
pub fn manifest_path_for(object_path: &RequestPath) -> String {
    format!(
        "{MANIFEST_URL_PREFIX}{}{MANIFEST_SUFFIX}",
        object_path.to_uri_path()
    )
}

/// The file a manifest for `object_path` is written to under `root`.
pub fn manifest_file_for(root: &Path, object_path: &RequestPath) -> PathBuf {
    let mut path = root.join(MANIFEST_DIR);
    let mut segments = object_path.segments().peekable();
    while let Some(segment) = segments.next() {
        if segments.peek().is_some() {
            path.push(segment);
        } else {
            path.push(format!("{segment}{MANIFEST_SUFFIX}"));
        }
    }
    path
}

/// How to publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Piece size for every file; `None` picks one per file from its size.
    pub piece_size: Option<PieceSize>,
    /// Hash every file even when its manifest looks up to date.
    pub force: bool,
    /// Also publish files and directories whose name starts with `.`.
    pub include_hidden: bool,
}

/// Why a file was not published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// A symbolic link (never followed).
    Symlink,
    /// A FIFO, socket or device.
    NotRegular,
    /// A hidden file or directory (name starts with `.`).
    Hidden,
    /// Its path can never be requested (the reason is the request-path
    /// error, or "not UTF-8").
    UnservableName(String),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Symlink => f.write_str("symbolic link"),
            SkipReason::NotRegular => f.write_str("not a regular file"),
            SkipReason::Hidden => f.write_str("hidden"),
            SkipReason::UnservableName(why) => write!(f, "name cannot be requested: {why}"),
        }
    }
}

/// A skipped entry, relative to the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedFile {
    pub path: PathBuf,
    pub reason: SkipReason,
}

/// A file that could not be published, relative to the root.
#[derive(Debug)]
pub struct FailedFile {
    pub path: PathBuf,
    pub error: PublishError,
}

/// What a publish run did. Files are listed relative to the root.
#[derive(Debug, Default)]
pub struct PublishReport {
    /// Manifests written.
    pub files_published: u64,
    /// Files whose manifest was already up to date.
    pub files_unchanged: u64,
    /// The request paths (percent-encoded) of the files published this
    /// run, sorted: what caches should revalidate.
    pub published_paths: Vec<String>,
    /// Bytes read and hashed.
    pub bytes_hashed: u64,
    /// Entries not published, with the reason, sorted by path.
    pub skipped: Vec<SkippedFile>,
    /// Files that failed, sorted by path. The run goes on past them.
    pub failed: Vec<FailedFile>,
    pub elapsed: Duration,
}

impl PublishReport {
    /// Symlinks and special files skipped.
    pub fn skipped_non_regular(&self) -> usize {
        self.skipped
            .iter()
            .filter(|s| matches!(s.reason, SkipReason::Symlink | SkipReason::NotRegular))
            .count()
    }

    /// Throughput of hashing over the whole run, in bytes per second.
    pub fn hash_bytes_per_s(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.bytes_hashed as f64 / seconds
        } else {
            0.0
        }
    }
}

impl fmt::Display for PublishReport {
    /// A summary line, then one line per skipped or failed entry.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "published {} manifests, {} unchanged, {} skipped, {} failed; hashed {} bytes in {:.2} s ({:.0} MB/s)",
            self.files_published,
            self.files_unchanged,
            self.skipped.len(),
            self.failed.len(),
            self.bytes_hashed,
            self.elapsed.as_secs_f64(),
            self.hash_bytes_per_s() / 1e6,
        )?;
        for skipped in &self.skipped {
            write!(
                f,
                "\n  skipped {}: {}",
                skipped.path.display(),
                skipped.reason
            )?;
        }
        for failed in &self.failed {
            write!(f, "\n  failed {}: {}", failed.path.display(), failed.error)?;
        }
        Ok(())
    }
}

/// Why publishing (a file) failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("origin root {path}: {source}")]
    Root { path: PathBuf, source: io::Error },
    #[error("origin root {0} is not a directory")]
    RootNotDirectory(PathBuf),
    #[error("cannot list directory {path}: {source}")]
    ListDirectory { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} changed while it was being hashed")]
    ChangedWhileHashing { path: PathBuf },
    #[error("cannot build the manifest of {path}: {source}")]
    Manifest {
        path: PathBuf,
        source: ManifestError,
    },
    #[error("cannot write manifest {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Writes or refreshes the manifest of every regular file under `root`.
///
/// Returns `Err` only when the root itself is unusable; a file that fails
/// is listed in [`PublishReport::failed`] and the others are still
/// published.
pub fn publish(root: &Path, options: &PublishOptions) -> Result<PublishReport, PublishError> {
    let started = Instant::now();
    let root_meta = fs::metadata(root).map_err(|source| PublishError::Root {
        path: root.to_path_buf(),
        source,
    })?;
    if !root_meta.is_dir() {
        return Err(PublishError::RootNotDirectory(root.to_path_buf()));
    }
    let mut report = PublishReport::default();
    let candidates = walk(root, options, &mut report);

    let outcomes: Vec<(PathBuf, String, Result<Outcome, PublishError>)> = candidates
        .into_par_iter()
        .map(|candidate| {
            let outcome = publish_one(root, &candidate, options);
            (
                candidate.relative,
                candidate.object_path.to_uri_path(),
                outcome,
            )
        })
        .collect();
    for (path, uri_path, outcome) in outcomes {
        match outcome {
            Ok(Outcome::Published { bytes }) => {
                report.files_published += 1;
                report.bytes_hashed += bytes;
                report.published_paths.push(uri_path);
            }
            Ok(Outcome::Unchanged) => report.files_unchanged += 1,
            Err(error) => report.failed.push(FailedFile { path, error }),
        }
    }
    report.published_paths.sort();
    report.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    report.failed.sort_by(|a, b| a.path.cmp(&b.path));
    report.elapsed = started.elapsed();
    Ok(report)
}

/// A regular file to publish.
struct Candidate {
    absolute: PathBuf,
    relative: PathBuf,
    object_path: RequestPath,
}

enum Outcome {
    Published { bytes: u64 },
    Unchanged,
}

/// Bytes left unencoded when turning file names into a raw request path.
const NAME_ENCODE_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Lists the files to publish, recording skipped entries and unreadable
/// directories in `report`. Symlinks are never followed, so the walk ends.
fn walk(root: &Path, options: &PublishOptions, report: &mut PublishReport) -> Vec<Candidate> {
    let mut candidates = Vec::new();
    let mut stack: Vec<(PathBuf, PathBuf)> = vec![(root.to_path_buf(), PathBuf::new())];
    while let Some((directory, relative_directory)) = stack.pop() {
        let entries = match fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(source) => {
                report.failed.push(FailedFile {
                    path: relative_directory.clone(),
                    error: PublishError::ListDirectory {
                        path: directory,
                        source,
                    },
                });
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(source) => {
                    report.failed.push(FailedFile {
                        path: relative_directory.clone(),
                        error: PublishError::ListDirectory {
                            path: directory.clone(),
                            source,
                        },
                    });
                    continue;
                }
            };
            let name = entry.file_name();
            let relative = relative_directory.join(&name);
            if relative_directory.as_os_str().is_empty() && name == SHOAL_DIR {
                continue;
            }
            let skip = |report: &mut PublishReport, reason| {
                report.skipped.push(SkippedFile {
                    path: relative.clone(),
                    reason,
                });
            };
            let file_type = match entry.file_type() {
                Ok(file_type) => file_type,
                Err(source) => {
                    report.failed.push(FailedFile {
                        path: relative.clone(),
                        error: PublishError::Read {
                            path: entry.path(),
                            source,
                        },
                    });
                    continue;
                }
            };
            let hidden = name.as_encoded_bytes().starts_with(b".");
            if file_type.is_symlink() {
                skip(report, SkipReason::Symlink);
            } else if hidden && !options.include_hidden {
                skip(report, SkipReason::Hidden);
            } else if file_type.is_dir() {
                stack.push((entry.path(), relative));
            } else if !file_type.is_file() {
                skip(report, SkipReason::NotRegular);
            } else {
                match object_path_of(&relative) {
                    Ok(object_path) => candidates.push(Candidate {
                        absolute: entry.path(),
                        relative,
                        object_path,
                    }),
                    Err(why) => skip(report, SkipReason::UnservableName(why)),
                }
            }
        }
    }
    candidates
}

/// The request path that names the file at `relative` under the root.
fn object_path_of(relative: &Path) -> Result<RequestPath, String> {
    let mut raw = String::new();
    for component in relative.components() {
        let name = component
            .as_os_str()
            .to_str()
            .ok_or_else(|| "not UTF-8".to_string())?;
        raw.push('/');
        raw.extend(utf8_percent_encode(name, NAME_ENCODE_SET));
    }
    RequestPath::parse(&raw).map_err(|e| e.to_string())
}

fn publish_one(
    root: &Path,
    candidate: &Candidate,
    options: &PublishOptions,
) -> Result<Outcome, PublishError> {
    let path = &candidate.absolute;
    let read_error = |source| PublishError::Read {
        path: path.clone(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    let before = file.metadata().map_err(read_error)?;
    if !before.is_file() {
        return Err(PublishError::ChangedWhileHashing { path: path.clone() });
    }
    let size = before.len();
    let mtime = before.modified().ok();
    let mtime_s = mtime.and_then(unix_s);
    let piece_size = options
        .piece_size
        .unwrap_or_else(|| PieceSize::for_object_size(size));
    let manifest_file = manifest_file_for(root, &candidate.object_path);

    if !options.force && manifest_is_current(&manifest_file, size, mtime, mtime_s, piece_size) {
        return Ok(Outcome::Unchanged);
    }

    let hashes = if size == 0 {
        Vec::new()
    } else if size < MMAP_THRESHOLD_BYTES {
        let mut data = Vec::with_capacity(size as usize);
        // Read one byte more than expected, to notice a file that grew.
        (&mut file)
            .take(size + 1)
            .read_to_end(&mut data)
            .map_err(read_error)?;
        if data.len() as u64 != size {
            return Err(PublishError::ChangedWhileHashing { path: path.clone() });
        }
        shoal_core::manifest::hash_pieces(&data, piece_size)
    } else {
        // SAFETY: the map is only read, and only while `file` is open. The
        // origin root is expected to be stable during a publish; a
        // concurrent write shows up in the metadata check below, and a
        // concurrent truncation is the documented SIGBUS hazard of
        // mapping files (see the module docs).
        let map = unsafe { Mmap::map(&file) }.map_err(read_error)?;
        if map.len() as u64 != size {
            return Err(PublishError::ChangedWhileHashing { path: path.clone() });
        }
        shoal_core::manifest::hash_pieces(&map, piece_size)
    };

    let after = file.metadata().map_err(read_error)?;
    if after.len() != size || after.modified().ok() != mtime {
        return Err(PublishError::ChangedWhileHashing { path: path.clone() });
    }
    let validators = Validators {
        etag: None,
        last_modified_unix_s: mtime_s,
    };
    let manifest = Manifest::new(size, piece_size, hashes, validators).map_err(|source| {
        PublishError::Manifest {
            path: path.clone(),
            source,
        }
    })?;
    write_atomically(&manifest_file, &manifest.encode()).map_err(|source| PublishError::Write {
        path: manifest_file.clone(),
        source,
    })?;
    Ok(Outcome::Published { bytes: size })
}

/// Whether the manifest at `manifest_file` still describes the object.
fn manifest_is_current(
    manifest_file: &Path,
    size: u64,
    mtime: Option<SystemTime>,
    mtime_s: Option<u64>,
    piece_size: PieceSize,
) -> bool {
    let Ok(meta) = fs::metadata(manifest_file) else {
        return false;
    };
    if !meta.is_file() || meta.len() > EXISTING_MANIFEST_BYTES_MAX {
        return false;
    }
    // Written after the object last changed. File times come from the
    // kernel's coarse clock (a tick, a few ms), so a manifest written right
    // after its object often has the very same mtime: equal counts as
    // newer. What is missed is a same-size rewrite of the object in the
    // tick after its manifest was written.
    let newer = match (meta.modified().ok(), mtime) {
        (Some(manifest_mtime), Some(object_mtime)) => manifest_mtime >= object_mtime,
        _ => false,
    };
    if !newer {
        return false;
    }
    let Ok(bytes) = fs::read(manifest_file) else {
        return false;
    };
    let Ok(manifest) = Manifest::decode(&bytes) else {
        return false;
    };
    manifest.object_size() == size
        && manifest.piece_size() == piece_size
        && manifest.validators().last_modified_unix_s == mtime_s
        && mtime_s.is_some()
}

fn unix_s(time: SystemTime) -> Option<u64> {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Writes `bytes` to `path` through a synced temporary file in the same
/// directory and a rename, so readers never see a partial file. The file
/// is world-readable (0644): other web servers serve it too.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let directory = path.parent().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "manifest path has no parent directory",
        )
    })?;
    fs::create_dir_all(directory)?;
    let mut temporary = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(MANIFEST_SUFFIX)
        .permissions(fs::Permissions::from_mode(0o644))
        .tempfile_in(directory)?;
    temporary.write_all(bytes)?;
    temporary.as_file().sync_all()?;
    temporary.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_url_and_file_paths() {
        let object = RequestPath::parse("/a/b%20c/d.mp4").expect("path");
        assert_eq!(
            manifest_path_for(&object),
            "/.shoal/manifests/a/b%20c/d.mp4.shoalmf"
        );
        assert_eq!(
            manifest_file_for(Path::new("/srv"), &object),
            PathBuf::from("/srv/.shoal/manifests/a/b c/d.mp4.shoalmf")
        );
        let reparsed =
            RequestPath::parse(&manifest_path_for(&object)).expect("manifest path parses");
        assert_eq!(reparsed.as_str(), "/.shoal/manifests/a/b c/d.mp4.shoalmf");
    }

    #[test]
    fn object_paths_of_file_names() {
        assert_eq!(
            object_path_of(Path::new("a/b c%d?.mp4"))
                .expect("ok")
                .as_str(),
            "/a/b c%d?.mp4"
        );
        assert!(object_path_of(Path::new("a/back\\slash")).is_err());
        assert!(object_path_of(Path::new("a/new\nline")).is_err());
    }
}
