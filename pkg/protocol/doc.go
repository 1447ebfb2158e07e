// Package protocol is the wire contract between browsers, gateways and the
// presence service. It depends on the standard library and golang.org/x/text
// only, so every side of the wire can import it.
//
// # Transport
//
// Browsers speak websocket text frames to a gateway, on "/" or "/ws". The
// original client offers the subprotocol "json"; a gateway selects it when
// offered. Every frame is one JSON object, except the keepalive: the bare
// text Ping ("__ping__"), which a gateway answers with Ping to that client
// only and never forwards.
//
// # Client → gateway
//
//	{"type":"status","name":"alice","message":"is now online"}
//	{"type":"message","message":"hi","cid":"m-17"}
//	{"type":"who"}
//
// A connection has one handle, bound once: from the upgrade URL's ?handle=
// query parameter, else from the name of the first "status" frame. A later
// status frame changes nothing and is never relayed. The "name" of a
// "message" frame is ignored: a message is always shown under the handle of
// the connection that sent it. The optional "cid" (up to 64 bytes) is the
// client's own id for a message: it comes back in the stamped message, and
// in any error frame about it. Unknown fields are ignored.
//
// # Gateway → client
//
// Every JSON frame a gateway sends carries "name" and "message" as readable
// strings, because the original client renders each frame as
// name + ":" + message:
//
//	{"type":"message","id":"<unique>","name":"alice","message":"hi","ts":1733300000000}
//	{"type":"error","code":"bad_json","name":"error","message":"malformed JSON: ..."}
//	{"type":"status","state":"reconnecting","name":"server","message":"..."}
//
// A status frame says the gateway lost NATS ("reconnecting": messages are
// refused with error "unavailable" meanwhile, nothing is queued behind the
// client's back) or has it back ("connected").
//
// A "message" frame is also exactly what travels on the NATS subject "msg"
// (SubjectMsg): the gateway that accepted it stamps the handle, a unique id
// and its clock in unix milliseconds, and every gateway writes the payload
// unchanged to its sockets; its id also travels in the header HeaderMsgID.
// A gateway republishes a message until it sees it come back on "msg", and
// drops ids it has delivered already; one that lost NATS asks the others for
// what they accepted meanwhile (SubjectReplay). A message that cannot be
// confirmed within the gateway's delivery timeout earns its sender a
// "not_delivered" error frame with its cid.
//
// # Presence
//
// The presence service publishes join and leave notices on
// "presence.events", each payload exactly the client frame, which gateways
// forward unchanged:
//
//	{"type":"join","name":"bob","message":"joined","v":12,"ts":1733300000000}
//	{"type":"leave","name":"bob","message":"left","reason":"closed","v":13,"ts":1733300004000}
//
// After binding a handle, and on {"type":"who"}, a client is sent the roster:
//
//	{"type":"presence","name":"online","message":"alice, bob","handles":["alice","bob"],"v":12}
//
// v grows by one per notice and never goes backwards. A notice may reach a
// client before the roster it requested (they travel separately): a client
// keeps the notices it receives until its roster arrives, then applies those
// with a larger v than the roster's, in order. After that it applies only
// notices with a larger v than it has, and asks "who" again when it sees a
// gap. A roster lists at most MaxRosterHandles handles; its "count" is
// always the whole number online. A handle joins with its first session on any gateway and leaves, after
// a grace period that a reconnect cancels, with its last; leave reasons are
// the Reason constants.
//
// Gateways tell presence what is connected with three messages, all on
// presence.gw.<gateway>.<kind> (GatewaySubject):
//
//   - Delta (kind "delta"), at once, whenever a handle's session count on the
//     gateway changes. Deltas of one gateway instance are numbered by Seq.
//   - Heartbeat (kind "hb"), every interval: identity, interval, the last Seq,
//     and a Digest of the gateway's whole handle → sessions map. Its size is
//     the same for ten handles or ten million: nothing in it grows with them.
//   - Bye (kind "bye"), when the gateway drains.
//
// Presence applies Deltas in Seq order. When a Seq is skipped, a heartbeat's
// Seq is ahead of what it applied, or the digests disagree at equal Seq, it
// asks the gateway on presence.sync.<gateway> (SyncSubject) for its full
// state, which arrives as one or more SyncChunks. A new gateway, or a new
// instance of one (a restart), is synced the same way. So the steady-state
// cost per gateway is one small heartbeat per interval, and a full copy of
// its handles moves only when something went missing.
//
// A sync also says which of its handles the gateway has seen announced
// (SyncChunk.Unconfirmed, SyncChunk.Gone). A presence service keeps no
// storage: when it restarts it stays quiet for a warm-up, syncs every
// gateway that heartbeats, takes v on from the largest the gateways have
// seen, and then announces only what nobody was told: joins nobody saw,
// leaves nobody saw.
//
// "Who is online" is the NATS micro service "presence" with the endpoint
// presence.online (SubjectOnline), answering a Roster.
//
// # Errors and close codes
//
// Input that can be answered without ending the connection gets an error
// frame with a machine-readable code (the Code constants) and the connection
// stays open. Input that cannot gets a websocket close frame:
//
//	1001 going away      the gateway is shutting down
//	1002 protocol error  a malformed websocket frame
//	1003 unsupported     a binary frame
//	1007 invalid data    a text frame that is not UTF-8
//	1008 policy          a bad handle (after a bad_handle error frame), or a
//	                     client too slow to read what it is sent ("slow consumer")
//	1009 too big         a message over the gateway's size limit
//
// # Handles
//
// NormalizeHandle states the rules: surrounding white space trimmed, NFC
// normalised, 1–32 characters (code points), no control, format, private-use,
// unassigned or invisible characters, and a few names reserved for the
// gateway's own frames.
package protocol
