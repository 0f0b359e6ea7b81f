//go:build !linux

package docker

import (
	"context"
	"errors"
	"net"
)

var errHostileSocket = errors.New("refusing the agent socket")

var errNeedsLinux = errors.New("docker backend: reaching an agent safely (no link following, peer check) needs Linux")

func dialNoFollow(context.Context, string, string, string) (net.Conn, error) {
	return nil, errNeedsLinux
}

func peerPID(net.Conn) (int, error) { return 0, errNeedsLinux }
