//! `embed_migrations!` reads `../migrations` at compile time, but cargo tracks only the files
//! it embedded: a new migration directory would leave a stale build. Watching the directory
//! rebuilds this crate when a migration is added.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
