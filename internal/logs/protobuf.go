package logs

import (
	"strconv"
	"strings"
	"time"

	"github.com/golang/snappy"
	"google.golang.org/protobuf/encoding/protowire"
)

// ContentTypeProtobuf is the Content-Type of a protobuf push.
const ContentTypeProtobuf = "application/x-protobuf"

// Field numbers of Loki's push.proto (package logproto, pkg/push in Loki's repository), encoded here by hand over
// protowire so that Aetherium does not depend on Loki:
//
//	message PushRequest      { repeated StreamAdapter streams = 1; }
//	message StreamAdapter    { string labels = 1; repeated EntryAdapter entries = 2; uint64 hash = 3; }
//	message EntryAdapter     { google.protobuf.Timestamp timestamp = 1; string line = 2;
//	                           repeated LabelPairAdapter structuredMetadata = 3; }
//	message LabelPairAdapter { string name = 1; string value = 2; }
//	message Timestamp        { int64 seconds = 1; int32 nanos = 2; }   // google.protobuf
//
// StreamAdapter.hash is not sent: it is the server's, computed from the labels.
const (
	fieldPushStreams      protowire.Number = 1
	fieldStreamLabels     protowire.Number = 1
	fieldStreamEntries    protowire.Number = 2
	fieldEntryTimestamp   protowire.Number = 1
	fieldEntryLine        protowire.Number = 2
	fieldEntryMetadata    protowire.Number = 3
	fieldLabelPairName    protowire.Number = 1
	fieldLabelPairValue   protowire.Number = 2
	fieldTimestampSeconds protowire.Number = 1
	fieldTimestampNanos   protowire.Number = 2
)

// EncodePushProtobuf renders entries as Loki's native push body: a PushRequest, grouped into streams by label set
// as EncodePush does, then snappy block-compressed (snappy.Encode, not the framed stream format), as Loki and the
// stores compatible with it expect with Content-Type application/x-protobuf.
func EncodePushProtobuf(entries []Entry) ([]byte, error) {
	return snappy.Encode(nil, MarshalPushRequest(entries)), nil
}

// MarshalPushRequest renders entries as an uncompressed PushRequest. Fields are written in field-number order and
// empty ones are left out, as proto3 encoders do; structured metadata is sorted by name.
func MarshalPushRequest(entries []Entry) []byte {
	groups := groupStreams(entries)
	type sized struct {
		labels  string
		entries []int // size of each EntryAdapter
		size    int   // size of the StreamAdapter
	}
	streams := make([]sized, len(groups))
	total := 0
	for i, g := range groups {
		s := sized{labels: LabelString(g.labels), entries: make([]int, len(g.entries))}
		s.size = sizeString(fieldStreamLabels, s.labels)
		for j, e := range g.entries {
			s.entries[j] = entrySize(e)
			s.size += sizeMessage(fieldStreamEntries, s.entries[j])
		}
		streams[i] = s
		total += sizeMessage(fieldPushStreams, s.size)
	}
	b := make([]byte, 0, total)
	for i, g := range groups {
		s := streams[i]
		b = appendMessageHeader(b, fieldPushStreams, s.size)
		b = appendString(b, fieldStreamLabels, s.labels)
		for j, e := range g.entries {
			b = appendMessageHeader(b, fieldStreamEntries, s.entries[j])
			b = appendEntry(b, e)
		}
	}
	return b
}

// LabelString renders a label set the way Loki's protobuf push carries it, in Prometheus' notation:
// {kind="exec", service="aetherium"}, names sorted, values quoted with Go's escapes (\" \\ \n ...), which Loki's
// parser and VictoriaLogs' read back.
func LabelString(labels map[string]string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, k := range sortedKeys(labels) {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(strconv.Quote(labels[k]))
	}
	b.WriteByte('}')
	return b.String()
}

func entrySize(e Entry) int {
	n := sizeMessage(fieldEntryTimestamp, timestampSize(e.Time))
	n += sizeString(fieldEntryLine, e.Line)
	for k, v := range e.Metadata {
		n += sizeMessage(fieldEntryMetadata, labelPairSize(k, v))
	}
	return n
}

func appendEntry(b []byte, e Entry) []byte {
	b = appendMessageHeader(b, fieldEntryTimestamp, timestampSize(e.Time))
	b = appendTimestamp(b, e.Time)
	b = appendString(b, fieldEntryLine, e.Line)
	for _, k := range sortedKeys(e.Metadata) {
		v := e.Metadata[k]
		b = appendMessageHeader(b, fieldEntryMetadata, labelPairSize(k, v))
		b = appendString(b, fieldLabelPairName, k)
		b = appendString(b, fieldLabelPairValue, v)
	}
	return b
}

func labelPairSize(name, value string) int {
	return sizeString(fieldLabelPairName, name) + sizeString(fieldLabelPairValue, value)
}

// The Timestamp of t: seconds since the epoch (negative before it) and the nanoseconds within that second, in
// [0, 1e9), as google.protobuf.Timestamp requires. int64 and int32 are varints of their two's complement.
func timestampSize(t time.Time) int {
	n := 0
	if s := t.Unix(); s != 0 {
		n += protowire.SizeTag(fieldTimestampSeconds) + protowire.SizeVarint(uint64(s))
	}
	if ns := t.Nanosecond(); ns != 0 {
		n += protowire.SizeTag(fieldTimestampNanos) + protowire.SizeVarint(uint64(ns))
	}
	return n
}

func appendTimestamp(b []byte, t time.Time) []byte {
	if s := t.Unix(); s != 0 {
		b = protowire.AppendTag(b, fieldTimestampSeconds, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(s))
	}
	if ns := t.Nanosecond(); ns != 0 {
		b = protowire.AppendTag(b, fieldTimestampNanos, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(ns))
	}
	return b
}

func sizeString(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(len(s))
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// sizeMessage is the size of an embedded message field whose content is n bytes; it is always written (an empty
// message is not a missing one).
func sizeMessage(num protowire.Number, n int) int {
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

func appendMessageHeader(b []byte, num protowire.Number, n int) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(n))
}
