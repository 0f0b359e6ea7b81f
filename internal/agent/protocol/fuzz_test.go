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

// paramsFor returns a fresh value of the params type of a method, or nil for one without params.
func paramsFor(method string) any {
	switch method {
	case MethodExec, MethodProcessStart:
		return new(ExecParams)
	case MethodSignal:
		return new(SignalParams)
	case MethodResize:
		return new(ResizeParams)
	case MethodProcessWait:
		return new(ProcessWaitParams)
	case MethodProcessOutput:
		return new(ProcessOutputParams)
	case MethodProcessRemove:
		return new(ProcessParams)
	case MethodFileWrite:
		return new(FileWriteParams)
	case MethodFileRead, MethodFileStat, MethodFileList:
		return new(PathParams)
	case MethodFileMkdir:
		return new(FileMkdirParams)
	case MethodFileRemove:
		return new(FileRemoveParams)
	}
	return nil
}

// resultTypes are every result (and HEADER) type a client decodes.
func resultTypes() []any {
	return []any{new(HealthResult), new(ExecResult), new(ProcessInfo), new(ProcessListResult), new(ProcessOutputResult),
		new(FileInfo), new(FileReadResult), new(FileListResult)}
}

// FuzzPayloads runs arbitrary bytes through the frame decoder and then every payload through the JSON decoding
// its frame type gets: a REQUEST's params through DecodeParams into its method's type, a RESPONSE's result and
// a HEADER into every result type. Nothing may panic, and params DecodeParams accepts must survive a round trip
// (encode, decode again) unchanged: what the agent acts on is exactly what was sent.
func FuzzPayloads(f *testing.F) {
	seed := func(typ FrameType, stream uint32, payload string) []byte {
		b, err := AppendFrame(nil, typ, stream, []byte(payload))
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	for _, req := range []string{
		`{"method":"exec","params":{"argv":["sh"],"shell":"","user":"app:staff","stdin":true,"pty":{"rows":24,"cols":80,"term":"xterm"},"id":"p1","keep_running":true,"timeout_ns":5}}`,
		`{"method":"exec","params":{"shell":"echo hi","env":{"A":"b"},"working_dir":"/tmp"}}`,
		`{"method":"signal","params":{"id":"p1","signal":"TERM"}}`,
		`{"method":"resize","params":{"id":"p1","rows":30,"cols":100}}`,
		`{"method":"process.start","params":{"argv":["sleep","1"],"id":"bg"}}`,
		`{"method":"process.wait","params":{"id":"bg","timeout_ns":1000000}}`,
		`{"method":"process.output","params":{"id":"bg","channel":"stderr","offset":10,"max_bytes":100}}`,
		`{"method":"process.remove","params":{"id":"bg"}}`,
		`{"method":"file.write","params":{"path":"/tmp/x","mode":420,"owner":"1000:1000","mkdir_parents":true,"no_overwrite":true}}`,
		`{"method":"file.read","params":{"path":"/etc/hostname"}}`,
		`{"method":"file.mkdir","params":{"path":"/a/b","mode":493,"parents":true}}`,
		`{"method":"file.remove","params":{"path":"/a","recursive":true}}`,
		`{"method":"exec","params":{"argv":["x"]} }`,
		`{"method":"exec","params":{"argv":["x"],"unknown":1}}`,
		`{"method":"exec","params":{"argv":["x"]}{}}`,
		`{"method":"exec","params":{"argv":[],"env":{},"pty":null}}`,
	} {
		f.Add(seed(FrameRequest, 1, req))
	}
	f.Add(seed(FrameResponse, 1, `{"result":{"id":"p1","pid":7,"command":"sleep 1","state":"exited","result":{"exit_code":1,"peak_memory_kb":12}}}`))
	f.Add(seed(FrameResponse, 1, `{"result":{"processes":[{"id":"a"},{"id":"b"}]}}`))
	f.Add(seed(FrameResponse, 1, `{"result":{"offset":1,"next_offset":5,"dropped":1,"total":5,"eof":true}}`))
	f.Add(seed(FrameHeader, 1, `{"path":"/x","size":5,"mode":33188,"mtime_ns":1,"uid":0,"gid":0}`))
	f.Add(seed(FrameHeader, 1, `null`))

	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in))
		for {
			fr, err := r.ReadFrame()
			if err != nil {
				return
			}
			switch fr.Type {
			case FrameRequest:
				var req Request
				if json.Unmarshal(fr.Payload, &req) != nil {
					continue
				}
				p := paramsFor(req.Method)
				if p == nil {
					continue
				}
				if DecodeParams(req.Params, p) != nil {
					continue
				}
				enc, err := json.Marshal(p)
				if err != nil {
					t.Fatalf("re-encode accepted %s params: %v", req.Method, err)
				}
				again := paramsFor(req.Method)
				if err := DecodeParams(enc, again); err != nil {
					t.Fatalf("re-encoded %s params %s rejected: %v", req.Method, enc, err)
				}
				// Compared as encodings: an empty list and a missing one mean the same.
				if enc2, _ := json.Marshal(again); !bytes.Equal(enc, enc2) {
					t.Fatalf("%s params changed in a round trip: %s vs %s", req.Method, enc, enc2)
				}
			case FrameResponse:
				var resp Response
				if json.Unmarshal(fr.Payload, &resp) != nil || resp.Result == nil {
					continue
				}
				for _, v := range resultTypes() {
					_ = json.Unmarshal(resp.Result, v)
				}
			case FrameHeader:
				for _, v := range resultTypes() {
					_ = json.Unmarshal(fr.Payload, v)
				}
			}
		}
	})
}
