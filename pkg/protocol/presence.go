package protocol

import (
	"hash/fnv"
	"strconv"
	"strings"
)

// HeaderMsgID is the NATS header carrying a chat message's id on SubjectMsg
// and replays, so gateways can drop duplicates without decoding the payload.
const HeaderMsgID = "Chat-Msg-Id"

// SubjectReplay is where a gateway that lost NATS asks the others for what
// it missed: a ReplayRequest. They answer on ReplaySubject(requester) with
// the messages they accepted since, each as it was on SubjectMsg.
const SubjectReplay = "chat.replay"

// ReplaySubject is where gateway gw receives replayed messages.
func ReplaySubject(gw string) string { return SubjectReplay + "." + gw }

// ReplayRequest asks for every message accepted since SinceMS (unix ms).
type ReplayRequest struct {
	Gateway string `json:"gw"`
	SinceMS int64  `json:"since"`
}

// Subjects of the presence protocol (see the package doc).
const (
	SubjectEvents     = "presence.events" // presence → everyone: join and leave frames
	SubjectOnline     = "presence.online" // the presence service's "who is online" endpoint
	SubjectGatewayAll = "presence.gw.>"   // every gateway → presence message
	ServiceName       = "presence"        // the NATS micro service name
)

// Kinds of gateway → presence messages, the last token of their subject.
const (
	KindHeartbeat = "hb"
	KindDelta     = "delta"
	KindBye       = "bye"
)

// GatewaySubject is the subject gateway gw publishes messages of kind on:
// presence.gw.<gw>.<kind>. One wildcard subscription receives them all, in
// the order each gateway sent them.
func GatewaySubject(gw, kind string) string { return "presence.gw." + gw + "." + kind }

// SyncSubject is where the presence service asks gateway gw for its full
// state: presence.sync.<gw>.
func SyncSubject(gw string) string { return "presence.sync." + gw }

// ValidID reports whether s can name a gateway or instance: it becomes a
// subject token, so it is 1–64 characters of [A-Za-z0-9_-].
func ValidID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Presence frame types.
const (
	TypeJoin     = "join"
	TypeLeave    = "leave"
	TypePresence = "presence"
)

// Reasons a handle left.
const (
	ReasonClosed      = "closed"       // its last session closed
	ReasonTimeout     = "timeout"      // its last session's peer stopped answering
	ReasonGatewayLost = "gateway-lost" // its gateway stopped heartbeating
	ReasonShutdown    = "shutdown"     // its gateway drained
)

// OnlineName is the "name" of presence frames: the original client shows
// "online:alice, bob".
const OnlineName = "online"

// Notice is a join or leave, as published on SubjectEvents and forwarded to
// clients byte for byte. V increases by one per notice.
type Notice struct {
	Type   string // TypeJoin or TypeLeave
	Name   string // the handle
	Reason string // leaves only
	V      uint64
	TS     int64 // unix milliseconds
}

