//! Every scenario of `reference/phoenix-1.7-transcripts.md`, as Phoenix 1.8.12 answers it
//! (stale join_refs dropped, `phx_error` with `{"reason":"channel_crash"}`, 1001 on disconnect),
//! or, with [`crate::Phoenix::V1_7`], as the captured Phoenix 1.7.24 did.

use crate::client::{http, unhex, Client, Frame, Result};
use crate::matcher::Vars;
use crate::Target;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub type ScenarioFn = fn(Target) -> Pin<Box<dyn Future<Output = Result> + Send>>;

/// A scenario that needs what a plain URL cannot give is not run there, and says why.
pub const NOT_RUN: &str = "not run: ";

/// Calls `$m!(name, ...)` with every scenario name, in transcript order: the one list both
/// the runner and the `cargo test` harness use.
#[macro_export]
macro_rules! for_each_scenario {
    ($m:ident) => {
        $m!(
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
            v2_channel_limit,
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
    };
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        /// `(name, scenario)`, in transcript order.
        pub const ALL: &[(&str, ScenarioFn)] = &[
            $((stringify!($name), |t| Box::pin($name(t)))),*
        ];
    };
}

for_each_scenario!(scenarios);

const V2: &str = "token=t1&vsn=2.0.0";
const OK_EMPTY: &str = r#"{"response":{},"status":"ok"}"#;

fn v2(t: &Target) -> (String, &'static str) {
    (t.url.clone(), V2)
}

async fn open(name: &'static str, t: &Target, query: &str) -> Result<Client> {
    Client::connect(name, &t.url, query).await
}

/// A topic no other scenario uses, so runs against a shared server do not see each other.
fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    format!("{prefix}{t:x}{n}")
}

