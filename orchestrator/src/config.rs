//! The `orchestrator` binary's configuration, read once at start-up: the engine's settings
//! ([`engine::config`]) and the participants' ([`shop::config`]), which `dev` runs
//! in-process. `orchestrator --help` lists every one with its flag, variable and default.

use platform::env::{self, Vars};
use platform::settings;

platform::settings_args!(
    Settings,
    [
        settings::STORES,
        settings::KAFKA,
        settings::RETENTION,
        settings::LOGS,
        engine::config::ORCHESTRATOR,
        shop::config::PARTICIPANTS
    ]
);

#[derive(Debug, Clone)]
pub struct Config {
    pub engine: engine::config::Config,
    /// The participants' settings, for `dev`'s in-process roles and the shop's API fronts
    /// (stock and balance changes run under the same concurrency strategy).
    pub workers: shop::runtime::RuntimeOptions,
}

impl Config {
    pub fn from_env() -> Result<Self, env::Error> {
        Self::from_vars(&Vars::process())
    }

    pub fn from_vars(vars: &Vars) -> Result<Self, env::Error> {
        Ok(Self {
            engine: engine::config::Config::from_vars(vars)?,
            workers: shop::config::runtime_options(vars)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_environment() {
        let config = Config::from_vars(&Vars::from_pairs([])).unwrap();
        assert_eq!(
            config.engine.http_addr.to_string(),
            engine::config::Config::DEFAULT_HTTP_ADDR
        );
    }

    #[test]
    fn a_bad_participant_setting_names_its_variable() {
        let err =
            Config::from_vars(&Vars::from_pairs([("CONCURRENCY_STRATEGY", "hope")])).unwrap_err();
        assert_eq!(err.name, "CONCURRENCY_STRATEGY");
    }
}
