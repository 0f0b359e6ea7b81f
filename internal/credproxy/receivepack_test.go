package credproxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

func pkt(s string) string { return fmt.Sprintf("%04x%s", len(s)+4, s) }

var (
	oidA  = strings.Repeat("a", 40)
	oidB  = strings.Repeat("b", 40)
	zero  = strings.Repeat("0", 40)
	oid2A = strings.Repeat("c", 64)
	oid2B = strings.Repeat("d", 64)
)

func TestReadReceivePackCommands(t *testing.T) {
	caps := "\x00report-status side-band-64k push-options object-format=sha1 agent=git/2.45"
	pack := "PACK\x00\x00\x00\x02rest of the pack"
	cases := []struct {
		name string
		body string
		want []refUpdate
		bad  bool
	}{
		{"one update", pkt(zero+" "+oidB+" refs/heads/agent/x"+caps) + "0000" + pack,
			[]refUpdate{{zero, oidB, "refs/heads/agent/x"}}, false},
		{"two updates, shallow, newline", pkt("shallow "+oidA+"\n") + pkt(oidA+" "+oidB+" refs/heads/a"+caps+"\n") +
			pkt(oidB+" "+zero+" refs/heads/b\n") + "0000" + pkt("an option") + "0000" + pack,
			[]refUpdate{{oidA, oidB, "refs/heads/a"}, {oidB, zero, "refs/heads/b"}}, false},
		{"sha-256", pkt(oid2A+" "+oid2B+" refs/heads/main"+caps) + "0000",
			[]refUpdate{{oid2A, oid2B, "refs/heads/main"}}, false},
		{"no commands", "0000", nil, false},
		{"empty body", "", nil, true},
		{"no flush", pkt(zero + " " + oidB + " refs/heads/x"), nil, true},
		{"bad length", "00zz", nil, true},
		{"signed length", "+01a", nil, true},
		{"short length", "0003", nil, true},
		{"delim pkt", "0001", nil, true},
		{"empty pkt", "0004", nil, true},
		{"truncated payload", "0100" + zero, nil, true},
		{"mixed oid lengths", pkt(oidA+" "+oid2B+" refs/heads/x") + "0000", nil, true},
		{"upper-case oid", pkt(strings.ToUpper(oidA)+" "+oidB+" refs/heads/x") + "0000", nil, true},
		{"two spaces", pkt(oidA+"  "+oidB+" refs/heads/x") + "0000", nil, true},
		{"no ref", pkt(oidA+" "+oidB+" ") + "0000", nil, true},
		{"bad shallow", pkt("shallow xyz") + "0000", nil, true},
		{"push cert", pkt("push-cert"+caps) + "0000", nil, true},
		{"too many commands", strings.Repeat(pkt(oidA+" "+oidB+" refs/heads/x"), maxPushCommands+1) + "0000", nil, true},
		{"too many bytes", strings.Repeat(pkt("shallow "+oidA), maxPushCommandBytes/52+1) + "0000", nil, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := strings.NewReader(c.body)
			cmds, head, err := readReceivePackCommands(r)
			if c.bad {
				if !errors.Is(err, errBadPush) {
					t.Fatalf("err = %v, want errBadPush", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(cmds) != fmt.Sprint(c.want) {
				t.Fatalf("commands %v, want %v", cmds, c.want)
			}
			rest, _ := io.ReadAll(r)
			if string(head)+string(rest) != c.body || !bytes.HasSuffix(head, []byte("0000")) {
				t.Fatalf("head %q + rest %q is not the body", head, rest)
			}
		})
	}
}

func TestRefusedUpdate(t *testing.T) {
	refs := []string{"refs/heads/agent/x"}
	cases := []struct {
		cmds []refUpdate
		ok   bool
		want string
	}{
		{[]refUpdate{{zero, oidB, "refs/heads/agent/x"}}, true, ""},
		{[]refUpdate{{oidA, oidB, "refs/heads/agent/x"}}, true, ""},
		{[]refUpdate{{oid2A, oid2B, "refs/heads/agent/x"}}, true, ""},
		{nil, true, ""},
		{[]refUpdate{{oidA, oidB, "refs/heads/main"}}, false, "refs/heads/main"},
		{[]refUpdate{{zero, oidB, "refs/heads/agent/x"}, {zero, oidB, "refs/heads/agent/y"}}, false, "refs/heads/agent/y"},
		{[]refUpdate{{oidA, zero, "refs/heads/agent/x"}}, false, "deleting refs/heads/agent/x"},
		{[]refUpdate{{oid2A, strings.Repeat("0", 64), "refs/heads/agent/x"}}, false, "deleting"},
		{[]refUpdate{{zero, oidB, "refs/tags/agent/x"}}, false, "refs/tags/agent/x"},
	}
	for i, c := range cases {
		reason, ok := refusedUpdate(c.cmds, refs)
		if ok != c.ok || !strings.Contains(reason, c.want) {
			t.Errorf("%d: refusedUpdate = %q %v, want %v containing %q", i, reason, ok, c.ok, c.want)
		}
	}
}

// FuzzReceivePackCommands: on any input the parser reads a prefix of it within its bounds; what it accepts ends
// with a flush-pkt, re-parses to the same commands, and holds only well-formed ids.
func FuzzReceivePackCommands(f *testing.F) {
	f.Add([]byte(pkt(zero+" "+oidB+" refs/heads/agent/x\x00report-status") + "0000PACK"))
	f.Add([]byte(pkt("shallow "+oidA) + pkt(oid2A+" "+oid2B+" refs/heads/m\n") + "0000"))
	f.Add([]byte("0000"))
	f.Add([]byte("00050"))
	f.Fuzz(func(t *testing.T, body []byte) {
		cmds, head, err := readReceivePackCommands(bytes.NewReader(body))
		if !bytes.HasPrefix(body, head) || len(head) > maxPushCommandBytes+4 {
			t.Fatalf("read %d bytes that are not a bounded prefix of the input", len(head))
		}
		if err != nil {
			if !errors.Is(err, errBadPush) {
				t.Fatalf("error %v is not errBadPush", err)
			}
			return
		}
		if !bytes.HasSuffix(head, []byte("0000")) || len(cmds) > maxPushCommands {
			t.Fatalf("accepted %q (%d commands)", head, len(cmds))
		}
		again, head2, err := readReceivePackCommands(bytes.NewReader(head))
		if err != nil || !bytes.Equal(head, head2) || fmt.Sprint(again) != fmt.Sprint(cmds) {
			t.Fatalf("re-parse differs: %v", err)
		}
		for _, u := range cmds {
			if !isOID(u.Old) || !isOID(u.New) || u.Ref == "" || strings.ContainsRune(u.Ref, 0) {
				t.Fatalf("accepted command %+v", u)
			}
		}
	})
}
