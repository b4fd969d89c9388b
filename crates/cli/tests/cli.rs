//! The `floe` binary's configuration contract, run as a user runs it: the documented default
//! is a valid config file, flags and `FLOE__` variables override it, secrets never print, and
//! a bad file is refused with an error naming the file and the key.
//!
//! This target also makes `cargo test`/`cargo nextest` build `target/debug/floe` with the same
//! features as the rest of the workspace's tests, which the end-to-end suite then runs.

use std::path::Path;
use std::process::{Command, Output};

fn floe(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_floe"));
    cmd.current_dir(dir).args(args);
    // The tests must not see the caller's own overrides.
    for (k, _) in std::env::vars() {
        if k.starts_with("FLOE__") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("floe runs")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "floe failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).expect("utf-8 output")
}

fn failure(o: &Output) -> String {
    assert!(!o.status.success(), "floe should have failed");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn table(text: &str) -> toml::Table {
    text.parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("not TOML: {e}\n{text}"))
}

#[test]
fn the_printed_default_config_is_a_config_file_that_loads_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    let default = stdout(&floe(dir.path(), &["--print-default-config"], &[]));
    let default_table = table(&default);
    assert_eq!(
        default_table["pipelines"][0]["table"].as_str(),
        Some("lake.events"),
        "{default}"
    );
    std::fs::write(dir.path().join("floe.toml"), &default).unwrap();

    // ./floe.toml is read without --config, and the effective config is the file's.
    let effective = stdout(&floe(dir.path(), &["--print-config"], &[]));
    assert_eq!(table(&effective), default_table);

    // The effective config is itself a config file that loads to the same thing.
    std::fs::write(dir.path().join("again.toml"), &effective).unwrap();
    let again = stdout(&floe(
        dir.path(),
        &["--config", "again.toml", "--print-config"],
        &[],
    ));
    assert_eq!(table(&again), default_table);
}

#[test]
fn flags_override_variables_which_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("floe.toml"),
        "[catalog]\nwarehouse = \"from-file\"\n[log]\nlevel = \"debug\"\n",
    )
    .unwrap();
    let env = [
        ("FLOE__CATALOG__WAREHOUSE", "from-env"),
        ("FLOE__LOG__FORMAT", "json"),
    ];
    let plain = table(&stdout(&floe(dir.path(), &["--print-config"], &env)));
    assert_eq!(plain["catalog"]["warehouse"].as_str(), Some("from-env"));
    assert_eq!(plain["log"]["format"].as_str(), Some("json"));
    assert_eq!(plain["log"]["level"].as_str(), Some("debug"));

    let flagged = table(&stdout(&floe(
        dir.path(),
        &["--warehouse", "from-flag", "--print-config"],
        &env,
    )));
    assert_eq!(flagged["catalog"]["warehouse"].as_str(), Some("from-flag"));
    assert_eq!(flagged["log"]["format"].as_str(), Some("json"));
}

#[test]
fn the_catalog_password_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let out = stdout(&floe(
        dir.path(),
        &[
            "--catalog-uri",
            "postgres://floe:hunter2-secret@db.internal:5432/catalog",
            "--print-config",
        ],
        &[],
    ));
    assert!(!out.contains("hunter2-secret"), "{out}");
    let uri = table(&out)["catalog"]["uri"].as_str().unwrap().to_string();
    assert!(uri.contains("db.internal:5432/catalog"), "{uri}");
}

#[test]
fn a_bad_config_is_refused_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("typo.toml"),
        "[catalog]\nwarehous = \"data\"\n",
    )
    .unwrap();
    let err = failure(&floe(
        dir.path(),
        &["--config", "typo.toml", "--print-config"],
        &[],
    ));
    assert!(err.contains("warehous"), "{err}");
    assert!(err.contains("typo.toml"), "{err}");

    let err = failure(&floe(
        dir.path(),
        &["--config", "nowhere.toml", "--print-config"],
        &[],
    ));
    assert!(err.contains("nowhere.toml"), "{err}");
    assert!(err.contains("does not exist"), "{err}");

    std::fs::write(dir.path().join("floe.toml"), "[log]\nformat = \"xml\"\n").unwrap();
    let err = failure(&floe(dir.path(), &["table", "list"], &[]));
    assert!(err.contains("log.format") && err.contains("xml"), "{err}");
}
