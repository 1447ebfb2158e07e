package protocol

// Error codes carried by "error" frames. The connection stays open after an
// error frame unless the code's comment says otherwise.
const (
	CodeBadJSON      = "bad_json"      // not a JSON object, or a field of the wrong type
	CodeUnknownType  = "unknown_type"  // "type" missing or not one this protocol knows
	CodeNoHandle     = "no_handle"     // a message before the connection has a handle
	CodeBadHandle    = "bad_handle"    // the handle breaks the rules; close 1008 follows
	CodeEmptyMessage = "empty_message" // a message with no visible text
	CodeUnavailable  = "unavailable"   // the gateway cannot take this right now; nothing was sent; try again
	CodeNotDelivered = "not_delivered" // a message was accepted but could not be confirmed delivered
	CodeRateLimited  = "rate_limited"  // over the rate limit: not sent; kept up, the connection closes with 1008
)

// Websocket close codes the gateway uses (RFC 6455 section 7.4.1).
const (
	CloseNormal        = 1000
	CloseGoingAway     = 1001 // the gateway is shutting down
	CloseProtocolError = 1002 // a malformed websocket frame
	CloseUnsupported   = 1003 // a binary frame
	CloseInvalidData   = 1007 // a text frame that is not UTF-8
	ClosePolicy        = 1008 // a bad handle, or a slow consumer
	CloseTooBig        = 1009 // a message over the size limit
)

// ErrorName is the "name" every error frame carries, so the original client
// shows "error:<message>".
const ErrorName = "error"

// Error is a problem reported to one client in an "error" frame.
type Error struct {
	Code    string // one of the Code constants
	Message string // human-readable, shown to the user
	CID     string // the client's id of the message this is about, if any
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// AppendJSON appends e's wire form, the "error" frame, to dst.
func (e *Error) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"type":"error","code":`...)
	dst = appendString(dst, e.Code)
	dst = append(dst, `,"name":"`+ErrorName+`","message":`...)
	dst = appendString(dst, e.Message)
	if e.CID != "" {
		dst = append(dst, `,"cid":`...)
		dst = appendString(dst, e.CID)
	}
	return append(dst, '}')
}
