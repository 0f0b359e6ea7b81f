package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"strings"
	"sync"
	"testing"
)

func encode(t testing.TB, typ FrameType, stream uint32, parts ...[]byte) []byte {
	t.Helper()
	b, err := AppendFrame(nil, typ, stream, parts...)
	if err != nil {
		t.Fatalf("AppendFrame: %v", err)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	frames := []Frame{
		{Type: FrameHello, Stream: 0, Payload: []byte(`{"protocol_version":1,"role":"client"}`)},
		{Type: FrameRequest, Stream: 1, Payload: []byte(`{"method":"health"}`)},
		{Type: FrameData, Stream: 3, Payload: DataPayload(ChannelStdout, all)},
		{Type: FrameEnd, Stream: 3, Payload: EndPayload(ChannelStderr)},
		{Type: FrameCancel, Stream: 0xffffffff},
		{Type: FrameWindow, Stream: 5, Payload: WindowPayload(12345)},
		{Type: FrameData, Stream: 7, Payload: DataPayload(ChannelStderr, bytes.Repeat([]byte{0xab}, MaxDataSize))},
		{Type: FrameResponse, Stream: 9, Payload: []byte(`{"result":{}}`)},
	}
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, f := range frames {
		if err := w.WriteFrame(f.Type, f.Stream, f.Payload); err != nil {
			t.Fatalf("WriteFrame(%s): %v", f.Type, err)
		}
	}
	r := NewReader(&buf)
	for i, want := range frames {
		got, err := r.ReadFrame()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if got.Type != want.Type || got.Stream != want.Stream || !bytes.Equal(got.Payload, want.Payload) {
			t.Fatalf("frame %d: got %s/%d/%d bytes, want %s/%d/%d bytes", i, got.Type, got.Stream, len(got.Payload),
				want.Type, want.Stream, len(want.Payload))
		}
	}
	if _, err := r.ReadFrame(); err != io.EOF {
		t.Fatalf("after last frame: got %v, want io.EOF", err)
	}

	ch, data, err := ParseData(frames[2].Payload)
	if err != nil || ch != ChannelStdout || !bytes.Equal(data, all) {
		t.Fatalf("ParseData: %v %v %d bytes", ch, err, len(data))
	}
	if ch, err := ParseEnd(frames[3].Payload); err != nil || ch != ChannelStderr {
		t.Fatalf("ParseEnd: %v %v", ch, err)
	}
	if n, err := ParseWindow(frames[5].Payload); err != nil || n != 12345 {
		t.Fatalf("ParseWindow: %v %v", n, err)
	}
}

func TestReadFrameRejects(t *testing.T) {
	header := func(length uint32, rest ...byte) []byte {
		return append(binary.BigEndian.AppendUint32(nil, length), rest...)
	}
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"too large", header(MaxFrameSize+1, 4, 0, 0, 0, 1), ErrFrameTooLarge},
		{"huge", header(0xffffffff), ErrFrameTooLarge},
		{"too short", header(4, 4, 0, 0, 0), ErrFrameTooShort},
		{"zero", header(0), ErrFrameTooShort},
		{"unknown type", header(5, 99, 0, 0, 0, 1), ErrUnknownFrameType},
		{"type zero", header(5, 0, 0, 0, 0, 1), ErrUnknownFrameType},
		{"truncated header", header(10, 4, 0), io.ErrUnexpectedEOF},
		{"truncated payload", header(10, 4, 0, 0, 0, 1, 1, 'a'), io.ErrUnexpectedEOF},
		{"partial length", []byte{0, 0}, io.ErrUnexpectedEOF},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewReader(bytes.NewReader(tc.in)).ReadFrame()
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// endless is a reader that never ends: a peer that claims a huge frame and then trickles bytes.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 0x41
	}
	return len(p), nil
}

