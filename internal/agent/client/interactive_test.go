package client

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/protocol"
)

// fullHello is an agent that offers everything, with a small window so that flow control shows.
func fullHello(window uint32) *protocol.Hello {
	return &protocol.Hello{ProtocolVersion: protocol.Version, AgentVersion: "fake", Role: protocol.RoleAgent, Window: window,
		Features: []string{protocol.FeatureHealth, protocol.FeatureExec, protocol.FeatureExecExtras, protocol.FeatureStdin,
			protocol.FeaturePty, protocol.FeatureSignal, protocol.FeatureProcess, protocol.FeatureFiles}}
}

func TestUnsupportedByOldAgent(t *testing.T) {
	var mu sync.Mutex
	var methods []string
	fa := newFakeAgent(t, goodHello, func(c *fakeConn) {
		for {
			f, err := c.rd.ReadFrame()
			if err != nil {
				return
			}
			if f.Type == protocol.FrameRequest {
				mu.Lock()
				methods = append(methods, string(f.Payload))
				mu.Unlock()
				c.respond(f.Stream, protocol.ExecResult{})
			}
		}
	})
	c := New(fa.dialer())
	defer c.Close()
	ctx := ctxTimeout(t, 10*time.Second)
	calls := map[string]error{}
	_, calls["upload"] = c.Upload(ctx, agent.UploadRequest{Path: "/x"}, strings.NewReader("x"))
	_, calls["start"] = c.StartProcess(ctx, agent.ExecRequest{Argv: []string{"true"}})
	calls["signal"] = c.Signal(ctx, "p1", "TERM")
	calls["poweroff"] = c.PowerOff(ctx)
	_, calls["shell"] = c.Exec(ctx, agent.ExecRequest{Shell: "true"})
	_, calls["pty"] = c.Exec(ctx, agent.ExecRequest{Argv: []string{"true"}, Pty: &agent.PtySize{Rows: 1, Cols: 1}})
	_, calls["stdin"] = c.ExecInteractive(ctx, agent.ExecRequest{Argv: []string{"cat"}}, agent.ExecIO{Stdin: strings.NewReader("x")})
	for name, err := range calls {
		if !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s on an old agent: %v; want ErrUnsupported", name, err)
		}
	}
	// What an old agent does is still used as before.
	if _, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"true"}}); err != nil {
		t.Fatalf("plain exec: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(methods) != 1 || !strings.Contains(methods[0], `"exec"`) {
		t.Fatalf("requests sent: %q; want only the plain exec", methods)
	}
}

// TestInputRespectsCredit: the fake agent grants credit only as it consumes, and checks the client never sends
// more than it was granted.
func TestInputRespectsCredit(t *testing.T) {
	const window = 1000
	const size = 100_000
	got := make(chan []byte, 1)
	fa := newFakeAgent(t, fullHello(window), func(c *fakeConn) {
		var buf bytes.Buffer
		granted := int64(window)
		for {
			f, err := c.rd.ReadFrame()
			if err != nil {
				return
			}
			switch f.Type {
			case protocol.FrameData:
				_, data, _ := protocol.ParseData(f.Payload)
				buf.Write(data)
				if int64(buf.Len()) > granted {
					t.Errorf("client sent %d bytes with %d granted", buf.Len(), granted)
					return
				}
				// Consume and grant back in small steps.
				c.send(protocol.FrameWindow, f.Stream, protocol.WindowPayload(uint32(len(data))))
				granted += int64(len(data))
			case protocol.FrameEnd:
				got <- buf.Bytes()
				c.respond(f.Stream, protocol.FileInfo{Path: "/x", Size: int64(buf.Len()), Mode: 0o100644})
			}
		}
	})
	c := New(fa.dialer())
	defer c.Close()
	in := bytes.Repeat([]byte("abcdefghij"), size/10)
	info, err := c.Upload(ctxTimeout(t, 10*time.Second), agent.UploadRequest{Path: "/x"}, bytes.NewReader(in))
	if err != nil || info.Size != size || !info.Mode.IsRegular() || info.Mode.Perm() != 0o644 {
		t.Fatalf("Upload: %+v %v", info, err)
	}
	if b := <-got; !bytes.Equal(b, in) {
		t.Fatalf("agent got %d bytes", len(b))
	}
}

// TestEarlyRefusalEndsUpload: an agent that refuses an upload at once (and never grants credit) ends it with
// its error, instead of leaving the client waiting for credit.
func TestEarlyRefusalEndsUpload(t *testing.T) {
	fa := newFakeAgent(t, fullHello(1000), func(c *fakeConn) {
		for {
			f, err := c.rd.ReadFrame()
			if err != nil {
				return
			}
			if f.Type == protocol.FrameRequest {
				c.send(protocol.FrameResponse, f.Stream, protocol.Response{Error: &protocol.Error{Code: protocol.CodeExists, Message: "exists"}})
			}
		}
	})
	c := New(fa.dialer())
	defer c.Close()
	_, err := c.Upload(ctxTimeout(t, 10*time.Second), agent.UploadRequest{Path: "/x", NoOverwrite: true}, bytes.NewReader(make([]byte, 10<<20)))
	if !IsCode(err, agent.CodeExists) || !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Upload refused by the agent: %v", err)
	}
}

