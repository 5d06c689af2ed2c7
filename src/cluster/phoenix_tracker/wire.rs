//! The tracker's messages as Elixir nodes (phoenix_pubsub 2.1) send them: the four `{pub, …}`
//! messages and the `Phoenix.Tracker.State` they carry, read from and written to Erlang terms.
//! Pure, no IO.
//!
//! Everything is read strictly: a shape Phoenix.Tracker would not send is refused with the
//! reason, never guessed at, since a wrong delta passed on would reach every node.

use crate::cluster::term::{self, Atoms, Encoder, Pid, Term};
use std::collections::{BTreeMap, BTreeSet};

const STATE_STRUCT: &str = "Elixir.Phoenix.Tracker.State";
const MAPSET_STRUCT: &str = "Elixir.MapSet";
/// The dispatcher of every tracker message on Redis.
const PUBSUB: &str = "Elixir.Phoenix.PubSub";

/// A replica: `{NodeName, Vsn}`, the vsn new at each start of the node's shard.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Replica {
    pub name: String,
    pub vsn: i128,
}

impl Replica {
    pub fn new(name: &str, vsn: i128) -> Replica {
        Replica {
            name: name.to_owned(),
            vsn,
        }
    }
}

/// For each replica, the last clock seen without a gap.
pub type Context = BTreeMap<Replica, u64>;

/// A dot: replica `replica`'s event number `clock`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag {
    pub replica: Replica,
    pub clock: u64,
}

/// A presence as the tracker holds it: `{Pid, Topic, Key, Meta}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub pid: Pid,
    pub topic: Vec<u8>,
    pub key: Vec<u8>,
    /// The metas' map, atom keys and all (`phx_ref`, the app's own).
    pub meta: Term,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Delta,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Up,
    Down,
}

/// `%Phoenix.Tracker.State{}` as it crosses the wire: a delta (`mode: :delta`, with values) or
/// the head of a full transfer (`mode: :normal`, `values: nil`). `pids` is always `nil` and
/// `delta` always `:unset` there.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub replica: Replica,
    pub context: Context,
    /// Dots seen past each replica's context; each set holds that replica's clocks.
    pub clouds: BTreeMap<Replica, BTreeSet<u64>>,
    /// `None` for `nil`.
    pub values: Option<BTreeMap<Tag, Entry>>,
    pub mode: Mode,
    pub replicas: BTreeMap<Replica, Status>,
    /// The clocks a delta spans, from and to.
    pub range: (Context, Context),
    /// Whether MapSets carry `version: 2` (Elixir up to 1.14 writes it; 1.15 and later do not).
    pub mapset_version: bool,
}

/// What a transfer answers with: a delta, or the whole state with its values apart.
#[derive(Debug, Clone, PartialEq)]
pub enum Transfer {
    Delta(State),
    Full(State, BTreeMap<Tag, Entry>),
}

/// A sender's clocks as it gossips them: its replica and its context.
pub type Clocks = (Replica, Context);

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `{pub, heartbeat, Ref, empty | Delta, Clocks}`.
    Heartbeat {
        from: Replica,
        delta: Option<State>,
        clocks: Clocks,
    },
    /// `{pub, transfer_req, ReqRef, Ref, Clocks}`: asks one replica for what it has.
    TransferReq {
        id: Term,
        from: Replica,
        clocks: Clocks,
    },
    /// `{pub, transfer_ack, ReqRef, Ref, Transfer}`.
    TransferAck {
        id: Term,
        from: Replica,
        transfer: Transfer,
    },
    /// `{pub, graceful_permdown, Ref}`: a replica leaving for good.
    GracefulPermdown { from: Replica },
}

/// Who a message is for: every node but the sender (`except`), or one node (`only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Except,
    Only,
}

/// A tracker message with phoenix_pubsub_redis's envelope: `{3, Route, Node, Topic, Msg,
/// Phoenix.PubSub}`, `Node` the sender for `except` and the receiver for `only`.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub route: Route,
    pub node: String,
    pub topic: Vec<u8>,
    pub message: Message,
}

/// Why a term is not a tracker message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad(pub String);

