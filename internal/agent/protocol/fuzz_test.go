package protocol

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"testing"
)

// FuzzReadFrame feeds arbitrary bytes to the decoder. It must never panic, never return a payload larger than
// MaxPayloadSize (so it never allocated more), and every frame it accepts must re-encode to the bytes it came
// from. The payload parsers run on whatever it accepts, too.
func FuzzReadFrame(f *testing.F) {
	seed := func(typ FrameType, stream uint32, parts ...[]byte) []byte {
		b, err := AppendFrame(nil, typ, stream, parts...)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(seed(FrameHello, 0, []byte(`{"protocol_version":1,"role":"client","window":262144}`)))
	f.Add(seed(FrameRequest, 1, []byte(`{"method":"exec","params":{"argv":["echo","hi"],"timeout_ns":1000}}`)))
	f.Add(seed(FrameResponse, 1, []byte(`{"result":{"exit_code":0,"duration_ns":5}}`)))
	f.Add(seed(FrameResponse, 3, []byte(`{"error":{"code":"bad_request","message":"no argv"}}`)))
	f.Add(seed(FrameData, 1, []byte{byte(ChannelStdout)}, []byte("hello\n")))
	f.Add(seed(FrameData, 1, []byte{byte(ChannelStderr)}, []byte{0, 1, 2, 0xff}))
	f.Add(seed(FrameEnd, 1, EndPayload(ChannelStdout)))
	f.Add(seed(FrameCancel, 5))
	f.Add(seed(FrameWindow, 5, WindowPayload(65536)))
	f.Add(append(seed(FrameCancel, 1), seed(FrameData, 3, []byte{1, 'x'})...))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 4, 0, 0, 0, 1})
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 5, 99, 0, 0, 0, 1})
	f.Add(binary.BigEndian.AppendUint32(nil, MaxFrameSize))
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in))
		consumed := 0
		for {
			fr, err := r.ReadFrame()
			if err != nil {
				if err == io.EOF && consumed != len(in) {
					t.Fatalf("clean EOF after %d of %d bytes", consumed, len(in))
				}
				if err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrFrameTooLarge) &&
					!errors.Is(err, ErrFrameTooShort) && !errors.Is(err, ErrUnknownFrameType) {
					t.Fatalf("unexpected error kind: %v", err)
				}
				return
			}
			if len(fr.Payload) > MaxPayloadSize {
				t.Fatalf("payload of %d bytes exceeds the cap", len(fr.Payload))
			}
			enc, err := AppendFrame(nil, fr.Type, fr.Stream, fr.Payload)
			if err != nil {
				t.Fatalf("re-encode accepted frame: %v", err)
			}
			if !bytes.Equal(enc, in[consumed:consumed+len(enc)]) {
				t.Fatalf("re-encoded frame differs from input")
			}
			consumed += len(enc)
			switch fr.Type {
			case FrameData:
				if _, data, err := ParseData(fr.Payload); err == nil && len(data) > MaxDataSize {
					t.Fatalf("data of %d bytes", len(data))
				}
			case FrameEnd:
				_, _ = ParseEnd(fr.Payload)
			case FrameWindow:
				if n, err := ParseWindow(fr.Payload); err == nil && n == 0 {
					t.Fatal("zero window accepted")
				}
			case FrameHello:
				var h Hello
				if json.Unmarshal(fr.Payload, &h) == nil {
					_ = h.EffectiveWindow()
				}
			case FrameRequest:
				var req Request
				_ = json.Unmarshal(fr.Payload, &req)
			case FrameResponse:
				var resp Response
				_ = json.Unmarshal(fr.Payload, &resp)
			}
		}
	})
}
