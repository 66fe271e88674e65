//! `embed_migrations!` reads `../migrations` at compile time, but cargo tracks only the files
//! it embedded: a new migration directory would leave a stale build. Watching the directory
//! rebuilds this crate when a migration is added or changed, and the hash of what was
//! embedded (`MIGRATIONS_HASH`) names the test template database: a template is always
//! built from the migrations its name says, never from files changed since the build.

use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
    let dir = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("../migrations");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("migrations directory")
        .flatten()
        .flat_map(|entry| {
            std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|entry| entry.path())
        .collect();
    files.sort();
    let mut hasher = DefaultHasher::new();
    for file in files {
        println!("cargo:rerun-if-changed={}", file.display());
        file.file_name().hash(&mut hasher);
        std::fs::read(&file).unwrap_or_default().hash(&mut hasher);
    }
    println!("cargo:rustc-env=MIGRATIONS_HASH={:016x}", hasher.finish());
}
