//! Who may do what in a room: read it (public, or a member of a private one), write to it (a
//! member now, not as of the join), and what ends a membership. The channels and the REST
//! routes ask here, so they always agree.

use crate::accounts::User;
use crate::store::schema::{room_members, rooms};
use crate::store::{DbConnection, Refusal, StoreError};
use diesel::prelude::*;

pub(crate) struct Room {
    pub id: i64,
    pub name: String,
    pub private: bool,
}

/// A user's standing in a room.
pub(crate) struct Access {
    pub room: Room,
    /// `Some(admin)` for a member.
    pub member: Option<bool>,
    pub last_read_id: i64,
}

impl Access {
    pub fn can_read(&self) -> bool {
        !self.room.private || self.member.is_some()
    }

    pub fn is_admin(&self) -> bool {
        self.member == Some(true)
    }
}

/// The recorded event of the room's stream (`channel:<id>`) that ends a membership: recorded
/// there, it reaches every node in order with the room's messages (none committed after it is
/// delivered before it) and is caught up after a Redis outage like them.
pub const MEMBER_REMOVED: &str = "member_removed";

/// Whether a broadcast on a room's stream ends `user_id`'s membership: their `channel:`,
/// `thread:` and `voice:` channels of the room stop on it (see
/// [`crate::ChannelContext::stop_on_recorded`]).
pub fn ends_membership(user_id: i64) -> impl Fn(&crate::pubsub::Broadcast) -> bool + Send + Sync {
    move |b| {
        b.event == MEMBER_REMOVED
            && b.payload.json().and_then(|p| p.get("user_id")?.as_i64()) == Some(user_id)
    }
}

/// The room if the user may read it: 404 for no room, 403 for a private room they are not in.
pub(crate) fn readable(
    c: &mut DbConnection,
    room_id: i64,
    user: &User,
) -> Result<Access, StoreError> {
    let a = access(c, room_id, user.id)?.ok_or(Refusal::NotFound)?;
    if !a.can_read() {
        return Err(Refusal::Forbidden.into());
    }
    Ok(a)
}

/// What a push that writes to a room answers a non-member.
pub(crate) const NOT_A_MEMBER: &str =
    "not a member of this room: join it first (POST /api/channels/:id/members)";

/// The room if the user is a member of it now (pushes check this, not the join's view).
pub(crate) fn membership(
    c: &mut DbConnection,
    room_id: i64,
    user: &User,
) -> Result<Access, StoreError> {
    let a = readable(c, room_id, user)?;
    if a.member.is_none() {
        return Err(Refusal::Malformed(NOT_A_MEMBER.into()).into());
    }
    Ok(a)
}

/// The room and the user's membership in it; `None` if there is no such room.
pub(crate) fn access(
    c: &mut DbConnection,
    room_id: i64,
    user_id: i64,
) -> Result<Option<Access>, StoreError> {
    let Some((id, name, private)) = rooms::table
        .find(room_id)
        .select((rooms::id, rooms::name, rooms::private))
        .first::<(i64, String, i32)>(c)
        .optional()?
    else {
        return Ok(None);
    };
    let member = room_members::table
        .filter(room_members::room_id.eq(room_id))
        .filter(room_members::user_id.eq(user_id))
        .select((room_members::admin, room_members::last_read_id))
        .first::<(i32, i64)>(c)
        .optional()?;
    Ok(Some(Access {
        room: Room {
            id,
            name,
            private: private != 0,
        },
        member: member.map(|(admin, _)| admin != 0),
        last_read_id: member.map_or(0, |(_, r)| r),
    }))
}
