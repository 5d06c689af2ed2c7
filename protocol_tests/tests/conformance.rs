//! The conformance suite against the fixture started in-process: one test per scenario, from
//! the suite's own list.

mod support;

use protocol_tests::{run_one, Outcome};
use std::time::Duration;

fn run(name: &str) {
    let _one_at_a_time = support::serial();
    let mut target = support::shared().target();
    let rt = tokio::runtime::Runtime::new().unwrap();
    if name == "idle_socket_is_closed" {
        // Its own server, with a short idle timeout, rather than waiting a minute.
        let config = fawkes::Config {
            limits: fawkes::Limits {
                idle_timeout: Duration::from_secs(2),
                ..Default::default()
            },
            ..Default::default()
        };
        let server = support::start(config);
        target = server.target();
        target.idle_timeout = Some(Duration::from_secs(2));
    }
    match rt.block_on(run_one(&target, name)) {
        Outcome::Passed => {}
        Outcome::Failed(e) => panic!("{name} failed:\n{e}"),
        Outcome::NotRun(why) => panic!("{name} did not run: {why}"),
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { run(stringify!($name)); })*
    };
}

protocol_tests::for_each_scenario!(conformance);
