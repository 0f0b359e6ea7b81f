package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

const (
	// lengthSize is the size of the length prefix; headerSize adds the type and the stream id.
	lengthSize = 4
	headerSize = lengthSize + 1 + 4

	// MaxFrameSize is the largest value of a frame's length prefix (type + stream id + payload).
	MaxFrameSize = 1 << 20
	// MaxPayloadSize is the largest payload a frame can carry.
	MaxPayloadSize = MaxFrameSize - (headerSize - lengthSize)
	// MaxDataSize is the most raw bytes one DATA frame carries (its payload starts with the channel byte).
	MaxDataSize = MaxPayloadSize - 1
)

// FrameType says what a frame carries.
type FrameType uint8

// Frame types of protocol version 1.
const (
	FrameHello    FrameType = 1
	FrameRequest  FrameType = 2
	FrameResponse FrameType = 3
	FrameData     FrameType = 4
	FrameEnd      FrameType = 5
	FrameCancel   FrameType = 6
	FrameWindow   FrameType = 7
	// FrameHeader carries a stream's metadata (JSON) before its first DATA; see FeatureFiles.
	FrameHeader FrameType = 8
)

func (t FrameType) valid() bool { return t >= FrameHello && t <= FrameHeader }

func (t FrameType) String() string {
	switch t {
	case FrameHello:
		return "HELLO"
	case FrameRequest:
		return "REQUEST"
	case FrameResponse:
		return "RESPONSE"
	case FrameData:
		return "DATA"
	case FrameEnd:
		return "END"
	case FrameCancel:
		return "CANCEL"
	case FrameWindow:
		return "WINDOW"
	case FrameHeader:
		return "HEADER"
	}
	return fmt.Sprintf("FrameType(%d)", uint8(t))
}

// Channel names one byte stream of a request.
type Channel uint8

// Channels of an exec stream.
const (
	ChannelStdin  Channel = 0
	ChannelStdout Channel = 1
	ChannelStderr Channel = 2
)

func (c Channel) valid() bool { return c <= ChannelStderr }

func (c Channel) String() string {
	switch c {
	case ChannelStdin:
		return "stdin"
	case ChannelStdout:
		return "stdout"
	case ChannelStderr:
		return "stderr"
	}
	return fmt.Sprintf("Channel(%d)", uint8(c))
}

// Frame is one decoded frame. Payload is owned by the frame: ReadFrame allocates it afresh, so a receiver may keep it.
type Frame struct {
	Type    FrameType
	Stream  uint32
	Payload []byte
}

// Decoding errors. Every one of them means the connection can no longer be trusted and must be closed.
var (
	ErrFrameTooLarge    = errors.New("protocol: frame too large")
	ErrFrameTooShort    = errors.New("protocol: frame too short")
	ErrUnknownFrameType = errors.New("protocol: unknown frame type")
	ErrBadPayload       = errors.New("protocol: malformed payload")
)

// Reader decodes frames from a byte stream. It is not safe for concurrent use; a connection has one reader.
type Reader struct {
	r   io.Reader
	hdr [headerSize]byte // reused so that reading a frame allocates only its payload
}

// NewReader returns a Reader on r. Wrap a network connection in a bufio.Reader first to save system calls.
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

