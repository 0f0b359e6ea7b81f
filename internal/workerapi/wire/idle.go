package wire

import (
	"io"
	"net/http"
	"time"
)

// UploadIdleTimeout is how long an upload may send nothing before it is cut off. Uploads have no size or total
// time limit (they stream), so without it a client trickling a byte a minute would hold a gateway connection, a
// worker connection, an agent stream and a temporary file for ever.
const UploadIdleTimeout = 2 * time.Minute

// IdleBody returns body with a read deadline that moves forward before every read: the request fails once no byte
// arrives for idle. It relies on http.ResponseController; where the connection cannot take deadlines, body is
// read as it is.
func IdleBody(w http.ResponseWriter, body io.ReadCloser, idle time.Duration) io.ReadCloser {
	return &idleBody{ReadCloser: body, rc: http.NewResponseController(w), idle: idle}
}

type idleBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	idle time.Duration
}

func (b *idleBody) Read(p []byte) (int, error) {
	_ = b.rc.SetReadDeadline(time.Now().Add(b.idle)) // unsupported (HTTP/2 in tests, recorders): no deadline
	return b.ReadCloser.Read(p)
}
