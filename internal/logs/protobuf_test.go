package logs

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang/snappy"
	"google.golang.org/protobuf/encoding/protowire"
)

// The decoded form of a PushRequest, read field by field with protowire: what a server would see.
type (
	pbPush   struct{ streams []pbStream }
	pbStream struct {
		labels  string
		entries []pbEntry
		hash    *uint64
	}
	pbEntry struct {
		seconds, nanos int64
		hasTimestamp   bool
		line           string
		metadata       [][2]string
	}
)

// pbFields splits b into its fields, failing on anything malformed.
func pbFields(t *testing.T, what string, b []byte, each func(num protowire.Number, typ protowire.Type, v []byte, n uint64)) {
	t.Helper()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("%s: bad tag: %v", what, protowire.ParseError(n))
		}
		b = b[n:]
		switch typ {
		case protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				t.Fatalf("%s: field %d: bad varint: %v", what, num, protowire.ParseError(n))
			}
			b = b[n:]
			each(num, typ, nil, v)
		case protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				t.Fatalf("%s: field %d: bad length-delimited value: %v", what, num, protowire.ParseError(n))
			}
			b = b[n:]
			each(num, typ, v, 0)
		default:
			t.Fatalf("%s: field %d has wire type %d, which push.proto never uses", what, num, typ)
		}
	}
}

func wantType(t *testing.T, what string, num protowire.Number, got, want protowire.Type) {
	t.Helper()
	if got != want {
		t.Fatalf("%s field %d: wire type %d, want %d", what, num, got, want)
	}
}

// decodePush snappy-decodes (block format) and parses a push body; unknown fields fail the test.
func decodePush(t *testing.T, body []byte) pbPush {
	t.Helper()
	if bytes.HasPrefix(body, []byte("\xff\x06\x00\x00sNaPpY")) {
		t.Fatal("body is in snappy's framed format; Loki reads the block format")
	}
	raw, err := snappy.Decode(nil, body)
	if err != nil {
		t.Fatalf("snappy block decode: %v", err)
	}
	var p pbPush
	pbFields(t, "PushRequest", raw, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) {
		if num != 1 {
			t.Fatalf("PushRequest: unexpected field %d", num)
		}
		wantType(t, "PushRequest", num, typ, protowire.BytesType)
		var s pbStream
		pbFields(t, "StreamAdapter", v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) {
			switch num {
			case 1:
				wantType(t, "StreamAdapter", num, typ, protowire.BytesType)
				s.labels = string(v)
			case 2:
				wantType(t, "StreamAdapter", num, typ, protowire.BytesType)
				var e pbEntry
				pbFields(t, "EntryAdapter", v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) {
					switch num {
					case 1:
						wantType(t, "EntryAdapter", num, typ, protowire.BytesType)
						e.hasTimestamp = true
						pbFields(t, "Timestamp", v, func(num protowire.Number, typ protowire.Type, _ []byte, x uint64) {
							wantType(t, "Timestamp", num, typ, protowire.VarintType)
							switch num {
							case 1:
								e.seconds = int64(x)
							case 2:
								e.nanos = int64(int32(x))
							default:
								t.Fatalf("Timestamp: unexpected field %d", num)
							}
						})
					case 2:
						wantType(t, "EntryAdapter", num, typ, protowire.BytesType)
						e.line = string(v)
					case 3:
						wantType(t, "EntryAdapter", num, typ, protowire.BytesType)
						var kv [2]string
						pbFields(t, "LabelPairAdapter", v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) {
							wantType(t, "LabelPairAdapter", num, typ, protowire.BytesType)
							if num != 1 && num != 2 {
								t.Fatalf("LabelPairAdapter: unexpected field %d", num)
							}
							kv[num-1] = string(v)
						})
						e.metadata = append(e.metadata, kv)
					default:
						t.Fatalf("EntryAdapter: unexpected field %d", num)
					}
				})
				s.entries = append(s.entries, e)
			case 3:
				wantType(t, "StreamAdapter", num, typ, protowire.VarintType)
				s.hash = &x
			default:
				t.Fatalf("StreamAdapter: unexpected field %d", num)
			}
		})
		p.streams = append(p.streams, s)
	})
	return p
}