// AppendJSON appends n's wire form to dst:
//
//	{"type":"join","name":"bob","message":"joined","v":12,"ts":...}
//	{"type":"leave","name":"bob","message":"left","reason":"closed","v":13,"ts":...}
func (n Notice) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"type":`...)
	dst = appendString(dst, n.Type)
	dst = append(dst, `,"name":`...)
	dst = appendString(dst, n.Name)
	if n.Type == TypeLeave {
		dst = append(dst, `,"message":"left","reason":`...)
		dst = appendString(dst, n.Reason)
	} else {
		dst = append(dst, `,"message":"joined"`...)
	}
	dst = append(dst, `,"v":`...)
	dst = strconv.AppendUint(dst, n.V, 10)
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, n.TS, 10)
	return append(dst, '}')
}

// Roster is who is online at version V: the presence service's answer on
// SubjectOnline, {"handles":[...],"count":N,"v":N}, handles sorted. A
// roster lists at most MaxRosterHandles handles (the first, in order);
// Count is always the whole number online.
type Roster struct {
	Handles []string `json:"handles"`
	Count   int      `json:"count"`
	V       uint64   `json:"v"`
}

// MaxRosterHandles caps the handles one roster lists, so it fits a NATS
// message and a websocket frame however many are online.
const MaxRosterHandles = 10_000

// rosterMessageHandles caps how many handles the readable message lists.
const rosterMessageHandles = 50

// AppendClientJSON appends the client frame for r to dst:
//
//	{"type":"presence","name":"online","message":"alice, bob","handles":["alice","bob"],"v":12}
func (r Roster) AppendClientJSON(dst []byte) []byte {
	dst = append(dst, `{"type":"presence","name":"online","message":`...)
	shown := r.Handles[:min(len(r.Handles), rosterMessageHandles)]
	msg := strings.Join(shown, ", ")
	switch {
	case len(r.Handles) == 0:
		msg = "nobody"
	case len(shown) < r.Count:
		msg += " and " + strconv.Itoa(r.Count-len(shown)) + " more"
	}
	dst = appendString(dst, msg)
	dst = append(dst, `,"handles":[`...)
	for i, h := range r.Handles {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, h)
	}
	dst = append(dst, `],"count":`...)
	dst = strconv.AppendInt(dst, int64(r.Count), 10)
	dst = append(dst, `,"v":`...)
	dst = strconv.AppendUint(dst, r.V, 10)
	return append(dst, '}')
}

// Heartbeat is a gateway's periodic "I am alive, and this is my state in
// brief". Its size does not depend on how many handles are connected: the
// handles themselves travel in Deltas, and the digest lets presence notice
// it has drifted (and ask for a SyncChunk) without them.
type Heartbeat struct {
	Gateway    string `json:"gw"`               // stable name: FLY_MACHINE_ID, or generated
	Instance   string `json:"inst"`             // new every process start
	Region     string `json:"region,omitempty"` // FLY_REGION
	IntervalMS int64  `json:"iv"`               // how often this gateway heartbeats
	Seq        uint64 `json:"seq"`              // its last Delta's Seq
	Digest     string `json:"dg"`               // Digest of its handle → sessions map
	Handles    int    `json:"n"`                // handles connected there
	Sessions   int    `json:"s"`                // sessions connected there
	V          uint64 `json:"v"`                // newest notice V it has seen, so a restarted presence continues from there
}

// Delta is one handle's session count on one gateway changing. It is sent
// the moment a session binds a handle or ends, so a join never waits for a
// heartbeat. Seq increases by one per Delta of a gateway instance; a gap
// tells presence it missed one.
type Delta struct {
	Gateway  string `json:"gw"`
	Instance string `json:"inst"`
	Seq      uint64 `json:"seq"`
	Handle   string `json:"h"`
	Sessions int    `json:"n"`           // the handle's sessions on this gateway, after the change
	Reason   string `json:"r,omitempty"` // why a session ended: a Reason constant
}

// Bye is a draining gateway's goodbye: its sessions are ending on purpose.
type Bye struct {
	Gateway  string `json:"gw"`
	Instance string `json:"inst"`
}

// SyncChunk is part of a gateway's full state, sent in answer to a request
// on its SyncSubject: Parts chunks of the same Instance and Seq, so a big
// gateway never exceeds the NATS payload limit.
//
// Besides its sessions, a gateway reports what it has seen announced, which
// is how a presence service that lost its memory (a restart) knows what
// everyone has been told: Unconfirmed lists handles with sessions here whose
// join it has not seen (no join notice, and no roster listing them, since
// their first session here), and Gone lists handles whose last session here
// ended without it seeing their leave.
type SyncChunk struct {
	Gateway     string         `json:"gw"`
	Instance    string         `json:"inst"`
	Region      string         `json:"region,omitempty"`
	IntervalMS  int64          `json:"iv"`
	Seq         uint64         `json:"seq"`
	V           uint64         `json:"v"`
	Part        int            `json:"part"`  // 0-based
	Parts       int            `json:"parts"` // at least 1
	Handles     map[string]int `json:"handles"`
	Unconfirmed []string       `json:"unconfirmed,omitempty"`
	Gone        []Gone         `json:"gone,omitempty"`
}

// Gone is a handle whose last session on a gateway ended AgoMS ago, and
// whose leave that gateway has not seen announced.
type Gone struct {
	Handle string `json:"h"`
	Reason string `json:"r"`
	AgoMS  int64  `json:"ago"`
}

// OnlineRequest is what a gateway sends on SubjectOnline. With it, presence
// answers only once it has applied that gateway's Deltas up to Seq, so a
// client's own connect is in the roster it is sent. An empty request (from
// a tool) is answered at once.
type OnlineRequest struct {
	Gateway  string `json:"gw,omitempty"`
	Instance string `json:"inst,omitempty"`
	Seq      uint64 `json:"seq,omitempty"`
}

// Digest summarises a handle → sessions map in 64 bits, independent of
// order, updated in O(1) per change: the sum of FNV-1a hashes of
// "handle\x00sessions" over the map's entries.
type Digest uint64

// Update moves the digest from a map where handle had old sessions to one
// where it has new; 0 means absent.
func (d *Digest) Update(handle string, old, new int) {
	if old > 0 {
		*d -= Digest(digestTerm(handle, old))
	}
	if new > 0 {
		*d += Digest(digestTerm(handle, new))
	}
}

func (d Digest) String() string { return strconv.FormatUint(uint64(d), 16) }

func digestTerm(handle string, n int) uint64 {
	h := fnv.New64a()
	h.Write([]byte(handle))
	var buf [21]byte
	b := append(buf[:0], 0)
	h.Write(strconv.AppendInt(b, int64(n), 10))
	return h.Sum64()
}
