//! The conformance suite against the fixture started in-process: one test per scenario.

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

        /// Every scenario of the suite has a test above.
        #[test]
        fn every_scenario_is_tested() {
            let tested = [$(stringify!($name)),*];
            for (name, _) in protocol_tests::scenarios::ALL {
                assert!(tested.contains(name), "no test for scenario {name}");
            }
        }
    };
}

conformance!(
    v2_heartbeat,
    v2_join_ping_and_broadcast_before_reply,
    v2_broadcast_to_two_sockets,
    v2_join_error_then_push,
    v2_unmatched_topic_join,
    v2_push_to_topic_not_joined,
    v2_stale_join_ref_is_dropped,
    v2_duplicate_join,
    v2_leave,
    v2_collection_join_reply,
    v2_presence,
    v2_binary,
    v2_disconnect_by_socket_id,
    v2_numeric_ref_unknown_phoenix_event_and_ws_ping,
    v2_join_crash,
    v2_channel_crash,
    v2_crash_with_presence,
    v2_wrong_arity_closes,
    v2_malformed_frames_close,
    v1_session,
    no_vsn_means_v1,
    http_upgrade_accepted,
    http_refused_connect,
    http_unsupported_vsn,
    http_plain_get,
    http_unknown_path,
    idle_socket_is_closed,
    swift_phoenix_client_session,
    lp_session,
    lp_empty_poll_waits_then_204,
    lp_invalid_session_token,
    lp_refused_connect_and_vsn,
    lp_options_and_other_methods,
    lp_v1,
);