fn bad<T>(why: impl Into<String>) -> Result<T, Bad> {
    Err(Bad(why.into()))
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Envelope {
    pub fn from_term(t: &Term) -> Result<Envelope, Bad> {
        let Term::Tuple(f) = t else {
            return bad("not a tuple");
        };
        let [Term::Int(3), route, Term::Atom(node), Term::Binary(topic), msg, dispatcher] =
            f.as_slice()
        else {
            return bad("not a version 3 envelope");
        };
        if dispatcher.atom() != Some(PUBSUB) {
            return bad("dispatcher is not Phoenix.PubSub");
        }
        let route = match route.atom() {
            Some("except") => Route::Except,
            Some("only") => Route::Only,
            _ => return bad("unknown route"),
        };
        Ok(Envelope {
            route,
            node: node.clone(),
            topic: topic.clone(),
            message: Message::from_term(msg)?,
        })
    }

    pub fn to_term(&self) -> Term {
        let route = match self.route {
            Route::Except => "except",
            Route::Only => "only",
        };
        Term::Tuple(vec![
            Term::Int(3),
            atom(route),
            atom(&self.node),
            Term::Binary(self.topic.clone()),
            self.message.to_term(),
            atom(PUBSUB),
        ])
    }

    /// The bytes to PUBLISH, atoms written as `atoms` says.
    pub fn encode(&self, atoms: Atoms) -> Vec<u8> {
        let mut e = Encoder::with_atoms(atoms);
        e.term(&self.to_term());
        e.finish()
    }
}

impl Message {
    pub fn from_term(t: &Term) -> Result<Message, Bad> {
        let Term::Tuple(f) = t else {
            return bad("message is not a tuple");
        };
        match f.as_slice() {
            [Term::Atom(p), Term::Atom(k), from, delta, clocks]
                if p == "pub" && k == "heartbeat" =>
            {
                Ok(Message::Heartbeat {
                    from: replica(from)?,
                    delta: match delta {
                        Term::Atom(a) if a == "empty" => None,
                        d => Some(State::from_term(d)?),
                    },
                    clocks: self::clocks(clocks)?,
                })
            }
            [Term::Atom(p), Term::Atom(k), id, from, clocks]
                if p == "pub" && k == "transfer_req" =>
            {
                Ok(Message::TransferReq {
                    id: id.clone(),
                    from: replica(from)?,
                    clocks: self::clocks(clocks)?,
                })
            }
            [Term::Atom(p), Term::Atom(k), id, from, payload]
                if p == "pub" && k == "transfer_ack" =>
            {
                let transfer = match payload {
                    Term::Tuple(pair) => match pair.as_slice() {
                        [state, values] => {
                            Transfer::Full(State::from_term(state)?, self::values(values)?)
                        }
                        _ => return bad("transfer is a tuple but not {State, Values}"),
                    },
                    delta => Transfer::Delta(State::from_term(delta)?),
                };
                Ok(Message::TransferAck {
                    id: id.clone(),
                    from: replica(from)?,
                    transfer,
                })
            }
            [Term::Atom(p), Term::Atom(k), from] if p == "pub" && k == "graceful_permdown" => {
                Ok(Message::GracefulPermdown {
                    from: replica(from)?,
                })
            }
            _ => bad("not a Phoenix.Tracker message"),
        }
    }

    pub fn to_term(&self) -> Term {
        let head = |k: &str| vec![atom("pub"), atom(k)];
        Term::Tuple(match self {
            Message::Heartbeat {
                from,
                delta,
                clocks,
            } => {
                let mut t = head("heartbeat");
                t.push(replica_term(from));
                t.push(delta.as_ref().map_or_else(|| atom("empty"), State::to_term));
                t.push(clocks_term(clocks));
                t
            }
            Message::TransferReq { id, from, clocks } => {
                let mut t = head("transfer_req");
                t.extend([id.clone(), replica_term(from), clocks_term(clocks)]);
                t
            }
            Message::TransferAck { id, from, transfer } => {
                let mut t = head("transfer_ack");
                t.extend([id.clone(), replica_term(from)]);
                t.push(match transfer {
                    Transfer::Delta(s) => s.to_term(),
                    Transfer::Full(s, v) => Term::Tuple(vec![s.to_term(), values_term(v)]),
                });
                t
            }
            Message::GracefulPermdown { from } => {
                let mut t = head("graceful_permdown");
                t.push(replica_term(from));
                t
            }
        })
    }
}

impl State {
    pub fn from_term(t: &Term) -> Result<State, Bad> {
        let Term::Map(pairs) = t else {
            return bad("state is not a map");
        };
        if pairs.len() != 10 {
            return bad(format!("state has {} fields, not 10", pairs.len()));
        }
        let field = |k: &str| t.get(k).ok_or_else(|| Bad(format!("state has no {k}")));
        if field("__struct__")?.atom() != Some(STATE_STRUCT) {
            return bad("not a Phoenix.Tracker.State");
        }
        if field("pids")?.atom() != Some("nil") {
            return bad("state on the wire has pids");
        }
        if field("delta")?.atom() != Some("unset") {
            return bad("state on the wire has a delta");
        }
        let mode = match field("mode")?.atom() {
            Some("normal") => Mode::Normal,
            Some("delta") => Mode::Delta,
            _ => return bad("unknown mode"),
        };
        // Unknown without a cloud: then as Elixir 1.15 and later write it.
        let mut mapset_version = None;
        let Term::Map(cloud_pairs) = field("clouds")? else {
            return bad("clouds is not a map");
        };
        let mut clouds = BTreeMap::new();
        for (r, set) in cloud_pairs {
            let r = replica(r)?;
            let (tags, version) = mapset(set)?;
            mapset_version = Some(mapset_version.unwrap_or(true) && version);
            let mut clocks = BTreeSet::new();
            for tag in tags {
                if tag.replica != r {
                    return bad("a cloud holds another replica's dot");
                }
                clocks.insert(tag.clock);
            }
            clouds.insert(r, clocks);
        }
        let values = match field("values")? {
            Term::Atom(a) if a == "nil" => None,
            v => Some(values(v)?),
        };
        let Term::Map(replica_pairs) = field("replicas")? else {
            return bad("replicas is not a map");
        };
        let mut replicas = BTreeMap::new();
        for (r, s) in replica_pairs {
            let status = match s.atom() {
                Some("up") => Status::Up,
                Some("down") => Status::Down,
                _ => return bad("unknown replica status"),
            };
            replicas.insert(replica(r)?, status);
        }
        let range = match field("range")? {
            Term::Tuple(p) => match p.as_slice() {
                [from, to] => (context(from)?, context(to)?),
                _ => return bad("range is not a pair"),
            },
            _ => return bad("range is not a pair"),
        };
        Ok(State {
            replica: replica(field("replica")?)?,
            context: context(field("context")?)?,
            clouds,
            values,
            mode,
            replicas,
            range,
            mapset_version: mapset_version.unwrap_or(false),
        })
    }

    pub fn to_term(&self) -> Term {
        let clouds = (self.clouds.iter())
            .map(|(r, clocks)| {
                let tags = clocks.iter().map(|&clock| {
                    let tag = Tag {
                        replica: r.clone(),
                        clock,
                    };
                    (tag_term(&tag), Term::List(Vec::new()))
                });
                let mut set = vec![
                    (atom("__struct__"), atom(MAPSET_STRUCT)),
                    (atom("map"), Term::Map(tags.collect())),
                ];
                if self.mapset_version {
                    set.push((atom("version"), Term::Int(2)));
                }
                (replica_term(r), Term::Map(set))
            })
            .collect();
        let replicas = (self.replicas.iter())
            .map(|(r, s)| {
                let s = match s {
                    Status::Up => "up",
                    Status::Down => "down",
                };
                (replica_term(r), atom(s))
            })
            .collect();
        Term::Map(vec![
            (atom("__struct__"), atom(STATE_STRUCT)),
            (atom("clouds"), Term::Map(clouds)),
            (atom("context"), context_term(&self.context)),
            (atom("delta"), atom("unset")),
            (
                atom("mode"),
                atom(match self.mode {
                    Mode::Normal => "normal",
                    Mode::Delta => "delta",
                }),
            ),
            (atom("pids"), atom("nil")),
            (
                atom("range"),
                Term::Tuple(vec![
                    context_term(&self.range.0),
                    context_term(&self.range.1),
                ]),
            ),
            (atom("replica"), replica_term(&self.replica)),
            (atom("replicas"), Term::Map(replicas)),
            (
                atom("values"),
                self.values
                    .as_ref()
                    .map_or_else(|| atom("nil"), values_term),
            ),
        ])
    }
}

fn atom(a: &str) -> Term {
    Term::Atom(a.to_owned())
}

fn replica(t: &Term) -> Result<Replica, Bad> {
    match t {
        Term::Tuple(p) => match p.as_slice() {
            [Term::Atom(name), Term::Int(vsn)] => Ok(Replica {
                name: name.clone(),
                vsn: *vsn,
            }),
            _ => bad("replica is not {Name, Vsn}"),
        },
        _ => bad("replica is not {Name, Vsn}"),
    }
}

fn replica_term(r: &Replica) -> Term {
    Term::Tuple(vec![atom(&r.name), Term::Int(r.vsn)])
}

fn clock(t: &Term) -> Result<u64, Bad> {
    match t {
        Term::Int(n) => u64::try_from(*n).or_else(|_| bad("a clock is negative")),
        _ => bad("a clock is not an integer"),
    }
}

fn context(t: &Term) -> Result<Context, Bad> {
    let Term::Map(pairs) = t else {
        return bad("context is not a map");
    };
    pairs
        .iter()
        .map(|(r, c)| Ok((replica(r)?, clock(c)?)))
        .collect()
}

fn context_term(c: &Context) -> Term {
    Term::Map(
        c.iter()
            .map(|(r, n)| (replica_term(r), Term::Int(i128::from(*n))))
            .collect(),
    )
}

fn clocks(t: &Term) -> Result<Clocks, Bad> {
    match t {
        Term::Tuple(p) => match p.as_slice() {
            [r, c] => Ok((replica(r)?, context(c)?)),
            _ => bad("clocks is not {Ref, Context}"),
        },
        _ => bad("clocks is not {Ref, Context}"),
    }
}

fn clocks_term((r, c): &Clocks) -> Term {
    Term::Tuple(vec![replica_term(r), context_term(c)])
}

fn tag(t: &Term) -> Result<Tag, Bad> {
    match t {
        Term::Tuple(p) => match p.as_slice() {
            [r, c] => Ok(Tag {
                replica: replica(r)?,
                clock: clock(c)?,
            }),
            _ => bad("tag is not {Ref, Clock}"),
        },
        _ => bad("tag is not {Ref, Clock}"),
    }
}

fn tag_term(t: &Tag) -> Term {
    Term::Tuple(vec![
        replica_term(&t.replica),
        Term::Int(i128::from(t.clock)),
    ])
}

/// `%MapSet{map: %{Tag => []}}`: its tags, and whether it carried `version: 2`.
fn mapset(t: &Term) -> Result<(Vec<Tag>, bool), Bad> {
    if t.get("__struct__").and_then(Term::atom) != Some(MAPSET_STRUCT) {
        return bad("a cloud is not a MapSet");
    }
    let Some(Term::Map(members)) = t.get("map") else {
        return bad("a MapSet has no map");
    };
    let version = match t.get("version") {
        None => false,
        Some(Term::Int(2)) => true,
        Some(_) => return bad("a MapSet of another version"),
    };
    let tags = members
        .iter()
        .map(|(k, v)| match v {
            Term::List(l) if l.is_empty() => tag(k),
            _ => bad("a MapSet member's value is not []"),
        })
        .collect::<Result<_, _>>()?;
    Ok((tags, version))
}

fn values(t: &Term) -> Result<BTreeMap<Tag, Entry>, Bad> {
    let Term::Map(pairs) = t else {
        return bad("values is not a map");
    };
    pairs
        .iter()
        .map(|(k, v)| {
            let Term::Tuple(f) = v else {
                return bad("a value is not {Pid, Topic, Key, Meta}");
            };
            let [Term::Pid(pid), Term::Binary(topic), Term::Binary(key), meta @ Term::Map(_)] =
                f.as_slice()
            else {
                return bad("a value is not {Pid, Topic, Key, Meta}");
            };
            let entry = Entry {
                pid: (**pid).clone(),
                topic: topic.clone(),
                key: key.clone(),
                meta: meta.clone(),
            };
            Ok((tag(k)?, entry))
        })
        .collect()
}

fn values_term(v: &BTreeMap<Tag, Entry>) -> Term {
    Term::Map(
        v.iter()
            .map(|(t, e)| {
                let value = Term::Tuple(vec![
                    Term::Pid(Box::new(e.pid.clone())),
                    Term::Binary(e.topic.clone()),
                    Term::Binary(e.key.clone()),
                    e.meta.clone(),
                ]);
                (tag_term(t), value)
            })
            .collect(),
    )
}

/// Decodes one message from Redis into a tracker envelope.
pub fn decode(bytes: &[u8], bounds: term::Bounds) -> Result<Envelope, Bad> {
    let t = term::decode(bytes, bounds).map_err(|e| Bad(e.to_string()))?;
    Envelope::from_term(&t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::tests::capture;

    fn r(name: &str, vsn: i128) -> Replica {
        Replica::new(name, vsn)
    }

    const TOPIC: &[u8] = b"phx_presence:Elixir.PhoenixFixture.Presence_shard0";

    /// Reads a capture, checks it is what `check` expects, and writes it back byte for byte as
    /// the OTP 25 node that sent it did.
    fn golden(prefix: &str, mut check: impl FnMut(&Envelope)) {
        let bytes = capture(prefix);
        let env = decode(&bytes, term::Bounds::default()).unwrap();
        assert_eq!(env.topic, TOPIC);
        check(&env);
        assert_eq!(env.encode(Atoms::Otp25), bytes, "{prefix} written back");
        // And as OTP 26 writes it: the same message.
        let again = decode(&env.encode(Atoms::Otp26), term::Bounds::default()).unwrap();
        assert_eq!(again, env);
    }

    #[test]
    fn an_empty_heartbeat() {
        golden("07_", |env| {
            let phx1 = r("phx1", 1796005802013834);
            let phx2 = r("phx2", 1796005802870232);
            assert_eq!((env.route, env.node.as_str()), (Route::Except, "phx1"));
            assert_eq!(
                env.message,
                Message::Heartbeat {
                    from: phx1.clone(),
                    delta: None,
                    clocks: (phx1.clone(), Context::from([(phx1, 0), (phx2, 0)])),
                }
            );
        });
    }

    #[test]
    fn a_heartbeat_with_a_join() {
        golden("08_", |env| {
            let phx2 = r("phx2", 1796005873803970);
            let Message::Heartbeat {
                from,
                delta: Some(d),
                clocks,
            } = &env.message
            else {
                panic!("{:?}", env.message)
            };
            assert_eq!(from, &phx2);
            assert_eq!(clocks, &(phx2.clone(), Context::from([(phx2.clone(), 1)])));
            assert_eq!(d.mode, Mode::Delta);
            assert!(d.context.is_empty() && d.replicas.is_empty() && d.mapset_version);
            assert_eq!(
                d.clouds,
                BTreeMap::from([(phx2.clone(), BTreeSet::from([1]))])
            );
            assert_eq!(
                d.range,
                (
                    Context::from([(phx2.clone(), 0)]),
                    Context::from([(phx2.clone(), 1)])
                )
            );
            let values = d.values.as_ref().unwrap();
            let e = &values[&Tag {
                replica: phx2.clone(),
                clock: 1,
            }];
            assert_eq!(
                (&e.topic[..], &e.key[..]),
                (&b"channel:lobby"[..], &b"u2"[..])
            );
            assert_eq!(
                term::to_json(&e.meta).unwrap(),
                serde_json::json!({"online_at": "2026-11-30T02:31:22Z", "phx_ref": "GOyx1aasKdYYKwCC"})
            );
        });
    }

    #[test]
    fn a_transfer_request_and_its_answer() {
        let phx1 = r("phx1", 1796005961704246);
        let phx2 = r("phx2", 1796005990722661);
        let mut id = None;
        golden("09_", |env| {
            assert_eq!((env.route, env.node.as_str()), (Route::Only, "phx1"));
            let Message::TransferReq {
                id: req,
                from,
                clocks,
            } = &env.message
            else {
                panic!("{:?}", env.message)
            };
            assert!(matches!(req, Term::Ref(_)));
            id = Some(req.clone());
            assert_eq!(from, &phx2);
            let ctx = Context::from([(phx1.clone(), 0), (phx2.clone(), 1)]);
            assert_eq!(clocks, &(phx2.clone(), ctx));
        });
        golden("10_", |env| {
            assert_eq!((env.route, env.node.as_str()), (Route::Only, "phx2"));
            let Message::TransferAck {
                id: req,
                from,
                transfer: Transfer::Delta(d),
            } = &env.message
            else {
                panic!("{:?}", env.message)
            };
            // The request's reference comes back as it went.
            assert_eq!(id.as_ref(), Some(req));
            assert_eq!(from, &phx1);
            assert_eq!(d.clouds[&phx1], BTreeSet::from([1, 2, 3]));
            assert_eq!(d.clouds[&phx2], BTreeSet::from([1]));
            let keys: Vec<_> = (d.values.as_ref().unwrap().values())
                .map(|e| String::from_utf8_lossy(&e.key).into_owned())
                .collect();
            assert_eq!(keys, ["u1", "u3"]);
        });
    }

    #[test]
    fn a_full_transfer_and_a_graceful_permdown_round_trip() {
        let phx1 = r("phx1", 1796005961704246);
        let fawkes = r("fawkes-a1b2", 1796006000000001);
        let entry = Entry {
            pid: Pid {
                node: "fawkes-a1b2@fawkes".into(),
                id: 7,
                serial: 0,
                creation: 1,
            },
            topic: b"room:lobby".to_vec(),
            key: b"alice".to_vec(),
            meta: Term::Map(vec![(atom("phx_ref"), Term::Binary(b"F1".to_vec()))]),
        };
        let state = State {
            replica: fawkes.clone(),
            context: Context::from([(fawkes.clone(), 1), (phx1.clone(), 3)]),
            clouds: BTreeMap::new(),
            values: None,
            mode: Mode::Normal,
            replicas: BTreeMap::from([(phx1.clone(), Status::Up)]),
            range: (Context::new(), Context::new()),
            mapset_version: false,
        };
        let tag = Tag {
            replica: fawkes.clone(),
            clock: 1,
        };
        for message in [
            Message::TransferAck {
                id: Term::Ref(Box::new(term::Reference {
                    node: "phx1@host".into(),
                    creation: 3,
                    ids: vec![1, 2, 3],
                })),
                from: fawkes.clone(),
                transfer: Transfer::Full(state.clone(), BTreeMap::from([(tag, entry)])),
            },
            Message::GracefulPermdown { from: fawkes },
        ] {
            let env = Envelope {
                route: Route::Only,
                node: "phx1".into(),
                topic: TOPIC.to_vec(),
                message,
            };
            let bytes = env.encode(Atoms::Otp26);
            assert_eq!(decode(&bytes, term::Bounds::default()), Ok(env));
        }
    }

    #[test]
    fn what_phoenix_tracker_would_not_send_is_refused_with_why() {
        let why = |t: Term| Message::from_term(&t).unwrap_err().0;
        assert_eq!(why(atom("hello")), "message is not a tuple");
        assert_eq!(
            why(Term::Tuple(vec![atom("pub"), atom("gossip")])),
            "not a Phoenix.Tracker message"
        );
        let hb = |from: Term, delta: Term| {
            Term::Tuple(vec![
                atom("pub"),
                atom("heartbeat"),
                from,
                delta,
                Term::Tuple(vec![replica_term(&r("a", 1)), Term::Map(vec![])]),
            ])
        };
        assert_eq!(
            why(hb(atom("a"), atom("empty"))),
            "replica is not {Name, Vsn}"
        );
        assert_eq!(
            why(hb(replica_term(&r("a", 1)), Term::Map(vec![]))),
            "state has 0 fields, not 10"
        );
        // Every capture cut short or with a byte flipped is refused or read, never a panic.
        for prefix in ["07_", "08_", "09_", "10_"] {
            let bytes = capture(prefix);
            for cut in 0..bytes.len() {
                let _ = decode(&bytes[..cut], term::Bounds::default());
            }
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0x5a;
                if let Ok(env) = decode(&b, term::Bounds::default()) {
                    let _ = env.encode(Atoms::Otp26);
                }
            }
        }
    }
}
