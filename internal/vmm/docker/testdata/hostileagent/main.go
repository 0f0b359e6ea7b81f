// Command hostileagent stands in for an agent that a hostile guest controls, as PID 1 of a container of the
// Docker backend's tests. It listens where the backend tells the real agent to (--listen unix:PATH), so it
// passes the backend's peer check, and misbehaves as its host name says:
//
//	stall-exec   handshakes and answers health, reads every other request and never answers it
//	silent-later answers the first connection like stall-exec, and accepts every later one without a word
//
// It needs nothing from the image (it is static), and exits only when killed.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"github.com/aetherium/aetherium/internal/agent/protocol"
)

func main() {
	listen := flag.String("listen", "", "unix:PATH")
	flag.Parse()
	path, ok := strings.CutPrefix(*listen, "unix:")
	if !ok {
		fmt.Fprintln(os.Stderr, "hostileagent: want --listen unix:PATH")
		os.Exit(2)
	}
	host, _ := os.Hostname()
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hostileagent:", err)
		os.Exit(1)
	}
	fmt.Println("hostileagent listening as", host)
	for n := 0; ; n++ {
		nc, err := l.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "hostileagent:", err)
			os.Exit(1)
		}
		if host == "silent-later" && n > 0 {
			go func() { _, _ = io.Copy(io.Discard, nc) }() // accept, read, never answer
			continue
		}
		go serve(nc)
	}
}

// serve handshakes and answers health; every other request is read and left unanswered.
func serve(nc net.Conn) {
	defer nc.Close()
	rd, w := protocol.NewReader(nc), protocol.NewWriter(nc)
	if f, err := rd.ReadFrame(); err != nil || f.Type != protocol.FrameHello {
		return
	}
	hello, _ := json.Marshal(protocol.Hello{ProtocolVersion: protocol.Version, AgentVersion: "hostile", Role: protocol.RoleAgent,
		Features: []string{protocol.FeatureHealth, protocol.FeatureExec}})
	if err := w.WriteFrame(protocol.FrameHello, 0, hello); err != nil {
		return
	}
	for {
		f, err := rd.ReadFrame()
		if err != nil {
			return
		}
		if f.Type != protocol.FrameRequest {
			continue
		}
		var req protocol.Request
		if json.Unmarshal(f.Payload, &req) == nil && req.Method == protocol.MethodHealth {
			host, _ := os.Hostname()
			res, _ := json.Marshal(protocol.HealthResult{Version: "hostile", ProtocolVersion: protocol.Version, Hostname: host, PID1: os.Getpid() == 1})
			resp, _ := json.Marshal(protocol.Response{Result: res})
			if err := w.WriteFrame(protocol.FrameResponse, f.Stream, resp); err != nil {
				return
			}
		}
	}
}