func TestDownloadChecksSize(t *testing.T) {
	for name, tc := range map[string]struct {
		frames func(c *fakeConn, id uint32)
		want   func(error) bool
	}{
		"short": {
			frames: func(c *fakeConn, id uint32) {
				c.send(protocol.FrameHeader, id, protocol.FileInfo{Path: "/f", Size: 10})
				c.send(protocol.FrameData, id, protocol.DataPayload(protocol.ChannelStdout, []byte("12345")))
				c.respond(id, protocol.FileReadResult{Size: 5})
			},
			want: func(err error) bool { return errors.Is(err, ErrUnavailable) },
		},
		"long": {
			frames: func(c *fakeConn, id uint32) {
				c.send(protocol.FrameHeader, id, protocol.FileInfo{Path: "/f", Size: 2})
				c.send(protocol.FrameData, id, protocol.DataPayload(protocol.ChannelStdout, []byte("12345")))
				c.respond(id, protocol.FileReadResult{Size: 5})
			},
			want: func(err error) bool { return errors.Is(err, ErrUnavailable) },
		},
		"error after some data": {
			frames: func(c *fakeConn, id uint32) {
				c.send(protocol.FrameHeader, id, protocol.FileInfo{Path: "/f", Size: 10})
				c.send(protocol.FrameData, id, protocol.DataPayload(protocol.ChannelStdout, []byte("12345")))
				c.send(protocol.FrameResponse, id, protocol.Response{Error: &protocol.Error{Code: protocol.CodeIOError, Message: "disk"}})
			},
			want: func(err error) bool { return IsCode(err, agent.CodeIOError) },
		},
		"second header": {
			frames: func(c *fakeConn, id uint32) {
				c.send(protocol.FrameHeader, id, protocol.FileInfo{Path: "/f", Size: 10})
				c.send(protocol.FrameHeader, id, protocol.FileInfo{Path: "/f", Size: 10})
			},
			want: func(err error) bool { return errors.Is(err, ErrUnavailable) },
		},
		"no header": {
			frames: func(c *fakeConn, id uint32) { c.respond(id, protocol.FileReadResult{}) },
			want:   func(err error) bool { return errors.Is(err, ErrUnavailable) },
		},
	} {
		t.Run(name, func(t *testing.T) {
			fa := newFakeAgent(t, fullHello(0), func(c *fakeConn) {
				for {
					f, err := c.rd.ReadFrame()
					if err != nil {
						return
					}
					if f.Type == protocol.FrameRequest {
						tc.frames(c, f.Stream)
					}
				}
			})
			c := New(fa.dialer())
			defer c.Close()
			_, err := c.Download(ctxTimeout(t, 10*time.Second), "/f", io.Discard)
			if !tc.want(err) {
				t.Fatalf("got %v", err)
			}
		})
	}
}

func TestErrorCodesUnwrap(t *testing.T) {
	for code, target := range map[string]error{
		agent.CodeNotFound:         fs.ErrNotExist,
		agent.CodeExists:           fs.ErrExist,
		agent.CodePermissionDenied: fs.ErrPermission,
		agent.CodeShuttingDown:     ErrUnavailable,
		agent.CodeUnknownMethod:    ErrUnsupported,
	} {
		var err error = &Error{Method: "m", Code: code, Message: "x"}
		if !errors.Is(err, target) || !IsCode(err, code) {
			t.Errorf("%s does not match %v", code, target)
		}
	}
	if errors.Is(&Error{Code: agent.CodeBadRequest}, ErrUnavailable) {
		t.Error("bad_request counts as unavailable")
	}
}

func TestModeConversions(t *testing.T) {
	for raw, want := range map[uint32]fs.FileMode{
		0o100644: 0o644,
		0o040755: fs.ModeDir | 0o755,
		0o120777: fs.ModeSymlink | 0o777,
		0o104755: fs.ModeSetuid | 0o755,
		0o041777: fs.ModeDir | fs.ModeSticky | 0o777,
		0o020666: fs.ModeDevice | fs.ModeCharDevice | 0o666,
		0o010600: fs.ModeNamedPipe | 0o600,
		0o140755: fs.ModeSocket | 0o755,
	} {
		if got := fileMode(raw); got != want {
			t.Errorf("fileMode(%#o) = %v, want %v", raw, got, want)
		}
	}
	for mode, want := range map[fs.FileMode]uint32{0o644: 0o644, fs.ModeSetuid | 0o755: 0o4755, 0o4755: 0o4755,
		fs.ModeSticky | fs.ModeDir | 0o777: 0o1777} {
		if got := unixMode(mode); got != want {
			t.Errorf("unixMode(%v) = %#o, want %#o", mode, got, want)
		}
	}
}