func TestReadFrameDoesNotAllocateFromLength(t *testing.T) {
	// A length prefix of 4 GiB followed by an endless stream must be rejected without allocating it.
	in := io.MultiReader(bytes.NewReader([]byte{0xff, 0xff, 0xff, 0xff, byte(FrameData), 0, 0, 0, 1}), endless{})
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := NewReader(in).ReadFrame()
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("got %v, want ErrFrameTooLarge", err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<10 {
		t.Fatalf("rejecting an oversized frame allocated %d bytes", grew)
	}
}

func TestAppendFrameRejectsOversizedPayload(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	err := w.WriteFrame(FrameData, 1, []byte{1}, make([]byte, MaxDataSize+1))
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("got %v, want ErrFrameTooLarge", err)
	}
	if buf.Len() != 0 {
		t.Fatalf("a rejected frame wrote %d bytes", buf.Len())
	}
	// The writer is still usable: nothing was written.
	if err := w.WriteFrame(FrameCancel, 1); err != nil {
		t.Fatalf("write after rejected frame: %v", err)
	}
	if _, err := AppendFrame(nil, FrameType(42), 1); !errors.Is(err, ErrUnknownFrameType) {
		t.Fatalf("unknown type: got %v", err)
	}
}

type failWriter struct{ n int }

func (f *failWriter) Write(p []byte) (int, error) {
	f.n++
	return 0, errors.New("broken pipe")
}

func TestWriterErrorIsSticky(t *testing.T) {
	fw := &failWriter{}
	w := NewWriter(fw)
	if err := w.WriteFrame(FrameCancel, 1); err == nil {
		t.Fatal("expected an error")
	}
	if err := w.WriteFrame(FrameCancel, 3); err == nil || !strings.Contains(err.Error(), "broken pipe") {
		t.Fatalf("second write: %v", err)
	}
	if fw.n != 1 {
		t.Fatalf("writer wrote again after a failure (%d writes)", fw.n)
	}
}

func TestWriterConcurrentFramesStayWhole(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	var wg sync.WaitGroup
	const writers, each = 8, 200
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := bytes.Repeat([]byte{byte(g)}, 1000+g)
			for range each {
				if err := w.WriteFrame(FrameData, uint32(2*g+1), []byte{byte(ChannelStdout)}, data); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	r := NewReader(&buf)
	count := 0
	for {
		f, err := r.ReadFrame()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		g := int(f.Stream-1) / 2
		_, data, err := ParseData(f.Payload)
		if err != nil || len(data) != 1000+g || data[0] != byte(g) || data[len(data)-1] != byte(g) {
			t.Fatalf("frame of stream %d is mangled", f.Stream)
		}
		count++
	}
	if count != writers*each {
		t.Fatalf("read %d frames, want %d", count, writers*each)
	}
}

func TestPayloadParsersReject(t *testing.T) {
	if _, _, err := ParseData([]byte{1}); err == nil {
		t.Error("empty DATA accepted")
	}
	if _, _, err := ParseData([]byte{7, 'x'}); err == nil {
		t.Error("DATA on channel 7 accepted")
	}
	if _, err := ParseEnd(nil); err == nil {
		t.Error("empty END accepted")
	}
	if _, err := ParseWindow([]byte{0, 0, 0, 0}); err == nil {
		t.Error("zero WINDOW accepted")
	}
	if _, err := ParseWindow([]byte{0, 1}); err == nil {
		t.Error("short WINDOW accepted")
	}
}

func TestHelloWindow(t *testing.T) {
	if got := (Hello{}).EffectiveWindow(); got != DefaultWindow {
		t.Errorf("zero window: %d", got)
	}
	if got := (Hello{Window: 1 << 31}).EffectiveWindow(); got != MaxWindow {
		t.Errorf("huge window: %d", got)
	}
	if got := (Hello{Window: 4096}).EffectiveWindow(); got != 4096 {
		t.Errorf("4096 window: %d", got)
	}
}
