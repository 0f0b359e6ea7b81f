package workerapi

import (
	"errors"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"strconv"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/workerapi/wire"
	"github.com/aetherium/aetherium/pkg/client"
)

// download streams a file of the guest. Errors found before the first byte (no such file, a directory) are JSON
// answers; a failure after it aborts the response, so the client sees a cut transfer.
func (s *server) download(w http.ResponseWriter, r *http.Request) {
	p, err := wire.ParsePath(r.URL.Query())
	if err != nil {
		s.fail(w, r, "path", err)
		return
	}
	ag, ok := s.agent(w, r)
	if !ok {
		return
	}
	f, err := ag.OpenFile(r.Context(), p)
	if err != nil {
		s.fail(w, r, "path", err)
		return
	}
	defer f.Close()
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	if f.Info.Size >= 0 {
		h.Set("Content-Length", strconv.FormatInt(f.Info.Size, 10))
	} // else the size is unknown (a /proc file): the body is chunked, to its end
	h.Set("Last-Modified", f.Info.ModTime.UTC().Format(http.TimeFormat))
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": f.Info.Name}))
	h.Set(client.HeaderFileMode, wire.FormatMode(UnixPerm(f.Info.Mode)))
	h.Set(client.HeaderFileUID, itoa(f.Info.UID))
	h.Set(client.HeaderFileGID, itoa(f.Info.GID))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	s.copyBody(w, r, f)
}

// bodyReader remembers whether reading the request body failed, to tell a client that went away from a refusal.
type bodyReader struct {
	r   io.Reader
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		b.err = err
	}
	return n, err
}

// upload streams the request body into a file of the guest; the file appears whole or not at all.
func (s *server) upload(w http.ResponseWriter, r *http.Request) {
	u, err := wire.ParseUpload(r.URL.Query())
	if err != nil {
		s.fail(w, r, "path", err)
		return
	}
	ag, ok := s.agent(w, r)
	if !ok {
		return
	}
	body := &bodyReader{r: wire.IdleBody(w, r.Body, wire.UploadIdleTimeout)}
	info, err := ag.Upload(r.Context(), agent.UploadRequest{
		Path: u.Path, Mode: fs.FileMode(u.Mode), Owner: u.Owner, MkdirParents: u.MkdirParents, NoOverwrite: !u.Overwrite,
	}, body)
	if err != nil {
		if body.err != nil {
			writeError(w, http.StatusBadRequest, client.CodeBadRequest, "the upload was cut short; nothing was written: "+body.err.Error())
			return
		}
		s.fail(w, r, "path", err)
		return
	}
	writeJSON(w, http.StatusOK, FileInfo(*info))
}

func (s *server) stat(w http.ResponseWriter, r *http.Request) {
	p, err := wire.ParsePath(r.URL.Query())
	if err != nil {
		s.fail(w, r, "path", err)
		return
	}
	ag, ok := s.agent(w, r)
	if !ok {
		return
	}
	info, err := ag.Stat(r.Context(), p)
	if err != nil {
		s.fail(w, r, "path", err)
		return
	}
	writeJSON(w, http.StatusOK, FileInfo(*info))
}

func (s *server) list(w http.ResponseWriter, r *http.Request) {
	p, err := wire.ParsePath(r.URL.Query())
	if err != nil {
		s.fail(w, r, "path", err)
		return
	}
	ag, ok := s.agent(w, r)
	if !ok {
		return
	}
	entries, err := ag.ListDir(r.Context(), p)
	if err != nil {
		s.fail(w, r, "path", err)
		return
	}
	out := client.FileList{Path: p, Entries: make([]client.FileInfo, len(entries))}
	for i, e := range entries {
		out.Entries[i] = FileInfo(e)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) mkdir(w http.ResponseWriter, r *http.Request) {
	var req client.MkdirRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	if err := wire.NormalizeMkdir(&req); err != nil {
		s.fail(w, r, "path", err)
		return
	}
	mode, _ := wire.ParseMode("mode", req.Mode) // checked by NormalizeMkdir
	ag, ok := s.agent(w, r)
	if !ok {
		return
	}
	info, err := ag.Mkdir(r.Context(), agent.MkdirRequest{Path: req.Path, Mode: fs.FileMode(mode), Parents: req.Parents, Owner: req.Owner})
	if err != nil {
		s.fail(w, r, "path", err)
		return
	}
	writeJSON(w, http.StatusCreated, FileInfo(*info))
}

func (s *server) remove(w http.ResponseWriter, r *http.Request) {
	rm, err := wire.ParseRemove(r.URL.Query())
	if err != nil {
		s.fail(w, r, "path", err)
		return
	}
	ag, ok := s.agent(w, r)
	if !ok {
		return
	}
	if err := ag.Remove(r.Context(), rm.Path, rm.Recursive); err != nil {
		s.fail(w, r, "path", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// UnixPerm is the permission bits of m as chmod writes them, setuid, setgid and sticky included.
func UnixPerm(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

// FileInfo is the API's form of a guest file's description.
func FileInfo(i agent.FileInfo) client.FileInfo {
	typ := client.FileTypeOther
	switch {
	case i.Mode.IsRegular():
		typ = client.FileTypeFile
	case i.Mode.IsDir():
		typ = client.FileTypeDirectory
	case i.Mode&fs.ModeSymlink != 0:
		typ = client.FileTypeSymlink
	}
	return client.FileInfo{
		Path: i.Path, Name: i.Name, Type: typ, Size: i.Size, Mode: wire.FormatMode(UnixPerm(i.Mode)),
		ModTime: i.ModTime.UTC(), LinkTarget: i.LinkTarget, UID: i.UID, GID: i.GID,
	}
}