// ReadFrame reads one frame. It returns io.EOF only when the stream ends cleanly between two frames and
// io.ErrUnexpectedEOF when it ends inside one. The length prefix is checked against MaxFrameSize, and the type
// against the known types, before anything is allocated, so a hostile or corrupt length cannot make it allocate
// more than MaxPayloadSize.
func (r *Reader) ReadFrame() (Frame, error) {
	if _, err := io.ReadFull(r.r, r.hdr[:lengthSize]); err != nil {
		return Frame{}, err
	}
	n := binary.BigEndian.Uint32(r.hdr[:lengthSize])
	if n > MaxFrameSize {
		return Frame{}, fmt.Errorf("%w: length %d exceeds %d", ErrFrameTooLarge, n, MaxFrameSize)
	}
	if n < headerSize-lengthSize {
		return Frame{}, fmt.Errorf("%w: length %d", ErrFrameTooShort, n)
	}
	if _, err := io.ReadFull(r.r, r.hdr[lengthSize:]); err != nil {
		return Frame{}, unexpected(err)
	}
	f := Frame{Type: FrameType(r.hdr[lengthSize]), Stream: binary.BigEndian.Uint32(r.hdr[lengthSize+1:])}
	if !f.Type.valid() {
		return Frame{}, fmt.Errorf("%w: %d", ErrUnknownFrameType, uint8(f.Type))
	}
	if size := int(n) - (headerSize - lengthSize); size > 0 {
		f.Payload = make([]byte, size)
		if _, err := io.ReadFull(r.r, f.Payload); err != nil {
			return Frame{}, unexpected(err)
		}
	}
	return f, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// AppendFrame appends the encoding of one frame to dst. The payload is the concatenation of parts, which lets
// DATA frames be written without first joining the channel byte and the data.
func AppendFrame(dst []byte, t FrameType, stream uint32, parts ...[]byte) ([]byte, error) {
	if !t.valid() {
		return dst, fmt.Errorf("%w: %d", ErrUnknownFrameType, uint8(t))
	}
	size := 0
	for _, p := range parts {
		size += len(p)
	}
	if size > MaxPayloadSize {
		return dst, fmt.Errorf("%w: payload of %d bytes exceeds %d", ErrFrameTooLarge, size, MaxPayloadSize)
	}
	dst = binary.BigEndian.AppendUint32(dst, uint32(size+headerSize-lengthSize))
	dst = append(dst, byte(t))
	dst = binary.BigEndian.AppendUint32(dst, stream)
	for _, p := range parts {
		dst = append(dst, p...)
	}
	return dst, nil
}

// Writer encodes frames onto a byte stream. It is safe for concurrent use: each frame goes out in one Write, so
// frames of concurrent streams never interleave inside each other. After a failed Write it keeps returning that
// error, because a partly written frame leaves the stream unusable.
type Writer struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
	err error
}

// NewWriter returns a Writer on w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// keepBuffer is the largest scratch buffer a Writer keeps between frames; bigger ones are dropped after use
// so that one large frame does not pin a megabyte per connection.
const keepBuffer = 128 << 10

// WriteFrame writes one frame whose payload is the concatenation of parts.
func (w *Writer) WriteFrame(t FrameType, stream uint32, parts ...[]byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	buf, err := AppendFrame(w.buf[:0], t, stream, parts...)
	if err != nil {
		return err // nothing was written: the stream is still good
	}
	if _, err := w.w.Write(buf); err != nil {
		w.err = fmt.Errorf("protocol: write %s frame: %w", t, err)
		return w.err
	}
	if cap(buf) <= keepBuffer {
		w.buf = buf
	}
	return nil
}

// DataPayload returns the payload of a DATA frame; mostly for tests, since writers pass the parts separately.
func DataPayload(ch Channel, data []byte) []byte {
	return append([]byte{byte(ch)}, data...)
}

// ParseData splits a DATA payload into its channel and bytes. The bytes alias the payload.
func ParseData(payload []byte) (Channel, []byte, error) {
	if len(payload) < 2 {
		return 0, nil, fmt.Errorf("%w: DATA of %d bytes", ErrBadPayload, len(payload))
	}
	ch := Channel(payload[0])
	if !ch.valid() {
		return 0, nil, fmt.Errorf("%w: DATA on unknown channel %d", ErrBadPayload, payload[0])
	}
	return ch, payload[1:], nil
}

// EndPayload returns the payload of an END frame.
func EndPayload(ch Channel) []byte { return []byte{byte(ch)} }

// ParseEnd returns the channel an END frame closes.
func ParseEnd(payload []byte) (Channel, error) {
	if len(payload) != 1 || !Channel(payload[0]).valid() {
		return 0, fmt.Errorf("%w: END payload %x", ErrBadPayload, payload)
	}
	return Channel(payload[0]), nil
}

// WindowPayload returns the payload of a WINDOW frame granting n more bytes of credit.
func WindowPayload(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }

// ParseWindow returns the credit a WINDOW frame grants.
func ParseWindow(payload []byte) (uint32, error) {
	if len(payload) != 4 {
		return 0, fmt.Errorf("%w: WINDOW of %d bytes", ErrBadPayload, len(payload))
	}
	n := binary.BigEndian.Uint32(payload)
	if n == 0 {
		return 0, fmt.Errorf("%w: WINDOW of zero", ErrBadPayload)
	}
	return n, nil
}