async fn v2_heartbeat(t: Target) -> Result {
    let (url, q) = v2(&t);
    let mut a = Client::connect("A", &url, q).await?;
    a.send(r#"[null,"1","phoenix","heartbeat",{}]"#).await?;
    a.expect(
        &format!(r#"[null,"1","phoenix","phx_reply",{OK_EMPTY}]"#),
        &mut Vars::new(),
    )
    .await?;
    a.close().await;
    Ok(())
}

async fn v2_join_ping_and_broadcast_before_reply(t: Target) -> Result {
    let mut v = Vars::new();
    let mut a = open("A", &t, V2).await?;
    a.send(r#"["1","1","community:feed","phx_join",{}]"#)
        .await?;
    a.expect(
        &format!(r#"["1","1","community:feed","phx_reply",{OK_EMPTY}]"#),
        &mut v,
    )
    .await?;
    a.send(r#"["1","2","community:feed","ping",{"x":1,"s":"abc"}]"#)
        .await?;
    a.expect(
        r#"["1","2","community:feed","phx_reply",{"response":{"s":"abc","x":1},"status":"ok"}]"#,
        &mut v,
    )
    .await?;
    a.send(r#"["1","3","community:feed","new_post",{"body":"hello","n":1}]"#)
        .await?;
    a.expect(
        r#"[null,null,"community:feed","new_post",{"body":"hello","n":1}]"#,
        &mut v,
    )
    .await?;
    a.expect(
        &format!(r#"["1","3","community:feed","phx_reply",{OK_EMPTY}]"#),
        &mut v,
    )
    .await?;
    a.close().await;
    Ok(())
}

async fn v2_broadcast_to_two_sockets(t: Target) -> Result {
    let mut v = Vars::new();
    let mut a = open("A", &t, V2).await?;
    let mut b = open("B", &t, "token=t2&vsn=2.0.0").await?;
    a.send(r#"["1","1","community:feed","phx_join",{}]"#)
        .await?;
    b.send(r#"["7","7","community:feed","phx_join",{}]"#)
        .await?;
    b.expect(
        &format!(r#"["7","7","community:feed","phx_reply",{OK_EMPTY}]"#),
        &mut v,
    )
    .await?;
    a.expect(
        &format!(r#"["1","1","community:feed","phx_reply",{OK_EMPTY}]"#),
        &mut v,
    )
    .await?;
    a.send(r#"["1","2","community:feed","new_post",{"body":"from A"}]"#)
        .await?;
    b.expect(
        r#"[null,null,"community:feed","new_post",{"body":"from A"}]"#,
        &mut v,
    )
    .await?;
    a.expect(
        r#"[null,null,"community:feed","new_post",{"body":"from A"}]"#,
        &mut v,
    )
    .await?;
    a.expect(
        &format!(r#"["1","2","community:feed","phx_reply",{OK_EMPTY}]"#),
        &mut v,
    )
    .await?;
    b.close().await;
    a.close().await;
    Ok(())
}

async fn v2_join_error_then_push(t: Target) -> Result {
    let mut v = Vars::new();
    let mut a = open("A", &t, V2).await?;
    a.send(r#"["1","1","private:secret","phx_join",{}]"#)
        .await?;
    a.expect(r#"["1","1","private:secret","phx_reply",{"response":{"reason":"unauthorized"},"status":"error"}]"#, &mut v).await?;
    a.send(r#"["1","2","private:secret","anything",{}]"#)
        .await?;
    a.expect(r#"[null,"2","private:secret","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#, &mut v).await?;
    a.close().await;
    Ok(())
}

async fn v2_unmatched_topic_join(t: Target) -> Result {
    let mut a = open("A", &t, V2).await?;
    a.send(r#"["1","1","nope:1","phx_join",{}]"#).await?;
    a.expect(r#"[null,"1","nope:1","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#, &mut Vars::new()).await?;
    a.close().await;
    Ok(())
}

async fn v2_push_to_topic_not_joined(t: Target) -> Result {
    let mut v = Vars::new();
    let mut a = open("A", &t, V2).await?;
    a.send(r#"[null,"1","community:feed","new_post",{"body":"x"}]"#)
        .await?;
    a.expect(r#"[null,"1","community:feed","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#, &mut v).await?;
    a.send(r#"["5","2","community:feed","new_post",{"body":"x"}]"#)
        .await?;
    a.expect(r#"[null,"2","community:feed","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#, &mut v).await?;
    a.send(r#"["5","3","community:feed","phx_leave",{}]"#)
        .await?;
    a.expect(
        &format!(r#"["5","3","community:feed","phx_reply",{OK_EMPTY}]"#),
        &mut v,
    )
    .await?;
    a.close().await;
    Ok(())
}

async fn v2_stale_join_ref_is_dropped(t: Target) -> Result {
    let mut v = Vars::new();
    let mut a = open("A", &t, V2).await?;
    a.send(r#"["1","1","community:feed","phx_join",{}]"#)
        .await?;
    a.expect(
        &format!(r#"["1","1","community:feed","phx_reply",{OK_EMPTY}]"#),
        &mut v,
    )
    .await?;
    // Phoenix 1.8.12 drops it; 1.7.24 still answered, with the current join_ref.
    a.send(r#"["99","2","community:feed","ping",{"x":1}]"#)
        .await?;
    if !t.phoenix.drops_stale_join_refs() {
        a.expect(
            r#"["1","2","community:feed","phx_reply",{"response":{"x":1},"status":"ok"}]"#,
            &mut v,
        )
        .await?;
    }
    a.send(r#"["1","3","community:feed","ping",{"x":2}]"#)
        .await?;
    a.expect(
        r#"["1","3","community:feed","phx_reply",{"response":{"x":2},"status":"ok"}]"#,
        &mut v,
    )
    .await?;
    // A null join_ref is the current join.
    a.send(r#"[null,"4","community:feed","ping",{"x":3}]"#)
        .await?;
    a.expect(
        r#"["1","4","community:feed","phx_reply",{"response":{"x":3},"status":"ok"}]"#,
        &mut v,
    )
    .await?;
    a.close().await;
    Ok(())
}

async fn v2_duplicate_join(t: Target) -> Result {
    let mut v = Vars::new();
    let mut a = open("A", &t, V2).await?;
    a.send(r#"["1","1","community:feed","phx_join",{}]"#)
        .await?;
    a.expect(
        &format!(r#"["1","1","community:feed","phx_reply",{OK_EMPTY}]"#),
        &mut v,
    )
    .await?;
    a.send(r#"["2","2","community:feed","phx_join",{}]"#)
        .await?;
    a.expect(
        &format!(r#"["2","2","community:feed","phx_reply",{OK_EMPTY}]"#),
        &mut v,
    )
    .await?;
    a.expect(r#"["1","1","community:feed","phx_close",{}]"#, &mut v)
        .await?;
    a.send(r#"["2","3","community:feed","ping",{"after":"dup"}]"#)
        .await?;
    a.expect(
        r#"["2","3","community:feed","phx_reply",{"response":{"after":"dup"},"status":"ok"}]"#,
        &mut v,
    )
    .await?;
    // The old join_ref is stale now: dropped (answered by the new join in 1.7).
    a.send(r#"["1","4","community:feed","ping",{"old":"ref"}]"#)
        .await?;
    if t.phoenix.drops_stale_join_refs() {
        a.expect_silence(200).await?;
    } else {
        a.expect(
            r#"["2","4","community:feed","phx_reply",{"response":{"old":"ref"},"status":"ok"}]"#,
            &mut v,
        )
        .await?;
    }
    // A duplicate join with the same join_ref.
    a.send(r#"["2","5","community:feed","phx_join",{}]"#)
        .await?;
    a.expect(
        &format!(r#"["2","5","community:feed","phx_reply",{OK_EMPTY}]"#),
        &mut v,
    )
    .await?;
    a.expect(r#"["2","2","community:feed","phx_close",{}]"#, &mut v)
        .await?;
    a.close().await;
    Ok(())
}

async fn v2_leave(t: Target) -> Result {
    let mut v = Vars::new();
    let mut a = open("A", &t, V2).await?;
    a.send(r#"["1","1","community:feed","phx_join",{}]"#)
        .await?;
    a.expect(
        &format!(r#"["1","1","community:feed","phx_reply",{OK_EMPTY}]"#),
        &mut v,
    )
    .await?;
    a.send(r#"["1","2","community:feed","phx_leave",{}]"#)
        .await?;
    a.expect(
        &format!(r#"["1","2","community:feed","phx_reply",{OK_EMPTY}]"#),
        &mut v,
    )
    .await?;
    a.expect(r#"["1","1","community:feed","phx_close",{}]"#, &mut v)
        .await?;
    a.send(r#"["1","3","community:feed","ping",{}]"#).await?;
    a.expect(r#"[null,"3","community:feed","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#, &mut v).await?;
    a.close().await;
    Ok(())
}

async fn v2_collection_join_reply(t: Target) -> Result {
    let mut a = open("A", &t, V2).await?;
    a.send(r#"["1","1","collection:abc","phx_join",{}]"#)
        .await?;
    a.expect(
        r#"["1","1","collection:abc","phx_reply",{"response":{"items":[]},"status":"ok"}]"#,
        &mut Vars::new(),
    )
    .await?;
    a.close().await;
    Ok(())
}

/// One presence entry, `{"metas":[…]}`, whose `phx_ref` (and time) are the placeholder `r`.
fn meta(r: &str) -> String {
    format!(r#"{{"metas":[{{"online_at":"{r}_at","phx_ref":"{r}"}}]}}"#)
}

async fn v2_presence(t: Target) -> Result {
    let topic = unique("channel:lobby");
    let mut v = Vars::new();
    let mut a = open("A", &t, V2).await?;
    let mut b = open("B", &t, "token=t2&vsn=2.0.0").await?;
    let f = |s: &str| s.replace("TOPIC", &topic);

    a.send(&f(r#"["1","1","TOPIC","phx_join",{"user_id":"u1"}]"#))
        .await?;
    a.expect(
        &f(&format!(r#"["1","1","TOPIC","phx_reply",{OK_EMPTY}]"#)),
        &mut v,
    )
    .await?;
    a.expect(
        &f(&format!(
            r#"[null,null,"TOPIC","presence_diff",{{"joins":{{"u1":{}}},"leaves":{{}}}}]"#,
            meta("$r1")
        )),
        &mut v,
    )
    .await?;
    a.expect(
        &f(&format!(
            r#"["1",null,"TOPIC","presence_state",{{"u1":{}}}]"#,
            meta("$r1")
        )),
        &mut v,
    )
    .await?;

    b.send(&f(r#"["3","3","TOPIC","phx_join",{"user_id":"u2"}]"#))
        .await?;
    b.expect(
        &f(&format!(r#"["3","3","TOPIC","phx_reply",{OK_EMPTY}]"#)),
        &mut v,
    )
    .await?;
    let join_u2 = |r: &str| {
        f(&format!(
            r#"[null,null,"TOPIC","presence_diff",{{"joins":{{"u2":{}}},"leaves":{{}}}}]"#,
            meta(r)
        ))
    };
    b.expect(&join_u2("$r2"), &mut v).await?;
    b.expect(
        &f(&format!(
            r#"["3",null,"TOPIC","presence_state",{{"u1":{},"u2":{}}}]"#,
            meta("$r1"),
            meta("$r2")
        )),
        &mut v,
    )
    .await?;
    a.expect(&join_u2("$r2"), &mut v).await?;

    b.send(&f(r#"["3","4","TOPIC","typing",{"who":"u2"}]"#))
        .await?;
    a.expect(&f(r#"[null,null,"TOPIC","typing",{"who":"u2"}]"#), &mut v)
        .await?;
    b.send(&f(r#"["3","5","TOPIC","new_msg",{"body":"hi"}]"#))
        .await?;
    a.expect(&f(r#"[null,null,"TOPIC","new_msg",{"body":"hi"}]"#), &mut v)
        .await?;
    // typing went to everyone but B: B's next frame is new_msg.
    b.expect(&f(r#"[null,null,"TOPIC","new_msg",{"body":"hi"}]"#), &mut v)
        .await?;

    b.send(&f(r#"["3","6","TOPIC","phx_leave",{}]"#)).await?;
    b.expect(
        &f(&format!(r#"["3","6","TOPIC","phx_reply",{OK_EMPTY}]"#)),
        &mut v,
    )
    .await?;
    b.expect(&f(r#"["3","3","TOPIC","phx_close",{}]"#), &mut v)
        .await?;
    let leave_u2 = |r: &str| {
        f(&format!(
            r#"[null,null,"TOPIC","presence_diff",{{"joins":{{}},"leaves":{{"u2":{}}}}}]"#,
            meta(r)
        ))
    };
    a.expect(&leave_u2("$r2"), &mut v).await?;

    b.send(&f(r#"["8","8","TOPIC","phx_join",{"user_id":"u2"}]"#))
        .await?;
    b.expect(
        &f(&format!(r#"["8","8","TOPIC","phx_reply",{OK_EMPTY}]"#)),
        &mut v,
    )
    .await?;
    b.expect(&join_u2("$r3"), &mut v).await?;
    b.expect(
        &f(&format!(
            r#"["8",null,"TOPIC","presence_state",{{"u1":{},"u2":{}}}]"#,
            meta("$r1"),
            meta("$r3")
        )),
        &mut v,
    )
    .await?;
    a.expect(&join_u2("$r3"), &mut v).await?;
    if v["$r3"] == v["$r2"] {
        return Err("a rejoin must get a new phx_ref".into());
    }
    b.drop_connection();
    a.expect(&leave_u2("$r3"), &mut v).await?;
    a.close().await;
    Ok(())
}

async fn v2_binary(t: Target) -> Result {
    let mut v = Vars::new();
    let mut a = open("A", &t, V2).await?;
    a.send(r#"["1","1","community:feed","phx_join",{}]"#)
        .await?;
    a.expect(
        &format!(r#"["1","1","community:feed","phx_reply",{OK_EMPTY}]"#),
        &mut v,
    )
    .await?;
    a.send_binary(unhex(
        "0001010e043132636f6d6d756e6974793a6665656470696e67010203ff",
    ))
    .await?;
    a.expect_binary(&unhex(
        "0101010e023132636f6d6d756e6974793a666565646f6b010203ff",
    ))
    .await?;
    a.send_binary(unhex(
        "0001010e083133636f6d6d756e6974793a666565646e65775f706f737462696e21",
    ))
    .await?;
    a.expect_binary(&unhex(
        "020e08636f6d6d756e6974793a666565646e65775f706f737462696e21",
    ))
    .await?;
    a.expect(
        &format!(r#"["1","3","community:feed","phx_reply",{OK_EMPTY}]"#),
        &mut v,
    )
    .await?;
    a.close().await;
    Ok(())
}

async fn v2_disconnect_by_socket_id(t: Target) -> Result {
    let Some(control) = t.control.clone() else {
        return Err(format!(
            "{NOT_RUN}needs server-side access to broadcast \"disconnect\""
        ));
    };
    let token = unique("t9-");
    let mut a = open("A", &t, &format!("token={token}&vsn=2.0.0")).await?;
    let mut other = open("B", &t, V2).await?;
    a.send(r#"["1","1","community:feed","phx_join",{}]"#)
        .await?;
    a.expect(
        &format!(r#"["1","1","community:feed","phx_reply",{OK_EMPTY}]"#),
        &mut Vars::new(),
    )
    .await?;
    control.disconnect(&format!("users_socket:{token}"));
    // 1001 (Phoenix 1.8.8+), so phoenix.js reconnects; 1000 before.
    a.expect_close(t.phoenix.disconnect_code()).await?;
    // Only that socket.
    other.send(r#"[null,"1","phoenix","heartbeat",{}]"#).await?;
    other
        .expect(
            &format!(r#"[null,"1","phoenix","phx_reply",{OK_EMPTY}]"#),
            &mut Vars::new(),
        )
        .await?;
    other.close().await;
    Ok(())
}

async fn v2_numeric_ref_unknown_phoenix_event_and_ws_ping(t: Target) -> Result {
    let mut v = Vars::new();
    let mut a = open("A", &t, V2).await?;
    a.send(r#"[null,1,"phoenix","heartbeat",{}]"#).await?;
    a.expect(
        &format!(r#"[null,1,"phoenix","phx_reply",{OK_EMPTY}]"#),
        &mut v,
    )
    .await?;
    a.send(r#"[null,"2","phoenix","other",{}]"#).await?;
    a.expect(r#"[null,"2","phoenix","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#, &mut v).await?;
    a.ping(b"hi").await?;
    a.expect_pong(b"hi").await?;
    a.close().await;
    Ok(())
}

async fn v2_join_crash(t: Target) -> Result {
    let mut a = open("A", &t, V2).await?;
    a.send(r#"["1","1","channel:x","phx_join","notamap"]"#)
        .await?;
    a.expect(r#"["1","1","channel:x","phx_reply",{"response":{"reason":"join crashed"},"status":"error"}]"#, &mut Vars::new()).await?;
    // The socket lives on.
    a.send(r#"[null,"2","phoenix","heartbeat",{}]"#).await?;
    a.expect(
        &format!(r#"[null,"2","phoenix","phx_reply",{OK_EMPTY}]"#),
        &mut Vars::new(),
    )
    .await?;
    a.close().await;
    Ok(())
}

async fn v2_channel_crash(t: Target) -> Result {
    let mut v = Vars::new();
    let mut a = open("A", &t, V2).await?;
    a.send(r#"["1","1","community:feed","phx_join",{}]"#)
        .await?;
    a.expect(
        &format!(r#"["1","1","community:feed","phx_reply",{OK_EMPTY}]"#),
        &mut v,
    )
    .await?;
    a.send(r#"["5","5","collection:abc","phx_join",{}]"#)
        .await?;
    a.expect(
        r#"["5","5","collection:abc","phx_reply",{"response":{"items":[]},"status":"ok"}]"#,
        &mut v,
    )
    .await?;
    a.send(r#"["5","6","collection:abc","whatever",{}]"#)
        .await?;
    a.expect(
        &format!(
            r#"["5","5","collection:abc","phx_error",{}]"#,
            t.phoenix.crash_payload()
        ),
        &mut v,
    )
    .await?;
    a.send(r#"["5","7","collection:abc","whatever",{}]"#)
        .await?;
    a.expect(r#"[null,"7","collection:abc","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#, &mut v).await?;
    // The socket and its other channel live on.
    a.send(r#"[null,"8","phoenix","heartbeat",{}]"#).await?;
    a.expect(
        &format!(r#"[null,"8","phoenix","phx_reply",{OK_EMPTY}]"#),
        &mut v,
    )
    .await?;
    a.send(r#"["1","9","community:feed","ping",{"still":"here"}]"#)
        .await?;
    a.expect(
        r#"["1","9","community:feed","phx_reply",{"response":{"still":"here"},"status":"ok"}]"#,
        &mut v,
    )
    .await?;
    a.close().await;
    Ok(())
}

async fn v2_crash_with_presence(t: Target) -> Result {
    let topic = unique("channel:crash");
    let f = |s: &str| s.replace("TOPIC", &topic);
    let mut v = Vars::new();
    let mut a = open("A", &t, V2).await?;
    let mut b = open("B", &t, "token=t2&vsn=2.0.0").await?;
    a.send(&f(r#"["1","1","TOPIC","phx_join",{"user_id":"ua"}]"#))
        .await?;
    a.expect(
        &f(&format!(r#"["1","1","TOPIC","phx_reply",{OK_EMPTY}]"#)),
        &mut v,
    )
    .await?;
    a.expect(
        &f(&format!(
            r#"[null,null,"TOPIC","presence_diff",{{"joins":{{"ua":{}}},"leaves":{{}}}}]"#,
            meta("$ra")
        )),
        &mut v,
    )
    .await?;
    a.expect(
        &f(&format!(
            r#"["1",null,"TOPIC","presence_state",{{"ua":{}}}]"#,
            meta("$ra")
        )),
        &mut v,
    )
    .await?;
    b.send(&f(r#"["2","2","TOPIC","phx_join",{"user_id":"ub"}]"#))
        .await?;
    b.expect(
        &f(&format!(r#"["2","2","TOPIC","phx_reply",{OK_EMPTY}]"#)),
        &mut v,
    )
    .await?;
    let join_ub = f(&format!(
        r#"[null,null,"TOPIC","presence_diff",{{"joins":{{"ub":{}}},"leaves":{{}}}}]"#,
        meta("$rb")
    ));
    a.expect(&join_ub, &mut v).await?;
    b.expect(&join_ub, &mut v).await?;
    b.expect(
        &f(&format!(
            r#"["2",null,"TOPIC","presence_state",{{"ua":{},"ub":{}}}]"#,
            meta("$ra"),
            meta("$rb")
        )),
        &mut v,
    )
    .await?;
    b.send(&f(r#"["2","3","TOPIC","boom",{}]"#)).await?;
    b.expect(
        &f(&format!(
            r#"["2","2","TOPIC","phx_error",{}]"#,
            t.phoenix.crash_payload()
        )),
        &mut v,
    )
    .await?;
    a.expect(
        &f(&format!(
            r#"[null,null,"TOPIC","presence_diff",{{"joins":{{}},"leaves":{{"ub":{}}}}}]"#,
            meta("$rb")
        )),
        &mut v,
    )
    .await?;
    a.close().await;
    b.close().await;
    Ok(())
}

async fn v2_wrong_arity_closes(t: Target) -> Result {
    let mut a = open("A", &t, V2).await?;
    a.send(r#"[null,"1","phoenix","heartbeat"]"#).await?;
    a.expect_close(1011).await
}

async fn v2_malformed_frames_close(t: Target) -> Result {
    let mut a = open("A", &t, V2).await?;
    a.send("not json").await?;
    a.expect_close(1011).await?;
    let mut a2 = open("A2", &t, V2).await?;
    a2.send(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#)
        .await?;
    a2.expect_close(1011).await?;
    let mut a3 = open("A3", &t, V2).await?;
    a3.send_binary(vec![0x01, 0x00]).await?;
    a3.expect_close(1011).await
}

/// 100 channels per socket (Phoenix 1.7.24+ and 1.8.9+): the 101st join is refused and the
/// socket lives on.
async fn v2_channel_limit(t: Target) -> Result {
    let mut v = Vars::new();
    let mut a = open("A", &t, V2).await?;
    for i in 1..=101 {
        a.send(&format!(
            r#"["{i}","{i}","collection:limit{i}","phx_join",{{}}]"#
        ))
        .await?;
    }
    for i in 1..=100 {
        a.expect(&format!(r#"["{i}","{i}","collection:limit{i}","phx_reply",{{"response":{{"items":[]}},"status":"ok"}}]"#), &mut v).await?;
    }
    a.expect(r#"["101","101","collection:limit101","phx_reply",{"response":{"reason":"too many channels joined"},"status":"error"}]"#, &mut v).await?;
    a.send(r#"[null,"hb","phoenix","heartbeat",{}]"#).await?;
    a.expect(
        &format!(r#"[null,"hb","phoenix","phx_reply",{OK_EMPTY}]"#),
        &mut v,
    )
    .await?;
    a.close().await;
    Ok(())
}

async fn v1_session(t: Target) -> Result {
    let topic = unique("channel:v1");
    let f = |s: &str| s.replace("TOPIC", &topic);
    let mut v = Vars::new();
    let mut a = open("A", &t, "token=t1&vsn=1.0.0").await?;
    let steps: &[(&str, &[&str])] = &[
        (
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#,
            &[
                r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1","topic":"phoenix"}"#,
            ],
        ),
        (
            r#"{"topic":"community:feed","event":"phx_join","payload":{},"ref":"2","join_ref":"2"}"#,
            &[
                r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"2","topic":"community:feed"}"#,
            ],
        ),
        (
            r#"{"topic":"community:feed","event":"ping","payload":{"x":1},"ref":"3","join_ref":"2"}"#,
            &[
                r#"{"event":"phx_reply","payload":{"response":{"x":1},"status":"ok"},"ref":"3","topic":"community:feed"}"#,
            ],
        ),
        (
            r#"{"topic":"community:feed","event":"new_post","payload":{"body":"v1"},"ref":"4","join_ref":"2"}"#,
            &[
                r#"{"event":"new_post","payload":{"body":"v1"},"ref":null,"topic":"community:feed"}"#,
                r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"4","topic":"community:feed"}"#,
            ],
        ),
        (
            r#"{"topic":"private:x","event":"phx_join","payload":{},"ref":"5","join_ref":"5"}"#,
            &[
                r#"{"event":"phx_reply","payload":{"response":{"reason":"unauthorized"},"status":"error"},"ref":"5","topic":"private:x"}"#,
            ],
        ),
        (
            r#"{"topic":"nope:1","event":"phx_join","payload":{},"ref":"6"}"#,
            &[
                r#"{"event":"phx_reply","payload":{"response":{"reason":"unmatched topic"},"status":"error"},"ref":"6","topic":"nope:1"}"#,
            ],
        ),
        (
            r#"{"topic":"collection:1","event":"ping","payload":{},"ref":"7"}"#,
            &[
                r#"{"event":"phx_reply","payload":{"response":{"reason":"unmatched topic"},"status":"error"},"ref":"7","topic":"collection:1"}"#,
            ],
        ),
        (
            r#"{"topic":"TOPIC","event":"phx_join","payload":{"user_id":"v1user"},"ref":"8"}"#,
            &[
                r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"8","topic":"TOPIC"}"#,
                r#"{"event":"presence_diff","payload":{"joins":{"v1user":{"metas":[{"online_at":"$t","phx_ref":"$r"}]}},"leaves":{}},"ref":null,"topic":"TOPIC"}"#,
                r#"{"event":"presence_state","payload":{"v1user":{"metas":[{"online_at":"$t","phx_ref":"$r"}]}},"ref":null,"topic":"TOPIC"}"#,
            ],
        ),
        (
            r#"{"topic":"community:feed","event":"phx_leave","payload":{},"ref":"9","join_ref":"2"}"#,
            &[
                r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"9","topic":"community:feed"}"#,
                r#"{"event":"phx_close","payload":{},"ref":"2","topic":"community:feed"}"#,
            ],
        ),
    ];
    for (send, expect) in steps {
        a.send(&f(send)).await?;
        for e in *expect {
            a.expect(&f(e), &mut v).await?;
        }
    }
    // V1 has no binary frames: one closes the socket.
    a.send_binary(unhex("00010101013031746501")).await?;
    a.expect_close(1011).await
}

async fn no_vsn_means_v1(t: Target) -> Result {
    let mut a = open("A", &t, "token=t1").await?;
    a.send(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#)
        .await?;
    a.expect(r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1","topic":"phoenix"}"#, &mut Vars::new()).await?;
    a.close().await;
    Ok(())
}

fn upgrade_request(t: &Target, query: &str, extra: &str) -> String {
    format!(
        "GET {}/websocket?{query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n",
        t.path(),
        t.host()
    )
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn http_upgrade_accepted(t: Target) -> Result {
    let (status, headers, _) = http(&t.host(), &upgrade_request(&t, V2, "")).await?;
    if status != 101 {
        return Err(format!("expected 101, got {status}"));
    }
    let accept = header(&headers, "sec-websocket-accept");
    if accept != Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") {
        return Err(format!("sec-websocket-accept {accept:?}"));
    }
    if header(&headers, "upgrade")
        .map(str::to_lowercase)
        .as_deref()
        != Some("websocket")
    {
        return Err(format!("upgrade header: {headers:?}"));
    }
    Ok(())
}

async fn expect_403(t: &Target, query: &str) -> Result {
    let (status, _, body) = http(&t.host(), &upgrade_request(t, query, "")).await?;
    if status != 403 || !body.is_empty() {
        return Err(format!(
            "expected 403 with an empty body, got {status} {:?}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(())
}

async fn http_refused_connect(t: Target) -> Result {
    expect_403(&t, "token=bad&vsn=2.0.0").await
}

async fn http_unsupported_vsn(t: Target) -> Result {
    expect_403(&t, "token=t1&vsn=3.0.0").await?;
    expect_403(&t, "token=t1&vsn=2.1.0").await?;
    expect_403(&t, "token=t1&vsn=banana").await
}

async fn http_plain_get(t: Target) -> Result {
    let req = format!(
        "GET {}/websocket?token=t1&vsn=2.0.0 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        t.path(),
        t.host()
    );
    let (status, _, _) = http(&t.host(), &req).await?;
    if status != 400 {
        return Err(format!("expected 400, got {status}"));
    }
    Ok(())
}

async fn http_unknown_path(t: Target) -> Result {
    let req = format!(
        "GET /nothing HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        t.host()
    );
    let (status, _, _) = http(&t.host(), &req).await?;
    if status != 404 {
        return Err(format!("expected 404, got {status}"));
    }
    Ok(())
}

async fn idle_socket_is_closed(t: Target) -> Result {
    let Some(idle) = t.idle_timeout else {
        return Err(format!("{NOT_RUN}takes the server's whole idle timeout (pass --idle-timeout-secs 60 to run it)"));
    };
    let mut a = open("A", &t, V2).await?;
    a.send(r#"["1","1","collection:idle","phx_join",{}]"#)
        .await?;
    a.expect(
        r#"["1","1","collection:idle","phx_reply",{"response":{"items":[]},"status":"ok"}]"#,
        &mut Vars::new(),
    )
    .await?;
    let started = std::time::Instant::now();
    // Not before the timeout...
    a.expect_silence((idle.as_millis() as u64).saturating_sub(300))
        .await?;
    // ...and then with 1002, as Phoenix on Bandit.
    a.expect_close_within(1002, Duration::from_secs(3)).await?;
    let took = started.elapsed();
    if took > idle + Duration::from_secs(2) {
        return Err(format!("closed after {took:?}, timeout {idle:?}"));
    }
    Ok(())
}

/// What SwiftPhoenixClient 5.3.4 sends for `Socket(url, params: ["token": "abc"])`, `onOpen`,
/// `connect()`, `channel("community:feed")`, `join()`, a ping pushed while joining, a heartbeat,
/// then a second channel that crashes and is rejoined after 1 s, then left. Refs come from one
/// counter that callback registrations and channel creation also consume (3 -> first join "4").
/// Every frame it receives must also pass Swift's parser: a text array of 5 with string topic
/// and event and an object payload, or Swift silently drops it.
async fn swift_phoenix_client_session(t: Target) -> Result {
    let mut v = Vars::new();
    // Swift puts vsn first.
    let mut s = open("Swift", &t, "vsn=2.0.0&token=abc").await?;
    let crash = format!(
        r#"["10","10","collection:abc","phx_error",{}]"#,
        t.phoenix.crash_payload()
    );
    let steps: &[(&str, &[&str])] = &[
        (
            r#"["4","4","community:feed","phx_join",{}]"#,
            &[r#"["4","4","community:feed","phx_reply",{"response":{},"status":"ok"}]"#],
        ),
        // The push queued while joining got ref 5 and is sent with ref 6.
        (
            r#"["4","6","community:feed","ping",{"x":1}]"#,
            &[r#"["4","6","community:feed","phx_reply",{"response":{"x":1},"status":"ok"}]"#],
        ),
        (
            r#"[null,"7","phoenix","heartbeat",{}]"#,
            &[r#"[null,"7","phoenix","phx_reply",{"response":{},"status":"ok"}]"#],
        ),
        // channel("collection:abc") takes refs 8 and 9, its join 10.
        (
            r#"["10","10","collection:abc","phx_join",{}]"#,
            &[
                r#"["10","10","collection:abc","phx_reply",{"response":{"items":[]},"status":"ok"}]"#,
            ],
        ),
        (r#"["10","11","collection:abc","whatever",{}]"#, &[&crash]),
        // Rejoin after the 1 s backoff, with a fresh ref as join_ref.
        (
            r#"["12","12","collection:abc","phx_join",{}]"#,
            &[
                r#"["12","12","collection:abc","phx_reply",{"response":{"items":[]},"status":"ok"}]"#,
            ],
        ),
        (
            r#"["12","13","collection:abc","phx_leave",{}]"#,
            &[
                r#"["12","13","collection:abc","phx_reply",{"response":{},"status":"ok"}]"#,
                r#"["12","12","collection:abc","phx_close",{}]"#,
            ],
        ),
    ];
    for (i, (send, expect)) in steps.iter().enumerate() {
        if i == 5 {
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        s.send(send).await?;
        for e in *expect {
            match s.recv().await? {
                Frame::Text(text) => {
                    swift_parses(&text)?;
                    crate::matcher::matches(e, &text, &mut v)
                        .map_err(|err| format!("Swift: expected {e}\n   got {text}\n   ({err})"))?;
                }
                other => return Err(format!("Swift: expected text {e}, got {other:?}")),
            }
        }
    }
    s.close().await;
    Ok(())
}

/// SwiftPhoenixClient's `Message` parse rules (`Message.swift`): anything else is dropped.
fn swift_parses(text: &str) -> Result {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let a = v.as_array().ok_or("Swift needs an array")?;
    let ok = a.len() > 4
        && a[2].is_string()
        && a[3].is_string()
        && a[4].is_object()
        && (a[1].is_string() || a[1].is_null());
    if ok {
        Ok(())
    } else {
        Err(format!("Swift would drop {text}"))
    }
}

/// A LongPoll session of the suite: its session token and query.
struct Lp {
    t: Target,
    vsn: &'static str,
    token: String,
}

const JSON: (&str, &str) = ("content-type", "application/json");
const NDJSON: (&str, &str) = ("content-type", "application/x-ndjson");

impl Lp {
    /// `GET` without a session: `{"messages":[],"status":410,"token":…}`.
    async fn open(t: &Target, vsn: &'static str) -> Result<Lp> {
        let (status, headers, body) =
            crate::client::longpoll(t, "GET", &format!("token=t1&vsn={vsn}"), &[], "").await?;
        lp_headers(status, &headers)?;
        let token = body["token"]
            .as_str()
            .ok_or(format!("no token in {body}"))?
            .to_owned();
        if body != serde_json::json!({"messages": [], "status": 410, "token": token}) {
            return Err(format!("session start: {body}"));
        }
        Ok(Lp {
            t: t.clone(),
            vsn,
            token,
        })
    }

    fn query(&self) -> String {
        format!("token={}&vsn={}", self.token, self.vsn)
    }

    async fn post(&self, content_type: (&str, &str), body: &str) -> Result {
        let (status, headers, resp) =
            crate::client::longpoll(&self.t, "POST", &self.query(), &[content_type], body).await?;
        lp_headers(status, &headers)?;
        if resp != serde_json::json!({"status": 200}) {
            return Err(format!("POST {body}: {resp}"));
        }
        Ok(())
    }

    /// `GET`: status 200 with exactly these messages (each matched as a frame) and our token.
    async fn poll(&self, expected: &[String], vars: &mut Vars) -> Result {
        let (status, headers, body) =
            crate::client::longpoll(&self.t, "GET", &self.query(), &[], "").await?;
        lp_headers(status, &headers)?;
        let keys: Vec<&String> = body
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        if keys != ["messages", "status", "token"]
            || body["status"] != 200
            || body["token"] != self.token.as_str()
        {
            return Err(format!("poll: {body}"));
        }
        let msgs = body["messages"].as_array().ok_or("messages")?;
        if msgs.len() != expected.len() {
            return Err(format!(
                "poll: {} messages, expected {}: {body}",
                msgs.len(),
                expected.len()
            ));
        }
        for (m, e) in msgs.iter().zip(expected) {
            let m = m.as_str().ok_or(format!("message {m} is not a string"))?;
            crate::matcher::matches(e, m, vars)
                .map_err(|err| format!("poll: expected {e}\n   got {m}\n   ({err})"))?;
        }
        Ok(())
    }
}

/// Every LongPoll answer is HTTP 200, JSON, and open to any origin.
fn lp_headers(status: u16, headers: &[(String, String)]) -> Result {
    let ok = status == 200
        && header(headers, "access-control-allow-origin") == Some("*")
        && header(headers, "content-type").is_some_and(|c| c.starts_with("application/json"));
    if ok {
        Ok(())
    } else {
        Err(format!("longpoll answer {status} {headers:?}"))
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

async fn lp_session(t: Target) -> Result {
    let mut v = Vars::new();
    let lp = Lp::open(&t, "2.0.0").await?;
    lp.post(JSON, r#"["1","1","community:feed","phx_join",{}]"#)
        .await?;
    lp.poll(
        &s(&[r#"["1","1","community:feed","phx_reply",{"response":{},"status":"ok"}]"#]),
        &mut v,
    )
    .await?;
    lp.post(NDJSON, "[\"1\",\"2\",\"community:feed\",\"ping\",{\"x\":1}]\n[\"1\",\"3\",\"community:feed\",\"new_post\",{\"body\":\"lp\"}]").await?;
    lp.poll(
        &s(&[
            r#"["1","2","community:feed","phx_reply",{"response":{"x":1},"status":"ok"}]"#,
            r#"[null,null,"community:feed","new_post",{"body":"lp"}]"#,
            r#"["1","3","community:feed","phx_reply",{"response":{},"status":"ok"}]"#,
        ]),
        &mut v,
    )
    .await?;
    for body in [
        r#"[null,"4","phoenix","heartbeat",{}]"#,
        r#"["5","5","private:x","phx_join",{}]"#,
        r#"["6","6","nope:1","phx_join",{}]"#,
        r#"[null,"7","collection:z","ping",{}]"#,
        r#"["8","8","collection:z","phx_join",{}]"#,
    ] {
        lp.post(JSON, body).await?;
    }
    lp.poll(&s(&[
        r#"[null,"4","phoenix","phx_reply",{"response":{},"status":"ok"}]"#,
        r#"["5","5","private:x","phx_reply",{"response":{"reason":"unauthorized"},"status":"error"}]"#,
        r#"[null,"6","nope:1","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#,
        r#"[null,"7","collection:z","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#,
        r#"["8","8","collection:z","phx_reply",{"response":{"items":[]},"status":"ok"}]"#,
    ]), &mut v).await?;
    let topic = unique("channel:lobby");
    lp.post(
        JSON,
        &format!(r#"["9","9","{topic}","phx_join",{{"user_id":"lpuser"}}]"#),
    )
    .await?;
    let meta = r#"{"metas":[{"online_at":"$t","phx_ref":"$r"}]}"#;
    lp.poll(&[
        format!(r#"["9","9","{topic}","phx_reply",{{"response":{{}},"status":"ok"}}]"#),
        format!(r#"[null,null,"{topic}","presence_diff",{{"joins":{{"lpuser":{meta}}},"leaves":{{}}}}]"#),
        format!(r#"["9",null,"{topic}","presence_state",{{"lpuser":{meta}}}]"#),
    ], &mut v).await?;
    lp.post(JSON, r#"["1","10","community:feed","phx_leave",{}]"#)
        .await?;
    lp.poll(
        &s(&[
            r#"["1","10","community:feed","phx_reply",{"response":{},"status":"ok"}]"#,
            r#"["1","1","community:feed","phx_close",{}]"#,
        ]),
        &mut v,
    )
    .await
}

async fn lp_empty_poll_waits_then_204(t: Target) -> Result {
    let lp = Lp::open(&t, "2.0.0").await?;
    let started = std::time::Instant::now();
    let (status, _, body) = crate::client::longpoll(&t, "GET", &lp.query(), &[], "").await?;
    let took = started.elapsed();
    if status != 200
        || body != serde_json::json!({"messages": [], "status": 204, "token": lp.token})
    {
        return Err(format!("expected 204 poll, got {status} {body}"));
    }
    if took < Duration::from_secs(9) || took > Duration::from_secs(12) {
        return Err(format!(
            "the poll window should be about 10 s, took {took:?}"
        ));
    }
    Ok(())
}

async fn lp_invalid_session_token(t: Target) -> Result {
    let (_, _, body) = crate::client::longpoll(
        &t,
        "POST",
        "token=garbage&vsn=2.0.0",
        &[JSON],
        r#"[null,"1","phoenix","heartbeat",{}]"#,
    )
    .await?;
    if body != serde_json::json!({"status": 410}) {
        return Err(format!("POST with a bad token: {body}"));
    }
    // A GET without a valid session starts a new one.
    Lp::open(&t, "2.0.0").await.map(|_| ())
}

async fn lp_refused_connect_and_vsn(t: Target) -> Result {
    for q in ["token=bad&vsn=2.0.0", "token=t1&vsn=3.0.0"] {
        let (status, headers, body) = crate::client::longpoll(&t, "GET", q, &[], "").await?;
        lp_headers(status, &headers)?;
        if body != serde_json::json!({"status": 403}) {
            return Err(format!("GET ?{q}: {body}"));
        }
    }
    Ok(())
}

async fn lp_options_and_other_methods(t: Target) -> Result {
    let (status, headers, _) = crate::client::longpoll(
        &t,
        "OPTIONS",
        "token=t1&vsn=2.0.0",
        &[("access-control-request-headers", "x-phoenix-longpoll-token")],
        "",
    )
    .await?;
    let want = [
        ("access-control-allow-origin", "*"),
        ("access-control-allow-methods", "get, post, options"),
        ("access-control-max-age", "3600"),
        ("access-control-allow-headers", "x-phoenix-longpoll-token"),
    ];
    if status != 200 || want.iter().any(|(k, v)| header(&headers, k) != Some(v)) {
        return Err(format!("OPTIONS: {status} {headers:?}"));
    }
    let (status, headers, body) =
        crate::client::longpoll(&t, "DELETE", "token=t1&vsn=2.0.0", &[], "").await?;
    if status != 400
        || !body.is_null()
        || header(&headers, "access-control-allow-origin") != Some("*")
    {
        return Err(format!("DELETE: {status} {headers:?} {body}"));
    }
    Ok(())
}

async fn lp_v1(t: Target) -> Result {
    let lp = Lp::open(&t, "1.0.0").await?;
    lp.post(
        JSON,
        r#"{"topic":"community:feed","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}"#,
    )
    .await?;
    lp.post(JSON, r#"{"topic":"community:feed","event":"new_post","payload":{"v":1},"ref":"2","join_ref":"1"}"#).await?;
    lp.poll(&s(&[
        r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1","topic":"community:feed"}"#,
        r#"{"event":"new_post","payload":{"v":1},"ref":null,"topic":"community:feed"}"#,
        r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"2","topic":"community:feed"}"#,
    ]), &mut Vars::new()).await
}
