package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
)

// strictDecode decodes the JSON document body into v (a pointer) as the API documents it: exactly one value,
// field names matched exactly (encoding/json matches them case-insensitively, so {"Name":...} would set Name),
// no unknown fields, no key twice in an object (encoding/json keeps the last) and nothing after the value. The
// keys are checked against v's type on a pass over the tokens first; then encoding/json does the decoding
// proper, with its own checks of types. The errors name the field by its path (commands[0].env).
func strictDecode(body []byte, v any) error {
	t := reflect.TypeOf(v)
	if t == nil || t.Kind() != reflect.Pointer {
		return errors.New("strictDecode: v must be a non-nil pointer")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := checkValue(dec, t.Elem(), ""); err != nil {
		var se *strictError
		if errors.As(err, &se) {
			return err
		}
		// Malformed JSON: encoding/json's Decode reports it with the better position and wording.
		if derr := json.NewDecoder(bytes.NewReader(body)).Decode(new(any)); derr != nil {
			return derr
		}
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		line, col := position(body, dec.InputOffset())
		return &strictError{msg: fmt.Sprintf("unexpected data after the JSON object at line %d, column %d", line, col)}
	}
	dec = json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// strictError is a refusal of strictDecode's own (not one of encoding/json); its message is for the client.
type strictError struct{ msg string }

func (e *strictError) Error() string { return e.msg }

var jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()

// checkValue reads one value from dec and checks the keys of its objects against t (nil: any value, only
// duplicates are refused). Type mismatches are left to encoding/json, which reports them better.
func checkValue(dec *json.Decoder, t reflect.Type, path string) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil // a scalar
	}
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t != nil && (reflect.PointerTo(t).Implements(jsonUnmarshaler) || t.Kind() == reflect.Interface) {
		t = nil // decodes itself (json.RawMessage...) or takes anything: only duplicates are checked inside
	}
	switch d {
	case '[':
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for i := 0; dec.More(); i++ {
			if err := checkValue(dec, elem, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		_, err := dec.Token() // ]
		return err
	case '{':
		var fields map[string]reflect.Type
		var elem reflect.Type
		isStruct := t != nil && t.Kind() == reflect.Struct
		switch {
		case isStruct:
			fields = jsonFields(t)
		case t != nil && t.Kind() == reflect.Map:
			elem = t.Elem()
		}
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return err
			}
			key, _ := kt.(string)
			name := joinPath(path, key)
			if seen[key] {
				return &strictError{msg: fmt.Sprintf("duplicate field %q: a key may appear once in an object", name)}
			}
			seen[key] = true
			ft := elem
			if isStruct {
				var known bool
				ft, known = fields[key]
				if !known {
					return &strictError{msg: unknownField(name, key, fields)}
				}
			}
			if err := checkValue(dec, ft, name); err != nil {
				return err
			}
		}
		_, err := dec.Token() // }
		return err
	}
	return nil
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// unknownField names the field and, when it differs from a known one only by case, the right spelling.
func unknownField(name, key string, fields map[string]reflect.Type) string {
	for k := range fields {
		if strings.EqualFold(k, key) {
			return fmt.Sprintf("unknown field %q (field names are case-sensitive: did you mean %q?)", name, k)
		}
	}
	return fmt.Sprintf("unknown field %q", name)
}

// fieldCache holds jsonFields by type: the request types are few and fixed.
var fieldCache sync.Map // reflect.Type -> map[string]reflect.Type

// jsonFields returns the JSON names encoding/json decodes into for struct type t, with their types; the fields
// of embedded structs are promoted as encoding/json promotes them.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := map[string]reflect.Type{}
	addFields(t, m, 0)
	fieldCache.Store(t, m)
	return m
}

func addFields(t reflect.Type, m map[string]reflect.Type, depth int) {
	if depth > 8 {
		return
	}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		ft := f.Type
		if f.Anonymous && name == "" {
			et := ft
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				addFields(et, m, depth+1)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		if strings.Contains(opts, "string") {
			ft = nil // ",string": a quoted scalar, encoding/json checks it
		}
		if _, dup := m[name]; !dup || depth == 0 {
			m[name] = ft
		}
	}
}

// describeStrictError is describeJSONError for the errors of strictDecode.
func describeStrictError(body []byte, err error) string {
	var se *strictError
	if errors.As(err, &se) {
		return se.msg
	}
	return describeJSONError(body, err)
}
