//! The README's configuration table and the binaries' settings (their `--help`) cannot
//! drift: every setting is a row with its default, and every row is a setting.

use orchestrator::config::Settings;

/// (variable, default) of each row of the README's first configuration table; `None` for
/// "unset".
fn readme_rows() -> Vec<(String, Option<String>)> {
    let readme = include_str!("../../README.md");
    let table = readme
        .split("| variable | default | meaning |")
        .nth(1)
        .expect("a configuration table in the README");
    table
        .lines()
        .skip(2) // the header's rule
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`').to_owned();
            let default = match cells[2] {
                "unset" => None,
                value => Some(value.trim_matches('`').to_owned()),
            };
            (name, default)
        })
        .collect()
}

#[test]
fn every_setting_is_in_the_readme_with_its_default_and_every_row_is_a_setting() {
    let rows = readme_rows();
    // The orchestrator's settings, and the worker's own (the rest it shares).
    let settings: Vec<_> = Settings::TABLES
        .iter()
        .chain([&shop::config::WORKER])
        .flat_map(|table| table.iter())
        .collect();
    for setting in &settings {
        let row = rows
            .iter()
            .find(|(name, _)| name == setting.env)
            .unwrap_or_else(|| {
                panic!("{} is a setting but not in the README's table", setting.env)
            });
        assert_eq!(
            row.1.as_deref(),
            setting.default,
            "{}: README and --help disagree on the default",
            setting.env
        );
        // Flags are named after their variables; RUST_LOG is tracing's name for a log filter.
        let expected = match setting.env {
            "RUST_LOG" => "log-filter".to_owned(),
            env => env.to_lowercase().replace('_', "-"),
        };
        assert_eq!(
            setting.long, expected,
            "flags are named after their variables"
        );
    }
    for (name, _) in &rows {
        assert!(
            settings.iter().any(|setting| setting.env == name),
            "{name} is in the README's table but no binary reads it"
        );
    }
}