// parseLabelString reads {name="value", ...} back the way Loki's and VictoriaLogs' parsers do (Go-quoted values).
func parseLabelString(t *testing.T, s string) map[string]string {
	t.Helper()
	if !strings.HasPrefix(s, "{") || !strings.HasSuffix(s, "}") {
		t.Fatalf("labels %q are not wrapped in {}", s)
	}
	s = s[1 : len(s)-1]
	out := map[string]string{}
	for s != "" {
		name, rest, ok := strings.Cut(s, "=")
		if !ok {
			t.Fatalf("labels: no = in %q", s)
		}
		q, err := strconv.QuotedPrefix(rest)
		if err != nil {
			t.Fatalf("labels: value of %s: %v (%q)", name, err, rest)
		}
		v, _ := strconv.Unquote(q)
		out[name] = v
		s = strings.TrimPrefix(rest[len(q):], ", ")
	}
	return out
}

func TestEncodePushProtobufFields(t *testing.T) {
	ts := time.Unix(1700000000, 123456789)
	a := Entry{Time: ts, Line: "one", Labels: Labels{Service: "aetherium", Role: "worker", Worker: "w1", Level: "info", Kind: KindExec},
		Metadata: map[string]string{MetaVMID: "vm1", MetaExecutionID: "ex-9", MetaStream: "stderr", "empty": ""}}
	b := Entry{Time: time.Unix(1700000001, 0), Line: "two \"q\" \\ \n ünï", Labels: Labels{Service: "aetherium", Kind: KindConsole}}
	c := Entry{Time: ts.Add(1), Line: "", Labels: a.Labels, Metadata: map[string]string{MetaVMID: "vm2"}}
	d := Entry{Time: time.Unix(-2, 500), Line: "before the epoch", Labels: Labels{Service: `we"ird\svc` + "\nx", Kind: KindTask}}
	body, err := EncodePushProtobuf([]Entry{a, b, c, d})
	if err != nil {
		t.Fatal(err)
	}
	p := decodePush(t, body)
	if len(p.streams) != 3 {
		t.Fatalf("%d streams, want 3 (one per label set, in order): %+v", len(p.streams), p.streams)
	}
	wantLabels := []string{
		`{kind="exec", level="info", role="worker", service="aetherium", worker="w1"}`,
		`{kind="console", service="aetherium"}`,
		`{kind="task", service="we\"ird\\svc\nx"}`,
	}
	for i, s := range p.streams {
		if s.labels != wantLabels[i] {
			t.Errorf("stream %d labels %s, want %s", i, s.labels, wantLabels[i])
		}
		if s.hash != nil {
			t.Errorf("stream %d: hash %d sent; it is the server's", i, *s.hash)
		}
	}
	if got := parseLabelString(t, p.streams[2].labels); got["service"] != d.Labels.Service || got["kind"] != KindTask || len(got) != 2 {
		t.Errorf("escaped labels read back as %q", got)
	}
	for i, s := range p.streams {
		if got, want := parseLabelString(t, s.labels), []Entry{a, b, d}[i].Labels.Map(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("stream %d labels read back as %v, want %v", i, got, want)
		}
	}
	check := func(what string, got pbEntry, want Entry, meta [][2]string) {
		t.Helper()
		if !got.hasTimestamp || got.seconds != want.Time.Unix() || got.nanos != int64(want.Time.Nanosecond()) {
			t.Errorf("%s: timestamp %d.%09d (present %v), want %d.%09d", what, got.seconds, got.nanos, got.hasTimestamp, want.Time.Unix(), want.Time.Nanosecond())
		}
		if !time.Unix(got.seconds, got.nanos).Equal(want.Time) {
			t.Errorf("%s: time %v, want %v", what, time.Unix(got.seconds, got.nanos), want.Time)
		}
		if got.line != want.Line {
			t.Errorf("%s: line %q, want %q", what, got.line, want.Line)
		}
		if fmt.Sprint(got.metadata) != fmt.Sprint(meta) {
			t.Errorf("%s: structured metadata %q, want %q", what, got.metadata, meta)
		}
	}
	if n := len(p.streams[0].entries); n != 2 {
		t.Fatalf("stream 0 has %d entries, want 2", n)
	}
	check("a", p.streams[0].entries[0], a, [][2]string{{"empty", ""}, {MetaExecutionID, "ex-9"}, {MetaStream, "stderr"}, {MetaVMID, "vm1"}})
	check("c", p.streams[0].entries[1], c, [][2]string{{MetaVMID, "vm2"}})
	check("b", p.streams[1].entries[0], b, nil)
	check("d", p.streams[2].entries[0], d, nil)
	if d := p.streams[2].entries[0]; d.seconds != -2 || d.nanos != 500 {
		t.Errorf("pre-epoch timestamp %d s %d ns, want -2 s 500 ns", d.seconds, d.nanos)
	}

	// The empty request (Health's) is an empty message, still snappy-framed as a block.
	empty, _ := EncodePushProtobuf(nil)
	if p := decodePush(t, empty); len(p.streams) != 0 {
		t.Fatalf("empty push decoded to %+v", p)
	}
}

