package api

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"

	"gopkg.in/yaml.v3"

	"github.com/aetherium/aetherium/pkg/client"
)

// openAPISpec is the hand-written contract of this API. Tests check it against the router and the wire types.
//
//go:embed openapi.yaml
var openAPISpec []byte

// OpenAPISpec returns the OpenAPI 3.0 document of the API in YAML (for tools that generate clients or docs).
func OpenAPISpec() []byte { return append([]byte(nil), openAPISpec...) }

type openAPIDoc struct {
	yaml []byte
	json []byte
	err  error
}

// loadOpenAPI parses the embedded document once and renders its JSON form.
func loadOpenAPI() openAPIDoc {
	doc := openAPIDoc{yaml: openAPISpec}
	var v any
	if err := yaml.Unmarshal(openAPISpec, &v); err != nil {
		doc.err = fmt.Errorf("parse openapi.yaml: %w", err)
		return doc
	}
	v, err := jsonable(v)
	if err != nil {
		doc.err = err
		return doc
	}
	if doc.json, err = json.MarshalIndent(v, "", "  "); err != nil {
		doc.err = fmt.Errorf("render openapi.json: %w", err)
	}
	return doc
}

// jsonable converts what yaml.v3 decodes into something encoding/json accepts: YAML allows non-string map keys
// (a bare 200 is an integer), JSON does not.
func jsonable(v any) (any, error) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			c, err := jsonable(e)
			if err != nil {
				return nil, err
			}
			x[k] = c
		}
		return x, nil
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			c, err := jsonable(e)
			if err != nil {
				return nil, err
			}
			switch k.(type) {
			case string, int, bool:
				m[fmt.Sprint(k)] = c
			default:
				return nil, fmt.Errorf("openapi.yaml: map key %v of type %T cannot be a JSON key", k, k)
			}
		}
		return m, nil
	case []any:
		for i, e := range x {
			c, err := jsonable(e)
			if err != nil {
				return nil, err
			}
			x[i] = c
		}
		return x, nil
	default:
		return v, nil
	}
}

func (s *server) openAPIYAML(w http.ResponseWriter, r *http.Request) {
	s.writeOpenAPI(w, r, "application/yaml", s.openapi.yaml)
}

func (s *server) openAPIJSON(w http.ResponseWriter, r *http.Request) {
	s.writeOpenAPI(w, r, "application/json", s.openapi.json)
}

func (s *server) writeOpenAPI(w http.ResponseWriter, r *http.Request, contentType string, body []byte) {
	if s.openapi.err != nil {
		s.writeError(w, r, http.StatusInternalServerError, client.CodeInternal, "the API description is unavailable")
		return
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}