// TestEncodePushFormatsAgree: the protobuf and JSON encodings carry the same streams, entries and metadata.
func TestEncodePushFormatsAgree(t *testing.T) {
	var entries []Entry
	base := time.Unix(1700000000, 0)
	for i := range 50 {
		entries = append(entries, Entry{Time: base.Add(time.Duration(i) * 1001), Line: "l" + strconv.Itoa(i),
			Labels:   Labels{Service: "aetherium", Kind: []string{KindExec, KindServer, KindTask}[i%3], Level: "info"},
			Metadata: map[string]string{"seq": strconv.Itoa(i)}})
	}
	body, _ := EncodePushProtobuf(entries)
	jsonBody, _ := EncodePush(entries)
	raw := MarshalPushRequest(entries)
	if len(body) >= len(jsonBody) {
		t.Errorf("protobuf+snappy body (%d bytes) is not smaller than JSON (%d)", len(body), len(jsonBody))
	}
	t.Logf("50 entries: JSON %d bytes, protobuf %d, protobuf+snappy %d", len(jsonBody), len(raw), len(body))
	p := decodePush(t, body)
	n := 0
	for _, s := range p.streams {
		labels := parseLabelString(t, s.labels)
		for _, e := range s.entries {
			seq, _ := strconv.Atoi(e.metadata[0][1])
			want := entries[seq]
			if fmt.Sprint(labels) != fmt.Sprint(want.Labels.Map()) || e.line != want.Line ||
				!time.Unix(e.seconds, e.nanos).Equal(want.Time) {
				t.Errorf("entry %d decoded as %v %+v", seq, labels, e)
			}
			n++
		}
	}
	if n != len(entries) {
		t.Fatalf("%d entries decoded, want %d", n, len(entries))
	}
}

func TestLokiFormatSetsContentType(t *testing.T) {
	for _, tc := range []struct{ format, contentType string }{
		{"", ContentTypeProtobuf}, {FormatProtobuf, ContentTypeProtobuf}, {FormatJSON, "application/json"},
	} {
		rec := &pushRecorder{}
		l := newTestLoki(t, rec, LokiConfig{Format: tc.format})
		if err := l.Health(context.Background()); err != nil {
			t.Fatal(err)
		}
		_ = l.Push(context.Background(), entry("a"))
		closeLoki(t, l)
		if len(rec.headers) != 2 {
			t.Fatalf("format %q: %d requests, want the health check and one push", tc.format, len(rec.headers))
		}
		for _, h := range rec.headers {
			if got := h.Get("Content-Type"); got != tc.contentType {
				t.Errorf("format %q: Content-Type %q, want %q", tc.format, got, tc.contentType)
			}
		}
		if tc.contentType == ContentTypeProtobuf {
			if p := decodePush(t, rec.bodies[1]); len(p.streams) != 1 || p.streams[0].entries[0].line != "a" {
				t.Errorf("format %q: push decoded as %+v", tc.format, p)
			}
		}
	}
	if _, err := NewLoki(LokiConfig{URL: "http://loki", Format: "xml"}); err == nil || !strings.Contains(err.Error(), "format") {
		t.Fatalf("format xml: %v", err)
	}
}
